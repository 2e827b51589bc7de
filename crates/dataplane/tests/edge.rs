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

/// A gateway with `edit` applied to its config, routing `hello` to one instance `hello-a`.
async fn one_instance(
    edit: impl FnOnce(&mut GatewayConfig),
) -> (Instance, ikukantai_dataplane::gateway::Gateway) {
    let i = instance("hello-a", "node1", "hello-00001", 0).await;
    let mut config = GatewayConfig::single("node1");
    edit(&mut config);
    let gw = gateway(config, Arc::new(NoEvents)).await;
    gw.set_routes(&hello_routes(
        vec![revision("hello-00001", 0, vec![route("hello-a", 0, i.qp.addr())])],
        all_to("hello-00001"),
    ))
    .unwrap();
    (i, gw)
}

/// The field lines named `name` the instance saw last, in order.
fn seen_all(i: &Instance, name: &str) -> Vec<String> {
    last_seen(i).get_all(name).iter().map(|v| v.to_str().unwrap().to_owned()).collect()
}

/// F5: a request asking to switch to a protocol off the allow-list (`h2c` here) is served as a
/// plain request, its `Upgrade` and `Connection: upgrade` not forwarded; `websocket` switches.
#[tokio::test]
async fn upgrades_off_the_allow_list_are_served_as_plain_requests() {
    let (i, gw) = one_instance(|_| {}).await;
    let request = format!(
        "GET /upgrade HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\n\
         HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    );
    let answer = raw(gw.addr(), request.as_bytes()).await;
    assert_eq!(status_and_body(&answer), ("HTTP/1.1 200 OK", "Konnichiwa from hello-a"), "{answer}");
    let seen = last_seen(&i);
    for name in ["upgrade", "connection", "http2-settings"] {
        assert!(!seen.contains_key(name), "{name} was forwarded: {seen:?}");
    }
    // `websocket, h2c`: the instance could pick h2c, so it is not asked either.
    let (_, head) = upgrade_to(gw.addr(), HOST, "/upgrade", "websocket, h2c", b"").await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    let (_, head) = upgrade_to(gw.addr(), HOST, "/upgrade", "WebSocket", b"").await;
    assert!(head.starts_with("http/1.1 101 switching protocols\r\n"), "{head}");
    // Other protocols when both proxies are configured to let them through.
    let allowed = vec!["websocket".to_owned(), "echo".to_owned()];
    let backend = backend("echo-a").await;
    let mut qp = qp_config("echo-a", "node1", "hello-00001", backend.addr, 0);
    qp.upgrades = allowed.clone();
    let qp = start_qp(qp).await;
    wait_ready(&qp).await;
    let mut config = GatewayConfig::single("node1");
    config.edge.upgrades = allowed;
    let gw = gateway(config, Arc::new(NoEvents)).await;
    gw.set_routes(&hello_routes(
        vec![revision("hello-00001", 0, vec![route("echo-a", 0, qp.addr())])],
        all_to("hello-00001"),
    ))
    .unwrap();
    let (_, head) = upgrade_to(gw.addr(), HOST, "/upgrade", "echo", b"").await;
    assert!(head.starts_with("http/1.1 101 switching protocols\r\n"), "{head}");
}

/// F13: a client listing `Host` in `Connection` does not make the instance see the queue proxy's
/// address as its host.
#[tokio::test]
async fn host_listed_in_connection_still_reaches_the_instance() {
    let (i, gw) = one_instance(|_| {}).await;
    let answer = raw(
        gw.addr(),
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: host, close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_and_body(&answer), ("HTTP/1.1 200 OK", "Konnichiwa from hello-a"), "{answer}");
    assert_eq!(seen_all(&i, "host"), [HOST]);
}

/// The forwarding headers of a request that says it came through 6.6.6.6 over HTTPS.
fn forged() -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\n\
         Forwarded: for=6.6.6.6;proto=https\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: evil.example\r\nConnection: close\r\n\r\n"
    )
}

/// F8: by default no client is trusted: its forwarding headers are replaced by what the gateway
/// saw, `X-Forwarded-For` in one field.
#[tokio::test]
async fn an_untrusted_clients_forwarding_headers_are_replaced() {
    let (i, gw) = one_instance(|_| {}).await;
    let answer = raw(gw.addr(), forged().as_bytes()).await;
    assert_eq!(status_and_body(&answer).0, "HTTP/1.1 200 OK", "{answer}");
    assert_eq!(seen_all(&i, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen_all(&i, "x-forwarded-proto"), ["http"]);
    for name in ["forwarded", "x-real-ip", "x-forwarded-host"] {
        assert_eq!(seen_all(&i, name), Vec::<String>::new(), "{name}");
    }
}

/// F8: a trusted proxy's forwarding headers go on, and the gateway appends its peer to the last
/// `X-Forwarded-For` value, in one field (readers of the first field line see the whole list).
#[tokio::test]
async fn a_trusted_proxys_forwarding_headers_go_on_with_forwarded_for_in_one_field() {
    let (i, gw) = one_instance(|c| c.edge.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let answer = raw(gw.addr(), forged().as_bytes()).await;
    assert_eq!(status_and_body(&answer).0, "HTTP/1.1 200 OK", "{answer}");
    assert_eq!(seen_all(&i, "x-forwarded-for"), ["6.6.6.6, 7.7.7.7, 127.0.0.1"]);
    assert_eq!(seen_all(&i, "x-forwarded-proto"), ["https"]);
    assert_eq!(seen_all(&i, "forwarded"), ["for=6.6.6.6;proto=https"]);
    assert_eq!(seen_all(&i, "x-real-ip"), ["6.6.6.6"]);
    assert_eq!(seen_all(&i, "x-forwarded-host"), ["evil.example"]);
}

/// F14: the queue proxy's `x-ikukantai-*` headers do not reach clients unless configured, and the
/// gateway reads them all the same.
#[tokio::test]
async fn internal_response_headers_reach_clients_only_when_configured() {
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    let (_i, gw) = one_instance(|_| {}).await;
    let answer = raw(gw.addr(), request.as_bytes()).await;
    assert_eq!(status_and_body(&answer), ("HTTP/1.1 200 OK", "Konnichiwa from hello-a"), "{answer}");
    assert!(!answer.to_ascii_lowercase().contains("x-ikukantai-"), "{answer}");
    let (_i, gw) = one_instance(|c| c.edge.internal_headers = true).await;
    let answer = raw(gw.addr(), request.as_bytes()).await;
    for name in ["x-ikukantai-instance: hello-a", "x-ikukantai-node: node1", "x-ikukantai-load: 1"] {
        assert!(answer.contains(&format!("\r\n{name}\r\n")), "{name}: {answer}");
    }
    assert!(answer.contains("\r\nx-ikukantai-service-time: "), "{answer}");
}

/// F15: `K-Network-Probe` from a client never reaches the queue proxy: the instance answers.
#[tokio::test]
async fn a_clients_probe_header_is_not_forwarded() {
    let (i, gw) = one_instance(|_| {}).await;
    let answer = raw(
        gw.addr(),
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nK-Network-Probe: queue\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(status_and_body(&answer), ("HTTP/1.1 200 OK", "Konnichiwa from hello-a"), "{answer}");
    assert_eq!(seen_all(&i, "k-network-probe"), Vec::<String>::new());
}

/// F17: a tunnel that carries nothing for the gateway's idle timeout is cut, and its request
/// leaves the in-flight counts.
#[tokio::test]
async fn a_quiet_tunnel_is_cut_at_the_gateway_after_its_idle_timeout() {
    let (i, gw) =
        one_instance(|c| c.edge.tunnel_idle_timeout = Some(std::time::Duration::from_millis(300))).await;
    let (mut s, head) = upgrade(gw.addr(), HOST, "/upgrade", b"").await;
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    assert_eq!(read_exactly(&mut s, 19).await, "hello from hello-a;");
    let started = std::time::Instant::now();
    assert_eq!(read_exactly(&mut s, 1).await, "", "cut");
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    until_gauge(gw.admin_addr(), "ikukantai_gateway_open_tunnels{", 0, "the tunnel closed").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while i.qp.in_flight() > 0 {
        assert!(std::time::Instant::now() < deadline, "the instance still counts the tunnel");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// I3: a client whose chunked body breaks its framing gets a 400, not a 502 blaming the instance.
#[tokio::test]
async fn a_broken_request_body_is_the_clients_400() {
    let (_i, gw) = one_instance(|_| {}).await;
    let answer = raw(
        gw.addr(),
        format!("POST /echo HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n")
            .as_bytes(),
    )
    .await;
    let (status, body) = status_and_body(&answer);
    assert_eq!(status, "HTTP/1.1 400 Bad Request", "{answer}");
    assert!(body.starts_with("request body: "), "{answer}");
    let (_, _, metrics) = get(gw.admin_addr(), "admin", "/metrics").await;
    assert_eq!(
        metric(&metrics, "ikukantai_gateway_rejected_requests_total{", "reason=\"bad_request\""),
        Some("1")
    );
    assert_eq!(metric(&metrics, "ikukantai_gateway_rejected_requests_total{", "reason=\"upstream\""), None);
}

/// Tag routes that collide with another Service's host: tag `t` of Service `tagd` routes
/// `t-tagd…`, which is Service `t-tagd`'s own host. Neither wins by the order routes come in: the
/// host routes to neither, says why, and is counted.
#[tokio::test]
async fn a_host_two_routes_claim_routes_to_neither() {
    use ikukantai_dataplane::gateway::{RouteTarget, Routes, ServiceRoute};
    let a = instance("tagd-a", "node1", "tagd-00001", 0).await;
    let b = instance("t-tagd-a", "node1", "t-tagd-00001", 0).await;
    let gw = gateway(GatewayConfig::single("node1"), Arc::new(NoEvents)).await;
    let mut rev_a = revision("tagd-00001", 0, vec![route("tagd-a", 0, a.qp.addr())]);
    rev_a.service = "tagd".into();
    let mut rev_b = revision("t-tagd-00001", 0, vec![route("t-tagd-a", 0, b.qp.addr())]);
    rev_b.service = "t-tagd".into();
    let service = |name: &str, revision: &str, tag: Option<&str>| ServiceRoute {
        namespace: "default".into(),
        name: name.into(),
        traffic: vec![RouteTarget { revision: revision.into(), percent: 100, tag: tag.map(Into::into) }],
    };
    for order in [[0, 1], [1, 0]] {
        let services = [service("tagd", "tagd-00001", Some("t")), service("t-tagd", "t-tagd-00001", None)];
        let routes = Routes {
            services: order.iter().map(|&i| services[i].clone()).collect(),
            revisions: vec![rev_a.clone(), rev_b.clone()],
        };
        gw.set_routes(&routes).unwrap();
        let answer = raw(
            gw.addr(),
            b"GET / HTTP/1.1\r\nHost: t-tagd.default.example.com\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(
            status_and_body(&answer),
            (
                "HTTP/1.1 404 Not Found",
                "host \"t-tagd.default.example.com\" is claimed by Service default/t-tagd and tag \"t\" of Service default/tagd, so it routes to neither\n"
            ),
            "{order:?}: {answer}"
        );
        // The Services' other hosts are unaffected.
        let answer =
            raw(gw.addr(), b"GET / HTTP/1.1\r\nHost: tagd.default.example.com\r\nConnection: close\r\n\r\n")
                .await;
        assert_eq!(status_and_body(&answer), ("HTTP/1.1 200 OK", "Konnichiwa from tagd-a"), "{answer}");
        assert_eq!(gateway_gauge(gw.admin_addr(), "ikukantai_gateway_ambiguous_hosts ").await, 4);
    }
}
