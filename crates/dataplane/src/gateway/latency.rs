//! What a gateway knows of latency: the RTTs it measured, its own network coordinate (Vivaldi,
//! fed by its probes) and its peers' (from their answers), and which peers to probe next
//! (`policy::probe`). [`crate::monitor`] sends the probes; this is the state both runtimes share.

use std::time::Instant;

use http::HeaderValue;
use ikukantai_link::connect::NodeConnector;
use ikukantai_link::link::Link;
use ikukantai_policy::estimate::{
    Coordinate, MEASURED_SAMPLES, NodeIndex, PeerFilter, Rtt, Vivaldi, VivaldiParams,
};
use ikukantai_policy::probe::{Needs, PlannedProbe, ProbeParams, ProbePlanner, nearest};

use super::{Gateway, Shared};
use crate::metrics::LinkLabels;

/// The latency state behind the gateway's lock.
#[derive(Debug)]
pub(super) struct Latency {
    pub(super) vivaldi: Vivaldi,
    pub(super) planner: ProbePlanner,
    /// The last probes to each peer: what is recorded is their lower median, so one probe that
    /// waited for a busy CPU does not move the balancers.
    measured: PeerFilter,
    /// The routed nodes when the monitor last looked (a new one is probed at once).
    routed_seen: Vec<NodeIndex>,
}

impl Latency {
    pub(super) fn new(node: NodeIndex, probe: ProbeParams, vivaldi: VivaldiParams, seed: u64) -> Self {
        Self {
            vivaldi: Vivaldi::new(vivaldi, seed ^ node as u64),
            planner: ProbePlanner::new(node, probe, seed),
            measured: PeerFilter::new(MEASURED_SAMPLES, 2 * probe.budget),
            routed_seen: Vec::new(),
        }
    }
}

impl Shared {
    pub(super) fn latency(&self) -> parking_lot::MutexGuard<'_, Latency> {
        self.latency.lock()
    }

    /// The coordinate as the `/healthz` answer's header value.
    pub(super) fn coordinate_header(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&self.latency().vivaldi.coordinate().to_string()).ok()
    }

    /// How to reach `node`: the connector the routes made for it, else a new one (a probe to a
    /// node nobody routes to does not keep a link for it).
    fn connector_to(&self, node: NodeIndex) -> NodeConnector {
        if let Some(c) = self.nodes().connectors.get(node).and_then(Option::as_ref) {
            return c.clone();
        }
        NodeConnector::new(self.config.links.make(node, self.probes_made()))
    }
}

/// What a probe left in the gateway.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The RTT recorded: the lower median of the last few probes to the peer (ms).
    pub rtt_ms: f64,
    /// This node's coordinate after the probe.
    pub own: Coordinate,
}

/// How a gateway reaches the other nodes: directly, or through emulated links made when they are
/// first needed (a fleet of n nodes would otherwise hold n² links, most never used).
#[derive(Clone)]
pub enum Links {
    /// Plain TCP to every node (Kubernetes).
    Direct,
    /// An emulated link to node `i` from `make(i, salt)` (`None`: direct); `salt` tells links
    /// made for the same node apart (their jitter draws).
    Emulated(std::sync::Arc<dyn Fn(NodeIndex, u64) -> Option<Link> + Send + Sync>),
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Direct => "Links::Direct",
            Self::Emulated(_) => "Links::Emulated",
        })
    }
}

impl Links {
    /// The link to `node` (`None`: direct).
    pub fn make(&self, node: NodeIndex, salt: u64) -> Option<Link> {
        match self {
            Self::Direct => None,
            Self::Emulated(make) => make(node, salt),
        }
    }
}

impl Gateway {
    /// This gateway's node.
    pub fn node(&self) -> NodeIndex {
        self.shared.config.node
    }

    /// The name of node `i`, if this gateway knows it.
    pub fn node_name(&self, i: NodeIndex) -> Option<String> {
        self.shared.nodes().names.get(i).cloned()
    }

    /// How often its monitor plans a round of probes.
    pub fn probe_interval(&self) -> std::time::Duration {
        self.shared.config.probe.interval
    }

    /// This node's network coordinate now.
    pub fn coordinate(&self) -> Coordinate {
        self.shared.latency().vivaldi.coordinate().clone()
    }

    /// The RTT from this node to `to` the balancers use at `now`, and where it came from.
    pub fn rtt_to(&self, to: NodeIndex, now: Instant) -> Rtt {
        let node = self.shared.config.node;
        self.shared.rtt.read().lookup(node, to, now)
    }

    /// How to reach node `to` (through its link, if any).
    pub fn connector(&self, to: NodeIndex) -> NodeConnector {
        self.shared.connector_to(to)
    }

    /// Records one probe: `ms` to `to`, whose answer carried `peer`'s coordinate (if it did).
    /// The lower median of the last few probes to `to` goes to the balancers' matrix and to
    /// `latency_between_nodes`; with `learn` (a random probe, `policy::probe`), this node's
    /// coordinate learns from it too (through its own filter). Returns what was recorded.
    pub fn record_probe(
        &self,
        to: NodeIndex,
        ms: f64,
        peer: Option<&Coordinate>,
        learn: bool,
        now: Instant,
    ) -> Recorded {
        let (rtt_ms, own) = {
            let mut latency = self.shared.latency();
            let rtt_ms = latency.measured.push_median(to, ms);
            if let Some(peer) = peer.filter(|_| learn)
                && let Err(e) = latency.vivaldi.observe(to, peer, ms)
            {
                tracing::debug!(to, error = %e, "probe not used for the coordinates");
            }
            (rtt_ms, latency.vivaldi.coordinate().clone())
        };
        self.record_rtt_at(to, rtt_ms, now);
        self.shared.metrics.coordinate_error.set(own.error);
        let node = self.shared.config.node;
        let mut rtt = self.shared.rtt.write();
        rtt.set_coordinate(node, own.clone(), now);
        if let Some(peer) = peer {
            rtt.set_coordinate(to, peer.clone(), now);
        }
        Recorded { rtt_ms, own }
    }

    /// Records a measured RTT from this node to `to` (milliseconds), as it is.
    pub fn record_rtt(&self, to: NodeIndex, ms: f64) {
        self.record_rtt_at(to, ms, Instant::now());
    }

    fn record_rtt_at(&self, to: NodeIndex, ms: f64, now: Instant) {
        let node = self.shared.config.node;
        let Some(peer) = self.shared.nodes().names.get(to).cloned() else { return };
        let labels = LinkLabels { from: self.shared.node_name().to_owned(), to: peer };
        self.shared.metrics.latency.get_or_create(&labels).set(ms);
        self.shared.rtt.write().record(node, to, ms, now);
    }

    /// Nodes hosting instances this gateway routes to (the balancers' candidates).
    pub fn routed_nodes(&self) -> Vec<NodeIndex> {
        let table = self.shared.table.read();
        let mut nodes: Vec<NodeIndex> = Vec::new();
        for r in table.revisions.values() {
            nodes.extend(r.inner.lock().route.instances.iter().map(|i| i.node));
        }
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// The next round of probes among `peers` (the nodes that can be probed now), planned at
    /// `now`: see [`ProbePlanner::plan`].
    pub fn plan_probes(&self, now: Instant, peers: &[NodeIndex]) -> Vec<PlannedProbe> {
        self.plan(now, peers, false)
    }

    /// Probes for nodes routed to since the last plan that were never measured or are stale:
    /// see [`ProbePlanner::urgent`].
    pub fn urgent_probes(&self, now: Instant, peers: &[NodeIndex]) -> Vec<PlannedProbe> {
        self.plan(now, peers, true)
    }

    fn plan(&self, now: Instant, peers: &[NodeIndex], urgent: bool) -> Vec<PlannedProbe> {
        let node = self.shared.config.node;
        let routed = self.routed_nodes();
        let rtt = self.shared.rtt.read();
        let mut latency = self.shared.latency();
        let k = latency.planner.params().candidates;
        let candidates = nearest(node, peers, k, &rtt, now);
        let needs = Needs { routed: &routed, candidates: &candidates };
        let plan = if urgent {
            latency.planner.urgent(now, &needs, peers, &rtt)
        } else {
            latency.planner.plan(now, &needs, peers, &rtt)
        };
        latency.routed_seen = routed;
        for p in &plan {
            self.shared.metrics.probes.get_or_create(&crate::metrics::ProbeLabels::of(p.reason)).inc();
        }
        plan
    }

    /// True when the routes name a node the monitor has not planned for yet.
    pub fn routes_moved(&self) -> bool {
        let routed = self.routed_nodes();
        let latency = self.shared.latency();
        routed.iter().any(|n| !latency.routed_seen.contains(n))
    }

    /// Forgets what was measured to and learnt about `node` (it left); its index stays.
    pub fn forget_node(&self, node: NodeIndex) {
        self.shared.rtt.write().forget(node);
        let mut latency = self.shared.latency();
        latency.vivaldi.forget(node);
        latency.planner.forget(node);
        latency.measured.forget(node);
    }

    /// Resolves when the routes changed (a new route may name a node to measure at once).
    pub async fn routes_changed(&self) {
        self.shared.routes_changed.notified().await;
    }
}
