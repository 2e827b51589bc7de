//! The decisions a gateway makes for one revision, apart from any IO: how it sees an instance
//! (in flight, processing and slot-holding estimates, the room a link adds), which instance gets a
//! request (through the revision's balancer), and what a finished request teaches. The gateway
//! and the simulator both call these, so they decide alike.

use std::borrow::BorrowMut;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::balance::{Balancer, Candidate, Completion, PickContext};
use crate::estimate::{NodeIndex, blend, blend_peak, decay_weight};

/// How fast an instance's estimates forget: a few seconds of requests.
pub const ESTIMATE_DECAY: Duration = Duration::from_secs(5);

/// One instance of a revision as one gateway sees it.
///
/// One cache line: a pick reads a few dozen of these out of a gateway's view of a revision that
/// may have hundreds, and a view is copied when the routes change. So the estimates share the
/// time they were last updated (every successful response updates them all), and "none yet" is
/// NaN rather than an `Option`.
#[derive(Debug, Clone)]
#[repr(align(64))]
pub struct InstanceLoad {
    /// Stable identity (balancers key their state by it; instances are kept sorted by it).
    pub id: u64,
    /// The node it runs on.
    pub node: NodeIndex,
    /// Its processing time (milliseconds): a peak-EWMA; NaN before any response.
    service_ms: f64,
    /// Send → response, as this gateway sees it: how long a slot stays taken (milliseconds), on
    /// average (a peak would count a queue others made at the instance as this gateway's own);
    /// NaN before any response.
    held_ms: f64,
    /// Requests of *other* gateways at the instance, averaged over the last few seconds of its
    /// reports: what to expect of an instance whose last report is no longer fresh — fading as
    /// that report ages, since only sending there brings a new one. NaN before any report.
    others_mean: f64,
    /// When the last successful response came: the time of all the estimates (a response
    /// without a load report leaves the others' average as it was, dated from then).
    heard: Option<Instant>,
    /// Requests this gateway sent it that have not ended.
    pub in_flight: u32,
    /// Requests of other gateways at the instance in the last response's report;
    /// [`NO_REPORT`] if it carried none.
    others: u32,
}

const _: () = assert!(std::mem::size_of::<InstanceLoad>() == 64, "one cache line");

/// [`InstanceLoad::others`] when the last response reported no load.
const NO_REPORT: u32 = u32::MAX;

/// `value`, or `None` for NaN (an estimate not taken yet).
fn known(value: f64) -> Option<f64> {
    (!value.is_nan()).then_some(value)
}

impl InstanceLoad {
    /// An instance nothing was sent to yet.
    pub fn new(id: u64, node: NodeIndex) -> Self {
        Self {
            id,
            node,
            service_ms: f64::NAN,
            held_ms: f64::NAN,
            others_mean: f64::NAN,
            heard: None,
            in_flight: 0,
            others: NO_REPORT,
        }
    }

    /// What one successful response taught, at `now`: the processing time and how long the slot
    /// was held (milliseconds), and the other gateways' requests there if it reported them.
    fn learn(&mut self, now: Instant, service_ms: f64, held_ms: f64, others: Option<u32>) {
        let step = |old: f64, sample: f64, rule: fn(f64, Duration, f64, Duration) -> f64| match self.heard {
            Some(at) if !old.is_nan() => rule(old, now.saturating_duration_since(at), sample, ESTIMATE_DECAY),
            _ => sample,
        };
        let service_ms = step(self.service_ms, service_ms, blend_peak);
        let held_ms = step(self.held_ms, held_ms, blend);
        let others_mean = match others {
            Some(n) => step(self.others_mean, f64::from(n), blend),
            None => self.others_mean,
        };
        (self.service_ms, self.held_ms, self.others_mean) = (service_ms, held_ms, others_mean);
        self.others = others.unwrap_or(NO_REPORT);
        self.heard = Some(now);
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
    /// a report, the requests of others it counted are taken as in flight here too, as reported
    /// (the room a request may take is counted, not predicted): a site's only instance, busy with
    /// its own users, does not look free to a gateway one trip away.
    ///
    /// The candidate's `load` is what a request sent now should expect to find at the instance:
    /// this gateway's requests there (those in flight, less the share of their time they spend on
    /// the link) and the other gateways', as last reported while that is fresh (from across a link,
    /// drawn toward their average: `InstanceLoad::others_on_arrival`), else as reported
    /// on average over the last few seconds — an instance busy half the time with its own site's
    /// users is not idle just because this gateway has not heard from it lately. That average
    /// fades as the last report ages (by [`ESTIMATE_DECAY`]): a queue seen once, at a cold start,
    /// would otherwise keep this gateway away, and so from ever hearing that it drained.
    pub fn candidate(&self, cc: u32, rtt_ms: f64, now: Instant) -> Candidate {
        let service_ms = known(self.service_ms);
        let service = service_ms.unwrap_or(1.0).max(1.0);
        let capacity = if cc == 0 {
            0
        } else {
            let in_transit = (f64::from(cc) * rtt_ms / service).ceil();
            cc.saturating_add(in_transit.min(f64::from(u32::MAX / 2)) as u32)
        };
        let since = self.heard.map(|at| now.saturating_duration_since(at));
        let fresh = since.is_some_and(|since| since.as_secs_f64() * 1e3 <= 2.0 * service);
        let (others, others_load) = if fresh && self.others != NO_REPORT {
            (self.others, self.others_on_arrival(rtt_ms, service))
        } else {
            // The average, fading as the last report ages.
            let faded = |(mean, since)| mean * decay_weight(since, ESTIMATE_DECAY);
            (0, known(self.others_mean).zip(since).map_or(0.0, faded))
        };
        // Of this gateway's requests in flight, those at the instance: by the share of send →
        // response not spent on the link (a queue there lengthens it), at least processing's.
        let rtt = rtt_ms.max(0.0);
        let processing = service / (service + rtt);
        let at_instance = known(self.held_ms).and_then(|held| share_at_instance(held, rtt));
        let own_there = f64::from(self.in_flight) * at_instance.map_or(processing, |s| s.max(processing));
        Candidate {
            id: self.id,
            node: self.node,
            in_flight: self.in_flight.saturating_add(others),
            own: self.in_flight,
            capacity,
            slots: cc,
            load: own_there + others_load,
            service_time_ms: service_ms,
            held_ms: known(self.held_ms),
            rtt_ms: Some(rtt_ms),
        }
    }

    /// The other gateways' requests a request sent now should find at the instance, from a fresh
    /// report: by the time it arrives the report is a round trip old, and the requests it counted
    /// have turned over about once a processing time (a queue beyond the slots takes longer to
    /// drain; timing the fade by that was tried, docs/sweeps.md). So a report from this node
    /// (RTT 0) stands as it is, and one from across a link counts less the longer the trip: its
    /// difference from the others' average (of the last few seconds' reports; the first report
    /// is its own) fades by `exp(−RTT / processing time)`. Taken as it was, a short queue in a
    /// report a trip old drew every overloaded gateway that read it, and the first to arrive
    /// filled it: the others waited there, behind a queue their own spill made.
    fn others_on_arrival(&self, rtt_ms: f64, service_ms: f64) -> f64 {
        let reported = f64::from(self.others);
        match known(self.others_mean) {
            Some(mean) if rtt_ms > 0.0 => mean + (reported - mean) * (-rtt_ms / service_ms).exp(),
            _ => reported,
        }
    }

    /// The current processing-time estimate (milliseconds).
    pub fn service_ms(&self) -> Option<f64> {
        known(self.service_ms)
    }
}

/// The share of a request's send → response time `held_ms` spent at the instance rather than on
/// a link of round trip `rtt_ms`; `None` for no time at all.
fn share_at_instance(held_ms: f64, rtt_ms: f64) -> Option<f64> {
    (held_ms > 0.0).then(|| ((held_ms - rtt_ms) / held_ms).clamp(0.0, 1.0))
}

/// Up to this many instances, a pick weighs them all.
pub const SHORTLIST_ALL: usize = 32;
/// Beyond [`SHORTLIST_ALL`], the nearest this many by RTT …
pub const SHORTLIST_NEAR: usize = 24;
/// … and this many more of the rest, new for every pick: consecutive in instance order from one
/// drawn at random, so each is as likely to be weighed as any other and their states lie side by
/// side in memory (drawn one by one, each was a cache miss).
pub const SHORTLIST_FAR: usize = 8;
/// How long the nearest instances' order, and the RTTs it was taken from, stand before they are
/// taken again from the RTT matrix (RTTs change with each probe round, every few seconds).
pub const SHORTLIST_RESORT: Duration = Duration::from_secs(2);

/// Which instances of a revision one gateway's picks weigh.
///
/// A revision spread over hundreds of nodes would cost every request a look at each instance.
/// Beyond [`SHORTLIST_ALL`] instances a pick weighs the [`SHORTLIST_NEAR`] nearest and
/// [`SHORTLIST_FAR`] others, so its cost does not grow with the revision (Knative's activators
/// subset their pods for the same reason) while a far instance with room is still seen.
/// Their RTTs are the ones the order was taken from (at most [`SHORTLIST_RESORT`] old), so a pick
/// asks the matrix nothing; up to [`SHORTLIST_ALL`] instances each pick asks it afresh.
#[derive(Debug)]
pub struct Shortlist {
    /// The nearest instances' indices and RTTs, in instance order (beyond [`SHORTLIST_ALL`]
    /// instances only).
    near: Vec<(usize, f64)>,
    /// The rest, the same way.
    far: Vec<(usize, f64)>,
    /// The instances' count and when `near` was taken; `None` until it is, or after
    /// [`Shortlist::routes_changed`].
    sorted: Option<(usize, Instant)>,
    /// The instances' nodes, taken when the routes changed.
    nodes: Vec<NodeIndex>,
    rng: SmallRng,
}

/// What a pick builds and throws away: one for any number of [`Shortlist`]s (a simulated fleet
/// has a thousand gateways; each holding its own would keep ~60 KB a revision, cold).
#[derive(Debug, Default)]
pub struct PickScratch {
    candidates: Vec<Candidate>,
    /// The chosen instances' states, copied.
    states: Vec<InstanceLoad>,
    /// The instance behind each candidate, and its RTT from the origin.
    chosen: Vec<(usize, f64)>,
    /// The origin's RTT row, when a sort reads it whole.
    row: Vec<f64>,
    /// For a sort: each instance's RTT, and the nearest's RTTs with their instance indices.
    rtts: Vec<f64>,
    order: Vec<(f64, usize)>,
}

impl Shortlist {
    /// An empty shortlist; `seed` draws its far instances.
    pub fn new(seed: u64) -> Self {
        Self {
            near: Vec::new(),
            far: Vec::new(),
            sorted: None,
            nodes: Vec::new(),
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The routed instances changed (any of them, or their nodes): the nearest are taken again
    /// at the next pick.
    pub fn routes_changed(&mut self) {
        self.sorted = None;
    }

    /// Fills `scratch.candidates` (in instance order) with the instances this pick weighs.
    fn fill<I: std::borrow::Borrow<InstanceLoad>>(
        &mut self,
        scratch: &mut PickScratch,
        ctx: &PickContext<'_>,
        cc: u32,
        instances: &[I],
    ) {
        scratch.candidates.clear();
        let chosen = &mut scratch.chosen;
        chosen.clear();
        if instances.len() <= SHORTLIST_ALL {
            let rtt = |k: usize| ctx.rtt.get(ctx.origin, instances[k].borrow().node, ctx.now);
            chosen.extend((0..instances.len()).map(|k| (k, rtt(k))));
        } else {
            self.sort_nearest(scratch, ctx, instances);
            let chosen = &mut scratch.chosen;
            // The window from a random far instance on, wrapping around: its wrapped head comes
            // first in instance order. Balancers rotate and break ties in instance order, so the
            // nearest and the window are merged in it.
            let (len, from) = (self.far.len(), self.rng.random_range(0..self.far.len()));
            let end = from + SHORTLIST_FAR.min(len);
            let window = self.far[..end.saturating_sub(len)].iter().chain(&self.far[from..end.min(len)]);
            let mut far = window.copied().peekable();
            for &(k, rtt) in &self.near {
                while let Some(f) = far.next_if(|&(j, _)| j < k) {
                    chosen.push(f);
                }
                chosen.push((k, rtt));
            }
            chosen.extend(far);
        }
        let PickScratch { candidates, states, chosen, .. } = scratch;
        // The instances' states first, in a loop that does nothing else, so their cache misses
        // overlap; then the candidates from the copies.
        states.clear();
        states.extend(chosen.iter().map(|&(k, _)| instances[k].borrow().clone()));
        let weighed = states.iter().zip(chosen.iter());
        candidates.extend(weighed.map(|(i, &(_, rtt))| i.candidate(cc, rtt, ctx.now)));
    }

    /// Takes `near` and `far` again from the RTT matrix, if they are missing or old.
    fn sort_nearest<I: std::borrow::Borrow<InstanceLoad>>(
        &mut self,
        scratch: &mut PickScratch,
        ctx: &PickContext<'_>,
        instances: &[I],
    ) {
        let routes_known = self.sorted.is_some_and(|(len, _)| len == instances.len());
        if routes_known
            && self.sorted.is_some_and(|(_, at)| ctx.now.saturating_duration_since(at) < SHORTLIST_RESORT)
        {
            return;
        }
        if !routes_known {
            // The instances' nodes, side by side: a sort reads no instance's state.
            self.nodes.clear();
            self.nodes.extend(instances.iter().map(|i| i.borrow().node));
        }
        let PickScratch { row, rtts, order, .. } = scratch;
        // Each instance's RTT; with instances on most nodes, the origin's whole row in one pass
        // beats a lookup each.
        rtts.clear();
        if self.nodes.len() * 8 >= ctx.rtt.len() {
            ctx.rtt.row_into(ctx.origin, ctx.now, row);
            rtts.extend(self.nodes.iter().map(|&node| row[node]));
        } else {
            rtts.extend(self.nodes.iter().map(|&node| ctx.rtt.get(ctx.origin, node, ctx.now)));
        }
        nearest(rtts, SHORTLIST_NEAR, order);
        self.near.clear();
        self.near.extend(order.iter().map(|&(rtt, k)| (k, rtt)));
        self.near.sort_unstable_by_key(|&(k, _)| k);
        // The rest, in instance order.
        self.far.clear();
        let mut near = self.near.iter().map(|&(k, _)| k).peekable();
        for (k, &rtt) in rtts.iter().enumerate() {
            if near.next_if_eq(&k).is_none() {
                self.far.push((k, rtt));
            }
        }
        self.sorted = Some((instances.len(), ctx.now));
    }
}

/// The `keep` smallest of `rtts` as (RTT, index), nearest first (ties: the lower index), in one
/// pass: past the first few, an RTT is mostly compared once and left.
fn nearest(rtts: &[f64], keep: usize, out: &mut Vec<(f64, usize)>) {
    use std::cmp::Ordering::{Greater, Less};
    out.clear();
    if keep == 0 {
        return;
    }
    for (k, &rtt) in rtts.iter().enumerate() {
        if out.len() == keep {
            // An equal RTT has a higher index than those kept: it loses the tie.
            if out.last().is_some_and(|last| rtt.total_cmp(&last.0) != Less) {
                continue;
            }
            out.pop();
        }
        let at = out.partition_point(|&(kept, _)| kept.total_cmp(&rtt) != Greater);
        out.insert(at, (rtt, k));
    }
}

impl Default for Shortlist {
    fn default() -> Self {
        Self::new(0)
    }
}

/// Picks an instance for a request through `balancer` and counts it in flight there; `None`
/// means wait. `instances` are sorted by id; `shortlist` says which of them are weighed (all, up
/// to [`SHORTLIST_ALL`]) and is kept from pick to pick; `scratch` may serve any shortlist; `cc` is
/// the revision's containerConcurrency.
pub fn pick<I: BorrowMut<InstanceLoad>>(
    balancer: &mut dyn Balancer,
    ctx: &PickContext<'_>,
    cc: u32,
    instances: &mut [I],
    shortlist: &mut Shortlist,
    scratch: &mut PickScratch,
) -> Option<usize> {
    shortlist.fill(scratch, ctx, cc, instances);
    let (chosen, _) = scratch.chosen[balancer.pick(ctx, &scratch.candidates)?];
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
    /// The round trip to the instance's node as the gateway reckons it (milliseconds), if it
    /// does: the part of the request's time not spent at the instance.
    pub rtt_ms: Option<f64>,
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
        // The reported load counts this response's request, and this gateway's others there:
        // of those in flight, by the share of this one's time not spent on the link, at least
        // its processing's (the RTT is an estimate, maybe a prior far off). Without an RTT, all.
        let processing = response.service_ms.filter(|_| held > 0.0).map_or(0.0, |ms| (ms / held).min(1.0));
        let on_site = response.rtt_ms.and_then(|rtt| share_at_instance(held, rtt));
        let at_instance = on_site.map_or(1.0, |share| share.max(processing));
        let own_there = match i.in_flight {
            0 => 0.0,
            n => 1.0 + f64::from(n - 1) * at_instance,
        };
        let others = response
            .reported_in_flight
            .filter(|_| response.from_queue_proxy)
            .map(|load| (f64::from(load) - own_there).max(0.0).round().min(f64::from(NO_REPORT - 1)) as u32);
        i.learn(now, response.service_ms.unwrap_or(held), held, others);
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
mod tests;
