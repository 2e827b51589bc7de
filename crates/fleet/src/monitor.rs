//! The latency monitor (the original's monlat): every node measures the RTT to every other node
//! through the emulated links, by timing an HTTP request to the peer gateway's `/healthz` over a
//! connection that crosses the link. Results feed the balancers and placement, and are exported as
//! `latency_between_nodes{from,to}` in milliseconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use ikukantai_dataplane::connect::NodeConnector;
use ikukantai_dataplane::link::Link;

use crate::fleet::Fleet;

/// Measures once from `from` to `to`: the time of one request/response on an open connection.
async fn probe(fleet: &Fleet, link: &Link, to: usize) -> Option<f64> {
    let addr = fleet.gateway(to).admin_addr();
    let stream = NodeConnector::new(Some(link.clone())).connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    let req = Request::get("/healthz").header("host", "monitor").body(Empty::<Bytes>::new()).ok()?;
    let started = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req)).await.ok()?.ok()?;
    let _ = resp.into_body().collect().await;
    Some(started.elapsed().as_secs_f64() * 1e3)
}

/// Probes every ordered pair of nodes every probe interval.
pub(crate) async fn run(fleet: Arc<Fleet>) {
    let topology = fleet.options().topology.clone();
    let n = topology.nodes.len();
    let seed = fleet.options().seed;
    let links: Vec<Vec<Option<Link>>> = (0..n)
        .map(|i| {
            (0..n)
                .map(|j| {
                    (i != j).then(|| {
                        Link::new(&topology.link(i, j), seed ^ 0x6d6f_6e6c_6174 ^ (i * n + j) as u64)
                    })
                })
                .collect()
        })
        .collect();
    let mut interval = tokio::time::interval(fleet.options().probe_interval);
    loop {
        interval.tick().await;
        let mut tasks = Vec::new();
        for (i, row) in links.iter().enumerate() {
            for (j, link) in row.iter().enumerate() {
                if let Some(link) = link.clone() {
                    let fleet = fleet.clone();
                    tasks.push(tokio::spawn(async move {
                        if let Some(ms) = probe(&fleet, &link, j).await {
                            fleet.record_rtt(i, j, ms);
                        }
                    }));
                }
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}
