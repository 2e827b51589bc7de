//! The controller's inbox on loopback, with tokens reviewed by the (fake) API server the way the
//! real one answers a TokenReview of a projected, Pod-bound service-account token: only a
//! gateway may push load, RTTs and demand, and only for its own node; an instance only its own
//! stats; nobody else anything. Reports naming nodes that do not exist grow nothing.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use http::Method;
use ikukantai_kube::auth::{AUDIENCE, Authenticator, TokenReviewer};
use ikukantai_kube::manager::{InboxAuth, serve_inbox};
use ikukantai_kube::wire::{
    DEMAND_PATH, Demand, GatewayReport, InstanceStats, PushError, Pusher, REPORT_PATH, STATS_PATH, WireStat,
};
use serde_json::json;
use support::{Harness, ksvc};
use tokio::net::TcpListener;

const REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// What the API server says of a projected token bound to `pod` on `node`.
fn bound(namespace: &str, account: &str, pod: &str, node: &str) -> serde_json::Value {
    json!({"username": format!("system:serviceaccount:{namespace}:{account}"), "uid": "u",
           "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}")],
           "extra": {"authentication.kubernetes.io/pod-name": [pod],
                     "authentication.kubernetes.io/node-name": [node]}})
}

/// A pusher sending `token`.
fn pusher(addr: &str, token: &str) -> Pusher {
    let file = std::env::temp_dir().join(format!("ikukantai-auth-{}-{token}", std::process::id()));
    std::fs::write(&file, token).unwrap();
    Pusher::new(&format!("http://{addr}")).with_token_file(file)
}

fn refused(r: Result<(), PushError>) -> u16 {
    match r {
        Err(PushError::Status { status, .. }) => status.as_u16(),
        other => panic!("{other:?}"),
    }
}

struct Inbox {
    h: Harness,
    addr: String,
    woken: tokio::sync::mpsc::UnboundedReceiver<
        kube::runtime::reflector::ObjectRef<ikukantai_kube::crd::KnativeService>,
    >,
}

/// The controller's inbox over `h`'s context, reviewing tokens with the fake API server.
async fn inbox(h: Harness) -> Inbox {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (tx, woken) = tokio::sync::mpsc::unbounded_channel();
    let auth = InboxAuth {
        authenticator: Arc::new(TokenReviewer::new(h.client.clone())),
        gateway_account: ("ikukantai-system".into(), "ikukantai-gateway".into()),
    };
    tokio::spawn(serve_inbox(l, h.ctx.clone(), tx, Arc::new(AtomicBool::new(true)), auth));
    Inbox { h, addr, woken }
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
async fn only_a_gateway_pushes_load_and_demand_and_only_for_its_own_node() {
    let mut i = inbox(Harness::new(&["node1", "node2", "node3"])).await;
    let api = i.h.api.clone();
    api.issue_token("gw3", bound("ikukantai-system", "ikukantai-gateway", "ikukantai-gateway-x7", "node3"));
    api.issue_token("tenant", bound("team-a", "default", "curious-pod", "node3"));
    let report = |node: &str| GatewayReport {
        node: node.into(),
        revisions: vec![],
        rtt_ms: [("node1".to_owned(), 52.0)].into(),
        coordinate: None,
    };

    assert_eq!(
        refused(Pusher::new(&format!("http://{}", i.addr)).push(REPORT_PATH, &report("node3")).await),
        401
    );
    assert_eq!(refused(pusher(&i.addr, "made-up").push(REPORT_PATH, &report("node3")).await), 401);
    assert_eq!(refused(pusher(&i.addr, "tenant").push(DEMAND_PATH, &demand("node3")).await), 403, "any Pod");
    assert_eq!(
        refused(pusher(&i.addr, "gw3").push(REPORT_PATH, &report("node1")).await),
        403,
        "another node"
    );
    pusher(&i.addr, "gw3").push(REPORT_PATH, &report("node3")).await.unwrap();
    pusher(&i.addr, "gw3").push(DEMAND_PATH, &demand("node3")).await.unwrap();
    let wake = tokio::time::timeout(Duration::from_secs(5), i.woken.recv()).await.unwrap().unwrap();
    assert_eq!((wake.name.as_str(), wake.namespace.as_deref()), ("hello", Some("default")));
    // The TokenReviews asked for the controller's audience, and each token was reviewed once.
    let reviews: Vec<support::Call> =
        api.calls.lock().unwrap().iter().filter(|c| c.is(&Method::POST, REVIEWS)).cloned().collect();
    assert!(reviews.iter().all(|c| c.body["spec"]["audiences"] == json!([AUDIENCE])), "{reviews:#?}");
    assert_eq!(reviews.iter().filter(|c| c.body["spec"]["token"] == "gw3").count(), 1, "remembered");
}

#[tokio::test]
async fn an_instance_pushes_its_own_stats_only() {
    let mut h = Harness::new(&["node1"]);
    let svc = ksvc("Konnichiwa", &json!({"autoscaling.knative.dev/min-scale": "1"}));
    h.reconcile(&svc).await;
    h.make_ready();
    let pod = h.pods_by_node()["node1"][0].clone();
    h.api.issue_token("mine", bound("default", "default", &pod, "node1"));
    h.api.issue_token("neighbour", bound("default", "default", "not-an-instance", "node1"));
    let i = inbox(h).await;
    let stats = |instance: &str, revision: &str| InstanceStats {
        namespace: "default".into(),
        revision: revision.into(),
        instance: instance.into(),
        node: "node1".into(),
        stat: WireStat { concurrency: 1000.0, ..WireStat::default() },
    };
    pusher(&i.addr, "mine").push(STATS_PATH, &stats(&pod, "hello-00001")).await.unwrap();
    assert_eq!(refused(pusher(&i.addr, "mine").push(STATS_PATH, &stats(&pod, "other-00001")).await), 403);
    assert_eq!(
        refused(pusher(&i.addr, "mine").push(STATS_PATH, &stats("hello-00001-node1-9", "hello-00001")).await),
        403
    );
    assert_eq!(
        refused(
            pusher(&i.addr, "neighbour").push(STATS_PATH, &stats("not-an-instance", "hello-00001")).await
        ),
        403
    );
}

#[tokio::test]
async fn reports_naming_nodes_that_do_not_exist_grow_nothing() {
    let h = Harness::new(&["node1", "node2"]);
    // A few first: without the check this fails at once instead of grinding through the flood
    // (100k nodes would make an n² RTT matrix).
    let few = (0..10).map(|n| (format!("fake-{n}"), 1.0)).collect();
    h.ctx.record_report(&GatewayReport {
        node: "node1".into(),
        revisions: vec![],
        rtt_ms: few,
        coordinate: None,
    });
    h.ctx.record_report(&GatewayReport {
        node: "fake-7".into(),
        revisions: vec![],
        rtt_ms: BTreeMap::new(),
        coordinate: None,
    });
    assert!(h.ctx.metrics_text().contains("ikukantai_controller_nodes 1\n"), "{}", h.ctx.metrics_text());
    let flood: BTreeMap<String, f64> = (0..100_000).map(|n| (format!("fake-{n}"), 1.0)).collect();
    h.ctx.record_report(&GatewayReport {
        node: "node1".into(),
        revisions: vec![],
        rtt_ms: flood.clone(),
        coordinate: None,
    });
    h.ctx.record_report(&GatewayReport {
        node: "fake-7".into(),
        revisions: vec![],
        rtt_ms: flood,
        coordinate: None,
    });
    let metrics = h.ctx.metrics_text();
    assert!(metrics.contains("ikukantai_controller_nodes 1\n"), "{metrics}");
}

#[tokio::test]
async fn a_token_for_another_audience_or_no_service_account_is_refused() {
    let h = Harness::new(&["node1"]);
    h.api.issue_token("person", json!({"username": "alice@example.com", "groups": ["dev"]}));
    let reviewer = TokenReviewer::new(h.client.clone());
    let err = reviewer.authenticate("person").await.unwrap_err();
    assert!(err.to_string().contains("not a service account"), "{err}");
    // A Pod's own API token (for the API server's audience) is not taken here.
    let api_token = bound("ikukantai-system", "ikukantai-gateway", "gw-1", "node1");
    h.api.issue_token_for("api", api_token.clone(), &["https://kubernetes.default.svc.cluster.local"]);
    let err = reviewer.authenticate("api").await.unwrap_err();
    assert!(err.to_string().contains("audiences"), "{err}");
    h.api.issue_token("gw", api_token);
    let id = reviewer.authenticate("gw").await.unwrap();
    assert_eq!((id.pod.as_deref(), id.node.as_deref()), (Some("gw-1"), Some("node1")));
}
