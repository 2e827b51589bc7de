//! The queue proxy on loopback: concurrency, overflow, timeouts, readiness, headers, stats, drain,
//! restarts of the instance's process.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ikukantai_dataplane::headers::{
    INSTANCE_HEADER, LOAD_HEADER, NODE_HEADER, PROBE_HEADER, SERVICE_TIME_HEADER,
};
use ikukantai_dataplane::queue_proxy::ProbeAction;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

#[tokio::test]
async fn forwards_and_says_where_and_how_loaded() {
    let i = instance("hello-a", "node3", "hello-00001", 0).await;
    let (status, headers, body) = get(i.qp.addr(), "hello.default", "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "Konnichiwa from hello-a");
    assert_eq!(header(&headers, INSTANCE_HEADER), "hello-a");
    assert_eq!(header(&headers, NODE_HEADER), "node3");
    assert_eq!(header(&headers, LOAD_HEADER), "1", "itself in flight when it answered");
    assert!(header(&headers, SERVICE_TIME_HEADER).parse::<f64>().unwrap() >= 0.0);
    let stat = i.qp.report();
    assert!(stat.requests > 0.0);
    assert_eq!(stat.proxied_requests, 0.0);
}

#[tokio::test]
async fn container_concurrency_queues_then_rejects_overflow_with_503() {
    let b = backend("hello-cc").await;
    let mut config = qp_config("hello-cc", "node1", "hello-00001", b.addr, 1);
    config.queue_depth = Some(1);
    let qp = start_qp(config).await;
    wait_ready(&qp).await;
    let addr = qp.addr();
    let first = tokio::spawn(async move { get(addr, "h", "/sleep/400").await });
    while qp.in_flight() < 1 {
        tokio::task::yield_now().await;
    }
    let second = tokio::spawn(async move { get(addr, "h", "/sleep/10").await });
    while qp.in_flight() < 2 {
        tokio::task::yield_now().await;
    }
    let (status, headers, body) = get(addr, "h", "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("hello-cc is at capacity: 1 requests already waiting (queue depth 1)"), "{body}");
    assert_eq!(header(&headers, INSTANCE_HEADER), "hello-cc");
    assert_eq!(first.await.unwrap().0, StatusCode::OK);
    assert_eq!(second.await.unwrap().0, StatusCode::OK, "the queued request runs after the first");
    assert_eq!(b.seen.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn request_timeout_gives_504_with_a_reason() {
    let b = backend("slow").await;
    let mut config = qp_config("slow", "node1", "hello-00001", b.addr, 0);
    config.timeout = Duration::from_millis(300);
    let qp = start_qp(config).await;
    wait_ready(&qp).await;
    let (status, _, body) = get(qp.addr(), "h", "/sleep/5000").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(body.contains("did not start responding within 300ms (timeoutSeconds)"), "{body}");
}

#[tokio::test]
async fn response_start_timeout_is_separate() {
    let b = backend("slow2").await;
    let mut config = qp_config("slow2", "node1", "hello-00001", b.addr, 0);
    config.response_start_timeout = Some(Duration::from_millis(200));
    let qp = start_qp(config).await;
    wait_ready(&qp).await;
    let (status, _, body) = get(qp.addr(), "h", "/sleep/5000").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(body.contains("responseStartTimeoutSeconds"), "{body}");
}

#[tokio::test]
async fn ready_only_once_the_instance_answers() {
    // Reserve a port, start the proxy before the instance listens there.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let qp = start_qp(qp_config("late", "node1", "hello-00001", addr, 0)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!*qp.ready().borrow(), "nothing listens yet");
    // A request meanwhile waits for the instance (within its timeout).
    let proxy = qp.addr();
    let early = tokio::spawn(async move { get(proxy, "h", "/").await });
    while qp.in_flight() < 1 {
        tokio::task::yield_now().await;
    }
    let _b = backend_on(TcpListener::bind(addr).await.unwrap(), "late").await;
    wait_ready(&qp).await;
    assert_eq!(get(qp.addr(), "h", "/").await.0, StatusCode::OK);
    let (status, _, body) = early.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "Konnichiwa from late"));
}

#[tokio::test]
async fn drain_finishes_in_flight_work_and_refuses_new() {
    let i = instance("draining", "node1", "hello-00001", 0).await;
    let addr = i.qp.addr();
    let slow = tokio::spawn(async move { get(addr, "h", "/sleep/300").await });
    while i.qp.in_flight() < 1 {
        tokio::task::yield_now().await;
    }
    let drain = tokio::spawn(i.qp.drain());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, _, body) = get(addr, "h", "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("draining"), "{body}");
    let (status, _, body) = slow.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "slept 300ms in draining"));
    tokio::time::timeout(Duration::from_secs(5), drain).await.expect("drain ends").unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "stopped listening");
}

#[tokio::test]
async fn a_drain_with_notice_serves_while_unready_then_refuses_and_answers_wait_for_drain_last() {
    let i = instance("noticed", "node1", "hello-00001", 0).await;
    let (addr, admin) = (i.qp.addr(), i.qp.admin_addr());
    // The instance container's preStop hook on Kubernetes: it waits, whenever it comes.
    let waiter = tokio::spawn(async move { get(admin, "admin", "/wait-for-drain").await });
    let slow = tokio::spawn(async move { get(addr, "h", "/sleep/3000").await });
    while i.qp.in_flight() < 1 {
        tokio::task::yield_now().await;
    }
    let drain = tokio::spawn(i.qp.drain_after(Duration::from_secs(1)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // In the notice period: unready at once, still serving.
    assert_eq!(get(admin, "admin", "/ready").await.0, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _, body) = get(addr, "h", "/").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // After it: new work refused while the slow request is still in flight.
    tokio::time::sleep(Duration::from_millis(1450)).await;
    let (status, _, body) = get(addr, "h", "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("draining"), "{body}");
    assert!(!waiter.is_finished(), "/wait-for-drain answered while a request was in flight");
    let (status, _, body) = slow.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "slept 3000ms in noticed"));
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "drained"));
    tokio::time::timeout(Duration::from_secs(5), drain).await.expect("drain ends").unwrap();
}

#[tokio::test]
async fn metrics_are_exposed() {
    let i = instance("metered", "node1", "hello-00001", 0).await;
    get(i.qp.addr(), "h", "/").await;
    let (status, _, body) = get(i.qp.admin_addr(), "admin", "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for name in [
        "ikukantai_queue_requests_total{",
        "ikukantai_queue_request_duration_seconds_bucket{",
        "ikukantai_queue_in_flight_requests{",
    ] {
        assert!(body.contains(name), "{name} missing in\n{body}");
    }
    assert!(body.contains("instance=\"metered\""), "{body}");
}

/// The value of the queue proxy's waiting gauge.
async fn waiting(qp: &ikukantai_dataplane::queue_proxy::QueueProxyHandle) -> String {
    let (_, _, body) = get(qp.admin_addr(), "admin", "/metrics").await;
    metric(&body, "ikukantai_queue_waiting_requests{", "").unwrap_or("missing").to_owned()
}

#[tokio::test]
async fn a_waiting_request_whose_client_leaves_stops_counting_as_waiting() {
    let b = backend("hello-leave").await;
    let qp = start_qp(qp_config("hello-leave", "node1", "hello-00001", b.addr, 1)).await;
    wait_ready(&qp).await;
    let addr = qp.addr();
    let first = tokio::spawn(async move { get(addr, "h", "/sleep/1500").await });
    while qp.in_flight() < 1 {
        tokio::task::yield_now().await;
    }
    // A second request waits for the only slot; then its client goes away.
    let mut leaving = tokio::net::TcpStream::connect(addr).await.unwrap();
    leaving.write_all(b"GET / HTTP/1.1\r\nhost: h\r\n\r\n").await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen.push(waiting(&qp).await);
        if seen.last().is_some_and(|w| w == "1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(seen.last().map(String::as_str), Some("1"), "never counted as waiting: {seen:?}");
    drop(leaving);
    let mut after = String::new();
    for _ in 0..200 {
        after = waiting(&qp).await;
        if after == "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(after, "0", "still counted as waiting after its client left");
    assert_eq!(first.await.unwrap().0, StatusCode::OK);
}

/// An instance that answers its first `not_ready` requests with 503 (with a body), then 200,
/// keeping connections alive; counts the connections it accepts.
async fn counting_instance(not_ready: usize) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let answered = answered.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                loop {
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        got.drain(..end + 4);
                        let answer: &[u8] = if answered.fetch_add(1, Ordering::SeqCst) < not_ready {
                            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\n\r\nstarting\n"
                        } else {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"
                        };
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn http_readiness_probes_reuse_their_connection() {
    let (app, accepted) = counting_instance(4).await;
    let mut config = qp_config("probed", "node1", "hello-00001", app, 0);
    config.readiness.action = ProbeAction::Http { path: "/healthz".into(), headers: Vec::new() };
    let qp = start_qp(config).await;
    wait_ready(&qp).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "five probes, one connection");
}

#[tokio::test]
async fn a_tunnel_holds_its_concurrency_slot_until_it_closes() {
    use tokio::io::AsyncWriteExt;
    let i = instance("hello-a", "node1", "hello-00001", 1).await;
    let addr = i.qp.addr();
    let (mut s, head) = upgrade(addr, "hello.default", "/upgrade", b"").await;
    assert!(head.starts_with("http/1.1 101 switching protocols\r\n"), "{head}");
    assert!(head.contains("\r\nx-ikukantai-instance: hello-a\r\n"), "{head}");
    assert_eq!(read_exactly(&mut s, 19).await, "hello from hello-a;");
    // containerConcurrency 1: the next request waits for the tunnel's slot.
    let next = tokio::spawn(async move { get(addr, "hello.default", "/").await });
    while waiting(&i.qp).await != "1" {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.write_all(b"still here").await.unwrap();
    assert_eq!(read_exactly(&mut s, 10).await, "still here");
    assert!(!next.is_finished());
    drop(s);
    let (status, _, body) = next.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "Konnichiwa from hello-a"));
}

#[tokio::test]
async fn a_quiet_tunnel_is_cut_after_the_idle_timeout_and_draining_cuts_the_others() {
    use tokio::io::AsyncWriteExt;
    let backend = backend("hello-a").await;
    let mut config = qp_config("hello-a", "node1", "hello-00001", backend.addr, 0);
    config.idle_timeout = Some(Duration::from_millis(200));
    let qp = start_qp(config).await;
    wait_ready(&qp).await;
    // Quiet: cut once 200 ms pass without a byte.
    let (mut quiet, _) = upgrade(qp.addr(), "hello.default", "/upgrade", b"").await;
    assert_eq!(read_exactly(&mut quiet, 19).await, "hello from hello-a;");
    assert_eq!(read_exactly(&mut quiet, 1).await, "", "cut when idle");
    // Another, cut by the drain (that bytes keep a tunnel open past the idle timeout is shown
    // with paused time in `upgrade.rs`).
    let (mut open, _) = upgrade(qp.addr(), "hello.default", "/upgrade", b"").await;
    assert_eq!(read_exactly(&mut open, 19).await, "hello from hello-a;");
    open.write_all(b".").await.unwrap();
    assert_eq!(read_exactly(&mut open, 1).await, ".");
    tokio::time::timeout(Duration::from_secs(5), qp.drain())
        .await
        .expect("the drain does not wait for tunnels");
    assert_eq!(read_exactly(&mut open, 1).await, "", "cut by the drain");
}

/// An instance's process on `listener`: answers every request with its name and counts them.
/// Aborting its task kills it: its listener and every connection close together, as the kernel
/// closes a killed process's sockets.
fn process(listener: TcpListener, name: &'static str, requests: Arc<AtomicUsize>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let requests = requests.clone();
            connections.spawn(async move {
                let svc = service_fn(move |_: Request<Incoming>| {
                    requests.fetch_add(1, Ordering::SeqCst);
                    let answer = Full::new(Bytes::from(format!("hi from {name}")));
                    async move { Ok::<_, Infallible>(Response::new(answer)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

/// Kills a [`process`]; returns once its sockets are closed.
async fn kill(process: JoinHandle<()>) {
    process.abort();
    let _ = process.await;
}

/// A port nothing listens on (for now).
async fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap()
}

/// Sends `method` with `body` to `addr`; the status and body text.
async fn send(addr: SocketAddr, method: Method, body: &'static str) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}/"))
        .header("host", "h")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// The queue proxy's answer to a Knative-style probe of itself (on its admin listener).
async fn probe_status(addr: SocketAddr) -> StatusCode {
    let req = Request::get(format!("http://{addr}/"))
        .header("host", "h")
        .header(PROBE_HEADER, "queue")
        .body(Full::new(Bytes::new()))
        .unwrap();
    client().request(req).await.unwrap().status()
}

#[tokio::test]
async fn a_request_that_finds_the_process_gone_waits_unready_for_its_restart() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let first = process(listener, "restarted", requests.clone());
    let qp = start_qp(qp_config("restarted", "node1", "hello-00001", app, 0)).await;
    wait_ready(&qp).await;
    kill(first).await;
    let addr = qp.addr();
    let pending = tokio::spawn(async move { get(addr, "h", "/").await });
    // The request found no one listening: unready at once (the probe, every second while ready,
    // needs three failures), everywhere readiness is told, while the request waits.
    let mut ready = qp.ready();
    tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| !*r)).await.unwrap().unwrap();
    assert_eq!(get(qp.admin_addr(), "admin", "/ready").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(probe_status(qp.admin_addr()).await, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!pending.is_finished(), "answered while the process was gone: {:?}", pending.await);
    // Restarted on the same port: it answers the request.
    let _second = process(TcpListener::bind(app).await.unwrap(), "restarted", requests.clone());
    let (status, _, body) = pending.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hi from restarted"));
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    assert!(*qp.ready().borrow());
    let (_, _, metrics) = get(qp.admin_addr(), "admin", "/metrics").await;
    let resent = metric(&metrics, "ikukantai_queue_resent_requests_total{", "reason=\"unreachable\"");
    assert_eq!(resent, Some("1"), "{metrics}");
}

#[tokio::test]
async fn a_process_not_back_within_the_request_timeout_is_a_504_not_a_502() {
    let mut config = qp_config("gone", "node1", "hello-00001", free_port().await, 0);
    config.timeout = Duration::from_millis(300);
    let qp = start_qp(config).await;
    let (status, _, body) = get(qp.addr(), "h", "/").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(
        body.contains(
            "did not start responding within 300ms (timeoutSeconds); its process was gone and not ready again in time"
        ),
        "{body}"
    );
}

#[tokio::test]
async fn a_drain_ends_the_wait_for_a_process_that_is_gone_with_a_503() {
    let qp = start_qp(qp_config("gone", "node1", "hello-00001", free_port().await, 0)).await;
    let addr = qp.addr();
    let pending = tokio::spawn(async move { get(addr, "h", "/").await });
    while qp.in_flight() < 1 {
        tokio::task::yield_now().await;
    }
    tokio::time::timeout(Duration::from_secs(5), qp.drain()).await.expect("the drain ends");
    let (status, _, body) = pending.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("instance gone is draining; its process was gone"), "{body}");
}

/// An instance's process that reads a request (its head, and its body by Content-Length) on each
/// connection and closes it without a byte of answer for the first `unanswered` of them (as if it
/// died with them), then answers `ok`. Counts the requests it read.
async fn closing_instance(unanswered: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let read = Arc::new(AtomicUsize::new(0));
    let counter = read.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let read = counter.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) {
                        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |n| n.trim().parse::<usize>().unwrap());
                        if got.len() >= end + length {
                            break;
                        }
                    }
                    let mut buf = [0u8; 1024];
                    match stream.read(&mut buf).await {
                        // Probes connect and leave.
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                if read.fetch_add(1, Ordering::SeqCst) >= unanswered {
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n").await;
                }
            });
        }
    });
    (addr, read)
}

#[tokio::test]
async fn a_request_cut_before_any_answer_goes_again_once_only_if_idempotent_and_bodiless() {
    for (method, body, expected, sent) in [
        (Method::GET, "", StatusCode::OK, 2),
        (Method::DELETE, "", StatusCode::OK, 2),
        (Method::POST, "order one", StatusCode::BAD_GATEWAY, 1),
        (Method::POST, "", StatusCode::BAD_GATEWAY, 1),
        (Method::PUT, "replace", StatusCode::BAD_GATEWAY, 1),
    ] {
        let (app, read) = closing_instance(1).await;
        let qp = start_qp(qp_config("cut", "node1", "hello-00001", app, 0)).await;
        wait_ready(&qp).await;
        let (status, answer) = send(qp.addr(), method.clone(), body).await;
        assert_eq!(status, expected, "{method} {body:?}: {answer}");
        assert_eq!(read.load(Ordering::SeqCst), sent, "{method} {body:?} sent {sent} time(s)");
        if status == StatusCode::OK {
            assert_eq!(answer, "ok\n");
        }
    }
}

/// F15: `K-Network-Probe: queue` is answered on the admin listener only; on the traffic port the
/// request goes to the instance, without the header.
#[tokio::test]
async fn probes_of_the_queue_proxy_are_answered_on_its_admin_listener_only() {
    let i = instance("hello-a", "node1", "hello-00001", 0).await;
    assert_eq!(probe_status(i.qp.admin_addr()).await, StatusCode::OK);
    let req = Request::get(format!("http://{}/", i.qp.addr()))
        .header("host", "h")
        .header(PROBE_HEADER, "queue")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"Konnichiwa from hello-a");
    let seen = i.backend.seen.headers.lock().unwrap().last().cloned().unwrap();
    assert!(!seen.contains_key(PROBE_HEADER), "{seen:?}");
}
