//! The Pod of one instance: the user's container and the queue-proxy sidecar, pinned to a node.

use std::collections::BTreeMap;

use ikukantai_api::config::SidecarResources;
use ikukantai_api::revision::{Revision, child_name};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::{Value, json};

use crate::crd::{MANAGED_BY, MANAGED_BY_LABEL, NODE_ANNOTATION, NODE_LABEL, REVISION_LABEL};

/// Port the queue proxy serves requests on (Knative's).
pub const QUEUE_PORT: u16 = 8012;
/// Port of the queue proxy's `/metrics`, `/healthz` and `/ready`.
pub const QUEUE_ADMIN_PORT: u16 = 8022;
/// Label carrying an instance's index within its revision and node.
pub const INDEX_LABEL: &str = "ikukantai.dev/index";
/// Name of the sidecar container.
pub const QUEUE_CONTAINER: &str = "queue-proxy";
/// Name of the volume holding the sidecar's token for the controller.
pub const TOKEN_VOLUME: &str = "ikukantai-token";

/// Environment of the queue-proxy sidecar (read by `ikukantai queue-proxy`).
pub mod env {
    /// Namespace.
    pub const NAMESPACE: &str = "SERVING_NAMESPACE";
    /// Knative Service.
    pub const SERVICE: &str = "SERVING_SERVICE";
    /// Revision.
    pub const REVISION: &str = "SERVING_REVISION";
    /// Pod name (downward API).
    pub const POD: &str = "SERVING_POD";
    /// Node name (downward API).
    pub const NODE: &str = "NODE_NAME";
    /// The user container's port.
    pub const USER_PORT: &str = "USER_PORT";
    /// containerConcurrency.
    pub const CONTAINER_CONCURRENCY: &str = "CONTAINER_CONCURRENCY";
    /// Queue discipline.
    pub const QUEUE: &str = "QUEUE_DISCIPLINE";
    /// `ikukantai.dev/queue-priority-rules` text.
    pub const PRIORITY_RULES: &str = "QUEUE_PRIORITY_RULES";
    /// timeoutSeconds.
    pub const TIMEOUT: &str = "REVISION_TIMEOUT_SECONDS";
    /// responseStartTimeoutSeconds (0 = none).
    pub const RESPONSE_START_TIMEOUT: &str = "REVISION_RESPONSE_START_TIMEOUT_SECONDS";
    /// idleTimeoutSeconds (0 = none).
    pub const IDLE_TIMEOUT: &str = "REVISION_IDLE_TIMEOUT_SECONDS";
    /// The user's readiness probe as JSON (empty = TCP on the user port).
    pub const READINESS_PROBE: &str = "SERVING_READINESS_PROBE";
    /// Where to push stats.
    pub const CONTROLLER_URL: &str = "IKUKANTAI_CONTROLLER_URL";
    /// The projected token that authenticates the pushes ([`crate::auth`]).
    pub const TOKEN_FILE: &str = "IKUKANTAI_TOKEN_FILE";
    /// Serving port.
    pub const QUEUE_PORT: &str = "QUEUE_SERVING_PORT";
    /// Admin port.
    pub const ADMIN_PORT: &str = "QUEUE_ADMIN_PORT";
    /// Seconds a stopping sidecar keeps serving, unready, before it refuses new work.
    pub const DRAIN_NOTICE: &str = "QUEUE_DRAIN_NOTICE_SECONDS";
}

/// Seconds a stopping instance keeps serving while unready (see [`env::DRAIN_NOTICE`]): gateways
/// drop a Pod from their routes when the controller, seeing its deletion, republishes its
/// ServiceRoute (two watch deliveries and a write, about a second); requests they sent before
/// then still find it serving.
pub const DRAIN_NOTICE_SECONDS: u64 = 5;

/// A user's probe as the kubelet (liveness) or the sidecar (readiness) gets it. Knative lets an
/// `httpGet` or `tcpSocket` probe leave its port out, or name it (`http1`, `h2c`): both mean the
/// user's port, which the Pod names `user-port`; the Kubernetes API refuses a probe without a
/// port (422) and the kubelet cannot find one named otherwise. A port number stays as given.
fn on_user_port(probe: &ikukantai_api::service::Probe, user_port: u16) -> Value {
    let mut v = json!(probe);
    for action in ["httpGet", "tcpSocket"] {
        if let Some(a) = v.get_mut(action).and_then(Value::as_object_mut) {
            let numbered = a.get("port").and_then(Value::as_u64).is_some_and(|p| p > 0);
            if !numbered {
                a.insert("port".into(), json!(user_port));
            }
        }
    }
    v
}

/// What the Pod of an instance is made of besides the revision.
#[derive(Debug, Clone)]
pub struct PodParams<'a> {
    /// Knative Service name.
    pub service: &'a str,
    /// Node to pin to.
    pub node: &'a str,
    /// Index of the instance within its revision and node.
    pub index: u32,
    /// Queue discipline resolved for the revision.
    pub queue: &'a str,
    /// Image of the sidecar.
    pub queue_proxy_image: &'a str,
    /// The sidecar's requests and limits (`config-ikukantai`'s `queue-sidecar-*`).
    pub sidecar: &'a SidecarResources,
    /// Controller URL for the sidecar's stats.
    pub controller_url: &'a str,
    /// The Placement that owns the Pod.
    pub owner: OwnerReference,
}

/// The name of instance `index` of `revision` on `node` (deterministic, so a retried create
/// cannot make a second one).
pub fn pod_name(revision: &str, node: &str, index: u32) -> String {
    child_name(revision, &format!("-{}-{index}", short_node(node)))
}

/// A node's part of a Pod name: the name itself when it is a short DNS label (kind's
/// `ikukantai-worker2`, `node3`), else a short prefix and a hash of the whole name. Managed pools
/// name nodes with a long shared prefix (AKS `aks-nodepool1-12345678-vmss000000`, GKE
/// `gke-cluster-default-pool-1a2b3c4d-xyz1`): cut alone, their instances would share names.
fn short_node(node: &str) -> String {
    const WHOLE: usize = 20;
    const PREFIX: usize = 11;
    let label = node.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if node.len() <= WHOLE && label {
        return node.to_owned();
    }
    // FNV-1a: stable across releases and processes, unlike std's hasher.
    let hash = node.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    let prefix: String = node.chars().take(PREFIX).map(|c| if c == '.' { '-' } else { c }).collect();
    format!("{}-{hash:08x}", prefix.trim_end_matches('-'))
}

/// The longest label value the API server accepts. Node names are DNS subdomains (up to 253
/// characters): a longer one is labelled by its short form (as in Pod names) and annotated in
/// full ([`NODE_ANNOTATION`]); a label value too long would make every create fail (422).
const MAX_LABEL_VALUE: usize = 63;

/// The Pod's `Ready` condition is `True`.
pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Labels selecting the Pods of one revision.
pub fn revision_labels(revision: &Revision) -> BTreeMap<String, String> {
    let mut labels = revision.metadata.labels.clone();
    labels.insert(REVISION_LABEL.into(), revision.name().to_owned());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels
}

/// Builds the Pod. Fails when a pass-through field (volumes, tolerations, …) does not have the
/// shape Kubernetes expects; the message names the field.
pub fn build_pod(revision: &Revision, p: &PodParams<'_>) -> Result<Pod, String> {
    let spec = &revision.spec;
    let container = spec.container().cloned().unwrap_or_default();
    let ns = revision.metadata.namespace();
    let name = pod_name(revision.name(), p.node, p.index);
    let mut labels = revision_labels(revision);
    let node_label = if p.node.len() <= MAX_LABEL_VALUE { p.node.to_owned() } else { short_node(p.node) };
    labels.insert(NODE_LABEL.into(), node_label);
    let mut annotations = revision.metadata.annotations.clone();
    annotations.insert(NODE_ANNOTATION.into(), p.node.to_owned());
    labels.insert(INDEX_LABEL.into(), p.index.to_string());
    let user_port = container.port();

    let field_ref = |path: &str| json!({ "valueFrom": { "fieldRef": { "fieldPath": path } } });
    let mut user_env: Vec<Value> = container
        .env
        .iter()
        .map(|e| {
            let mut v = json!({ "name": e.name });
            if let Some(value) = &e.value {
                v["value"] = json!(value);
            }
            if let Some(from) = &e.value_from {
                v["valueFrom"] = from.clone();
            }
            v
        })
        .collect();
    for (k, v) in [
        ("PORT", user_port.to_string()),
        ("K_SERVICE", p.service.to_owned()),
        ("K_CONFIGURATION", p.service.to_owned()),
        ("K_REVISION", revision.name().to_owned()),
    ] {
        user_env.push(json!({ "name": k, "value": v }));
    }
    for (k, path) in [("NODENAME", "spec.nodeName"), ("PODNAME", "metadata.name")] {
        let mut v = field_ref(path);
        v["name"] = json!(k);
        user_env.push(v);
    }
    let mut user = json!({
        "name": container.name.clone().unwrap_or_else(|| "user-container".into()),
        "image": container.image,
        "env": user_env,
        "ports": [{ "name": "user-port", "containerPort": user_port, "protocol": "TCP" }],
        // Told to stop only once the sidecar has finished the requests in flight (the kubelet
        // signals every container of a Pod at once; an instance that exits at SIGTERM would
        // otherwise fail the requests its sidecar is finishing). Knative does the same.
        "lifecycle": { "preStop": { "httpGet": { "path": "/wait-for-drain", "port": QUEUE_ADMIN_PORT } } },
    });
    let set = |obj: &mut Value, key: &str, value: Option<Value>| {
        if let Some(v) = value {
            obj[key] = v;
        }
    };
    set(&mut user, "command", (!container.command.is_empty()).then(|| json!(container.command)));
    set(&mut user, "args", (!container.args.is_empty()).then(|| json!(container.args)));
    set(&mut user, "workingDir", container.working_dir.as_ref().map(|w| json!(w)));
    set(&mut user, "envFrom", container.env_from.clone());
    set(&mut user, "resources", container.resources.as_ref().map(|r| json!(r)));
    set(&mut user, "livenessProbe", container.liveness_probe.as_ref().map(|r| on_user_port(r, user_port)));
    set(&mut user, "imagePullPolicy", container.image_pull_policy.as_ref().map(|r| json!(r)));
    set(&mut user, "securityContext", container.security_context.clone());
    set(&mut user, "volumeMounts", container.volume_mounts.clone());
    set(&mut user, "terminationMessagePath", container.termination_message_path.as_ref().map(|r| json!(r)));
    set(
        &mut user,
        "terminationMessagePolicy",
        container.termination_message_policy.as_ref().map(|r| json!(r)),
    );

    let secs = |s: Option<u64>| s.unwrap_or(0).to_string();
    let probe = container
        .readiness_probe
        .as_ref()
        .map(|r| on_user_port(r, user_port).to_string())
        .unwrap_or_default();
    let priority_rules = revision
        .metadata
        .annotations
        .get(ikukantai_api::annotations::PRIORITY_RULES_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    let mut qp_env: Vec<Value> = [
        (env::NAMESPACE, ns.to_owned()),
        (env::SERVICE, p.service.to_owned()),
        (env::REVISION, revision.name().to_owned()),
        (env::USER_PORT, user_port.to_string()),
        (env::CONTAINER_CONCURRENCY, spec.container_concurrency().to_string()),
        (env::QUEUE, p.queue.to_owned()),
        (env::PRIORITY_RULES, priority_rules),
        (env::TIMEOUT, spec.timeout_seconds().to_string()),
        (env::RESPONSE_START_TIMEOUT, secs(spec.response_start_timeout_seconds)),
        (env::IDLE_TIMEOUT, secs(spec.idle_timeout_seconds)),
        (env::READINESS_PROBE, probe),
        (env::CONTROLLER_URL, p.controller_url.to_owned()),
        (env::TOKEN_FILE, crate::auth::TOKEN_FILE.to_owned()),
        (env::QUEUE_PORT, QUEUE_PORT.to_string()),
        (env::ADMIN_PORT, QUEUE_ADMIN_PORT.to_string()),
        (env::DRAIN_NOTICE, DRAIN_NOTICE_SECONDS.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| json!({ "name": k, "value": v }))
    .collect();
    for (k, path) in [(env::POD, "metadata.name"), (env::NODE, "spec.nodeName")] {
        let mut v = field_ref(path);
        v["name"] = json!(k);
        qp_env.push(v);
    }
    let queue_proxy = json!({
        "name": QUEUE_CONTAINER,
        "image": p.queue_proxy_image,
        "args": ["queue-proxy"],
        "env": qp_env,
        "ports": [
            { "name": "http", "containerPort": QUEUE_PORT, "protocol": "TCP" },
            { "name": "admin", "containerPort": QUEUE_ADMIN_PORT, "protocol": "TCP" }
        ],
        "readinessProbe": { "httpGet": { "path": "/ready", "port": QUEUE_ADMIN_PORT }, "periodSeconds": 1, "failureThreshold": 1 },
        // Its token for the controller only: the user's container does not mount it.
        "volumeMounts": [{ "name": TOKEN_VOLUME, "mountPath": crate::auth::TOKEN_DIR, "readOnly": true }],
        // Limits too: a ResourceQuota over limits.* refuses a Pod with a container that has none.
        "resources": {
            "requests": { "cpu": p.sidecar.cpu_request, "memory": p.sidecar.memory_request },
            "limits": { "cpu": p.sidecar.cpu_limit, "memory": p.sidecar.memory_limit }
        },
        // Everything Pod Security `restricted` asks of a container, so the sidecar never is
        // the reason a namespace refuses the Pod.
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": { "drop": ["ALL"] },
            "seccompProfile": { "type": "RuntimeDefault" }
        }
    });

    // Pinned the way DaemonSets pin: a required node affinity on the node's name, so the
    // scheduler still checks resources and taints. The user's required terms stay, each with
    // the pin added (terms are ORed, a term's requirements ANDed); other affinity stays as is.
    let mut affinity = spec.affinity.clone().filter(Value::is_object).unwrap_or_else(|| json!({}));
    let pin = json!({ "key": "metadata.name", "operator": "In", "values": [p.node] });
    let user_terms: Vec<Value> = affinity
        .pointer("/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let terms: Vec<Value> = if user_terms.is_empty() {
        vec![json!({ "matchFields": [pin] })]
    } else {
        user_terms
            .into_iter()
            .map(|mut t| {
                let fields = t.get("matchFields").and_then(Value::as_array).cloned().unwrap_or_default();
                t["matchFields"] = json!(fields.into_iter().chain([pin.clone()]).collect::<Vec<_>>());
                t
            })
            .collect()
    };
    let node_affinity = affinity["nodeAffinity"].as_object().cloned().unwrap_or_default();
    affinity["nodeAffinity"] = Value::Object(node_affinity);
    affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] =
        json!({ "nodeSelectorTerms": terms });
    let mut pod_spec = json!({
        "containers": [user, queue_proxy],
        "affinity": affinity,
        "enableServiceLinks": spec.enable_service_links.unwrap_or(false),
        // The notice, the longest request, and room to exit.
        "terminationGracePeriodSeconds": DRAIN_NOTICE_SECONDS + spec.timeout_seconds() + 10,
    });
    set(&mut pod_spec, "serviceAccountName", spec.service_account_name.as_ref().map(|r| json!(r)));
    // The API token only for a revision that names its service account (it means to call the
    // API); the sidecar's own token, for the controller's audience alone, is projected anyway.
    pod_spec["automountServiceAccountToken"] = json!(spec.service_account_name.is_some());
    set(&mut pod_spec, "imagePullSecrets", spec.image_pull_secrets.clone());
    let token = json!({ "name": TOKEN_VOLUME, "projected": { "sources": [{ "serviceAccountToken": {
        "audience": crate::auth::AUDIENCE, "expirationSeconds": crate::auth::TOKEN_SECONDS, "path": "token" } }] } });
    let volumes: Vec<Value> = spec.volumes.as_ref().and_then(Value::as_array).cloned().unwrap_or_default();
    if spec.volumes.as_ref().is_some_and(|v| !v.is_array()) {
        // Named by the deserialization below.
        set(&mut pod_spec, "volumes", spec.volumes.clone());
    } else {
        pod_spec["volumes"] = json!(volumes.into_iter().chain([token]).collect::<Vec<_>>());
    }
    set(&mut pod_spec, "nodeSelector", spec.node_selector.as_ref().map(|r| json!(r)));
    set(&mut pod_spec, "tolerations", spec.tolerations.clone());
    set(&mut pod_spec, "securityContext", spec.security_context.clone());
    set(&mut pod_spec, "runtimeClassName", spec.runtime_class_name.as_ref().map(|r| json!(r)));
    set(&mut pod_spec, "priorityClassName", spec.priority_class_name.as_ref().map(|r| json!(r)));

    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [p.owner],
        },
        "spec": pod_spec,
    });
    serde_path_to_error::deserialize(pod)
        .map_err(|e| format!("spec.template.spec: {}: {}", e.path(), e.inner()))
}

#[cfg(test)]
mod tests {
    use ikukantai_api::revision::next_revision;
    use ikukantai_api::service::Service;

    use super::*;

    fn revision(extra: &str) -> Revision {
        let text = format!(
            r#"{{"apiVersion":"serving.knative.dev/v1","kind":"Service","metadata":{{"name":"hello","namespace":"demo"}},
            "spec":{{"template":{{"metadata":{{"annotations":{{"ikukantai.dev/queue-priority-rules":"header:x-priority"}}}},
            "spec":{{"containerConcurrency":2,"containers":[{{"image":"hello:1","env":[{{"name":"TARGET","value":"x"}}],
            "readinessProbe":{{"httpGet":{{"path":"/ready"}}}}}}]{extra}}}}}}}}}"#
        );
        let svc: Service = serde_json::from_str(&text).unwrap();
        next_revision(&svc, &[]).unwrap()
    }

    static SIDECAR: std::sync::LazyLock<SidecarResources> =
        std::sync::LazyLock::new(SidecarResources::default);

    fn params() -> PodParams<'static> {
        PodParams {
            service: "hello",
            node: "node3",
            index: 0,
            queue: "priority",
            queue_proxy_image: "ikukantai:test",
            sidecar: &SIDECAR,
            controller_url: "http://ctl:9090",
            owner: OwnerReference {
                api_version: "ikukantai.dev/v1alpha1".into(),
                kind: "Placement".into(),
                name: "hello-00001".into(),
                uid: "u1".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
        }
    }

    fn env_of(pod: &Pod, container: usize, name: &str) -> Option<String> {
        let c = &pod.spec.as_ref().unwrap().containers[container];
        c.env.as_ref()?.iter().find(|e| e.name == name)?.value.clone()
    }

    #[test]
    fn pod_is_pinned_labelled_owned_and_carries_the_sidecar() {
        let pod = build_pod(&revision(""), &params()).unwrap();
        let v = serde_json::to_value(&pod).unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("hello-00001-node3-0"));
        assert_eq!(v["metadata"]["labels"][REVISION_LABEL], "hello-00001");
        assert_eq!(v["metadata"]["labels"][NODE_LABEL], "node3");
        assert_eq!(v["metadata"]["labels"]["serving.knative.dev/service"], "hello");
        assert_eq!(v["metadata"]["ownerReferences"][0]["kind"], "Placement");
        let term = &v["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchFields"][0];
        assert_eq!(term["values"][0], "node3");
        assert_eq!(env_of(&pod, 0, "TARGET").as_deref(), Some("x"));
        assert_eq!(env_of(&pod, 0, "K_REVISION").as_deref(), Some("hello-00001"));
        assert_eq!(env_of(&pod, 1, env::CONTAINER_CONCURRENCY).as_deref(), Some("2"));
        assert_eq!(env_of(&pod, 1, env::QUEUE).as_deref(), Some("priority"));
        assert_eq!(env_of(&pod, 1, env::PRIORITY_RULES).as_deref(), Some("header:x-priority"));
        assert!(env_of(&pod, 1, env::READINESS_PROBE).unwrap().contains("/ready"));
        // The user's readiness probe moved into the sidecar, like Knative does.
        assert!(pod.spec.as_ref().unwrap().containers[0].readiness_probe.is_none());
        assert_eq!(pod.spec.as_ref().unwrap().containers[1].image.as_deref(), Some("ikukantai:test"));
        // Stopping: the instance waits for its sidecar's drain, which has time for it all.
        let hook = &v["spec"]["containers"][0]["lifecycle"]["preStop"]["httpGet"];
        assert_eq!((hook["path"].as_str(), hook["port"].as_u64()), (Some("/wait-for-drain"), Some(8022)));
        assert_eq!(env_of(&pod, 1, env::DRAIN_NOTICE).as_deref(), Some("5"));
        let timeout: u64 = env_of(&pod, 1, env::TIMEOUT).unwrap().parse().unwrap();
        assert_eq!(v["spec"]["terminationGracePeriodSeconds"], DRAIN_NOTICE_SECONDS + timeout + 10);
    }

    #[test]
    fn probes_without_a_port_or_with_a_knative_port_name_target_the_user_port() {
        let probes = r#""livenessProbe":{"httpGet":{"path":"/healthz"}},"readinessProbe":{"tcpSocket":{"port":"h2c"}},"ports":[{"name":"h2c","containerPort":9000}]"#;
        let text = format!(
            r#"{{"apiVersion":"serving.knative.dev/v1","kind":"Service","metadata":{{"name":"hello","namespace":"demo"}},
            "spec":{{"template":{{"spec":{{"containers":[{{"image":"hello:1",{probes}}}]}}}}}}}}"#
        );
        let svc: Service = serde_json::from_str(&text).unwrap();
        let pod = build_pod(&next_revision(&svc, &[]).unwrap(), &params()).unwrap();
        let v = serde_json::to_value(&pod).unwrap();
        assert_eq!(v["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"], 9000);
        let readiness: Value = serde_json::from_str(&env_of(&pod, 1, env::READINESS_PROBE).unwrap()).unwrap();
        assert_eq!(readiness["tcpSocket"]["port"], 9000);
    }

    #[test]
    fn the_users_node_affinity_stays_with_the_pin_added_to_each_term() {
        let affinity = r#","affinity":{"nodeAffinity":{
            "requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[
                {"matchExpressions":[{"key":"zone","operator":"In","values":["edge-a"]}]},
                {"matchExpressions":[{"key":"kubernetes.io/arch","operator":"In","values":["arm64"]}]}]},
            "preferredDuringSchedulingIgnoredDuringExecution":[{"weight":1,"preference":{"matchExpressions":[{"key":"ssd","operator":"Exists"}]}}]},
            "podAntiAffinity":{"preferredDuringSchedulingIgnoredDuringExecution":[]}}"#;
        let v = serde_json::to_value(build_pod(&revision(affinity), &params()).unwrap()).unwrap();
        let node = &v["spec"]["affinity"]["nodeAffinity"];
        let terms =
            node["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"].as_array().unwrap();
        assert_eq!(terms.len(), 2);
        for t in terms {
            assert_eq!(t["matchExpressions"].as_array().unwrap().len(), 1, "{t}");
            assert_eq!(t["matchFields"][0]["values"][0], "node3", "{t}");
        }
        assert_eq!(node["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"], 1);
        assert!(v["spec"]["affinity"]["podAntiAffinity"].is_object());
    }

    #[test]
    fn only_the_sidecar_gets_a_token_and_only_for_the_controller() {
        let v = serde_json::to_value(
            build_pod(&revision(r#","volumes":[{"name":"config","configMap":{"name":"c"}}]"#), &params())
                .unwrap(),
        )
        .unwrap();
        let spec = &v["spec"];
        assert_eq!(
            spec["automountServiceAccountToken"], false,
            "no API token for a revision without a service account"
        );
        let volumes = spec["volumes"].as_array().unwrap();
        assert_eq!(volumes[0]["name"], "config", "the user's volumes stay");
        let token = &volumes[1]["projected"]["sources"][0]["serviceAccountToken"];
        assert_eq!(token["audience"], crate::auth::AUDIENCE);
        assert!(spec["containers"][0]["volumeMounts"].is_null(), "the user's container does not mount it");
        assert_eq!(spec["containers"][1]["volumeMounts"][0]["mountPath"], crate::auth::TOKEN_DIR);
        let with_account = serde_json::to_value(
            build_pod(&revision(r#","serviceAccountName":"reader""#), &params()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            with_account["spec"]["automountServiceAccountToken"], true,
            "it names one: it wants the API"
        );
    }

    #[test]
    fn a_malformed_pass_through_field_is_named() {
        let err = build_pod(&revision(r#","tolerations":{"key":"x"}"#), &params()).unwrap_err();
        assert!(err.contains("spec.tolerations"), "{err}");
    }

    #[test]
    fn nodes_of_one_pool_give_distinct_names() {
        // AKS and GKE pool nodes share their first 20 characters and more.
        let aks = ["aks-nodepool1-12345678-vmss000000", "aks-nodepool1-12345678-vmss000001"];
        let gke = ["gke-edge-default-pool-1a2b3c4d-xk2p", "gke-edge-default-pool-1a2b3c4d-q9zt"];
        for [a, b] in [aks, gke] {
            let (x, y) = (pod_name("hello-00001", a, 0), pod_name("hello-00001", b, 0));
            assert_ne!(x, y);
            assert!(x.len() <= 63 && y.len() <= 63, "{x} {y}");
        }
        // Short names stay readable, as in the original's `hello-00001-node3-0`.
        assert_eq!(pod_name("hello-00001", "node3", 0), "hello-00001-node3-0");
        assert_eq!(pod_name("hello-00001", "ikukantai-worker2", 1), "hello-00001-ikukantai-worker2-1");
        // A dotted name is never confused with its dashed twin.
        assert_ne!(pod_name("r-00001", "a.b", 0), pod_name("r-00001", "a-b", 0));
    }

    #[test]
    fn long_names_stay_within_limits() {
        let name = pod_name(&"r".repeat(60), "a-very-long-node-name.example.internal", 12);
        assert!(name.len() <= 63, "{name}");
        assert!(name.ends_with("-12"));
        let long = "worker-01.rack-17.edge-site-frankfurt.k8s.internal.example-corp.net";
        let pod = build_pod(&revision(""), &PodParams { node: long, ..params() }).unwrap();
        let meta = &pod.metadata;
        let label = &meta.labels.as_ref().unwrap()[NODE_LABEL];
        assert!(label.len() <= MAX_LABEL_VALUE && label.starts_with("worker-01"), "{label}");
        assert_eq!(meta.annotations.as_ref().unwrap()[NODE_ANNOTATION], long);
    }
}
