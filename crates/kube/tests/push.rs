//! The push paths on loopback: the queue-proxy sidecar pushing its stats, and the controller's
//! inbox taking stats, reports and demand.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use ikukantai_api::config::FleetConfig;
use ikukantai_kube::controller::{Context, Settings, Stores, SystemClock};
use ikukantai_kube::manager::serve_inbox;
use ikukantai_kube::pod::env;
use ikukantai_kube::sidecar::{SidecarConfig, run_on};
use ikukantai_kube::wire::{
    DEMAND_PATH, Demand, GatewayReport, InstanceStats, PushError, Pusher, REPORT_PATH,
};
use kube::runtime::reflector;
use tokio::net::TcpListener;

async fn local() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

async fn get_status(url: &str) -> u16 {
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let resp = client.get(url.parse().unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

#[tokio::test]
async fn the_sidecar_proxies_reports_ready_and_pushes_its_stats() {
    // The user's container.
    let (app, app_addr) = local().await;
    tokio::spawn(async move {
        axum::serve(app, axum::Router::new().route("/", get(|| async { "Konnichiwa" }))).await.unwrap();
    });
    // A stand-in controller collecting what arrives.
    let got: Arc<Mutex<Vec<InstanceStats>>> = Arc::default();
    let (ctl, ctl_addr) = local().await;
    let sink = got.clone();
    tokio::spawn(async move {
        let router = axum::Router::new().route(
            "/v1/stats",
            post(move |Json(s): Json<InstanceStats>| {
                sink.lock().unwrap().push(s);
                async { axum::http::StatusCode::NO_CONTENT }
            }),
        );
        axum::serve(ctl, router).await.unwrap();
    });
    let app_port = app_addr.rsplit(':').next().unwrap().to_owned();
    let controller = format!("http://{ctl_addr}");
    let vars = [
        (env::NAMESPACE, "default"),
        (env::SERVICE, "hello"),
        (env::REVISION, "hello-00001"),
        (env::POD, "hello-00001-node1-0"),
        (env::NODE, "node1"),
        (env::USER_PORT, app_port.as_str()),
        (env::CONTAINER_CONCURRENCY, "1"),
        (env::CONTROLLER_URL, controller.as_str()),
    ];
    let config =
        SidecarConfig::from_env(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned()))
            .unwrap();
    let (listener, addr) = local().await;
    let (admin, admin_addr) = local().await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sidecar = tokio::spawn(run_on(config, listener, admin, async {
        let _ = stop_rx.await;
    }));

    // Ready once the app answers its (default TCP) probe.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_status(&format!("http://{admin_addr}/ready")).await != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..5 {
        assert_eq!(get_status(&format!("http://{addr}/")).await, 200);
    }
    // Within a few pushes the five requests arrive, as a rate over periods of about a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let total: f64 = got.lock().unwrap().iter().map(|s| s.stat.requests).sum();
        if total >= 4.0 {
            break;
        }
        assert!(Instant::now() < deadline, "stats never pushed: {:?}", got.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = got.lock().unwrap()[0].clone();
    assert_eq!(
        (first.revision.as_str(), first.instance.as_str(), first.node.as_str()),
        ("hello-00001", "hello-00001-node1-0", "node1")
    );
    stop_tx.send(()).unwrap();
    sidecar.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_inbox_takes_stats_reports_and_demand() {
    // The context's client is never used here: the inbox only records.
    let (svc, _handle) =
        tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
    let client = kube::Client::new(svc, "default");
    let stores = Stores {
        nodes: reflector::store().0,
        pods: reflector::store().0,
        placements: reflector::store().0,
        routes: reflector::store().0,
    };
    let settings = Settings {
        controller_url: String::new(),
        seed: 1,
        service_monitors: false,
        gateway_host: "gw".into(),
    };
    let ctx = Arc::new(Context::new(client, stores, FleetConfig::new(), settings, Arc::new(SystemClock)));
    let (listener, addr) = local().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let leading = Arc::new(AtomicBool::new(false));
    tokio::spawn(serve_inbox(listener, ctx, tx, leading.clone()));
    let pusher = Pusher::new(&format!("http://{addr}/"));

    let demand = Demand {
        namespace: "demo".into(),
        service: "hello".into(),
        revision: "hello-00001".into(),
        node: "node3".into(),
    };
    pusher.push(DEMAND_PATH, &demand).await.unwrap();
    let wake = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert_eq!(
        (wake.name.as_str(), wake.namespace.as_deref()),
        ("hello", Some("demo")),
        "the Service is reconciled at once"
    );

    assert_eq!(get_status(&format!("http://{addr}/metrics")).await, 200);
    // `/leader` tells a leader from a standby.
    assert_eq!(get_status(&format!("http://{addr}/leader")).await, 503);
    leading.store(true, Ordering::Release);
    assert_eq!(get_status(&format!("http://{addr}/leader")).await, 200);
    assert_eq!(get_status(&format!("http://{addr}/healthz")).await, 200);
    let report = GatewayReport {
        node: "node3".into(),
        revisions: vec![],
        rtt_ms: [("node1".to_owned(), 52.0)].into(),
    };
    pusher.push(REPORT_PATH, &report).await.unwrap();

    // A body that is not a report is refused, and says so.
    match pusher.push(REPORT_PATH, &serde_json::json!({"nodes": 3})).await {
        Err(PushError::Status { status, .. }) => assert!(status.is_client_error(), "{status}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_leader_points_the_controller_service_at_itself() {
    use ikukantai_kube::manager::{leader_endpoint_slice, publish_leader};
    let (svc, mut handle) =
        tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
    let client = kube::Client::new(svc, "default");
    let api = kube::Api::namespaced(client, "ikukantai-system");
    let slice = leader_endpoint_slice("ikukantai-controller-abc", "10.244.1.7".parse().unwrap(), 9090);
    let expected = slice.clone();
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.expect("one request");
        let (parts, body) = req.into_parts();
        assert_eq!(parts.method, http::Method::PATCH);
        assert_eq!(
            parts.uri.path(),
            "/apis/discovery.k8s.io/v1/namespaces/ikukantai-system/endpointslices/ikukantai-controller"
        );
        let query = parts.uri.query().unwrap_or_default();
        assert!(
            query.contains("fieldManager=ikukantai-controller") && query.contains("force=true"),
            "{query}"
        );
        assert_eq!(parts.headers[http::header::CONTENT_TYPE], "application/apply-patch+yaml");
        let body: serde_json::Value =
            serde_json::from_slice(&body.collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body, expected);
        assert_eq!(body["endpoints"][0]["addresses"][0], "10.244.1.7");
        assert_eq!(body["metadata"]["labels"]["kubernetes.io/service-name"], "ikukantai-controller");
        send.send_response(
            http::Response::builder()
                .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
    });
    publish_leader(&api, &slice).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn the_controller_refuses_to_run_beside_knative_serving() {
    use ikukantai_kube::manager::{KNATIVE_CRD, refuse_beside_knative};
    for installed in [true, false] {
        let (svc, mut handle) =
            tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
        let api = kube::Api::all(kube::Client::new(svc, "default"));
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("one request");
            let path = req.uri().path().to_owned();
            let (status, body) = if installed {
                (
                    200,
                    serde_json::json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                    "metadata": {"name": KNATIVE_CRD}, "spec": {"group": "serving.knative.dev", "scope": "Namespaced",
                    "names": {"plural": "configurations", "kind": "Configuration"}, "versions": []}}),
                )
            } else {
                (
                    404,
                    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
                )
            };
            send.send_response(
                http::Response::builder()
                    .status(status)
                    .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            );
            path
        });
        let result = refuse_beside_knative(&api).await;
        assert_eq!(
            server.await.unwrap(),
            format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{KNATIVE_CRD}")
        );
        match (installed, result) {
            (true, Err(e)) => assert!(e.to_string().contains("Knative Serving is installed"), "{e}"),
            (false, Ok(())) => {}
            (installed, other) => panic!("installed={installed}: {other:?}"),
        }
    }
}
