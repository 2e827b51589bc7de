//! Test support: a small instance (backend), and helpers to run queue proxies and gateways on
//! loopback with OS-assigned ports.

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ikukantai_dataplane::gateway::{InstanceRoute, RevisionRoute, RouteTarget, Routes, ServiceRoute};
use ikukantai_dataplane::queue_proxy::{ProbeAction, QueueProxyConfig, QueueProxyHandle, Readiness};
use ikukantai_http::body::{Body, boxed};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc};

/// What the backend saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub requests: AtomicUsize,
    pub cancelled: AtomicUsize,
    pub headers: std::sync::Mutex<Vec<http::HeaderMap>>,
}

struct CancelGuard(Arc<Seen>, bool);
impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A backend whose `/stream` sends one chunk, then waits for `release` before the second.
pub struct Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    pub release: mpsc::Sender<()>,
}

/// Starts the test instance: `/` greets, `/sleep/MS` sleeps, `/echo` streams the body back,
/// `/hang` never answers (and counts cancellations), `/stream` sends a chunk then waits.
pub async fn backend(name: &'static str) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    backend_on(listener, name).await
}

pub async fn backend_on(listener: TcpListener, name: &'static str) -> Backend {
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let (release, rx) = mpsc::channel::<()>(8);
    let rx = Arc::new(Mutex::new(rx));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (s, rx) = (s.clone(), rx.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (s, rx) = (s.clone(), rx.clone());
                    async move { Ok::<_, Infallible>(answer(name, req, s, rx).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Backend { addr, seen, release }
}

async fn answer(
    name: &str,
    mut req: Request<Incoming>,
    seen: Arc<Seen>,
    release: Arc<Mutex<mpsc::Receiver<()>>>,
) -> Response<Body> {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    seen.headers.lock().unwrap().push(req.headers().clone());
    let path = req.uri().path().to_owned();
    if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        return text(format!("slept {ms}ms in {name}"));
    }
    match path.as_str() {
        "/echo" => Response::new(boxed(req.into_body())),
        // Switches to whatever protocol is asked (as a permissive server would), which it runs as
        // an echo: every byte goes back, after a greeting naming the instance.
        "/upgrade" if req.headers().contains_key(http::header::UPGRADE) => {
            let protocol = req.headers()[http::header::UPGRADE].clone();
            let on_upgrade = hyper::upgrade::on(&mut req);
            let greeting = format!("hello from {name};");
            tokio::spawn(async move {
                use tokio::io::{AsyncWriteExt, copy, split};
                let Ok(upgraded) = on_upgrade.await else { return };
                let (mut r, mut w) = split(TokioIo::new(upgraded));
                if w.write_all(greeting.as_bytes()).await.is_ok() {
                    let _ = copy(&mut r, &mut w).await;
                }
                let _ = w.shutdown().await;
            });
            let mut resp = Response::new(boxed(http_body_util::Empty::<Bytes>::new()));
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            resp.headers_mut().insert(http::header::UPGRADE, protocol);
            resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
            resp
        }
        "/hang" => {
            let mut guard = CancelGuard(seen, false);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            guard.1 = true;
            text("never".into())
        }
        "/stream" => {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"first;")))).await;
                let _ = release.lock().await.recv().await;
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"second")))).await;
            });
            let stream =
                futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
            Response::new(boxed(StreamBody::new(stream)))
        }
        _ => text(format!("Konnichiwa from {name}")),
    }
}

fn text(s: String) -> Response<Body> {
    Response::new(boxed(Full::new(Bytes::from(s))))
}

/// Queue proxy settings for a backend.
pub fn qp_config(instance: &str, node: &str, revision: &str, app: SocketAddr, cc: u32) -> QueueProxyConfig {
    QueueProxyConfig {
        namespace: "default".into(),
        service: "hello".into(),
        revision: revision.into(),
        instance: instance.into(),
        node: node.into(),
        app,
        container_concurrency: cc,
        queue_depth: None,
        queue: "fifo".into(),
        priority_rules: Vec::new(),
        timeout: Duration::from_secs(30),
        response_start_timeout: None,
        idle_timeout: None,
        readiness: Readiness {
            action: ProbeAction::Tcp,
            initial_delay: Duration::ZERO,
            period: Duration::ZERO,
            timeout: Duration::from_secs(1),
            failure_threshold: 3,
            success_threshold: 1,
        },
        max_header_bytes: ikukantai_dataplane::defaults::MAX_HEADER_BYTES,
        upgrades: ikukantai_dataplane::edge::default_upgrades(),
    }
}

pub async fn start_qp(config: QueueProxyConfig) -> QueueProxyHandle {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    QueueProxyHandle::start(config, l, a).unwrap()
}

pub async fn wait_ready(qp: &QueueProxyHandle) {
    let mut ready = qp.ready();
    tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r))
        .await
        .expect("ready in time")
        .unwrap();
}

/// An instance: backend + queue proxy, ready.
pub struct Instance {
    pub backend: Backend,
    pub qp: QueueProxyHandle,
}

pub async fn instance(name: &'static str, node: &str, revision: &str, cc: u32) -> Instance {
    let backend = backend(name).await;
    let qp = start_qp(qp_config(name, node, revision, backend.addr, cc)).await;
    wait_ready(&qp).await;
    Instance { backend, qp }
}

pub fn revision(revision: &str, cc: u32, instances: Vec<InstanceRoute>) -> RevisionRoute {
    RevisionRoute {
        namespace: "default".into(),
        service: "hello".into(),
        revision: revision.into(),
        container_concurrency: cc,
        target_concurrency: 10.0,
        timeout: Duration::from_secs(30),
        balancer: "ert".into(),
        queue: "fifo".into(),
        priority_rules: Vec::new(),
        instances,
        failure: None,
    }
}

pub fn route(name: &str, node: usize, addr: SocketAddr) -> InstanceRoute {
    InstanceRoute { name: name.into(), node, addr }
}

pub fn hello_routes(revisions: Vec<RevisionRoute>, traffic: Vec<RouteTarget>) -> Routes {
    Routes {
        services: vec![ServiceRoute { namespace: "default".into(), name: "hello".into(), traffic }],
        revisions,
    }
}

pub fn all_to(revision: &str) -> Vec<RouteTarget> {
    vec![RouteTarget { revision: revision.into(), percent: 100, tag: None }]
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Sends GET `path` with `host` to `addr`; returns status, headers and body text.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> (StatusCode, http::HeaderMap, String) {
    let req = Request::get(format!("http://{addr}{path}"))
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    (parts.status, parts.headers, String::from_utf8_lossy(&bytes).into_owned())
}

/// The value of the first sample in Prometheus text `metrics` whose line starts with `prefix`
/// (a name and `{`) and mentions `about` (a label value; "" for any).
pub fn metric<'a>(metrics: &'a str, prefix: &str, about: &str) -> Option<&'a str> {
    let line = metrics.lines().find(|l| l.starts_with(prefix) && l.contains(about))?;
    line.rsplit(' ').next()
}

pub fn header(h: &http::HeaderMap, name: &str) -> String {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
}

pub async fn gateway(
    config: ikukantai_dataplane::gateway::GatewayConfig,
    events: Arc<dyn ikukantai_dataplane::gateway::GatewayEvents>,
) -> ikukantai_dataplane::gateway::Gateway {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    ikukantai_dataplane::gateway::Gateway::start(config, l, a, events).unwrap()
}

/// Asks `addr` to switch `path` to WebSocket on a raw connection (the test instance echoes), with
/// `early` sent right behind the request head. Returns the connection after the `101` head, and
/// that head.
pub async fn upgrade(
    addr: SocketAddr,
    host: &str,
    path: &str,
    early: &[u8],
) -> (tokio::net::TcpStream, String) {
    upgrade_to(addr, host, path, "websocket", early).await
}

/// [`upgrade`] to `protocol`: returns the connection after the answer's head, and that head.
pub async fn upgrade_to(
    addr: SocketAddr,
    host: &str,
    path: &str,
    protocol: &str,
    early: &[u8],
) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head =
        format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: Upgrade\r\nupgrade: {protocol}\r\n\r\n");
    s.write_all(&[head.as_bytes(), early].concat()).await.unwrap();
    // Byte by byte up to the head's end: what follows belongs to the new protocol.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if s.read(&mut b).await.unwrap() == 0 {
            break;
        }
        head.push(b[0]);
    }
    (s, String::from_utf8(head).unwrap().to_ascii_lowercase())
}

/// Reads from `s` until `want` bytes came (or the connection closed); panics after 10 s.
pub async fn read_exactly(s: &mut tokio::net::TcpStream, want: usize) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = vec![0u8; want];
    let mut n = 0;
    while n < want {
        let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut got[n..]));
        match read.await.expect("bytes or the close within 10 s").unwrap() {
            0 => break,
            k => n += k,
        }
    }
    String::from_utf8_lossy(&got[..n]).into_owned()
}

/// Sends `bytes` on a new connection to `addr` and returns all it answers until it closes (the
/// request should say `Connection: close`), within 10 s.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the answer and the close within 10 s")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// The status line and body of a raw HTTP/1.1 answer (its headers dropped, as the `Date` varies).
pub fn status_and_body(answer: &str) -> (&str, &str) {
    let status = answer.split("\r\n").next().unwrap_or("");
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body)
}

/// A gauge of the gateway's metrics (first sample whose line starts with `prefix`), 0 if absent.
pub async fn gateway_gauge(admin: SocketAddr, prefix: &str) -> i64 {
    let (_, _, metrics) = get(admin, "admin", "/metrics").await;
    metric(&metrics, prefix, "").and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Polls the gateway gauge `prefix` until it is `want`; panics after 10 s with `why`.
pub async fn until_gauge(admin: SocketAddr, prefix: &str, want: i64, why: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = gateway_gauge(admin, prefix).await;
        if got == want {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{why}: {prefix} stayed {got}, not {want}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `req` over a new HTTP/2 (prior knowledge) connection to `addr`, whatever authority its
/// URI names (the gateway routes by it).
pub async fn h2_send(
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, hyper::Error> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    sender.send_request(req).await
}
