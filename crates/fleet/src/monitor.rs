//! The latency monitor (the original's monlat): every node measures the RTT to every other node
//! through the emulated links, by timing an HTTP request to the peer gateway's `/healthz` over a
//! connection that crosses the link. Results feed the balancers and placement, and are exported as
//! `latency_between_nodes{from,to}` in milliseconds.

use std::sync::Arc;

use ikukantai_link::connect::{NodeConnector, probe_rtt};
use ikukantai_link::link::Link;

use crate::fleet::Fleet;

/// Measures once from a node to gateway `to` through `link`.
async fn probe(fleet: &Fleet, link: &Link, to: usize) -> Option<f64> {
    probe_rtt(&NodeConnector::new(Some(link.clone())), fleet.gateway(to).admin_addr()).await
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
