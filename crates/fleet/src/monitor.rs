//! The latency monitor of the local fleet: every node's gateway runs the shared monitor
//! (`ikukantai_dataplane::monitor`), which probes at most a budget of peers per interval, spread
//! over it, through that node's links. Each result also goes to the fleet's matrix, which
//! placement decides with and `ikukantai latency` shows. One task per node: nothing here grows
//! with the number of pairs.

use std::ops::Deref;
use std::sync::Arc;

use ikukantai_dataplane::gateway::Gateway;
use ikukantai_dataplane::monitor::{self, Peer};

use crate::fleet::Fleet;

/// Node `node`'s gateway, held through the fleet.
#[derive(Clone)]
struct NodeGateway {
    fleet: Arc<Fleet>,
    node: usize,
}

impl Deref for NodeGateway {
    type Target = Gateway;

    fn deref(&self) -> &Gateway {
        self.fleet.gateway(self.node)
    }
}

/// Starts every node's monitor.
pub(crate) fn start(fleet: &Arc<Fleet>) {
    let n = fleet.options().topology.nodes.len();
    let peers: Arc<[Peer]> = (0..n).map(|i| Peer { node: i, admin: fleet.gateway(i).admin_addr() }).collect();
    for node in 0..n {
        let gateway = NodeGateway { fleet: fleet.clone(), node };
        let (peers, books) = (peers.clone(), fleet.clone());
        tokio::spawn(monitor::run(gateway, move || peers.to_vec(), move |m| books.record_measurement(m)));
    }
}
