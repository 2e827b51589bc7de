//! Instance Pods through their life on a real cluster: they drain for a while after a delete
//! (Terminating, their names still taken), they end as Failed when evicted, and their nodes come
//! and go.

mod support;

use http::Method;
use ikukantai_kube::wire::Demand;
use serde_json::json;
use support::{Harness, PODS, ksvc};

/// Scales `hello` to zero: no load until the autoscaler lets its last instance go.
async fn scale_to_zero(h: &mut Harness, svc: &ikukantai_kube::crd::KnativeService, node: &str) {
    for _ in 0..60 {
        h.load(2, 0.0, node);
        h.reconcile(svc).await;
        if h.pods_by_node().is_empty() {
            return;
        }
    }
    panic!("never scaled to zero: {:?}", h.pods_by_node());
}

fn demand(node: &str) -> Demand {
    Demand {
        namespace: "default".into(),
        service: "hello".into(),
        revision: "hello-00001".into(),
        node: node.into(),
    }
}

#[tokio::test]
async fn a_request_during_the_last_instances_drain_gets_a_new_instance_at_once() {
    let mut h = Harness::new(&["node1", "node2", "node3"]);
    let svc = ksvc("Konnichiwa", &json!({}));
    h.reconcile(&svc).await;
    h.make_ready();
    let (node, first) = h.pods_by_node().into_iter().next().unwrap();
    scale_to_zero(&mut h, &svc, &node).await;
    // The old instance drains (its sidecar's notice, then in-flight requests): still there.
    let draining: Vec<String> =
        h.all_pods().iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(draining, first, "Terminating, not gone");

    // A request arrives at that node: the gateway reports demand and the controller reconciles.
    h.ctx.record_demand(&demand(&node));
    let (_, calls) = h.reconcile(&svc).await;
    let created: Vec<&str> = calls
        .iter()
        .filter(|c| c.is(&Method::POST, PODS))
        .map(|c| c.body["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(created.len(), 1, "{calls:#?}");
    assert_ne!(created[0], first[0], "the draining Pod's name is taken");
    assert_eq!(
        h.pods_by_node().get(&node).map(Vec::len),
        Some(1),
        "a live instance now, not after the drain"
    );
    h.make_ready();
    assert_eq!(h.ready_condition()["status"], "True");
}

#[tokio::test]
async fn an_evicted_instance_is_replaced_and_never_counted() {
    let mut h = Harness::new(&["node1", "node2", "node3"]);
    let svc = ksvc("Konnichiwa", &json!({"autoscaling.knative.dev/min-scale": "1"}));
    h.reconcile(&svc).await;
    h.make_ready();
    let (_, pods) = h.pods_by_node().into_iter().next().unwrap();
    // Disk pressure on an edge node: the kubelet evicts the instance; it is Failed and stays so.
    h.evict(&pods[0], "Evicted", "The node was low on resource: ephemeral-storage.");
    let (_, calls) = h.reconcile(&svc).await;
    assert!(
        calls.iter().any(|c| c.method == Method::DELETE && c.path == format!("{PODS}/{}", pods[0])),
        "the Failed Pod is deleted: {calls:#?}"
    );
    let created: Vec<&str> = calls
        .iter()
        .filter(|c| c.is(&Method::POST, PODS))
        .map(|c| c.body["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(created.len(), 1, "min-scale 1 is kept with a live instance: {calls:#?}");
    assert!(h.all_pods().iter().all(|p| p["status"]["phase"] != "Failed"), "a Failed Pod is deleted at once");
    h.make_ready();
    h.reconcile(&svc).await;
    assert_eq!(h.pods_by_node().values().map(Vec::len).sum::<usize>(), 1);
    let placement = h.placement("hello-00001");
    assert_eq!(placement["status"]["summary"].as_str().unwrap().matches('1').count(), 2, "{placement}");
}

#[tokio::test]
async fn nodes_of_a_managed_pool_each_get_their_own_instance() {
    // AKS names its pool nodes with a long shared prefix.
    let nodes = ["aks-nodepool1-12345678-vmss000000", "aks-nodepool1-12345678-vmss000001"];
    let mut h = Harness::new(&nodes);
    let svc = ksvc(
        "Konnichiwa",
        &json!({"autoscaling.knative.dev/min-scale": "2", "ikukantai.dev/placement": "spread"}),
    );
    let (_, calls) = h.reconcile(&svc).await;
    let created: Vec<&str> = calls
        .iter()
        .filter(|c| c.is(&Method::POST, PODS))
        .map(|c| c.body["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(created.len(), 2, "{calls:#?}");
    h.make_ready();
    let placed = h.pods_by_node();
    assert_eq!(placed.keys().map(String::as_str).collect::<Vec<_>>(), nodes, "one on each node: {placed:?}");
}

#[tokio::test]
async fn a_short_partition_keeps_the_nodes_instances_a_long_one_replaces_them() {
    use std::time::Duration;
    let mut h = Harness::new(&["node1", "node2", "node3"]);
    let svc = ksvc("Konnichiwa", &json!({"autoscaling.knative.dev/min-scale": "1"}));
    h.reconcile(&svc).await;
    h.make_ready();
    h.reconcile(&svc).await;
    let (edge, pods) = h.pods_by_node().into_iter().next().unwrap();
    h.partition(&edge);
    // Within the 300 s its Pods tolerate the unreachable taint, nothing moves.
    for _ in 0..4 {
        h.clock.advance(Duration::from_secs(60));
        let (_, calls) = h.reconcile(&svc).await;
        let writes: Vec<_> = calls.iter().filter(|c| c.path.starts_with(PODS)).collect();
        assert!(writes.is_empty(), "{writes:#?}");
    }
    assert_eq!(h.pods_by_node()[&edge], pods);
    // Past it, the taint manager evicts them anyway: the instance is replaced elsewhere.
    h.clock.advance(Duration::from_secs(61));
    let (_, calls) = h.reconcile(&svc).await;
    assert!(
        calls.iter().any(|c| c.method == Method::DELETE && c.path == format!("{PODS}/{}", pods[0])),
        "{calls:#?}"
    );
    let created = calls.iter().find(|c| c.is(&Method::POST, PODS)).expect("a replacement");
    assert_ne!(created.body["metadata"]["labels"]["ikukantai.dev/node"], edge.as_str());
}

#[tokio::test]
async fn a_revision_that_tolerates_unreachable_briefly_is_replaced_after_its_toleration() {
    use std::time::Duration;
    let mut h = Harness::new(&["node1", "node2"]);
    let mut svc = ksvc("Konnichiwa", &json!({"autoscaling.knative.dev/min-scale": "1"}));
    svc.spec.inner.template.spec.tolerations = Some(json!([{"key": "node.kubernetes.io/unreachable",
        "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 20}]));
    h.reconcile(&svc).await;
    h.make_ready();
    let (edge, _) = h.pods_by_node().into_iter().next().unwrap();
    h.partition(&edge);
    h.clock.advance(Duration::from_secs(10));
    let (_, calls) = h.reconcile(&svc).await;
    assert!(!calls.iter().any(|c| c.is(&Method::POST, PODS)), "{calls:#?}");
    h.clock.advance(Duration::from_secs(10));
    let (_, calls) = h.reconcile(&svc).await;
    assert!(calls.iter().any(|c| c.is(&Method::POST, PODS)), "{calls:#?}");
}

#[tokio::test]
async fn a_node_named_longer_than_a_label_value_gets_its_instances() {
    // Node names are DNS subdomains (up to 253 characters; a cloud provider may name a node by
    // its private DNS name); a label value stops at 63.
    let long = "worker-01.rack-17.edge-site-frankfurt.k8s.internal.example-corp.net";
    let mut h = Harness::new(&[]);
    let mut n = support::node(long);
    n.metadata.labels.as_mut().unwrap().insert("kubernetes.io/hostname".into(), "worker-01".into());
    h.set_node(n);
    let svc = ksvc("Konnichiwa", &json!({"autoscaling.knative.dev/min-scale": "1"}));
    h.reconcile(&svc).await;
    assert_eq!(h.pods_by_node().get(long).map(Vec::len), Some(1), "admitted: {:?}", h.all_pods());
    // Still Pending (not bound yet): counted on its node, not created again.
    let (_, calls) = h.reconcile(&svc).await;
    assert!(!calls.iter().any(|c| c.is(&Method::POST, PODS)), "{calls:#?}");
    h.make_ready();
    h.reconcile(&svc).await;
    assert_eq!(h.ready_condition()["status"], "True", "{}", h.ready_condition());
}
