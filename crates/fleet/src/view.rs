//! What the API returns: plain serializable views shared by the server and the CLI.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A node of the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Max instances.
    pub capacity: u32,
    /// Instances running now.
    pub instances: u32,
    /// Where its gateway takes traffic.
    pub gateway: SocketAddr,
    /// Its gateway's `/metrics` and `/healthz`.
    pub admin: SocketAddr,
}

/// An instance (one process and its queue proxy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service.
    pub service: String,
    /// Revision.
    pub revision: String,
    /// Node.
    pub node: String,
    /// `Starting`, `Ready`, `CrashLoopBackOff`, `Failed`, `Terminating` (out of the routes, being
    /// stopped).
    pub state: String,
    /// Why, when not ready.
    pub message: Option<String>,
    /// Restarts after crashes.
    pub restarts: u32,
    /// Its queue proxy.
    pub queue_proxy: SocketAddr,
    /// The process itself.
    pub address: SocketAddr,
    /// Process id, while running.
    pub pid: Option<u32>,
}

/// Desired and ready instances per node for one revision (the original's Seika).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacementView {
    /// Namespace.
    pub namespace: String,
    /// Service.
    pub service: String,
    /// Revision.
    pub revision: String,
    /// Node names, in topology order.
    pub nodes: Vec<String>,
    /// Ready instances per node.
    pub ready: Vec<u32>,
    /// Desired instances per node.
    pub desired: Vec<u32>,
    /// Demand (concurrency) by origin node over the stable window.
    pub demand: Vec<f64>,
}

impl PlacementView {
    /// `ready-per-node/desired-per-node`, e.g. `0-0-1/0-0-1`.
    pub fn summary(&self) -> String {
        let join = |v: &[u32]| v.iter().map(ToString::to_string).collect::<Vec<_>>().join("-");
        format!("{}/{}", join(&self.ready), join(&self.desired))
    }
}

/// A revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevisionView {
    /// Namespace.
    pub namespace: String,
    /// Service.
    pub service: String,
    /// Name.
    pub name: String,
    /// Configuration generation it was cut from.
    pub generation: u64,
    /// Ready instances.
    pub ready: u32,
    /// Desired instances.
    pub desired: u32,
    /// Share of the service's traffic, percent.
    pub traffic: u32,
    /// Balancer.
    pub balancer: String,
    /// Placement.
    pub placement: String,
    /// Queue discipline.
    pub queue: String,
}

/// RTTs between nodes (ms): measured, estimated from network coordinates, configured, and the
/// one decisions use with its source. Matrices are `[from][to]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyView {
    /// Node names.
    pub nodes: Vec<String>,
    /// The latest measurement while fresh, `None` before the first or once stale.
    pub measured: Vec<Vec<Option<f64>>>,
    /// The estimate of both nodes' coordinates, `None` while either has none.
    pub estimated: Vec<Vec<Option<f64>>>,
    /// The RTT balancing and placement use now.
    pub used: Vec<Vec<f64>>,
    /// Where `used` comes from: `measured`, `estimated`, `configured` (the prior) or `local`.
    pub source: Vec<Vec<String>>,
    /// From the topology.
    pub configured: Vec<Vec<f64>>,
    /// Each node's coordinate's estimate of its own relative error (0.1 = about 10 % off),
    /// `None` before its first probe.
    pub coordinate_error: Vec<Option<f64>>,
}

/// The answer to `apply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyResult {
    /// One line per document: `service/hello created`, `… unchanged`, `… configured`.
    pub lines: Vec<String>,
}

/// An API error body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong (may be several lines).
    pub error: String,
}
