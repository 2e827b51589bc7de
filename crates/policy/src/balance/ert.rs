//! `ert` (expected response time): ikukantai's default balancer.
//!
//! For every candidate it estimates the response time the request would see there, from live
//! state, and picks the smallest:
//!
//! ```text
//! cost = RTT(origin → node) + service × max(1, (in_flight + 1) / soft_limit)
//! ```
//!
//! - `service` is the instance's recent processing-time estimate (peak-EWMA, kept by the gateway),
//!   else this balancer's estimate for the node, else for the whole revision, else a prior;
//! - `soft_limit` is containerConcurrency when set (then the instance never slows down below it),
//!   else the autoscaler's target concurrency: beyond the load an instance is sized for, processing
//!   is assumed to stretch linearly (processor sharing).
//!
//! When instances are full (containerConcurrency reached), waiting for one of them is an option
//! too: the expected wait for the `queued + 1`-th slot to free is `(queued + 1) × held / slots`,
//! where `held` is how long a slot stays taken as this gateway sees it (send to response:
//! processing plus proxying, plus the link for a remote instance — whose slots the gateway counts
//! by its bandwidth-delay product, so the ratio stays the instance's real throughput). Using the
//! processing time alone here made the wait look shorter than it was once the machine was busy,
//! and requests queued for a local slot long past the point where the trip was cheaper.
//! If waiting and then being served there beats every instance with room, the balancer answers
//! `None` and the gateway buffers the request. So traffic stays local while local is fastest, and
//! spills over exactly when the local queue would cost more than the trip to another node. Ties
//! rotate, so equal instances share the load round-robin.

use std::time::Duration;

use super::{Balancer, Candidate, Completion, PickContext};
use crate::estimate::PeakEwma;

/// Tuning of [`ErtBalancer`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErtParams {
    /// Decay of the processing-time estimators.
    pub decay: Duration,
    /// Processing time assumed before anything was observed (milliseconds).
    pub prior_service_ms: f64,
}

impl Default for ErtParams {
    fn default() -> Self {
        Self { decay: Duration::from_secs(5), prior_service_ms: 1.0 }
    }
}

const EPSILON_MS: f64 = 1e-6;

/// The expected-response-time balancer.
#[derive(Debug)]
pub struct ErtBalancer {
    params: ErtParams,
    by_node: Vec<PeakEwma>,
    overall: PeakEwma,
    rotation: usize,
}

impl ErtBalancer {
    /// A new balancer.
    pub fn new(params: ErtParams) -> Self {
        Self { params, by_node: Vec::new(), overall: PeakEwma::new(params.decay), rotation: 0 }
    }

    fn service_ms(&self, c: &Candidate) -> f64 {
        c.service_time_ms
            .or_else(|| self.by_node.get(c.node).and_then(PeakEwma::get))
            .or_else(|| self.overall.get())
            .unwrap_or(self.params.prior_service_ms)
    }
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
        // Best "wait for a full instance" option: its cost once a slot frees, and its slots.
        let mut full_cost = f64::INFINITY;
        let mut full_slots = 0u32;
        let mut full_held = 0.0;
        let mut full_count = 0u32;
        for k in 0..m {
            let i = (start + k) % m;
            let c = &candidates[i];
            let rtt = c.rtt_ms(ctx);
            let service = self.service_ms(c);
            if !c.has_room() {
                full_cost = full_cost.min(rtt + service);
                full_slots += c.capacity;
                full_held += c.held_ms.unwrap_or(rtt + service).max(service);
                full_count += 1;
                continue;
            }
            let soft = if c.capacity > 0 { f64::from(c.capacity) } else { ctx.target_concurrency.max(1.0) };
            let stretch = if c.capacity > 0 { 1.0 } else { (f64::from(c.in_flight + 1) / soft).max(1.0) };
            let cost = rtt + service * stretch;
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
        let best = best?;
        if full_count > 0 {
            let mean_held = full_held / f64::from(full_count);
            let wait = f64::from(ctx.queued + 1) * mean_held / f64::from(full_slots.max(1));
            if full_cost + wait < best.cost {
                return None;
            }
        }
        Some(best.index)
    }

    fn observe(&mut self, done: &Completion) {
        if !done.success {
            return;
        }
        let ms = done.processing_ms();
        if self.by_node.len() <= done.node {
            self.by_node.resize(done.node + 1, PeakEwma::new(self.params.decay));
        }
        self.by_node[done.node].observe(done.now, ms);
        self.overall.observe(done.now, ms);
    }
}
