//! Where instances may go: the revision's own scheduling constraints (node selector, required
//! node affinity) and what the scheduler finds when it tries.

mod support;

use http::Method;
use serde_json::json;
use support::{Call, Harness, PODS, ksvc, node};

fn created(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.is(&Method::POST, PODS))
        .map(|c| c.body["metadata"]["labels"]["ikukantai.dev/node"].as_str().unwrap().to_owned())
        .collect()
}

/// node2 is the only arm64 node of three.
fn mixed_edge() -> Harness {
    let mut h = Harness::new(&["node1", "node2", "node3"]);
    let mut arm = node("node2");
    arm.metadata.labels.as_mut().unwrap().insert("kubernetes.io/arch".into(), "arm64".into());
    h.set_node(arm);
    h
}

#[tokio::test]
async fn a_node_selector_keeps_instances_on_matching_nodes_wherever_the_load_enters() {
    let mut h = mixed_edge();
    let mut svc = ksvc("Konnichiwa", &json!({"autoscaling.knative.dev/target": "10"}));
    svc.spec.inner.template.spec.node_selector =
        Some([("kubernetes.io/arch".to_owned(), "arm64".to_owned())].into());
    let (_, calls) = h.reconcile(&svc).await;
    assert_eq!(created(&calls), ["node2"]);
    h.make_ready();
    // Load enters at an amd64 node: the nearest node it may use is node2.
    h.load(10, 30.0, "node1");
    let (_, calls) = h.reconcile(&svc).await;
    let placed = created(&calls);
    assert!(!placed.is_empty() && placed.iter().all(|n| n == "node2"), "{placed:?}");
    h.make_ready();
    let unready = h.pods_where(|p| p["status"]["conditions"][1]["status"] != "True");
    assert!(unready.is_empty(), "every instance is scheduled and ready: {unready:?}");
}

#[tokio::test]
async fn required_node_affinity_is_honoured_and_kept_on_the_pod() {
    let mut h = mixed_edge();
    let mut svc = ksvc(
        "Konnichiwa",
        &json!({"autoscaling.knative.dev/min-scale": "2", "ikukantai.dev/placement": "spread"}),
    );
    svc.spec.inner.template.spec.affinity = Some(
        json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
        {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "NotIn", "values": ["arm64"]}]}]}}}),
    );
    let (_, calls) = h.reconcile(&svc).await;
    let mut placed = created(&calls);
    placed.sort();
    assert_eq!(placed, ["node1", "node3"]);
    let pod = calls.iter().find(|c| c.is(&Method::POST, PODS)).unwrap();
    let term = &pod.body["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0];
    assert_eq!(term["matchExpressions"][0]["operator"], "NotIn", "the user's requirement stays: {term}");
    h.make_ready();
    assert!(h.pods_where(|p| p["status"]["phase"] != "Running").is_empty());
}

#[tokio::test]
async fn an_instance_the_scheduler_cannot_fit_is_placed_on_another_node() {
    let mut h = Harness::new(&["node1", "node2", "node3"]);
    let svc = ksvc("Konnichiwa", &json!({"autoscaling.knative.dev/min-scale": "1"}));
    h.reconcile(&svc).await;
    let (full, pods) = h.pods_by_node().into_iter().next().unwrap();
    h.full.insert(full.clone());
    h.make_ready();
    let (_, calls) = h.reconcile(&svc).await;
    assert!(
        calls.iter().any(|c| c.method == Method::DELETE && c.path == format!("{PODS}/{}", pods[0])),
        "{calls:#?}"
    );
    let placed = created(&calls);
    assert_eq!(placed.len(), 1, "{calls:#?}");
    assert_ne!(placed[0], full);
    h.make_ready();
    // For a while the full node gets none of the revision's new instances, even with load there.
    h.load(10, 30.0, &full);
    let (_, calls) = h.reconcile(&svc).await;
    assert!(created(&calls).iter().all(|n| *n != full), "{calls:#?}");
    h.make_ready();
    let pending = h.pods_where(|p| p["status"]["phase"] != "Running");
    assert!(pending.is_empty(), "{pending:?}");
}
