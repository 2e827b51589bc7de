//! A controller that starts, or is upgraded, on a real cluster: its caches may take long to
//! fill or never fill (RBAC mistakes, objects an older version wrote), and it must then do
//! nothing rather than reconcile from empty caches.

mod support;

use std::sync::Arc;
use std::time::Duration;

use ikukantai_kube::crd::Placement;
use ikukantai_kube::manager::gated_reconcile;
use serde_json::json;
use support::{Harness, KSVC, ksvc};

#[tokio::test(start_paused = true)]
async fn nothing_is_reconciled_before_the_caches_have_listed_however_long_it_takes() {
    let h = Harness::new(&["node1"]);
    let svc = Arc::new(ksvc("Konnichiwa", &json!({})));
    h.api.put(KSVC, serde_json::to_value(&*svc).unwrap());
    let (synced, rx) = tokio::sync::watch::channel(false);
    // A watch that cannot list (a 403, a Placement that no longer decodes) keeps retrying.
    let waited = tokio::time::timeout(
        Duration::from_secs(3600),
        gated_reconcile(rx.clone(), svc.clone(), h.ctx.clone()),
    )
    .await;
    assert!(waited.is_err(), "still waiting after an hour");
    assert!(h.api.calls.lock().unwrap().is_empty(), "{:#?}", h.api.calls.lock().unwrap());
    // Once they have listed, it runs.
    synced.send(true).unwrap();
    gated_reconcile(rx.clone(), svc.clone(), h.ctx.clone()).await.unwrap();
    assert!(!h.api.calls.lock().unwrap().is_empty());
    // A gate whose watches ended never opens: an error, not a reconcile.
    drop(synced);
    let (dead, rx) = tokio::sync::watch::channel(false);
    drop(dead);
    assert!(gated_reconcile(rx, svc, h.ctx.clone()).await.is_err());
}

/// A Placement exactly as ikukantai 0.1.0 stored it (v1alpha1 before `status.failure`): the
/// versioning plan (docs/kubernetes.md) keeps every such object readable, or the Placement watch
/// of an upgraded controller never lists.
#[test]
fn placements_written_by_earlier_versions_still_decode() {
    let stored = json!({
        "apiVersion": "ikukantai.dev/v1alpha1", "kind": "Placement",
        "metadata": {"name": "hello-00001", "namespace": "default", "uid": "u", "resourceVersion": "7",
                     "ownerReferences": [{"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "hello",
                                          "uid": "uid-hello", "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"service": "hello", "generation": 1, "nodes": {"node3": 1},
                 "template": {"metadata": {"annotations": {"autoscaling.knative.dev/target": "10"}},
                              "spec": {"containers": [{"image": "ikukantai:0.1.0", "args": ["function", "hello"],
                                                       "ports": [{"containerPort": 8080}]}]}}},
        "status": {"ready": {"node3": 1}, "summary": "0-0-1/0-0-1", "everReady": true}
    });
    let p: Placement = serde_json::from_value(stored).expect("decodes");
    assert!(p.ever_ready() && p.failure().is_none());
    assert_eq!(p.revision().name(), "hello-00001");
}
