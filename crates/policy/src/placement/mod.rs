//! Placement: how many instances of a revision each node should run.
//!
//! Every policy implements [`Placement`]: given the desired total (from the autoscaler), the
//! demand per origin node, what each node can still hold, the RTT matrix and the current placement,
//! it returns instances per node. All policies keep two invariants (property-tested):
//! - never more than a node's capacity;
//! - the total is `min(desired, Σ capacity)`: demand is met whenever capacity allows.

mod nearest;
mod spread;
mod yukari;

pub use nearest::{NearestParams, NearestPlacement};
pub use spread::SpreadPlacement;
pub use yukari::YukariPlacement;

use std::time::Instant;

use crate::estimate::RttMatrix;

/// Everything a placement decision looks at. All slices are indexed by node.
#[derive(Debug, Clone, Copy)]
pub struct PlacementInput<'a> {
    /// Instances the revision should have in total.
    pub desired: u32,
    /// Demand by the node requests entered at (any non-negative unit, e.g. concurrency).
    pub demand: &'a [f64],
    /// Instances of this revision each node can hold: its capacity less other revisions'
    /// instances, those they hold as headroom ([`Placement::headroom`]) not counted, for they
    /// yield to another revision's need.
    pub capacity: &'a [u32],
    /// Of that, what no other revision's instance holds at all: the room headroom may take.
    pub free: &'a [u32],
    /// Instances of this revision on each node now.
    pub current: &'a [u32],
    /// Mean processing time observed on each node (milliseconds), if known. The scaler gives
    /// every node the revision's mean ([`crate::autoscaler::Autoscaler::mean_service_ms`]).
    pub processing_ms: &'a [Option<f64>],
    /// Node-to-node RTTs.
    pub rtt: &'a RttMatrix,
    /// Now.
    pub now: Instant,
    /// The concurrency one instance is sized for (the autoscaler's target), in the unit of
    /// `demand`; infinite when the revision is not scaled on concurrency.
    pub per_instance: f64,
}

impl PlacementInput<'_> {
    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.capacity.len()
    }

    /// What placement can reach: the desired total, bounded by the fleet's room.
    pub fn reachable_total(&self) -> u32 {
        let room: u64 = self.capacity.iter().map(|&c| u64::from(c)).sum();
        u64::from(self.desired).min(room) as u32
    }

    /// Estimated response time for a request entering at `from` and served on `to`:
    /// RTT plus the node's processing time (the paper's `R = D + P`).
    pub fn response_ms(&self, from: usize, to: usize) -> f64 {
        self.rtt.get(from, to, self.now) + self.processing_ms.get(to).copied().flatten().unwrap_or(0.0)
    }

    /// [`PlacementInput::response_ms`] from `from` to every node, into `out` (one pass over the
    /// RTT matrix's row).
    pub fn response_row(&self, from: usize, out: &mut Vec<f64>) {
        self.rtt.row_into(from, self.now, out);
        out.resize(self.nodes(), 0.0);
        for (to, r) in out.iter_mut().enumerate() {
            *r += self.processing_ms.get(to).copied().flatten().unwrap_or(0.0);
        }
    }

    /// Current placement clipped to capacity.
    fn current_within_capacity(&self) -> Vec<u32> {
        (0..self.nodes()).map(|j| self.current.get(j).copied().unwrap_or(0).min(self.capacity[j])).collect()
    }
}

/// A placement policy.
pub trait Placement: Send + std::fmt::Debug {
    /// The registered name.
    fn name(&self) -> &'static str;
    /// Instances per node.
    fn place(&mut self, input: &PlacementInput<'_>) -> Vec<u32>;

    /// The fewest instances this policy wants for the input's demand (concurrency by origin),
    /// whatever the autoscaler says (`input.desired` is not read): a latency-aware policy may
    /// want the instances each distant site's own demand needs. The caller passes
    /// `max(autoscaler's desired, minimum)` as `desired` to [`Placement::place`]. Default: none.
    fn minimum(&self, _input: &PlacementInput<'_>) -> u32 {
        0
    }

    /// [`Placement::place`] for `input.desired` raised to [`Placement::minimum`] but not beyond
    /// `max_total` (0: no bound): what a revision's scaler asks. A policy may do both in one.
    fn place_at_least_minimum(&mut self, input: &PlacementInput<'_>, max_total: u32) -> Vec<u32> {
        let desired = raised(input.desired, self.minimum(input), max_total);
        self.place(&PlacementInput { desired, ..*input })
    }

    /// Of the last placement's instances on each node, how many are headroom: beyond what the
    /// demand needs at the target, taken because the node had room, and given up when another
    /// revision needs that room (the controllers count them as free room for others). Empty
    /// when none.
    fn headroom(&self) -> &[u32] {
        &[]
    }
}

/// `desired` raised to `minimum`, bounded by `max_total` (0: no bound).
fn raised(desired: u32, minimum: u32, max_total: u32) -> u32 {
    let want = desired.max(minimum);
    if max_total > 0 { want.min(max_total) } else { want }
}

/// Splits `total` whole units over `weights` in proportion (largest remainder, ties to the lower
/// index). All-zero weights give all zeros.
pub(crate) fn apportion(total: u32, weights: &[f64]) -> Vec<u32> {
    let sum: f64 = weights.iter().filter(|w| w.is_finite() && **w > 0.0).sum();
    let mut out = vec![0u32; weights.len()];
    if sum <= 0.0 || total == 0 {
        return out;
    }
    let mut remainders = Vec::with_capacity(weights.len());
    let mut given = 0u32;
    for (j, &w) in weights.iter().enumerate() {
        let w = if w.is_finite() && w > 0.0 { w } else { 0.0 };
        let exact = f64::from(total) * w / sum;
        let whole = exact.floor() as u32;
        out[j] = whole;
        given += whole;
        remainders.push((exact - f64::from(whole), j));
    }
    remainders.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, j) in remainders.iter().take(total.saturating_sub(given) as usize) {
        out[j] += 1;
    }
    out
}

#[cfg(test)]
mod tests;
