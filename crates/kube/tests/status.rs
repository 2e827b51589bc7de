//! The Service's status means what Knative's means to `kn`, `kubectl wait` and Argo CD: Ready
//! only with a ready revision, False (not Unknown for ever) once a revision cannot become
//! ready, and conditions stamped with when their status last changed.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Harness, ksvc};

#[tokio::test]
async fn a_revision_that_never_gets_ready_fails_at_its_progress_deadline() {
    let mut h = Harness::new(&["node1"]);
    let svc = ksvc("Konnichiwa", &json!({"autoscaling.knative.dev/min-scale": "1"}));
    h.reconcile(&svc).await;
    // Its Pod never starts (a volume that never mounts, an image that takes for ever): no error
    // from the Pod itself, only no progress.
    for _ in 0..9 {
        h.clock.advance(Duration::from_secs(60));
        h.reconcile(&h.stored_ksvc()).await;
        assert_eq!(h.ready_condition()["status"], "Unknown", "{}", h.ready_condition());
    }
    h.clock.advance(Duration::from_secs(60));
    h.reconcile(&h.stored_ksvc()).await;
    let ready = h.ready_condition();
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("RevisionFailed")),
        "{ready}"
    );
    assert!(
        ready["message"].as_str().unwrap().contains("ProgressDeadlineExceeded: not ready within 10m"),
        "{ready}"
    );
}

#[tokio::test]
async fn the_progress_deadline_annotation_shortens_it() {
    let mut h = Harness::new(&["node1"]);
    let svc = ksvc(
        "Konnichiwa",
        &json!({"autoscaling.knative.dev/min-scale": "1", "serving.knative.dev/progress-deadline": "30s"}),
    );
    h.reconcile(&svc).await;
    h.clock.advance(Duration::from_secs(30));
    h.reconcile(&h.stored_ksvc()).await;
    assert_eq!(h.ready_condition()["status"], "False", "{}", h.ready_condition());
}

#[tokio::test]
async fn conditions_carry_the_time_their_status_last_changed() {
    let mut h = Harness::new(&["node1"]);
    let svc = ksvc("Konnichiwa", &json!({}));
    h.reconcile(&svc).await;
    let started = h.clock.rfc3339();
    let ready = h.ready_condition();
    assert_eq!(
        (ready["status"].as_str(), ready["lastTransitionTime"].as_str()),
        (Some("Unknown"), Some(started.as_str()))
    );
    // Still deploying later: the time stays, and there is nothing to write.
    h.clock.advance(Duration::from_secs(5));
    h.reconcile(&h.stored_ksvc()).await;
    assert_eq!(h.ready_condition()["lastTransitionTime"], started.as_str());
    // Ready: the time moves on.
    h.make_ready();
    h.clock.advance(Duration::from_secs(3));
    h.reconcile(&h.stored_ksvc()).await;
    let ready = h.ready_condition();
    assert_eq!(ready["status"], "True");
    assert_eq!(ready["lastTransitionTime"], h.clock.rfc3339().as_str());
    let (_, calls) = h.reconcile(&h.stored_ksvc()).await;
    assert!(calls.is_empty(), "steady: {calls:#?}");
}
