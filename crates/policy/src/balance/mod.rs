//! Load balancers: given where a request entered and the instances that could serve it, pick one.
//!
//! Every balancer implements [`Balancer`]. The caller (a gateway, or a simulation) passes the
//! candidate instances of one revision, sorted by [`Candidate::id`], and gets back the index of the
//! chosen one, or `None` when the request should wait for capacity. When the response completes the
//! caller reports a [`Completion`], closing the feedback loop.
//!
//! The one rule all balancers keep: **never choose a full instance** (one with as many requests in
//! flight as its containerConcurrency).

mod ert;
mod even;
mod faast;

pub use ert::{ErtBalancer, ErtParams};
pub use even::EvenBalancer;
pub use faast::FaastBalancer;

use std::time::{Duration, Instant};

use crate::estimate::{NodeIndex, RttMatrix};

/// An instance that could serve the request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Stable identity of the instance (balancers key their state by it).
    pub id: u64,
    /// The node the instance runs on.
    pub node: NodeIndex,
    /// Requests in flight to the instance now (including ones this gateway sent).
    pub in_flight: u32,
    /// Of those, the requests this gateway sent.
    pub own: u32,
    /// At most this many in flight, as this gateway counts them (containerConcurrency, plus the
    /// link's bandwidth-delay allowance for an instance across a link); 0 = unlimited.
    pub capacity: u32,
    /// containerConcurrency at the instance itself: requests it processes at once; 0 = unlimited.
    pub slots: u32,
    /// Requests expected at the instance (processing or waiting in its queue proxy, of every
    /// gateway) when one sent now arrives there: this gateway's, less those still on the link,
    /// and the other gateways' as the instance last reported them (from across a link, drawn
    /// toward their average), or their recent average.
    pub load: f64,
    /// Recent estimate of the instance's processing time (milliseconds), if known.
    pub service_time_ms: Option<f64>,
    /// Recent estimate of how long a request sent from this gateway holds one of the instance's
    /// slots here, from sending to the response (milliseconds, on average), if known: processing
    /// plus the proxying overhead and any wait at the instance, plus the link for an instance on
    /// another node.
    pub held_ms: Option<f64>,
    /// The RTT from the request's origin to the instance's node (milliseconds) as the gateway
    /// took it for this pick; `None`: the balancer asks the matrix ([`Candidate::rtt_ms`]).
    pub rtt_ms: Option<f64>,
}

impl Candidate {
    /// True when one more request may be sent.
    pub fn has_room(&self) -> bool {
        self.capacity == 0 || self.in_flight < self.capacity
    }

    /// The RTT from the request's origin to the instance (milliseconds): the gateway's, else the
    /// matrix's.
    pub fn rtt_ms(&self, ctx: &PickContext<'_>) -> f64 {
        self.rtt_ms.unwrap_or_else(|| ctx.rtt.get(ctx.origin, self.node, ctx.now))
    }
}

/// What the balancer knows about the request and the fleet.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    /// The node the request entered at.
    pub origin: NodeIndex,
    /// Node-to-node round-trip times.
    pub rtt: &'a RttMatrix,
    /// Now.
    pub now: Instant,
    /// The autoscaler's per-instance target concurrency: the load an instance is meant to carry.
    pub target_concurrency: f64,
    /// Requests of this revision already waiting at this gateway (ahead of this one).
    pub queued: u32,
    /// A request that just arrived; false for one already waiting, weighed again at the head
    /// of the queue.
    pub fresh: bool,
}

/// Feedback about one finished request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Completion {
    /// The instance that served it.
    pub id: u64,
    /// Its node.
    pub node: NodeIndex,
    /// Where the request entered.
    pub origin: NodeIndex,
    /// Response time as seen by the gateway (includes the link to the instance's node).
    pub latency: Duration,
    /// Processing time reported by the instance's queue proxy, if it said.
    pub service_time: Option<Duration>,
    /// Requests in flight at the instance when it answered (piggybacked by the queue proxy).
    pub reported_in_flight: Option<u32>,
    /// False for failures (5xx from the instance, connection errors).
    pub success: bool,
    /// When the response completed.
    pub now: Instant,
}

impl Completion {
    /// The processing time: the instance's own report, or the gateway's measurement.
    pub fn processing_ms(&self) -> f64 {
        self.service_time.unwrap_or(self.latency).as_secs_f64() * 1e3
    }
}

/// A load-balancing policy. Implementations are deterministic given their seed.
pub trait Balancer: Send + std::fmt::Debug {
    /// The registered name.
    fn name(&self) -> &'static str;
    /// Picks the index of a candidate with room, or `None` to wait for capacity.
    fn pick(&mut self, ctx: &PickContext<'_>, candidates: &[Candidate]) -> Option<usize>;
    /// Feedback once a response completes.
    fn observe(&mut self, _done: &Completion) {}
}

/// Round-robin helper: the first candidate with room at or after the one following `last`.
pub(crate) fn next_with_room<'a>(
    candidates: impl Iterator<Item = (usize, &'a Candidate)> + Clone,
    last: Option<u64>,
) -> Option<usize> {
    let after = candidates.clone().filter(|(_, c)| last.is_none_or(|l| c.id > l));
    let wrapped = candidates.filter(|(_, c)| last.is_some_and(|l| c.id <= l));
    after.chain(wrapped).find(|(_, c)| c.has_room()).map(|(i, _)| i)
}

#[cfg(test)]
pub(crate) mod tests;
