//! The latency monitor of one gateway, the same on both runtimes (the original's monlat, made
//! to scale): each round the gateway plans at most `budget` probes (`policy::probe`: the nodes it
//! routes to and its placement candidates first, a few random peers for the coordinates), and
//! the monitor sends each at its planned time — spread over the interval, never in a burst. A
//! route that names a node not measured yet gets a probe at once. Each probe is one `GET /healthz`
//! to the peer's gateway across the link; the answer carries the peer's network coordinate, and
//! the round trip goes to the balancers, `latency_between_nodes`, this node's coordinate (random
//! probes only, `policy::probe`) and the runtime's own books (`on_measured`). The connection to a
//! needed peer is kept for its next probe (a few per node); a random peer's is closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use ikukantai_link::connect::{ProbeConnection, probe_with};
use ikukantai_policy::estimate::{Coordinate, NodeIndex};
use ikukantai_policy::probe::{PlannedProbe, ProbeReason};
use parking_lot::Mutex;

use crate::gateway::Gateway;
use crate::headers::COORDINATE_HEADER;

/// A node that can be probed: its index and its gateway's admin address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its index in the gateway's node list.
    pub node: NodeIndex,
    /// Its gateway's admin listener (`/healthz`).
    pub admin: SocketAddr,
}

/// One probe's result, for the runtime's books (a controller's report, the local fleet's matrix).
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// The probing node.
    pub from: NodeIndex,
    /// The probed node.
    pub to: NodeIndex,
    /// The round trip as the gateway recorded it: the lower median of its last few probes to
    /// `to` (ms).
    pub rtt_ms: f64,
    /// When it was measured.
    pub at: Instant,
    /// The probing node's coordinate after the sample.
    pub own: Coordinate,
    /// The probed node's coordinate, as it answered.
    pub peer: Option<Coordinate>,
    /// Why it was probed.
    pub reason: ProbeReason,
}

/// Connections kept for the next probe of a needed peer, and when each was last used.
type Kept = Arc<Mutex<HashMap<NodeIndex, (ProbeConnection, Instant)>>>;

/// Runs the monitor of `gateway` until dropped. `peers` lists the nodes that can be probed now
/// (asked once a round and when the routes change); `on_measured` is told every result.
pub async fn run<G, P, S>(gateway: G, peers: P, on_measured: S)
where
    G: Deref<Target = Gateway> + Clone + Send + Sync + 'static,
    P: Fn() -> Vec<Peer> + Send,
    S: Fn(&Measurement) + Clone + Send + Sync + 'static,
{
    let interval = gateway.probe_interval();
    let from = gateway.node();
    let mut queue: Vec<PlannedProbe> = Vec::new();
    let mut addrs: HashMap<NodeIndex, SocketAddr> = HashMap::new();
    let mut next_round = Instant::now();
    let kept: Kept = Arc::default();
    let known = |addrs: &mut HashMap<NodeIndex, SocketAddr>| {
        *addrs = peers().into_iter().map(|p| (p.node, p.admin)).collect();
        let mut nodes: Vec<NodeIndex> = addrs.keys().copied().collect();
        nodes.sort_unstable();
        nodes
    };
    loop {
        let now = Instant::now();
        if now >= next_round {
            // A pair measured every other round keeps its connection; one not needed any more
            // lets it go.
            kept.lock().retain(|_, (_, used)| now.saturating_duration_since(*used) < interval * 3);
            let nodes = known(&mut addrs);
            queue.extend(gateway.plan_probes(now, &nodes));
            queue.sort_by_key(|p| std::cmp::Reverse(p.at));
            next_round = now + interval;
        }
        // The queue is sorted latest first: what is due is at its end.
        while queue.last().is_some_and(|p| p.at <= now) {
            let Some(p) = queue.pop() else { break };
            if let Some(&admin) = addrs.get(&p.to) {
                let probe = Probe { gateway: gateway.clone(), from, to: p.to, admin, reason: p.reason };
                tokio::spawn(probe.send(kept.clone(), on_measured.clone()));
            }
        }
        let wake = queue.last().map_or(next_round, |p| p.at.min(next_round));
        tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => {}
            () = gateway.routes_changed() => {
                let nodes = known(&mut addrs);
                queue.extend(gateway.urgent_probes(Instant::now(), &nodes));
                queue.sort_by_key(|p| std::cmp::Reverse(p.at));
            }
        }
    }
}

/// One probe to send.
struct Probe<G> {
    gateway: G,
    from: NodeIndex,
    to: NodeIndex,
    admin: SocketAddr,
    reason: ProbeReason,
}

impl<G: Deref<Target = Gateway>> Probe<G> {
    /// Sends it, records it in the gateway (a random probe feeds the coordinates) and tells
    /// `on_measured`.
    async fn send<S: Fn(&Measurement)>(self, kept: Kept, on_measured: S) {
        let Self { gateway, from, to, admin, reason } = self;
        let reuse = kept.lock().remove(&to).map(|(c, _)| c);
        let connector = gateway.connector(to);
        let Some((reply, conn)) = probe_with(reuse, &connector, admin).await else {
            tracing::debug!(to, %admin, "probe unanswered");
            return;
        };
        let at = Instant::now();
        if reason != ProbeReason::Explore {
            kept.lock().insert(to, (conn, at));
        }
        let peer: Option<Coordinate> =
            reply.headers.get(COORDINATE_HEADER).and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok());
        let recorded =
            gateway.record_probe(to, reply.rtt_ms, peer.as_ref(), reason == ProbeReason::Explore, at);
        on_measured(&Measurement { from, to, rtt_ms: recorded.rtt_ms, at, own: recorded.own, peer, reason });
    }
}
