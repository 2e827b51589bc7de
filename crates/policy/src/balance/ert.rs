//! `ert` (expected response time): ikukantai's default balancer.
//!
//! For every candidate it estimates the response time the request would see there, from live
//! state, and picks the smallest:
//!
//! ```text
//! cost = RTT(origin → node) + wait(load, slots) + service × max(1, (in_flight + 1) / soft_limit)
//! ```
//!
//! - `service` is the instance's recent processing-time estimate (peak-EWMA, kept by the gateway),
//!   else this balancer's estimate for the node, else for the whole revision, else a prior;
//! - `wait` is how long a request arriving now should expect to wait for one of the instance's
//!   containerConcurrency slots, given the requests expected there ([`Candidate::load`]: this
//!   gateway's, and the other gateways' as the instance reports them): half a processing time per
//!   slot if all are taken, a processing time per slot for each request queued beyond them,
//!   counted [`ErtParams::waiting_weight`] times as a request queued ahead at home is. So an
//!   instance busy with its own site's users is not taken for an idle one by a gateway a trip
//!   away, and a gateway's own spill counts against the site it spills to. An instance on the
//!   gateway's own node is reached at once, and the requests it counts there (its own, and a
//!   fresh report's) are still there when the request arrives: a slot they leave free is free,
//!   and only the others' average is a guess — so a site's users are not sent a few
//!   milliseconds to a neighbour for fear of a wait at a home instance with a slot free;
//! - `soft_limit` (containerConcurrency 0 only) is the autoscaler's target concurrency: beyond the
//!   load an instance is sized for, processing is assumed to stretch linearly (processor sharing).
//!
//! When instances are full (as this gateway counts them), waiting for one of them is an option
//! too — for those that would cost less than the best instance with room, since a slot freeing
//! elsewhere is one a waiting request would not take. This gateway's requests there are answered
//! at `Σ own / held` per millisecond (Little's law: its requests in flight there over how long
//! each stays, on average — send to response, the link and any queue at the instance included, so
//! the share other gateways take of the same slots is counted); the `queued + 1`-th waiting
//! request expects to wait `(queued + ½) / rate`, each request queued ahead counted
//! [`ErtParams::waiting_weight`] times (a wait is uncertain and binding, a trip is neither), then
//! the trip and the instance's own queue at its mean (averaged over those instances by the rate
//! each frees slots at). The `½ / rate` is the wait for the next answer when nothing says when it
//! comes; at a home instance of one slot held by a request of this gateway's whose start it saw
//! (sent to the idle slot, or its predecessor's answer), the rest of that request's processing
//! is known instead: a request that finds the slot nearly done waits for it, one that finds it
//! just taken may go to a neighbour a few ms away. If that beats every instance with room, the
//! balancer answers `None` and the gateway buffers the request. So traffic stays local while
//! local is fastest, and spills over when the local queue would cost more than the trip to
//! another node and that node's queue. Ties rotate, so equal instances share the load
//! round-robin.
//!
//! That is each request's best choice, and in sustained overload it is a poor one for all of
//! them: when the requests arriving outrun what the full instances answer, the same share must
//! leave whatever the queue's length, and a queue grown to the trip's length only makes those who
//! stay wait (Naor, 1969: the individually optimal queue is longer than the socially optimal one).
//! So while new requests arrive faster than the full instances worth waiting for answer this
//! gateway's requests (both rates over the last [`ErtParams::crowded_after`] or so), a new
//! request waits only behind fewer than one request a slot of those instances, and otherwise
//! takes the best instance with room. Below saturation a burst queues at home as before.

use std::time::{Duration, Instant};

use super::{Balancer, Candidate, Completion, PickContext};
use crate::estimate::{NodeIndex, PeakEwma, decay_weight};

/// Tuning of [`ErtBalancer`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErtParams {
    /// Decay of the processing-time estimators.
    pub decay: Duration,
    /// Processing time assumed before anything was observed (milliseconds).
    pub prior_service_ms: f64,
    /// Over how long new requests are counted to tell saturation from a burst: longer than a
    /// burst, short against a level of load.
    pub crowded_after: Duration,
    /// How much each request queued ahead counts against a trip (1: at its mean), in this
    /// gateway's own queue or in the queue of an instance with room (a full instance's queue, in
    /// the cost of waiting here for it, counts at its mean). A request that waits is committed to
    /// it (at home it is weighed again only at the head of the queue; at an instance, never), and
    /// the wait behind each one ahead, taken from how fast answers came lately or from the other
    /// gateways' requests in a report a trip old that all of them read alike, varies about as
    /// much as its mean, where a trip varies by the link's jitter. The wait for the next free
    /// slot counts at its mean: at light load, a moment's wait for a busy instance beats a
    /// neighbour's trip.
    pub waiting_weight: f64,
}

impl Default for ErtParams {
    fn default() -> Self {
        Self {
            decay: Duration::from_secs(5),
            prior_service_ms: 1.0,
            crowded_after: Duration::from_secs(1),
            waiting_weight: 5.0,
        }
    }
}

const EPSILON_MS: f64 = 1e-6;

/// At most this many home instances' slot start times are kept.
const HOME_SLOTS_KEPT: usize = 256;

/// The expected-response-time balancer.
#[derive(Debug)]
pub struct ErtBalancer {
    params: ErtParams,
    /// Processing time by node, for the nodes this gateway heard from (by node: a gateway sends
    /// to a few nodes, and a dense table of every node was a cache miss a candidate).
    by_node: Vec<(NodeIndex, PeakEwma)>,
    overall: PeakEwma,
    rotation: usize,
    /// New requests, counted with a weight that decays by `crowded_after`, and when last.
    arrivals: (f64, Option<Instant>),
    /// A pick's full instances: (cost once a slot frees, rate this gateway's requests there are
    /// answered at, slots, when its slot frees if this gateway knows: milliseconds from now).
    full: Vec<(f64, f64, f64, Option<f64>)>,
    /// Instances of one slot on this gateway's node, by id: when this gateway's request holding
    /// the slot started (sent to an idle slot, or the moment the one before it was answered).
    home_started: Vec<(u64, Instant)>,
}

impl ErtBalancer {
    /// A new balancer.
    pub fn new(params: ErtParams) -> Self {
        Self {
            params,
            by_node: Vec::new(),
            overall: PeakEwma::new(params.decay),
            rotation: 0,
            arrivals: (0.0, None),
            full: Vec::new(),
            home_started: Vec::new(),
        }
    }

    /// When the single slot of home instance `c`, held by one of this gateway's requests, should
    /// free (milliseconds from now), if this gateway knows when that request started.
    fn home_slot_frees_in(&self, ctx: &PickContext<'_>, c: &Candidate, service: f64) -> Option<f64> {
        if c.node != ctx.origin || c.slots != 1 || c.own != 1 || c.in_flight != 1 {
            return None;
        }
        let k = self.home_slot(c.id).ok()?;
        let elapsed = ctx.now.saturating_duration_since(self.home_started[k].1).as_secs_f64() * 1e3;
        Some((service - elapsed).max(0.0))
    }

    /// Where home instance `id` is in `home_started` (or would go).
    fn home_slot(&self, id: u64) -> Result<usize, usize> {
        self.home_started.binary_search_by_key(&id, |&(i, _)| i)
    }

    /// Notes that home instance `id`'s slot was taken by one of this gateway's requests at `at`.
    fn home_slot_taken(&mut self, id: u64, at: Instant) {
        match self.home_slot(id) {
            Ok(k) => self.home_started[k].1 = at,
            Err(k) => {
                // Instances leave; the list only ever holds this node's, so it is cleared rarely.
                if self.home_started.len() >= HOME_SLOTS_KEPT {
                    self.home_started.clear();
                }
                let k = k.min(self.home_started.len());
                self.home_started.insert(k, (id, at));
            }
        }
    }

    /// Whether the home queue is held short (module docs) for a new request that finds
    /// `ctx.queued` waiting ahead of it at full instances of `slots` slots, which answer this
    /// gateway's requests at `answered` per millisecond. Requests already waiting neither count
    /// nor are held.
    fn crowded(&mut self, ctx: &PickContext<'_>, slots: f64, answered: f64) -> bool {
        if !ctx.fresh {
            return false;
        }
        // New requests per millisecond: a count decaying by `crowded_after`, over that span.
        let tau = self.params.crowded_after;
        let (count, last) = self.arrivals;
        let kept = last.map_or(1.0, |at| decay_weight(ctx.now.saturating_duration_since(at), tau));
        let count = count * kept + 1.0;
        self.arrivals = (count, Some(ctx.now));
        slots > 0.0 && f64::from(ctx.queued) >= slots && count / (tau.as_secs_f64() * 1e3) > answered
    }

    fn node_estimate(&self, node: NodeIndex) -> Option<f64> {
        let k = self.by_node.binary_search_by_key(&node, |&(n, _)| n).ok()?;
        self.by_node[k].1.get()
    }

    fn service_ms(&self, c: &Candidate) -> f64 {
        c.service_time_ms
            .or_else(|| self.node_estimate(c.node))
            .or_else(|| self.overall.get())
            .unwrap_or(self.params.prior_service_ms)
    }
}

/// The expected wait for a slot at an instance with `slots` slots (0 = unlimited) and `load`
/// requests there (processing or queued) for a request arriving now, each taking `service`
/// milliseconds: half a processing time per slot if all slots are taken, plus a processing time
/// per slot for each request queued beyond them, counted `weight` times
/// ([`ErtParams::waiting_weight`]). The queue is taken from the instance's own report only, not
/// also from how long a slot seems held: so a queue of other gateways' requests is not counted a
/// second time in this gateway's hold times.
///
/// The chance that all slots are taken is `(load / slots)^slots` below the brim for an instance
/// across a link. At home (`counted`: the requests in flight there that this gateway counts, its
/// own and a fresh report's), those are certain; the `free` slots they leave are all taken only
/// by the rest of the load, an average of other gateways' requests that come and go, at
/// `(rest / free)^(free + 1)`: one power higher than a count would be, so that a trickle of a
/// neighbour's spill barely counts and a steady overflow still does. The power was chosen by the
/// sweeps, against `(rest / free)^free` and against no guess at all below the brim
/// (docs/sweeps.md, the fifteenth change).
fn queue_wait(load: f64, slots: u32, counted: Option<u32>, service: f64, weight: f64) -> f64 {
    if slots == 0 {
        return 0.0;
    }
    let c = f64::from(slots);
    let chance = |load: f64, slots: u32, power: u32| {
        (load / f64::from(slots)).clamp(0.0, 1.0).powi(power.min(i32::MAX as u32) as i32)
    };
    let all_busy = match counted {
        Some(counted) if counted < slots => {
            let free = slots - counted;
            chance((load - f64::from(counted)).max(0.0), free, free.saturating_add(1))
        }
        _ => chance(load, slots, slots),
    };
    (0.5 * all_busy + weight * (load - c).max(0.0)) * service / c
}

struct Best {
    index: usize,
    cost: f64,
    in_flight: u32,
}

impl Balancer for ErtBalancer {
    fn name(&self) -> &'static str {
        "ert"
    }

    fn pick(&mut self, ctx: &PickContext<'_>, candidates: &[Candidate]) -> Option<usize> {
        let m = candidates.len();
        if m == 0 {
            return None;
        }
        let start = self.rotation % m;
        self.rotation = self.rotation.wrapping_add(1);
        let mut best: Option<Best> = None;
        // The "wait here for a full instance" option, per full instance: the cost once one of
        // this gateway's requests there is answered and its slot is taken again, and the rate
        // they are answered at (requests per millisecond, by Little's law: in flight / how long
        // each stays).
        self.full.clear();
        for i in (start..m).chain(0..start) {
            let c = &candidates[i];
            let rtt = c.rtt_ms(ctx);
            let service = self.service_ms(c);
            if !c.has_room() {
                let slots = f64::from(c.slots.max(1));
                let queue = (c.load - slots).max(0.0) * service / slots;
                let held = c.held_ms.unwrap_or(rtt + service).max(service).max(EPSILON_MS);
                let frees_in = self.home_slot_frees_in(ctx, c, service);
                self.full.push((rtt + queue + service, f64::from(c.own) / held, slots, frees_in));
                continue;
            }
            let stretch = if c.capacity > 0 {
                1.0
            } else {
                (f64::from(c.in_flight + 1) / ctx.target_concurrency.max(1.0)).max(1.0)
            };
            let counted = (c.node == ctx.origin).then_some(c.in_flight);
            let wait = queue_wait(c.load, c.slots, counted, service, self.params.waiting_weight);
            let cost = rtt + wait + service * stretch;
            let better = match &best {
                None => true,
                Some(b) => {
                    cost < b.cost - EPSILON_MS || (cost <= b.cost + EPSILON_MS && c.in_flight < b.in_flight)
                }
            };
            if better {
                best = Some(Best { index: i, cost, in_flight: c.in_flight });
            }
        }
        // Only the full instances worth waiting for (cheaper than the best with room) free a slot
        // a waiting request would take: their answers set the rate, their costs what waiting buys.
        let below = best.as_ref().map_or(f64::INFINITY, |b| b.cost);
        let (mut full_rate, mut full_slots, mut weighted) = (0.0, 0.0, 0.0);
        // When the first of them frees, if this gateway knows it of every one.
        let mut first_frees = Some(f64::INFINITY);
        for &(cost, rate, slots, frees_in) in self.full.iter().filter(|f| f.0 < below) {
            full_rate += rate;
            full_slots += slots;
            weighted += cost * rate;
            first_frees = first_frees.zip(frees_in).map(|(first, t)| first.min(t));
        }
        // Without any of this gateway's requests there, nothing tells when a slot frees: no wait.
        let full_cost = if full_rate > 0.0 { weighted / full_rate } else { f64::INFINITY };
        let crowded = self.crowded(ctx, full_slots, full_rate);
        let best = best?;
        if full_cost.is_finite() && !crowded {
            // The request waits here behind those queued before it for one of this gateway's
            // requests to be answered: half the time between two answers, on average, for the
            // first. Others' requests at the same instances take their share of the slots, and
            // this counts it: what frees for this gateway is what it sees answered.
            let ahead = self.params.waiting_weight * f64::from(ctx.queued);
            let rate = full_rate.max(f64::MIN_POSITIVE);
            let wait = ahead / rate + first_frees.unwrap_or(0.5 / rate);
            if full_cost + wait < best.cost {
                return None;
            }
        }
        let chosen = &candidates[best.index];
        if chosen.node == ctx.origin && chosen.slots == 1 && chosen.own == 0 {
            self.home_slot_taken(chosen.id, ctx.now);
        }
        Some(best.index)
    }

    fn observe(&mut self, done: &Completion) {
        // A home slot freed: the next of this gateway's requests waiting there, if any, has it.
        if done.node == done.origin
            && let Ok(k) = self.home_slot(done.id)
        {
            self.home_started[k].1 = done.now;
        }
        if !done.success {
            return;
        }
        let ms = done.processing_ms();
        let k = match self.by_node.binary_search_by_key(&done.node, |&(n, _)| n) {
            Ok(k) => k,
            Err(k) => {
                self.by_node.insert(k, (done.node, PeakEwma::new(self.params.decay)));
                k
            }
        };
        self.by_node[k].1.observe(done.now, ms);
        self.overall.observe(done.now, ms);
    }
}
