//! `yukari`: the original ikukantai scheduler (`miporin/pkg/yukari`), with its known bugs fixed.
//!
//! The desired total is split over origin nodes in proportion to their demand. For each origin,
//! new units go one by one to `argmin_j R[origin][j]` (R = RTT + processing time, the paper's
//! estimate); units no longer wanted by an origin are removed. Fixed here:
//! - capacity is checked on the **candidate** node (the original checked the origin's count);
//! - units are removed **where they were placed** (the original decremented the origin node).
//!
//! Kept as in the original: no hysteresis — when demand moves, instances move with it at once.

use super::{Placement, PlacementInput, apportion};

/// The fixed yukari scheduler. It remembers which origin each unit was placed for.
#[derive(Debug, Default)]
pub struct YukariPlacement {
    n: usize,
    /// `assigned[o * n + j]`: units placed on node j for demand from origin o.
    assigned: Vec<u32>,
}

impl YukariPlacement {
    /// A scheduler with no history.
    pub fn new() -> Self {
        Self::default()
    }

    fn origin_units(&self, o: usize) -> u32 {
        self.assigned[o * self.n..(o + 1) * self.n].iter().sum()
    }

    /// Makes the bookkeeping agree with what actually runs (instances may have died or been
    /// started outside this policy, e.g. the revision's initial instance).
    fn sync_with(&mut self, current: &[u32]) {
        let n = self.n;
        for (j, &have) in current.iter().enumerate() {
            let mut tracked: u32 = (0..n).map(|o| self.assigned[o * n + j]).sum();
            while tracked > have {
                let o = (0..n).max_by_key(|&o| (self.assigned[o * n + j], o)).unwrap_or(0);
                self.assigned[o * n + j] -= 1;
                tracked -= 1;
            }
            if tracked < have {
                self.assigned[j * n + j] += have - tracked;
            }
        }
    }
}

impl Placement for YukariPlacement {
    fn name(&self) -> &'static str {
        "yukari"
    }

    fn place(&mut self, input: &PlacementInput<'_>) -> Vec<u32> {
        let n = input.nodes();
        if self.n != n {
            self.n = n;
            self.assigned = vec![0; n * n];
        }
        let mut out = input.current_within_capacity();
        self.sync_with(&out);
        let total = input.reachable_total();
        let weights: Vec<f64> = if input.demand.iter().take(n).any(|&d| d > 0.0) {
            (0..n).map(|j| input.demand.get(j).copied().unwrap_or(0.0)).collect()
        } else if out.iter().any(|&c| c > 0) {
            out.iter().map(|&c| f64::from(c)).collect()
        } else {
            vec![1.0; n]
        };
        let wanted = apportion(total, &weights);

        // Removals first, so their room can be reused: farthest from the origin first.
        for (o, &want) in wanted.iter().enumerate() {
            let mut extra = self.origin_units(o).saturating_sub(want);
            while extra > 0 {
                let Some(j) = (0..n)
                    .filter(|&j| self.assigned[o * n + j] > 0)
                    .max_by(|&a, &b| input.response_ms(o, a).total_cmp(&input.response_ms(o, b)))
                else {
                    break;
                };
                self.assigned[o * n + j] -= 1;
                out[j] -= 1;
                extra -= 1;
            }
        }
        for (o, &want) in wanted.iter().enumerate() {
            for _ in self.origin_units(o)..want {
                let best = (0..n)
                    .filter(|&j| out[j] < input.capacity[j])
                    .min_by(|&a, &b| input.response_ms(o, a).total_cmp(&input.response_ms(o, b)));
                let Some(j) = best else { break };
                self.assigned[o * n + j] += 1;
                out[j] += 1;
            }
        }
        out
    }
}
