//! The Kubernetes Service named like a Knative Service: created when nobody has that name, never
//! taken from whoever has it (Knative's "NotOwned").

mod support;

use http::Method;
use serde_json::json;
use support::{Harness, SERVICES, ksvc};

#[tokio::test]
async fn an_existing_service_of_that_name_is_left_alone_and_the_route_is_not_ready() {
    let mut h = Harness::new(&["node1"]);
    // The namespace already runs a ClusterIP Service `hello` of its own.
    let theirs = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "hello", "namespace": "default", "labels": {"app": "legacy-hello"}},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.42", "selector": {"app": "legacy-hello"},
                 "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}});
    h.api.put(&format!("{SERVICES}/hello"), theirs);
    let before = h.api.get(&format!("{SERVICES}/hello")).unwrap();
    let svc = ksvc("Konnichiwa", &json!({}));
    let (_, calls) = h.reconcile(&svc).await;
    let writes: Vec<_> =
        calls.iter().filter(|c| c.path.starts_with(SERVICES) && c.method != Method::GET).collect();
    assert!(writes.is_empty(), "{writes:#?}");
    assert_eq!(
        h.api.get(&format!("{SERVICES}/hello")).unwrap(),
        before,
        "untouched, and not owned by the ksvc"
    );
    h.make_ready();
    h.reconcile(&h.stored_ksvc()).await;
    for type_ in ["Ready", "RoutesReady"] {
        let c = h.condition(type_);
        assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("False"), Some("NotOwned")), "{c}");
        assert!(c["message"].as_str().unwrap().contains("existing placeholder Service \"hello\""), "{c}");
    }
    // Deleting the Knative Service does not take theirs along.
    h.api.delete_object(support::KSVC);
    h.api.garbage_collect();
    assert!(h.api.get(&format!("{SERVICES}/hello")).is_some());
}

#[tokio::test]
async fn once_the_name_is_free_the_route_is_created_and_ready() {
    let mut h = Harness::new(&["node1"]);
    h.api.put(
        &format!("{SERVICES}/hello"),
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "hello", "namespace": "default"}, "spec": {"type": "ClusterIP"}}),
    );
    let svc = ksvc("Konnichiwa", &json!({}));
    h.reconcile(&svc).await;
    h.make_ready();
    assert!(h.api.delete_object(&format!("{SERVICES}/hello")));
    let (_, calls) = h.reconcile(&h.stored_ksvc()).await;
    assert!(calls.iter().any(|c| c.is(&Method::POST, SERVICES)), "{calls:#?}");
    let ours = h.api.get(&format!("{SERVICES}/hello")).unwrap();
    assert_eq!(ours["spec"]["type"], "ExternalName");
    assert_eq!(h.ready_condition()["status"], "True", "{}", h.ready_condition());
    // Its own Service is kept in step later without being looked up again each time.
    let (_, calls) = h.reconcile(&h.stored_ksvc()).await;
    assert!(calls.iter().all(|c| !c.path.starts_with(SERVICES)), "{calls:#?}");
}
