//! The decisions a gateway makes for one revision, apart from any IO: how it sees an instance
//! (in flight, processing and slot-holding estimates, the room a link adds), which instance gets a
//! request (through the revision's balancer), and what a finished request teaches. The gateway
//! and the simulator both call these, so they decide alike.

use std::borrow::BorrowMut;
use std::time::{Duration, Instant};

use crate::balance::{Balancer, Candidate, Completion, PickContext};
use crate::estimate::{NodeIndex, PeakEwma};

/// How fast an instance's estimates forget: a few seconds of requests.
pub const ESTIMATE_DECAY: Duration = Duration::from_secs(5);

/// One instance of a revision as one gateway sees it.
#[derive(Debug, Clone)]
pub struct InstanceLoad {
    /// Stable identity (balancers key their state by it; instances are kept sorted by it).
    pub id: u64,
    /// The node it runs on.
    pub node: NodeIndex,
    /// Requests this gateway sent it that have not ended.
    pub in_flight: u32,
    /// Its processing time (milliseconds).
    service_ms: PeakEwma,
    /// Send → response, as this gateway sees it: how long a slot stays taken (milliseconds).
    held_ms: PeakEwma,
    /// Requests of *other* gateways at the instance when it last answered this one, and when.
    others: Option<(u32, Instant)>,
}

impl InstanceLoad {
    /// An instance nothing was sent to yet.
    pub fn new(id: u64, node: NodeIndex) -> Self {
        Self {
            id,
            node,
            in_flight: 0,
            service_ms: PeakEwma::new(ESTIMATE_DECAY),
            held_ms: PeakEwma::new(ESTIMATE_DECAY),
            others: None,
        }
    }

    /// The balancer's view of the instance, `rtt_ms` away, with containerConcurrency `cc`.
    ///
    /// A gateway counts a request in flight from sending it to the end of its response, which for
    /// an instance across a link includes the round trip; the instance itself is busy only while
    /// it processes. So, as seen from here, an instance with `cc` slots can have
    /// `cc × (1 + RTT / processing time)` requests in flight (its bandwidth-delay product) before
    /// it is really full; its queue proxy still enforces `cc` at the instance.
    ///
    /// Other gateways send to the same instance, and this one does not see them — except in the
    /// load the queue proxy reports on each response. For a couple of processing times after such
    /// a report, the requests of others it counted are taken as in flight here too: a site's
    /// only instance, busy with its own users, does not look free to a gateway one trip away.
    pub fn candidate(&self, cc: u32, rtt_ms: f64, now: Instant) -> Candidate {
        let service_ms = self.service_ms.get();
        let capacity = if cc == 0 {
            0
        } else {
            let in_transit = (f64::from(cc) * rtt_ms / service_ms.unwrap_or(1.0).max(1.0)).ceil();
            cc.saturating_add(in_transit.min(f64::from(u32::MAX / 2)) as u32)
        };
        let fresh = Duration::from_secs_f64(2.0 * service_ms.unwrap_or(1.0).max(1.0) / 1e3);
        let others = match self.others {
            Some((n, at)) if now.saturating_duration_since(at) <= fresh => n,
            _ => 0,
        };
        Candidate {
            id: self.id,
            node: self.node,
            in_flight: self.in_flight.saturating_add(others),
            capacity,
            service_time_ms: service_ms,
            held_ms: self.held_ms.get(),
        }
    }

    /// The current processing-time estimate (milliseconds).
    pub fn service_ms(&self) -> Option<f64> {
        self.service_ms.get()
    }
}

/// Picks an instance for a request through `balancer` and counts it in flight there; `None`
/// means wait. `instances` are sorted by id; `scratch` is reused from pick to pick; `cc` is the
/// revision's containerConcurrency.
pub fn pick<I: BorrowMut<InstanceLoad>>(
    balancer: &mut dyn Balancer,
    ctx: &PickContext<'_>,
    cc: u32,
    instances: &mut [I],
    scratch: &mut Vec<Candidate>,
) -> Option<usize> {
    scratch.clear();
    scratch.extend(instances.iter().map(|i| {
        let i = i.borrow();
        i.candidate(cc, ctx.rtt.get(ctx.origin, i.node, ctx.now), ctx.now)
    }));
    let chosen = balancer.pick(ctx, scratch)?;
    // Candidates are built in instance order, so the index is the instance's.
    instances[chosen].borrow_mut().in_flight += 1;
    Some(chosen)
}

/// What a gateway learnt from one response.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Response {
    /// Send → response, as the gateway measured it.
    pub latency: Duration,
    /// Processing time the instance reported, if it did (milliseconds).
    pub service_ms: Option<f64>,
    /// The instance's queue proxy answered (so its report can be trusted as processing time).
    pub from_queue_proxy: bool,
    /// Requests in flight at the instance, as it reported.
    pub reported_in_flight: Option<u32>,
    /// False for a 5xx or no answer.
    pub success: bool,
}

/// Feeds a response back into the instance's estimates (`instance`: `None` if it left the routes
/// meanwhile) and into the revision's balancer. The slot is freed separately, when the response
/// ends ([`InstanceLoad::in_flight`]).
pub fn feed_back(
    balancer: &mut dyn Balancer,
    instance: Option<&mut InstanceLoad>,
    (id, node, origin): (u64, NodeIndex, NodeIndex),
    response: &Response,
    now: Instant,
) {
    let held = response.latency.as_secs_f64() * 1e3;
    if response.success
        && let Some(i) = instance
    {
        i.service_ms.observe(now, response.service_ms.unwrap_or(held));
        i.held_ms.observe(now, held);
        if response.from_queue_proxy
            && let Some(load) = response.reported_in_flight
        {
            // The load counts this response's request, and this gateway's others still there.
            i.others = Some((load.saturating_sub(i.in_flight), now));
        }
    }
    balancer.observe(&Completion {
        id,
        node,
        origin,
        latency: response.latency,
        service_time: response
            .service_ms
            .filter(|_| response.from_queue_proxy)
            .map(|ms| Duration::from_secs_f64(ms / 1e3)),
        reported_in_flight: response.reported_in_flight,
        success: response.success,
        now,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimate::RttMatrix;
    use crate::registry::{self, PolicyParams};

    #[test]
    fn a_distant_instance_holds_more_requests_than_its_slots() {
        let now = Instant::now();
        let mut i = InstanceLoad::new(1, 1);
        assert_eq!(i.candidate(2, 40.0, now).capacity, 2 + 80, "1 ms assumed before any estimate");
        i.service_ms.observe(now, 10.0);
        assert_eq!(i.candidate(2, 40.0, now).capacity, 2 + 8);
        assert_eq!(i.candidate(2, 0.0, now).capacity, 2);
        assert_eq!(i.candidate(0, 40.0, now).capacity, 0, "unlimited stays unlimited");
    }

    #[test]
    fn a_pick_counts_the_request_and_feedback_teaches_the_estimates() {
        let now = Instant::now();
        let rtt = RttMatrix::new(2, 30.0, Duration::from_secs(30));
        let mut balancer = registry::balancer("ert", &PolicyParams::default()).expect("registered");
        let mut instances = vec![InstanceLoad::new(1, 0), InstanceLoad::new(2, 1)];
        let mut scratch = Vec::new();
        let ctx = PickContext { origin: 0, rtt: &rtt, now, target_concurrency: 1.0, queued: 0 };
        let first = pick(balancer.as_mut(), &ctx, 1, &mut instances, &mut scratch);
        assert_eq!(first, Some(0), "the local instance");
        assert_eq!(instances[0].in_flight, 1);
        let response = Response {
            latency: Duration::from_millis(12),
            service_ms: Some(10.0),
            from_queue_proxy: true,
            reported_in_flight: Some(1),
            success: true,
        };
        feed_back(balancer.as_mut(), Some(&mut instances[0]), (1, 0, 0), &response, now);
        assert_eq!(instances[0].service_ms(), Some(10.0));
        assert_eq!(instances[0].candidate(1, 0.0, now).held_ms, Some(12.0));
        // The queue proxy counted two requests of other gateways: for two processing times they
        // count here too, then they are forgotten.
        let busy = Response { reported_in_flight: Some(3), ..response };
        feed_back(balancer.as_mut(), Some(&mut instances[0]), (1, 0, 0), &busy, now);
        instances[0].in_flight -= 1;
        assert_eq!(instances[0].candidate(1, 0.0, now + Duration::from_millis(20)).in_flight, 2);
        assert_eq!(instances[0].candidate(1, 0.0, now + Duration::from_millis(21)).in_flight, 0);
        // A failure teaches the estimates nothing.
        let failed = Response { success: false, latency: Duration::from_secs(1), ..response };
        feed_back(balancer.as_mut(), Some(&mut instances[1]), (2, 1, 0), &failed, now);
        assert_eq!(instances[1].service_ms(), None);
    }
}
