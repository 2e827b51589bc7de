//! A gateway through a rolling update: ready only once it has routes, unready at once when told
//! to stop, and nothing it holds is cut — requests in flight finish, requests waiting for an
//! instance get one.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use ikukantai_dataplane::gateway::{
    Gateway, GatewayConfig, InstanceRoute, NoEvents, RevisionRoute, RouteTarget, Routes, ServiceRoute,
};
use ikukantai_kube::gateway::drain;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

async fn listen() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

async fn status(url: String) -> u16 {
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    client.get(url.parse().unwrap()).await.map(|r| r.status().as_u16()).unwrap_or(0)
}

/// `hello`'s routes, with these instances.
fn routes(instances: Vec<InstanceRoute>) -> Routes {
    Routes {
        services: vec![ServiceRoute {
            namespace: "default".into(),
            name: "hello".into(),
            traffic: vec![RouteTarget { revision: "hello-00001".into(), percent: 100, tag: None }],
        }],
        revisions: vec![RevisionRoute {
            namespace: "default".into(),
            service: "hello".into(),
            revision: "hello-00001".into(),
            container_concurrency: 0,
            target_concurrency: 100.0,
            timeout: Duration::from_secs(30),
            balancer: "even".into(),
            queue: "fifo".into(),
            priority_rules: vec![],
            instances,
            failure: None,
        }],
    }
}

/// An instance that answers once `release` fires, and says when a request arrived.
async fn held_instance(arrived: oneshot::Sender<()>, release: oneshot::Receiver<()>) -> InstanceRoute {
    let l = listen().await;
    let addr = l.local_addr().unwrap();
    let arrived = Arc::new(std::sync::Mutex::new(Some(arrived)));
    let release = Arc::new(tokio::sync::Mutex::new(Some(release)));
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let (arrived, release) = (arrived.clone(), release.clone());
            async move {
                if let Some(a) = arrived.lock().unwrap().take() {
                    let _ = a.send(());
                }
                if let Some(r) = release.lock().await.take() {
                    let _ = r.await;
                }
                "Konnichiwa"
            }
        }),
    );
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    InstanceRoute { name: "hello-00001-node1-0".into(), node: 0, addr }
}

fn request(gateway: std::net::SocketAddr) -> tokio::task::JoinHandle<(u16, String)> {
    tokio::spawn(async move {
        let client = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let req = http::Request::get(format!("http://{gateway}/"))
            .header("host", "hello.default.example.com")
            .body(Empty::new())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (code, String::from_utf8_lossy(&body).into_owned())
    })
}

#[tokio::test]
async fn a_gateway_is_ready_once_it_has_routes_and_unready_once_it_drains() {
    let gw =
        Gateway::start(GatewayConfig::single("node1"), listen().await, listen().await, Arc::new(NoEvents))
            .unwrap();
    let ready = format!("http://{}/ready", gw.admin_addr());
    assert_eq!(status(ready.clone()).await, 503, "no routes yet: traffic would find nothing");
    gw.set_routes(&Routes::default()).unwrap();
    assert_eq!(status(ready.clone()).await, 200);
    gw.set_draining();
    assert_eq!(status(ready).await, 503);
    assert_eq!(status(format!("http://{}/healthz", gw.admin_addr())).await, 200, "alive all along");
}

#[tokio::test]
async fn draining_finishes_the_requests_in_flight() {
    let (arrived_tx, arrived) = oneshot::channel();
    let (release, release_rx) = oneshot::channel();
    let instance = held_instance(arrived_tx, release_rx).await;
    let gw = Arc::new(
        Gateway::start(GatewayConfig::single("node1"), listen().await, listen().await, Arc::new(NoEvents))
            .unwrap(),
    );
    gw.set_routes(&routes(vec![instance])).unwrap();
    let (addr, admin) = (gw.addr(), gw.admin_addr());
    let in_flight = request(addr);
    arrived.await.unwrap();
    // SIGTERM: the gateway drains while the instance still works on the request.
    let stopping = tokio::spawn(drain(gw, std::future::pending()));
    while status(format!("http://{admin}/ready")).await == 200 {
        tokio::task::yield_now().await;
    }
    assert!(!stopping.is_finished(), "waits for the request in flight");
    release.send(()).unwrap();
    assert_eq!(in_flight.await.unwrap(), (200, "Konnichiwa".to_owned()));
    stopping.await.unwrap();
}

#[tokio::test]
async fn a_request_waiting_for_an_instance_gets_one_during_the_drain() {
    let (arrived_tx, arrived) = oneshot::channel();
    let (release, release_rx) = oneshot::channel();
    let instance = held_instance(arrived_tx, release_rx).await;
    let gw = Arc::new(
        Gateway::start(GatewayConfig::single("node1"), listen().await, listen().await, Arc::new(NoEvents))
            .unwrap(),
    );
    gw.set_routes(&routes(vec![])).unwrap();
    let waiting = request(gw.addr());
    while gw.waiting() == 0 {
        tokio::task::yield_now().await;
    }
    // The drain keeps routing: the instance the controller starts for it arrives in the routes.
    let (started, started_rx) = oneshot::channel::<()>();
    let router = gw.clone();
    let routing = async move {
        let _ = started_rx.await;
        router.set_routes(&routes(vec![instance])).unwrap();
        std::future::pending::<()>().await
    };
    let admin = gw.admin_addr();
    let stopping = tokio::spawn(drain(gw, routing));
    while status(format!("http://{admin}/ready")).await == 200 {
        tokio::task::yield_now().await;
    }
    assert!(!stopping.is_finished(), "waits for the request waiting for an instance");
    started.send(()).unwrap();
    arrived.await.unwrap();
    release.send(()).unwrap();
    assert_eq!(waiting.await.unwrap(), (200, "Konnichiwa".to_owned()));
    stopping.await.unwrap();
}
