//! `even`: what Knative's activator does (`pkg/activator/net/lb_policy.go`, `throttler.go`).
//!
//! - containerConcurrency 0 (unlimited): random choice of two, fewer in-flight wins, ties random;
//! - containerConcurrency 1..=3: the first instance (in sorted order) with room;
//! - containerConcurrency > 3: round-robin from after the last pick, skipping full instances.
//!
//! It knows nothing of nodes or latency: that is the baseline ikukantai was built to beat.

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::{Balancer, Candidate, PickContext, next_with_room};

/// Knative's activator load balancing.
#[derive(Debug)]
pub struct EvenBalancer {
    rng: SmallRng,
    last: Option<u64>,
}

impl EvenBalancer {
    /// A balancer whose random choices follow `seed`.
    pub fn new(seed: u64) -> Self {
        Self { rng: SmallRng::seed_from_u64(seed), last: None }
    }
}

impl Balancer for EvenBalancer {
    fn name(&self) -> &'static str {
        "even"
    }

    fn pick(&mut self, _ctx: &PickContext<'_>, candidates: &[Candidate]) -> Option<usize> {
        let cc = candidates.iter().map(|c| c.capacity).max()?;
        match cc {
            0 => {
                let n = candidates.len();
                if n == 1 {
                    return Some(0);
                }
                let a = self.rng.random_range(0..n);
                let mut b = self.rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (ia, ib) = (candidates[a].in_flight, candidates[b].in_flight);
                Some(if ia < ib || (ia == ib && self.rng.random_bool(0.5)) { a } else { b })
            }
            1..=3 => candidates.iter().position(Candidate::has_room),
            _ => {
                let i = next_with_room(candidates.iter().enumerate(), self.last)?;
                self.last = Some(candidates[i].id);
                Some(i)
            }
        }
    }
}
