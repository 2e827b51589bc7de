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
