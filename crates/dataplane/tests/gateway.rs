//! The gateway on loopback: routing, traffic split, scale from zero, overflow, timeouts, client
//! disconnect, limits, streaming, cross-node links and locality.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use ikukantai_api::topology::LinkProperties;
use ikukantai_dataplane::gateway::{
    GatewayConfig, GatewayEvents, Links, MemoryRelease, NoEvents, RouteTarget,
};
use ikukantai_dataplane::headers::{INSTANCE_HEADER, NODE_HEADER, PROXY_HEADER};
use ikukantai_link::link::Link;
use ikukantai_policy::estimate::RttMatrix;

const HOST: &str = "hello.default.example.com";

/// `config`, passing the queue proxy's `x-ikukantai-*` headers on to clients (which these tests
/// read to see where a request was served).
fn with_internal_headers(mut config: GatewayConfig) -> GatewayConfig {
    config.edge.internal_headers = true;
    config
}

/// A single-node gateway routing all of `hello` to one instance named `name` on node1.
async fn one_instance(name: &'static str) -> (Instance, ikukantai_dataplane::gateway::Gateway) {
    let i = instance(name, "node1", "hello-00001", 0).await;
    let gw = gateway(with_internal_headers(GatewayConfig::single("node1")), Arc::new(NoEvents)).await;
    gw.set_routes(&hello_routes(
        vec![revision("hello-00001", 0, vec![route(name, 0, i.qp.addr())])],
        all_to("hello-00001"),
    ))
    .unwrap();
    (i, gw)
}

#[tokio::test]
async fn routes_by_host_the_knative_way_and_404s_unknown_hosts() {
    let (i, gw) = one_instance("hello-a").await;
    for host in [
        HOST,
        "hello.default",
        "hello.default.svc",
        "hello.default.svc.cluster.local",
        "HELLO.default.example.com:8080",
    ] {
        let (status, headers, body) = get(gw.addr(), host, "/").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "Konnichiwa from hello-a"), "{host}");
        assert_eq!(header(&headers, INSTANCE_HEADER), "hello-a");
    }
    let (status, _, body) = get(gw.addr(), "nope.default.example.com", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, "no service answers to host \"nope.default.example.com\"\n");
    // The origin node travels with the request.
    let seen = i.backend.seen.headers.lock().unwrap().last().cloned().unwrap();
    assert_eq!(header(&seen, "x-ikukantai-origin"), "node1");
    assert_eq!(header(&seen, "x-forwarded-for"), "127.0.0.1");
}

#[tokio::test]
async fn the_gateways_own_headers_cannot_be_forged_and_forwarded_for_is_set() {
    let (i, gw) = one_instance("hello-a").await;
    let req = Request::get(format!("http://{}/", gw.addr()))
        .header("host", HOST)
        .header("x-ikukantai-origin", "node9")
        .header(PROXY_HEADER, "activator")
        .header("x-forwarded-for", "10.0.0.7")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();
    let seen = i.backend.seen.headers.lock().unwrap().last().cloned().unwrap();
    let all =
        |name: &str| seen.get_all(name).iter().map(|v| v.to_str().unwrap().to_owned()).collect::<Vec<_>>();
    assert_eq!(all("x-ikukantai-origin"), ["node1"]);
    assert_eq!(all(PROXY_HEADER), Vec::<String>::new(), "the queue proxy keeps the mark to itself");
    // Not from a trusted proxy: the client's X-Forwarded-For is replaced by what the gateway saw.
    assert_eq!(all("x-forwarded-for"), ["127.0.0.1"]);
    // The forged activator mark did not make the instance count the request as proxied.
    let stat = i.qp.report();
    assert!(stat.requests > 0.0 && stat.proxied_requests == 0.0, "{stat:?}");
}

#[tokio::test]
async fn traffic_is_split_by_percent_and_tags_pin_a_revision() {
    let a = instance("rev1-a", "node1", "hello-00001", 0).await;
    let b = instance("rev2-a", "node1", "hello-00002", 0).await;
    let gw = gateway(with_internal_headers(GatewayConfig::single("node1")), Arc::new(NoEvents)).await;
    let traffic = vec![
        RouteTarget { revision: "hello-00001".into(), percent: 80, tag: Some("blue".into()) },
        RouteTarget { revision: "hello-00002".into(), percent: 20, tag: Some("green".into()) },
    ];
    gw.set_routes(&hello_routes(
        vec![
            revision("hello-00001", 0, vec![route("rev1-a", 0, a.qp.addr())]),
            revision("hello-00002", 0, vec![route("rev2-a", 0, b.qp.addr())]),
        ],
        traffic,
    ))
    .unwrap();
    let mut first = 0;
    for _ in 0..400 {
        if get(gw.addr(), HOST, "/").await.2 == "Konnichiwa from rev1-a" {
            first += 1;
        }
    }
    assert!((280..=360).contains(&first), "80 % of 400 expected, got {first}");
    for _ in 0..20 {
        assert_eq!(get(gw.addr(), "green-hello.default.example.com", "/").await.2, "Konnichiwa from rev2-a");
    }
}

/// Records demand events and, on the first, starts an instance and routes to it.
struct ScaleFromZero {
    demands: Mutex<Vec<(String, String, usize)>>,
    started: tokio::sync::mpsc::UnboundedSender<()>,
}

impl GatewayEvents for ScaleFromZero {
    fn demand(&self, namespace: &str, revision: &str, origin: usize) {
        self.demands.lock().unwrap().push((namespace.into(), revision.into(), origin));
        let _ = self.started.send(());
    }
}

#[tokio::test]
async fn scale_from_zero_buffers_pokes_at_once_and_forwards_when_ready() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let events = Arc::new(ScaleFromZero { demands: Mutex::default(), started: tx });
    let gw = Arc::new(gateway(with_internal_headers(GatewayConfig::single("node3")), events.clone()).await);
    gw.set_routes(&hello_routes(vec![revision("hello-00001", 0, vec![])], all_to("hello-00001"))).unwrap();

    let addr = gw.addr();
    let request = tokio::spawn(async move { get(addr, HOST, "/").await });
    // The control plane hears about the demand before any instance exists...
    rx.recv().await.unwrap();
    assert_eq!(events.demands.lock().unwrap()[0], ("default".to_owned(), "hello-00001".to_owned(), 0));
    // ...starts one, and routes to it.
    let i = instance("hello-cold", "node3", "hello-00001", 0).await;
    gw.set_routes(&hello_routes(
        vec![revision("hello-00001", 0, vec![route("hello-cold", 0, i.qp.addr())])],
        all_to("hello-00001"),
    ))
    .unwrap();
    let (status, headers, body) = request.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "Konnichiwa from hello-cold"));
    assert_eq!(header(&headers, NODE_HEADER), "node3");
    // The activator counted the request while it waited, the instance from when it got there:
    // once each, and the link between them in neither.
    let stat = i.qp.report();
    assert!(stat.requests > 0.0 && stat.proxied_requests == 0.0, "{stat:?}");
    let reports = gw.report();
    assert!(reports[0].activator.requests > 0.0, "{reports:?}");
    // No request since: nothing to report (a revision without requests costs no allocation).
    let reports = gw.report();
    assert!(reports.is_empty(), "{reports:?}");
}

#[tokio::test]
async fn requests_for_a_revision_that_cannot_start_are_answered_at_once_with_its_error() {
    let gw = Arc::new(gateway(GatewayConfig::single("node1"), Arc::new(NoEvents)).await);
    let mut rev = revision("hello-00001", 0, vec![]);
    rev.timeout = Duration::from_secs(300);
    gw.set_routes(&hello_routes(vec![rev.clone()], all_to("hello-00001"))).unwrap();
    let addr = gw.addr();
    // Waiting for a first instance when the revision fails: answered then, not at the timeout.
    let waiting = tokio::spawn(async move { get(addr, HOST, "/").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    rev.failure = Some("exited (exit status: 3) — last output: \"boom\"".into());
    gw.set_routes(&hello_routes(vec![rev], all_to("hello-00001"))).unwrap();
    let (status, _, body) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body.trim(),
        "revision hello-00001 cannot start: exited (exit status: 3) — last output: \"boom\""
    );
    // And so is every later one.
    let (status, _, body) = get(addr, HOST, "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("cannot start"), "{body}");
    let (_, _, metrics) = get(gw.admin_addr(), "admin", "/metrics").await;
    assert!(metrics.contains("reason=\"failed\"} 2"), "{metrics}");
}

#[tokio::test]
async fn full_activator_queue_gives_503_and_waiting_past_the_timeout_504() {
    let mut config = GatewayConfig::single("node1");
    config.queue_depth = 2;
    let gw = Arc::new(gateway(config, Arc::new(NoEvents)).await);
    let mut rev = revision("hello-00001", 0, vec![]);
    rev.timeout = Duration::from_millis(500);
    gw.set_routes(&hello_routes(vec![rev], all_to("hello-00001"))).unwrap();
    let addr = gw.addr();
    let waiting: Vec<_> = (0..2).map(|_| tokio::spawn(async move { get(addr, HOST, "/").await })).collect();
    // Give both a place in the queue.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _, body) = get(addr, HOST, "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("2 requests are already waiting"), "{body}");
    for w in waiting {
        let (status, _, body) = w.await.unwrap();
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert!(
            body.contains(
                "no instance of revision hello-00001 became ready within the 500ms request timeout"
            ),
            "{body}"
        );
    }
    let (_, _, metrics) = get(gw.admin_addr(), "admin", "/metrics").await;
    assert!(metrics.contains("ikukantai_gateway_rejected_requests_total{namespace=\"default\",service=\"hello\",reason=\"queue_full\"} 1"), "{metrics}");
    assert!(metrics.contains("reason=\"timeout\"} 2"), "{metrics}");
}

static RELEASES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn count_release() {
    RELEASES.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test]
async fn http1_requests_that_park_in_a_deep_queue_release_freed_memory() {
    let mut config = GatewayConfig::single("node1");
    config.memory_release = Some(MemoryRelease { release: count_release, from_depth: 2 });
    let gw = Arc::new(gateway(config, Arc::new(NoEvents)).await);
    let mut rev = revision("hello-00001", 0, vec![]);
    rev.timeout = Duration::from_secs(2);
    gw.set_routes(&hello_routes(vec![rev], all_to("hello-00001"))).unwrap();
    let (addr, admin) = (gw.addr(), gw.admin_addr());
    let buffered = || async move {
        let (_, _, metrics) = get(admin, "admin", "/metrics").await;
        metric(&metrics, "ikukantai_gateway_buffered_requests{", "")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
    };
    let until_buffered = |n: usize| async move {
        for _ in 0..2000 {
            if buffered().await >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the gateway never had {n} requests waiting");
    };
    // One at a time, so that each knows how many wait ahead of it: 0, 1, 2 and 3.
    let mut waiting = Vec::new();
    for n in 1..=4 {
        waiting.push(tokio::spawn(async move { get(addr, HOST, "/").await.0 }));
        until_buffered(n).await;
    }
    // Those with 2 and 3 ahead released memory; the first two did not.
    assert_eq!(RELEASES.load(Ordering::SeqCst), 2);
    // HTTP/2 streams share their connection's buffers: none to give back.
    // The `:authority` names the service (it wins over `host`).
    let req = Request::builder()
        .uri(format!("http://{HOST}/"))
        .version(http::Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let h2_request = tokio::spawn(h2_send(addr, req));
    until_buffered(5).await;
    assert_eq!(RELEASES.load(Ordering::SeqCst), 2);
    // Parked requests behave as ever: no instance came, so each gets its 504.
    for w in waiting {
        assert_eq!(w.await.unwrap(), StatusCode::GATEWAY_TIMEOUT);
    }
    assert_eq!(h2_request.await.unwrap().unwrap().status(), StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn full_instances_make_requests_wait_for_a_slot() {
    let i = instance("one-slot", "node1", "hello-00001", 1).await;
    let mut config = GatewayConfig::single("node1");
    config.policy.seed = 3;
    let gw = Arc::new(gateway(config, Arc::new(NoEvents)).await);
    let mut rev = revision("hello-00001", 1, vec![route("one-slot", 0, i.qp.addr())]);
    rev.balancer = "even".into();
    gw.set_routes(&hello_routes(vec![rev], all_to("hello-00001"))).unwrap();
    let addr = gw.addr();
    let requests: Vec<_> =
        (0..4).map(|_| tokio::spawn(async move { get(addr, HOST, "/sleep/50").await })).collect();
    for r in requests {
        assert_eq!(r.await.unwrap().0, StatusCode::OK);
    }
    // cc = 1: the gateway never had more than one request at the instance.
    assert_eq!(i.backend.seen.requests.load(Ordering::SeqCst), 4);
    let (_, _, metrics) = get(gw.admin_addr(), "admin", "/metrics").await;
    assert!(metrics.contains("ikukantai_gateway_activator_requests_total{namespace=\"default\",service=\"hello\",revision=\"hello-00001\"} 3"), "{metrics}");
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_request() {
    let (i, gw) = one_instance("hanging").await;
    let addr = gw.addr();
    let request = tokio::spawn(async move { get(addr, HOST, "/hang").await });
    while i.backend.seen.requests.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    request.abort();
    let deadline = Instant::now() + Duration::from_secs(10);
    while i.backend.seen.cancelled.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the instance never saw the cancellation");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while i.qp.in_flight() > 0 {
        assert!(Instant::now() < deadline, "the queue proxy still counts the request");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn oversized_headers_get_431_and_bodies_413() {
    let i = instance("limits", "node1", "hello-00001", 0).await;
    let mut config = GatewayConfig::single("node1");
    config.max_header_bytes = 16 * 1024;
    config.max_body_bytes = 1024;
    let gw = gateway(config, Arc::new(NoEvents)).await;
    gw.set_routes(&hello_routes(
        vec![revision("hello-00001", 0, vec![route("limits", 0, i.qp.addr())])],
        all_to("hello-00001"),
    ))
    .unwrap();
    let big = "x".repeat(32 * 1024);
    let req = Request::get(format!("http://{}/", gw.addr()))
        .header("host", HOST)
        .header("x-big", big)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    // Declared too large: refused before anything is forwarded.
    let req = Request::post(format!("http://{}/echo", gw.addr()))
        .header("host", HOST)
        .body(Full::new(Bytes::from(vec![1u8; 2048])))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&text[..], b"request body of 2048 bytes is larger than the 1024-byte limit\n");

    // Streamed without a length: cut when it passes the limit.
    let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
        (0..4).map(|_| Ok(Frame::data(Bytes::from(vec![7u8; 512])))).collect();
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let streaming = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, StreamBody<_>>(hyper_util::client::legacy::connect::HttpConnector::new());
    let req = Request::post(format!("http://{}/echo", gw.addr())).header("host", HOST).body(body).unwrap();
    match streaming.request(req).await {
        Ok(resp) => {
            // Either the gateway answered 413 before the instance did, or the response stream is cut.
            if resp.status() != StatusCode::PAYLOAD_TOO_LARGE {
                assert!(resp.into_body().collect().await.is_err(), "an over-long body must not pass whole");
            }
        }
        Err(e) => panic!("{e}"),
    }

    // Small bodies pass both ways.
    let req = Request::post(format!("http://{}/echo", gw.addr()))
        .header("host", HOST)
        .body(Full::new(Bytes::from_static(b"ping")))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), Bytes::from_static(b"ping"));
}

#[tokio::test]
async fn responses_stream_without_buffering() {
    let (i, gw) = one_instance("streamer").await;
    let req = Request::get(format!("http://{}/stream", gw.addr()))
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut body = client().request(req).await.unwrap().into_body();
    // The first chunk arrives while the instance is still holding back the second one.
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"first;");
    i.backend.release.send(()).await.unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"second");
}

fn two_nodes(me: usize, rtt_ms: u64) -> GatewayConfig {
    let props =
        LinkProperties { rtt: Duration::from_millis(rtt_ms), jitter: Duration::ZERO, bandwidth: None };
    let mut rtt = RttMatrix::new(2, rtt_ms as f64, Duration::from_secs(30));
    rtt.set_prior(0, 0, 0.0);
    rtt.set_prior(1, 1, 0.0);
    GatewayConfig {
        nodes: vec!["cloud".into(), "edge".into()],
        node: me,
        links: Links::Emulated(Arc::new(move |n, _| (n != me).then(|| Link::new(&props, 9)))),
        rtt,
        ..with_internal_headers(GatewayConfig::single("unused"))
    }
}

#[tokio::test]
async fn cross_node_requests_cross_the_emulated_link() {
    let cloud = instance("hello-cloud", "cloud", "hello-00001", 0).await;
    let gw = gateway(two_nodes(1, 30), Arc::new(NoEvents)).await;
    gw.set_routes(&hello_routes(
        vec![revision("hello-00001", 0, vec![route("hello-cloud", 0, cloud.qp.addr())])],
        all_to("hello-00001"),
    ))
    .unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let (status, headers, _) = get(gw.addr(), HOST, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&headers, NODE_HEADER), "cloud");
        assert!(t.elapsed() >= Duration::from_millis(30), "a cloud round trip from the edge costs the RTT");
    }
    let (_, _, metrics) = get(gw.admin_addr(), "admin", "/metrics").await;
    assert!(metrics.contains("origin_node=\"edge\",serving_node=\"cloud\",code=\"200\"} 3"), "{metrics}");
}

#[tokio::test]
async fn a_node_that_joins_is_learned_and_routed_to() {
    let local = instance("hello-local", "node1", "hello-00001", 0).await;
    let joined = instance("hello-joined", "node2", "hello-00001", 0).await;
    let gw = gateway(with_internal_headers(GatewayConfig::single("node1")), Arc::new(NoEvents)).await;
    let with_joined = || {
        hello_routes(
            vec![revision(
                "hello-00001",
                0,
                vec![route("hello-local", 0, local.qp.addr()), route("hello-joined", 1, joined.qp.addr())],
            )],
            all_to("hello-00001"),
        )
    };
    gw.set_routes(&hello_routes(
        vec![revision("hello-00001", 0, vec![route("hello-local", 0, local.qp.addr())])],
        all_to("hello-00001"),
    ))
    .unwrap();
    // An instance on a node the gateway does not know is refused, and the table stays as it was.
    let err = gw.set_routes(&with_joined()).unwrap_err().to_string();
    assert_eq!(
        err,
        "revision hello-00001: instance hello-joined is on node #1, but this gateway knows 1 nodes"
    );
    assert_eq!(get(gw.addr(), HOST, "/").await.0, StatusCode::OK);

    assert_eq!(gw.add_node("node2", 5.0), 1);
    assert_eq!(gw.add_node("node2", 9.0), 1, "a known node keeps its index");
    assert_eq!(gw.add_node("node1", 9.0), 0);
    assert_eq!(gw.nodes(), vec!["node1".to_owned(), "node2".to_owned()]);
    assert_eq!(gw.node_index("node2"), Some(1));
    gw.set_routes(&with_joined()).unwrap();
    // Only the joined node's instance is left: requests go there, and metrics name the node.
    gw.set_routes(&hello_routes(
        vec![revision("hello-00001", 0, vec![route("hello-joined", 1, joined.qp.addr())])],
        all_to("hello-00001"),
    ))
    .unwrap();
    let (status, headers, _) = get(gw.addr(), HOST, "/").await;
    assert_eq!((status, header(&headers, NODE_HEADER).as_str()), (StatusCode::OK, "node2"));
    gw.record_rtt(1, 12.5);
    let (_, _, metrics) = get(gw.admin_addr(), "admin", "/metrics").await;
    assert!(metrics.contains("origin_node=\"node1\",serving_node=\"node2\",code=\"200\"} 1"), "{metrics}");
    assert!(metrics.contains("latency_between_nodes{from=\"node1\",to=\"node2\"} 12.5"), "{metrics}");
}

#[tokio::test]
async fn the_default_balancer_keeps_traffic_local() {
    let cloud = instance("hello-cloud", "cloud", "hello-00001", 0).await;
    let edge = instance("hello-edge", "edge", "hello-00001", 0).await;
    let gw = gateway(two_nodes(1, 30), Arc::new(NoEvents)).await;
    gw.set_routes(&hello_routes(
        vec![revision(
            "hello-00001",
            0,
            vec![route("hello-cloud", 0, cloud.qp.addr()), route("hello-edge", 1, edge.qp.addr())],
        )],
        all_to("hello-00001"),
    ))
    .unwrap();
    for _ in 0..20 {
        let (_, headers, _) = get(gw.addr(), HOST, "/").await;
        assert_eq!(header(&headers, NODE_HEADER), "edge");
    }
    assert_eq!(cloud.backend.seen.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn h2c_clients_are_served_too() {
    let (_i, gw) = one_instance("h2").await;
    let req = Request::builder()
        .uri(format!("http://{HOST}/"))
        .version(http::Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = h2_send(gw.addr(), req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"Konnichiwa from h2");
}

/// The gateway's in-flight gauge for `hello-00001`, from its metrics.
async fn gateway_in_flight(gw: &ikukantai_dataplane::gateway::Gateway) -> String {
    let (_, _, metrics) = get(gw.admin_addr(), "admin", "/metrics").await;
    metric(&metrics, "ikukantai_gateway_in_flight_requests{", "hello-00001").unwrap_or("").to_owned()
}

#[tokio::test]
async fn upgrades_such_as_websocket_are_tunnelled_and_count_in_flight_while_open() {
    use tokio::io::AsyncWriteExt;
    let (i, gw) = one_instance("hello-a").await;
    let (mut s, head) = upgrade(gw.addr(), HOST, "/upgrade", b"early;").await;
    assert!(head.starts_with("http/1.1 101 switching protocols\r\n"), "{head}");
    assert!(
        head.contains("\r\nupgrade: websocket\r\n") && head.contains("\r\nconnection: upgrade\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nx-ikukantai-instance: hello-a\r\n"), "{head}");
    // Bytes sent right behind the request head were not lost in either proxy's buffer.
    assert_eq!(read_exactly(&mut s, 25).await, "hello from hello-a;early;");
    for word in ["ping", "pong", "a longer message"] {
        s.write_all(word.as_bytes()).await.unwrap();
        assert_eq!(read_exactly(&mut s, word.len()).await, word);
    }
    // The instance saw the protocol asked for, and the tunnel is one request in flight at both
    // proxies (the balancer and containerConcurrency see it).
    let seen = i.backend.seen.headers.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (header(&seen, "upgrade"), header(&seen, "connection")),
        ("websocket".into(), "upgrade".into())
    );
    assert_eq!((i.qp.in_flight(), gateway_in_flight(&gw).await.as_str()), (1, "1"));
    // Counted as a request already (with the time to its 101), and as an open tunnel.
    let (_, _, metrics) = get(gw.admin_addr(), "admin", "/metrics").await;
    assert!(metrics.contains("code=\"101\"} 1"), "the 101 is counted when passed on: {metrics}");
    assert_eq!(metric(&metrics, "ikukantai_gateway_open_tunnels{", "hello"), Some("1"));
    // The client closes: the instance's side ends too, and nothing is in flight any more.
    s.shutdown().await.unwrap();
    assert_eq!(read_exactly(&mut s, 1).await, "", "closed through to the instance and back");
    drop(s);
    while i.qp.in_flight() > 0 || gateway_in_flight(&gw).await != "0" {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (_, _, metrics) = get(gw.admin_addr(), "admin", "/metrics").await;
    assert!(metrics.contains("code=\"101\"} 1"), "counted once: {metrics}");
    assert!(!metrics.contains("code=\"101\"} 2"), "{metrics}");
    // The tunnel's own metrics: closed, one duration, its bytes each way ("early;" and the
    // words from the client; the greeting, "early;" and the words back).
    assert_eq!(metric(&metrics, "ikukantai_gateway_open_tunnels{", "hello"), Some("0"));
    assert_eq!(metric(&metrics, "ikukantai_gateway_tunnel_duration_seconds_count{", "hello"), Some("1"));
    assert_eq!(metric(&metrics, "ikukantai_gateway_tunnel_from_client_bytes_total{", "hello"), Some("30"));
    assert_eq!(metric(&metrics, "ikukantai_gateway_tunnel_to_client_bytes_total{", "hello"), Some("49"));
    let (_, _, qp_metrics) = get(i.qp.admin_addr(), "admin", "/metrics").await;
    assert_eq!(metric(&qp_metrics, "ikukantai_queue_tunnel_from_client_bytes_total{", "hello"), Some("30"));
}

#[tokio::test]
async fn an_upgrade_the_instance_declines_leaves_the_connection_in_http() {
    use tokio::io::AsyncWriteExt;
    let (_i, gw) = one_instance("hello-a").await;
    // `/` answers 200, not 101: the connection stays HTTP/1.1 and serves the next request.
    let (mut s, head) = upgrade(gw.addr(), HOST, "/", b"").await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(!head.contains("upgrade"), "{head}");
    assert_eq!(read_exactly(&mut s, 23).await, "Konnichiwa from hello-a");
    s.write_all(format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes()).await.unwrap();
    let next = read_exactly(&mut s, 17).await;
    assert_eq!(next.to_ascii_lowercase(), "http/1.1 200 ok\r\n");
}

#[tokio::test]
async fn tunnels_are_cut_when_the_gateway_shuts_down() {
    let (_i, gw) = one_instance("hello-a").await;
    let (mut s, head) = upgrade(gw.addr(), HOST, "/upgrade", b"").await;
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    assert_eq!(read_exactly(&mut s, 19).await, "hello from hello-a;");
    tokio::time::timeout(Duration::from_secs(5), gw.shutdown()).await.expect("shutdown ends");
    assert_eq!(read_exactly(&mut s, 1).await, "", "the tunnel closed");
}
