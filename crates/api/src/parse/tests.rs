use super::*;
use crate::service::Service;

/// The original ikukantai demo Service (`manifest/demo/hello.yaml`), in our model.
pub(crate) const HELLO: &str = r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/window: "12s"
        autoscaling.knative.dev/scale-to-zero-pod-retention-period: "0s"
        autoscaling.knative.dev/target-burst-capacity: "-1"
        autoscaling.knative.dev/target: "10"
    spec:
      containers:
        - image: docker.io/bonavadeur/shuka:v1.3
          ports:
            - containerPort: 8080
          env:
            - name: TARGET
              value: "Konnichiwa"
          resources:
            limits:
              cpu: 500m
              memory: 640M
"#;

pub(crate) fn hello_service() -> Service {
    match parse_str("hello.yaml", HELLO).unwrap().remove(0).document {
        Document::Service(s) => *s,
        other => panic!("{other:?}"),
    }
}

fn errors(file: &str, text: &str) -> Vec<String> {
    let sources = vec![(file.to_owned(), text.to_owned())];
    load(&sources, &FleetConfig::new()).unwrap_err().0.iter().map(ToString::to_string).collect()
}

#[test]
fn the_original_demo_manifest_loads() {
    let sources = vec![("hello.yaml".to_owned(), HELLO.to_owned())];
    let (docs, _) = load(&sources, &FleetConfig::new()).unwrap();
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].document.subject(), "Service default/hello");
    let svc = hello_service();
    assert_eq!(svc.spec.template.spec.containers[0].port(), 8080);
    assert_eq!(svc.spec.template.spec.timeout_seconds(), 300);
}

#[test]
fn multi_document_yaml_with_all_kinds() {
    let text = format!(
        "{HELLO}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-autoscaler\ndata:\n  stable-window: 30s\n---\n---\nnodes:\n  - name: edge\n    capacity: 2\n  - name: cloud\nlinks:\n  - between: [edge, cloud]\n    rtt: 50ms\n    jitter: 10ms\n"
    );
    let (docs, fleet) = load(&[("all.yaml".into(), text)], &FleetConfig::new()).unwrap();
    let subjects: Vec<_> = docs.iter().map(|d| (d.index, d.document.subject())).collect();
    assert_eq!(
        subjects,
        [
            (1, "Service default/hello".to_owned()),
            (2, "ConfigMap config-autoscaler".to_owned()),
            (3, "Topology of 2 nodes".to_owned())
        ]
    );
    assert_eq!(fleet.autoscaler.stable_window, std::time::Duration::from_secs(30));
    let Document::Topology(t) = &docs[2].document else { panic!() };
    assert_eq!(t.nodes[1].capacity, 10, "default capacity");
}

#[test]
fn json_documents_load_too() {
    let json = r#"{"apiVersion":"serving.knative.dev/v1","kind":"Service","metadata":{"name":"j","namespace":"fns"},
      "spec":{"template":{"spec":{"containers":[{"image":"x"}]}}}}"#;
    let (docs, _) = load(&[("svc.json".into(), json.into())], &FleetConfig::new()).unwrap();
    assert_eq!(docs[0].document.subject(), "Service fns/j");
    let list = format!("[{json}, {json}]");
    assert_eq!(parse_str("list.json", &list).unwrap().len(), 2);
}

#[test]
fn unknown_fields_name_the_path_and_suggest() {
    let text = HELLO.replace("- image:", "- imagee: x\n          image:");
    assert_eq!(
        errors("hello.yaml", &text),
        [
            "hello.yaml: document 1 (Service default/hello): spec.template.spec.containers[0].imagee: unknown field (did you mean `image`?)"
        ]
    );
    let text = HELLO.replace("  template:", "  templat:");
    let e = errors("hello.yaml", &text);
    assert!(e[0].ends_with("spec.templat: unknown field (did you mean `template`?)"), "{e:?}");
    let text = HELLO.replace("  template:", "  volumes: []\n  template:");
    let e = errors("hello.yaml", &text);
    assert!(e[0].ends_with("spec.volumes: unknown field; expected one of template, traffic"), "{e:?}");
}

#[test]
fn missing_and_mistyped_fields_name_the_path() {
    let text = HELLO.replace("    spec:\n      containers:", "    spek:\n      containers:");
    let e = errors("hello.yaml", &text);
    assert!(e[0].contains("spec.template.spek: unknown field (did you mean `spec`?)"), "{e:?}");
    let text = HELLO.replace("containerPort: 8080", "containerPort: http");
    let e = errors("hello.yaml", &text);
    assert!(e[0].contains("spec.template.spec.containers[0].ports[0].containerPort: invalid type"), "{e:?}");
    let e = errors("t.yaml", "nodes:\n  - capacity: 3\n");
    assert_eq!(e, ["t.yaml: document 1: nodes[0].name: required field is missing"]);
}

#[test]
fn semantic_errors_come_with_file_document_and_path() {
    let text = format!(
        "{HELLO}---\n{}",
        HELLO.replace("name: hello", "name: Hello_World").replace("\"12s\"", "\"2s\"")
    );
    let e = errors("two.yaml", &text);
    assert_eq!(
        e,
        [
            "two.yaml: document 2 (Service default/Hello_World): metadata.name: \"Hello_World\" is not a DNS-1035 label: lowercase letters, digits and '-', starting with a letter and ending with a letter or digit",
            "two.yaml: document 2 (Service default/Hello_World): spec.template.metadata.annotations[\"autoscaling.knative.dev/window\"]: \"2s\" out of range: must be between 6s and 1h0m0s",
        ]
    );
}

#[test]
fn syntax_errors_and_strange_documents_are_reported() {
    let e = errors("bad.yaml", "nodes: [a, b\n");
    assert!(e[0].starts_with("bad.yaml: invalid YAML"), "{e:?}");
    let e = errors("bad.json", "{\"a\": }");
    assert!(e[0].starts_with("bad.json: invalid JSON"), "{e:?}");
    let e = errors("k.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n");
    assert!(
        e[0].starts_with(
            "k.yaml: document 1 (Deployment x): kind: \"Deployment\" (apps/v1) is not something"
        ),
        "{e:?}"
    );
    let e = errors("k.yaml", "- 1\n- 2\n");
    assert!(e[0].contains("must be a mapping"), "{e:?}");
    let e = errors("k.yaml", "hello: world\n");
    assert!(e[0].contains("cannot tell what this document is"), "{e:?}");
}

#[test]
fn config_maps_apply_in_order_and_affect_service_checks() {
    let config = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-autoscaler\ndata:\n  allow-zero-initial-scale: \"true\"\n";
    let svc = HELLO.replace("\"10\"", "\"10\"\n        autoscaling.knative.dev/initial-scale: \"0\"");
    assert!(errors("s.yaml", &svc)[0].contains("allow-zero-initial-scale"));
    let sources = vec![("c.yaml".to_owned(), config.to_owned()), ("s.yaml".to_owned(), svc)];
    load(&sources, &FleetConfig::new()).unwrap();
}

/// A topology of two nodes, `a` and `b`, and the given links (YAML list items).
fn topology(links: &[&str]) -> String {
    let links: String = links.iter().map(|l| format!("  - {l}\n")).collect();
    format!("nodes:\n  - name: a\n  - name: b\nlinks:\n{links}")
}

#[test]
fn a_misspelt_field_does_not_hide_semantic_problems() {
    let text = HELLO
        .replace("- image:", "- comand: [/bin/app]\n          image:")
        .replace("window: \"12s\"", "window: \"60\"");
    assert_eq!(
        errors("typo.yaml", &text),
        [
            "typo.yaml: document 1 (Service default/hello): spec.template.spec.containers[0].comand: unknown field (did you mean `command`?)",
            "typo.yaml: document 1 (Service default/hello): spec.template.metadata.annotations[\"autoscaling.knative.dev/window\"]: \"60\" is missing a unit (ns, us, ms, s, m or h), e.g. \"60ms\"",
        ]
    );
}

#[test]
fn every_bad_value_is_reported_without_spurious_missing_fields() {
    let text = topology(&["{between: [a, b], rtt: 50}", "{between: [b, a], rtt: 60, jitter: 5}"]);
    let e = errors("t.yaml", &text);
    assert_eq!(
        e,
        [
            "t.yaml: document 1: links[0].rtt: 50 is missing a unit (ns, us, ms, s, m or h), e.g. \"50ms\"",
            "t.yaml: document 1: links[1].jitter: 5 is missing a unit (ns, us, ms, s, m or h), e.g. \"5ms\"",
            "t.yaml: document 1: links[1].rtt: 60 is missing a unit (ns, us, ms, s, m or h), e.g. \"60ms\"",
        ]
    );
    assert!(!e.iter().any(|e| e.contains("required field is missing")), "{e:?}");
}

#[test]
fn removed_array_elements_do_not_shift_later_indices() {
    // links[0] and links[2] cannot be read (and are cut out); links[1] and links[3] are read, and
    // their semantic problems name them as written, not as links[0] and links[1].
    let text = topology(&[
        "{between: [a, b], rtt: 50}",
        "{between: [a, c], rtt: 1ms}",
        "{between: [b, a], rtt: 1ms, bandwidth: 5}",
        "{between: [a, x], rtt: 1ms, jiter: 1ms}",
    ]);
    assert_eq!(
        errors("t.yaml", &text),
        [
            "t.yaml: document 1: links[0].rtt: 50 is missing a unit (ns, us, ms, s, m or h), e.g. \"50ms\"",
            "t.yaml: document 1: links[2].bandwidth: invalid type: integer `5`, expected a string",
            "t.yaml: document 1: links[3].jiter: unknown field (did you mean `jitter`?)",
            "t.yaml: document 1: links[1].between[1]: unknown node \"c\" (did you mean \"a\"?)",
            "t.yaml: document 1: links[3].between[1]: unknown node \"x\" (did you mean \"a\"?)",
        ]
    );
    // The same inside a Service: env[0] lacks its name, env[2] is set twice (as env[1] is).
    let text = HELLO.replace(
        "            - name: TARGET\n",
        "            - value: x\n            - name: A\n            - name: A\n            - name: TARGET\n",
    );
    assert_eq!(
        errors("s.yaml", &text),
        [
            "s.yaml: document 1 (Service default/hello): spec.template.spec.containers[0].env[0].name: required field is missing",
            "s.yaml: document 1 (Service default/hello): spec.template.spec.containers[0].env[2].name: \"A\" is set twice",
        ]
    );
}

#[test]
fn many_unknown_fields_are_all_reported() {
    let text = HELLO
        .replace("  name: hello", "  name: hello\n  lables: {}")
        .replace("  template:", "  trafic: []\n  template:")
        .replace("    spec:\n      containers:", "    spec:\n      timeoutSecond: 5\n      containers:")
        .replace("- image:", "- imagee: x\n          image:")
        .replace("containerPort: 8080", "containerPort: 8080\n              port: 8080")
        .replace("value: \"Konnichiwa\"", "valeu: \"Konnichiwa\"")
        .replace("resources:", "resources:\n            limit: {}");
    assert_eq!(
        errors("s.yaml", &text),
        [
            "s.yaml: document 1 (Service default/hello): metadata.lables: unknown field (did you mean `labels`?)",
            "s.yaml: document 1 (Service default/hello): spec.template.spec.containers[0].env[0].valeu: unknown field (did you mean `value`?)",
            "s.yaml: document 1 (Service default/hello): spec.template.spec.containers[0].imagee: unknown field (did you mean `image`?)",
            "s.yaml: document 1 (Service default/hello): spec.template.spec.containers[0].ports[0].port: unknown field; expected one of name, containerPort, protocol",
            "s.yaml: document 1 (Service default/hello): spec.template.spec.containers[0].resources.limit: unknown field (did you mean `limits`?)",
            "s.yaml: document 1 (Service default/hello): spec.template.spec.timeoutSecond: unknown field (did you mean `timeoutSeconds`?)",
            "s.yaml: document 1 (Service default/hello): spec.trafic: unknown field (did you mean `traffic`?)",
        ]
    );
    // A pathological document: the list stops, and says so.
    let fields: String = (0..150).map(|i| format!("x{i}: 1\n")).collect();
    let e = errors("t.yaml", &format!("nodes:\n  - name: a\n{fields}"));
    assert_eq!(e.len(), 101, "{e:?}");
    assert_eq!(e[100], "t.yaml: document 1: too many problems: only the first 100 are listed");
}

#[test]
fn documents_without_problems_still_load() {
    let text = format!("{HELLO}---\n{}", topology(&["{between: [a, b], rtt: 50ms, jitter: 0}"]));
    assert_eq!(parse_str("ok.yaml", &text).unwrap().len(), 2);
    let (docs, _) = load(&[("ok.yaml".into(), text)], &FleetConfig::new()).unwrap();
    assert_eq!(docs[1].document.subject(), "Topology of 2 nodes");
    // A broken document does not stop the others from being read and checked.
    let text = format!("{}---\n{HELLO}", topology(&["{between: [a, b], rtt: 50}"]));
    let text = text.replace("name: hello", "name: Hello");
    let e = errors("two.yaml", &text);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].starts_with("two.yaml: document 1: links[0].rtt: 50 is missing a unit"), "{e:?}");
    assert!(e[1].starts_with("two.yaml: document 2 (Service default/Hello): metadata.name"), "{e:?}");
}

#[test]
fn what_a_cut_value_would_have_said_is_not_held_against_the_document() {
    let only = |file: &str, text: &str, expected: &str| {
        let e = errors(file, text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains(expected), "{e:?}");
    };
    // A misspelt required field is not also "missing", and its object is not judged.
    only("s.yaml", &HELLO.replace("containerPort:", "containerport:"), "(did you mean `containerPort`?)");
    only("s.yaml", &HELLO.replace("- image:", "- imagee:"), "imagee: unknown field (did you mean `image`?)");
    // image is cut out: not "required"; nor is the sum of the traffic without a cut percent.
    let text = HELLO.replace("- image: docker.io/bonavadeur/shuka:v1.3", "- image: [x]").replace(
        "  template:",
        "  traffic:\n    - latestRevision: true\n      percent: \"100\"\n  template:",
    );
    let e = errors("s.yaml", &text);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].contains("spec.template.spec.containers[0].image: invalid type: sequence"), "{e:?}");
    assert!(e[1].contains("spec.traffic[0].percent: invalid type: string \"100\""), "{e:?}");
    // The probe is not compared with a port that was cut out (8080 would be the default port).
    let probe = "memory: 640M\n          readinessProbe:\n            tcpSocket:\n              port: 80800";
    let text = HELLO.replace("containerPort: 8080", "containerPort: 80800").replace("memory: 640M", probe);
    only("s.yaml", &text, "ports[0].containerPort: invalid value: integer `80800`, expected u16");
    // Links are not checked against a node whose name was cut out.
    only(
        "t.yaml",
        "nodes:\n  - name: a\n  - name: 7\nlinks:\n  - between: [a, \"7\"]\n    rtt: 1ms\n",
        "nodes[1].name: invalid type: integer `7`",
    );
    // A ConfigMap setting that was cut out does not make another one wrong.
    let config = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-autoscaler\ndata:\n  allow-zero-initial-scale: true\n  initial-scale: \"0\"\n  stable-window: 3s\n";
    let e = errors("c.yaml", config);
    assert_eq!(
        e,
        [
            "c.yaml: document 1 (ConfigMap config-autoscaler): data.allow-zero-initial-scale: invalid type: boolean `true`, expected a string",
            "c.yaml: document 1 (ConfigMap config-autoscaler): data.stable-window: \"3s\" out of range: must be between 6s and 1h0m0s",
        ]
    );
}
