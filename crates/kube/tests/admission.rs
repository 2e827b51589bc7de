//! Pod creates the API server refuses, the way it refuses them: Pod Security admission, a
//! ResourceQuota over limits, validation of probes. The instance Pods must pass where the
//! user's container does, and a refusal must show in the Service's status, not loop unseen.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use ikukantai_kube::controller::error_policy;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use support::api::NamespacePolicy;
use support::psa::Level;
use support::{Harness, PODS, ksvc};

/// A user container that meets Pod Security `restricted`.
fn restricted_container() -> Value {
    json!({"runAsNonRoot": true, "allowPrivilegeEscalation": false,
           "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}})
}

fn with_container(f: impl FnOnce(&mut Value)) -> ikukantai_kube::crd::KnativeService {
    let mut v =
        serde_json::to_value(ksvc("Konnichiwa", &json!({"autoscaling.knative.dev/min-scale": "1"}))).unwrap();
    f(&mut v["spec"]["template"]["spec"]["containers"][0]);
    serde_json::from_value(v).unwrap()
}

fn created(calls: &[support::Call]) -> usize {
    calls.iter().filter(|c| c.is(&Method::POST, PODS)).count()
}

#[tokio::test]
async fn a_restricted_namespace_admits_the_instance_when_the_user_container_complies() {
    let mut h = Harness::new(&["node1", "node2"]);
    h.api.set_policy(
        "default",
        NamespacePolicy { pod_security: Some(Level::Restricted), ..Default::default() },
    );
    let svc = with_container(|c| c["securityContext"] = restricted_container());
    h.reconcile(&svc).await;
    assert_eq!(h.pods_by_node().values().map(Vec::len).sum::<usize>(), 1, "the sidecar passes too");
    h.make_ready();
    h.reconcile(&svc).await;
    assert_eq!(h.ready_condition()["status"], "True", "{}", h.ready_condition());
}

#[tokio::test]
async fn a_refused_instance_fails_the_revision_with_the_api_servers_message_and_backs_off() {
    let mut h = Harness::new(&["node1", "node2"]);
    h.api.set_policy(
        "default",
        NamespacePolicy { pod_security: Some(Level::Restricted), ..Default::default() },
    );
    // The user's container runs as whoever its image says: restricted refuses that.
    let svc = with_container(|_| {});
    let (action, calls) = h.reconcile(&svc).await;
    assert_eq!(created(&calls), 1);
    assert_ne!(action, Action::await_change());
    let ready = h.ready_condition();
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("RevisionFailed")),
        "{ready}"
    );
    let message = ready["message"].as_str().unwrap();
    assert!(message.contains("violates PodSecurity \"restricted:latest\""), "{message}");
    assert!(
        message.contains("user-container") && !message.contains("queue-proxy"),
        "only the user's part: {message}"
    );
    // Not asked again at once, but again after a backoff that grows.
    let (_, calls) = h.reconcile(&svc).await;
    assert_eq!(created(&calls), 0, "{calls:#?}");
    h.clock.advance(Duration::from_secs(3));
    let (_, calls) = h.reconcile(&svc).await;
    assert_eq!(created(&calls), 1, "retried after 2 s");
    h.clock.advance(Duration::from_secs(3));
    let (_, calls) = h.reconcile(&svc).await;
    assert_eq!(created(&calls), 0, "the second backoff is 4 s");
    // The namespace is relaxed: the next attempt succeeds and the revision becomes ready.
    h.api.set_policy("default", NamespacePolicy::default());
    h.clock.advance(Duration::from_secs(2));
    h.reconcile(&svc).await;
    h.make_ready();
    h.reconcile(&svc).await;
    assert_eq!(h.ready_condition()["status"], "True", "{}", h.ready_condition());
}

#[tokio::test]
async fn a_quota_over_limits_admits_the_instance_when_the_user_container_sets_them() {
    let mut h = Harness::new(&["node1"]);
    h.api
        .set_policy("default", NamespacePolicy { quota_limits: vec!["cpu", "memory"], ..Default::default() });
    let svc = with_container(|c| c["resources"] = json!({"limits": {"cpu": "500m", "memory": "128Mi"}}));
    let (_, calls) = h.reconcile(&svc).await;
    assert_eq!(created(&calls), 1);
    assert_eq!(h.pods_by_node().values().map(Vec::len).sum::<usize>(), 1, "the sidecar sets its limits");
}

#[tokio::test]
async fn a_limit_range_that_refuses_the_sidecars_defaults_is_met_by_configuring_them() {
    let mut h = Harness::new(&["node1"]);
    // Multi-tenant namespaces often cap how far a limit may exceed its request.
    h.api.set_policy("default", NamespacePolicy { cpu_limit_request_ratio: Some(4), ..Default::default() });
    let svc = with_container(|_| {});
    h.reconcile(&svc).await;
    let ready = h.ready_condition();
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("limit to request ratio per Container is 4, but provided ratio is 40"),
        "{ready}"
    );
    // The operator sets the sidecar's request in config-ikukantai; the next attempt passes.
    let mut config = ikukantai_api::config::FleetConfig::new();
    config.kubernetes.sidecar.cpu_request = "250m".into();
    h.ctx.set_config(config);
    h.clock.advance(Duration::from_secs(3));
    let (_, calls) = h.reconcile(&svc).await;
    let pod = calls.iter().find(|c| c.is(&Method::POST, PODS)).expect("tried again");
    assert_eq!(pod.body["spec"]["containers"][1]["resources"]["requests"]["cpu"], "250m");
    h.make_ready();
    h.reconcile(&svc).await;
    assert_eq!(h.ready_condition()["status"], "True", "{}", h.ready_condition());
}

#[tokio::test]
async fn knative_style_probes_reach_the_user_port() {
    let mut h = Harness::new(&["node1"]);
    // Knative: no port, or the Knative port name; the Pod names its port `user-port`.
    let svc = with_container(|c| {
        c["ports"] = json!([{"name": "http1", "containerPort": 8080}]);
        c["livenessProbe"] = json!({"httpGet": {"path": "/healthz"}});
    });
    h.reconcile(&svc).await;
    assert_eq!(h.pods_by_node().values().map(Vec::len).sum::<usize>(), 1, "the API server took the probe");
    let svc2 = with_container(|c| {
        c["ports"] = json!([{"name": "h2c", "containerPort": 8080}]);
        c["livenessProbe"] = json!({"tcpSocket": {"port": "h2c"}});
    });
    let mut h2 = Harness::new(&["node1"]);
    h2.reconcile(&svc2).await;
    h2.make_ready();
    h2.reconcile(&svc2).await;
    assert_eq!(
        h2.ready_condition()["status"],
        "True",
        "the kubelet finds the port: {}",
        h2.ready_condition()
    );
}

#[tokio::test]
async fn a_failing_reconcile_is_retried_later_and_later() {
    let h = Harness::new(&["node1"]);
    let svc = Arc::new(ksvc("Konnichiwa", &json!({})));
    let err = ikukantai_kube::controller::Error::Kube(kube::Error::Api(Box::new(
        kube::core::Status::failure("etcdserver: request timed out", "InternalError"),
    )));
    let delays: Vec<Action> = (0..4).map(|_| error_policy(svc.clone(), &err, h.ctx.clone())).collect();
    let secs = [2, 4, 8, 16].map(|s| Action::requeue(Duration::from_secs(s)));
    assert_eq!(delays, secs);
}

#[tokio::test]
async fn a_revision_asking_for_a_privileged_container_or_a_host_path_is_refused_before_any_pod() {
    let mut h = Harness::new(&["node1"]);
    let svc = with_container(|c| c["securityContext"] = json!({"privileged": true}));
    let mut svc = serde_json::to_value(svc).unwrap();
    svc["spec"]["template"]["spec"]["volumes"] = json!([{"name": "root", "hostPath": {"path": "/"}}]);
    let svc: ikukantai_kube::crd::KnativeService = serde_json::from_value(svc).unwrap();
    let (_, calls) = h.reconcile(&svc).await;
    assert_eq!(created(&calls), 0, "{calls:#?}");
    let ready = h.ready_condition();
    assert_eq!(ready["reason"], "InvalidSpec", "{ready}");
    let message = ready["message"].as_str().unwrap();
    assert!(message.contains("spec.template.spec.containers[0].securityContext.privileged"), "{message}");
    assert!(message.contains("spec.template.spec.volumes[0].hostPath"), "{message}");
}

#[tokio::test]
async fn sidecars_run_the_controllers_own_image_unless_configured() {
    let mut h = Harness::new(&["node1"]);
    let (_, calls) = h.reconcile(&with_container(|_| {})).await;
    let pod = calls.iter().find(|c| c.is(&Method::POST, PODS)).unwrap();
    assert_eq!(pod.body["spec"]["containers"][1]["image"], "registry.example/ikukantai@sha256:0123abcd");
    let mut h = Harness::new(&["node1"]);
    let mut config = ikukantai_api::config::FleetConfig::new();
    config.kubernetes.queue_proxy_image = Some("mirror.local/ikukantai:0.1.0".into());
    h.ctx.set_config(config);
    let (_, calls) = h.reconcile(&with_container(|_| {})).await;
    let pod = calls.iter().find(|c| c.is(&Method::POST, PODS)).unwrap();
    assert_eq!(pod.body["spec"]["containers"][1]["image"], "mirror.local/ikukantai:0.1.0");
}
