//! The latency monitor on loopback: gateways probe the nodes their routes name through their
//! links, a newly routed node at once, and learn network coordinates from their random probes.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ikukantai_api::topology::LinkProperties;
use ikukantai_dataplane::gateway::{Gateway, GatewayConfig, Links, NoEvents};
use ikukantai_dataplane::headers::COORDINATE_HEADER;
use ikukantai_dataplane::monitor::{self, Measurement, Peer};
use ikukantai_link::link::Link;
use ikukantai_policy::estimate::{Coordinate, RttMatrix, RttSource};
use ikukantai_policy::probe::{ProbeParams, ProbeReason};

/// RTT between nodes `a` and `b` of the test fleet (ms).
fn rtt_ms(a: usize, b: usize) -> u64 {
    if a == b { 0 } else { 10 * (a + b) as u64 }
}

async fn fleet(n: usize, probe: ProbeParams) -> Vec<Arc<Gateway>> {
    let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
    let mut out = Vec::new();
    for i in 0..n {
        let links = Links::Emulated(Arc::new(move |j, salt| {
            let rtt = Duration::from_millis(rtt_ms(i, j));
            (i != j)
                .then(|| Link::new(&LinkProperties { rtt, jitter: Duration::ZERO, bandwidth: None }, salt))
        }));
        let config = GatewayConfig {
            nodes: names.clone(),
            node: i,
            links,
            rtt: RttMatrix::new(n, 1.0, probe.interval * 3),
            probe,
            ..GatewayConfig::single(&names[i])
        };
        out.push(Arc::new(gateway(config, Arc::new(NoEvents)).await));
    }
    out
}

type Seen = Arc<Mutex<Vec<Measurement>>>;

fn monitors(gateways: &[Arc<Gateway>]) -> Seen {
    let peers: Vec<Peer> =
        gateways.iter().enumerate().map(|(node, g)| Peer { node, admin: g.admin_addr() }).collect();
    let seen: Seen = Arc::default();
    for g in gateways {
        let (peers, seen) = (peers.clone(), seen.clone());
        tokio::spawn(monitor::run(
            g.clone(),
            move || peers.clone(),
            move |m| seen.lock().unwrap().push(m.clone()),
        ));
    }
    seen
}

/// Polls `ok` every 20 ms; panics with `what` after 10 s.
async fn until(what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "no {what} within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_nodes_are_measured_through_the_links_and_random_probes_teach_coordinates() {
    let params =
        ProbeParams { interval: Duration::from_millis(300), explore: 2, candidates: 1, ..Default::default() };
    let gateways = fleet(4, params).await;
    gateways[0]
        .set_routes(&hello_routes(
            vec![revision("hello-00001", 0, vec![route("far", 3, "127.0.0.1:9".parse().unwrap())])],
            all_to("hello-00001"),
        ))
        .unwrap();
    let seen = monitors(&gateways);
    until("measurement of the routed node", || {
        gateways[0].rtt_to(3, Instant::now()).source == RttSource::Measured
    })
    .await;
    let r = gateways[0].rtt_to(3, Instant::now());
    assert!(r.ms >= 30.0 && r.ms < 60.0, "a 30 ms link measured {r:?}");
    until("a coordinate learnt", || gateways.iter().all(|g| g.coordinate().error < 1.5)).await;

    let measured = seen.lock().unwrap().clone();
    assert!(
        measured.iter().all(|m| m.from != m.to && m.rtt_ms >= rtt_ms(m.from, m.to) as f64),
        "{measured:?}"
    );
    assert!(measured.iter().any(|m| m.reason == ProbeReason::Explore && m.peer.is_some()));
    // The peer's coordinate comes with its answer to `/healthz`.
    let (_, headers, _) = get(gateways[1].admin_addr(), "monitor", "/healthz").await;
    let c: Coordinate = header(&headers, COORDINATE_HEADER).parse().unwrap();
    assert_eq!(c.vec.len(), 8);
    let (_, _, metrics) = get(gateways[0].admin_addr(), "admin", "/metrics").await;
    assert!(metric(&metrics, "latency_between_nodes{", "to=\"n3\"").is_some(), "{metrics}");
    assert!(metric(&metrics, "ikukantai_gateway_coordinate_error", "").is_some(), "{metrics}");
    assert!(metric(&metrics, "ikukantai_gateway_probes_total{", "explore").is_some(), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_the_routes_name_anew_is_measured_at_once_not_at_the_next_round() {
    // Rounds a minute apart and nothing to explore: only an urgent probe measures node 2.
    let params =
        ProbeParams { interval: Duration::from_secs(60), explore: 0, candidates: 0, ..Default::default() };
    let gateways = fleet(3, params).await;
    let seen = monitors(&gateways);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(seen.lock().unwrap().is_empty(), "nothing needed, nothing probed");
    gateways[1]
        .set_routes(&hello_routes(
            vec![revision("hello-00001", 0, vec![route("i", 2, "127.0.0.1:9".parse().unwrap())])],
            all_to("hello-00001"),
        ))
        .unwrap();
    until("an urgent probe", || !seen.lock().unwrap().is_empty()).await;
    let m = seen.lock().unwrap()[0].clone();
    assert_eq!((m.from, m.to, m.reason), (1, 2, ProbeReason::New));
    assert_eq!(gateways[1].rtt_to(2, Instant::now()).source, RttSource::Measured);
}
