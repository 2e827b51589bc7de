//! The gateway against what clients send: raw bytes in, exact answers out (issue #23's
//! product-level rows; the review's findings are named F<n>).

mod common;

use std::sync::Arc;

use common::*;
use ikukantai_dataplane::gateway::{GatewayConfig, NoEvents};
use tokio::io::AsyncWriteExt;

const HOST: &str = "hello.default.example.com";
const BUFFERED: &str = "ikukantai_gateway_buffered_requests{";

/// F4: clients that send a request for a cold revision and hang up leave its activator queue, so
/// that its depth counts only live waiters and later requests are not refused as `queue_full`.
#[tokio::test]
async fn clients_that_hang_up_while_the_revision_is_cold_leave_the_activator_queue() {
    let mut config = GatewayConfig::single("node1");
    config.queue_depth = 2;
    let gw = gateway(config, Arc::new(NoEvents)).await;
    gw.set_routes(&hello_routes(vec![revision("hello-00001", 0, vec![])], all_to("hello-00001"))).unwrap();
    let (addr, admin) = (gw.addr(), gw.admin_addr());
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    // Ten clients, two at a time (the queue's depth): each sends and hangs up.
    for _ in 0..5 {
        let mut clients = Vec::new();
        for _ in 0..2 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            clients.push(s);
        }
        until_gauge(admin, BUFFERED, 2, "both wait").await;
        drop(clients);
        until_gauge(admin, BUFFERED, 0, "clients that hung up still count as waiting").await;
    }
    // A later request waits rather than being refused, and is served once an instance is ready.
    let later = tokio::spawn(async move {
        raw(addr, format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes()).await
    });
    until_gauge(admin, BUFFERED, 1, "the later request waits").await;
    let i = instance("cold-a", "node1", "hello-00001", 0).await;
    gw.set_routes(&hello_routes(
        vec![revision("hello-00001", 0, vec![route("cold-a", 0, i.qp.addr())])],
        all_to("hello-00001"),
    ))
    .unwrap();
    let answer = later.await.unwrap();
    assert_eq!(status_and_body(&answer), ("HTTP/1.1 200 OK", "Konnichiwa from cold-a"), "{answer}");
    until_gauge(admin, BUFFERED, 0, "served").await;
}

/// A single-node gateway routing `hello` to one instance (`hello-a`), and `other` to another
/// (`other-a`), both on node1.
async fn two_services() -> (Instance, Instance, ikukantai_dataplane::gateway::Gateway) {
    let hello = instance("hello-a", "node1", "hello-00001", 0).await;
    let other = instance("other-a", "node1", "other-00001", 0).await;
    let gw = gateway(GatewayConfig::single("node1"), Arc::new(NoEvents)).await;
    let mut routes = hello_routes(
        vec![
            revision("hello-00001", 0, vec![route("hello-a", 0, hello.qp.addr())]),
            revision("other-00001", 0, vec![route("other-a", 0, other.qp.addr())]),
        ],
        all_to("hello-00001"),
    );
    routes.revisions[1].service = "other".into();
    let mut other_service = routes.services[0].clone();
    other_service.name = "other".into();
    other_service.traffic = all_to("other-00001");
    routes.services.push(other_service);
    gw.set_routes(&routes).unwrap();
    (hello, other, gw)
}

/// The headers the instance saw with the last request it got.
fn last_seen(i: &Instance) -> http::HeaderMap {
    i.backend.seen.headers.lock().unwrap().last().cloned().expect("the instance got a request")
}

/// F7: CONNECT is answered 405 with `Allow` by the gateway and never reaches an instance.
#[tokio::test]
async fn connect_is_answered_405_and_never_forwarded() {
    let (hello, _other, gw) = two_services().await;
    let answer = raw(
        gw.addr(),
        format!("CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(
        status_and_body(&answer),
        ("HTTP/1.1 405 Method Not Allowed", "CONNECT is not served: the gateway is no forward proxy\n"),
        "{answer}"
    );
    assert!(
        answer.contains("\r\nallow: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE\r\n"),
        "{answer}"
    );
    assert_eq!(hello.backend.seen.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    let (_, _, metrics) = get(gw.admin_addr(), "admin", "/metrics").await;
    assert_eq!(
        metric(&metrics, "ikukantai_gateway_rejected_requests_total{", "reason=\"method\""),
        Some("1")
    );
}

/// F12: an absolute-form target's host wins over Host (RFC 9112 §3.2.2), and the instance gets it
/// as its Host; an invalid Host is a 400, not a fallback to the target's host with the bad Host
/// forwarded; HTTP/1.1 without Host is a 400 even with a host in the target.
#[tokio::test]
async fn the_targets_host_wins_over_host_and_a_bad_host_is_a_400() {
    let (hello, other, gw) = two_services().await;
    let answer = raw(
        gw.addr(),
        b"GET http://hello.default.example.com/ HTTP/1.1\r\nHost: other.default.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_and_body(&answer), ("HTTP/1.1 200 OK", "Konnichiwa from hello-a"), "{answer}");
    assert_eq!(header(&last_seen(&hello), "host"), "hello.default.example.com");
    assert_eq!(other.backend.seen.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    for (request, why) in [
        (
            &b"GET http://hello.default.example.com/ HTTP/1.1\r\nHost: other.default.example.com\xff\r\nConnection: close\r\n\r\n"[..],
            "the Host header is not a valid host",
        ),
        (b"GET / HTTP/1.1\r\nHost: hello.default.example.com\xff\r\nConnection: close\r\n\r\n", "the Host header is not a valid host"),
        (b"GET / HTTP/1.1\r\nHost: x@hello.default.example.com\r\nConnection: close\r\n\r\n", "the Host header is not a valid host"),
        (b"GET http://hello.default.example.com/ HTTP/1.1\r\nConnection: close\r\n\r\n", "request has no Host header"),
    ] {
        let answer = raw(gw.addr(), request).await;
        assert_eq!(status_and_body(&answer), ("HTTP/1.1 400 Bad Request", format!("{why}\n").as_str()), "{answer}");
    }
    assert_eq!(hello.backend.seen.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// F12: over HTTP/2, `:authority` wins over a `host` header.
#[tokio::test]
async fn over_http2_the_authority_wins_over_host() {
    use bytes::Bytes;
    use http_body_util::Full;
    let (hello, other, gw) = two_services().await;
    let req = http::Request::builder()
        .uri(format!("http://{HOST}/"))
        .header("host", "other.default.example.com")
        .version(http::Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = h2_send(gw.addr(), req).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::OK);
    assert_eq!(header(&last_seen(&hello), "host"), HOST);
    assert_eq!(other.backend.seen.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
}
