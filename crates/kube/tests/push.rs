//! The push paths on loopback: the queue-proxy sidecar pushing its stats (with its token), the
//! leader's EndpointSlice, and the refusal to run beside Knative. (The inbox: `tests/auth.rs`.)

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use ikukantai_kube::pod::env;
use ikukantai_kube::sidecar::{SidecarConfig, run_on};
use ikukantai_kube::wire::InstanceStats;
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
    let tokens: Arc<Mutex<Vec<String>>> = Arc::default();
    let (ctl, ctl_addr) = local().await;
    let (sink, token_sink) = (got.clone(), tokens.clone());
    tokio::spawn(async move {
        let router = axum::Router::new().route(
            "/v1/stats",
            post(move |headers: axum::http::HeaderMap, Json(s): Json<InstanceStats>| {
                sink.lock().unwrap().push(s);
                let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_owned());
                token_sink.lock().unwrap().extend(auth);
                async { axum::http::StatusCode::NO_CONTENT }
            }),
        );
        axum::serve(ctl, router).await.unwrap();
    });
    let app_port = app_addr.rsplit(':').next().unwrap().to_owned();
    let controller = format!("http://{ctl_addr}");
    // The token the kubelet projects for the controller's audience.
    let token_file = std::env::temp_dir().join(format!("ikukantai-token-{}", std::process::id()));
    std::fs::write(&token_file, "projected-token\n").unwrap();
    let token_path = token_file.to_str().unwrap().to_owned();
    let vars = [
        (env::NAMESPACE, "default"),
        (env::SERVICE, "hello"),
        (env::REVISION, "hello-00001"),
        (env::POD, "hello-00001-node1-0"),
        (env::NODE, "node1"),
        (env::USER_PORT, app_port.as_str()),
        (env::CONTAINER_CONCURRENCY, "1"),
        (env::CONTROLLER_URL, controller.as_str()),
        (env::TOKEN_FILE, token_path.as_str()),
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
    assert!(tokens.lock().unwrap().iter().all(|t| t == "Bearer projected-token"), "{tokens:?}");
    assert!(!tokens.lock().unwrap().is_empty());
    stop_tx.send(()).unwrap();
    sidecar.await.unwrap().unwrap();
    let _ = std::fs::remove_file(token_file);
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

#[tokio::test]
async fn the_controller_knows_its_own_image_for_the_sidecars() {
    let (svc, mut handle) =
        tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
    let api = kube::Api::namespaced(kube::Client::new(svc, "default"), "ikukantai-system");
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.expect("one request");
        assert_eq!(
            req.uri().path(),
            "/api/v1/namespaces/ikukantai-system/pods/ikukantai-controller-7d9f8-x2x4q"
        );
        // As kustomize `images:` rewrote the Deployment.
        let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "ikukantai-controller-7d9f8-x2x4q", "namespace": "ikukantai-system"},
            "spec": {"containers": [{"name": "controller", "image": "registry.example/ikukantai@sha256:feed"}]}});
        send.send_response(
            http::Response::builder()
                .body(kube::client::Body::from(serde_json::to_vec(&pod).unwrap()))
                .unwrap(),
        );
    });
    let image = ikukantai_kube::manager::own_image(&api, "ikukantai-controller-7d9f8-x2x4q").await.unwrap();
    server.await.unwrap();
    assert_eq!(image.as_deref(), Some("registry.example/ikukantai@sha256:feed"));
}
