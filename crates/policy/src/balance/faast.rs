//! `faast`: the balancer of the FaaSt paper (IEEE CloudNet 2024) as the original ikukantai ran it.
//!
//! Every `period` (2 s by default) it recomputes, for each origin node i, the weights
//! `w_ij = (1/r_ij) / Σ_k (1/r_ik)` with `r_ij = RTT_ij + P_j`, where `P_j` is the mean processing
//! time observed on node j during the last period. Nodes without an instance at recompute time get
//! weight 0; with no instance anywhere each node keeps its own traffic (identity). A zero `r` counts
//! as 0.1 ms. A request entering at i goes to node j with probability `w_ij`, then round-robin among
//! j's instances.
//!
//! Kept on purpose: the weights are as stale as the period (the original's weakness). Fixed on
//! purpose: when the drawn node has no instance with room, the draw is repeated over the nodes that
//! do (the original had no fallback), so a full instance is never chosen.

use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::{Balancer, Candidate, Completion, PickContext, next_with_room};

/// The FaaSt weighted balancer.
#[derive(Debug)]
pub struct FaastBalancer {
    period: Duration,
    rng: SmallRng,
    computed_at: Option<Instant>,
    n: usize,
    weights: Vec<f64>,
    sum_ms: Vec<f64>,
    samples: Vec<u32>,
    processing_ms: Vec<f64>,
    last_in_node: Vec<Option<u64>>,
}

impl FaastBalancer {
    /// A balancer recomputing weights every `period`, drawing with `seed`.
    pub fn new(period: Duration, seed: u64) -> Self {
        Self {
            period,
            rng: SmallRng::seed_from_u64(seed),
            computed_at: None,
            n: 0,
            weights: Vec::new(),
            sum_ms: Vec::new(),
            samples: Vec::new(),
            processing_ms: Vec::new(),
            last_in_node: Vec::new(),
        }
    }

    /// The current weights of origin `origin` (fractions summing to 1), one per node.
    pub fn weights(&self, origin: usize) -> &[f64] {
        &self.weights[origin * self.n..(origin + 1) * self.n]
    }

    fn resize(&mut self, n: usize) {
        if self.n != n {
            self.n = n;
            self.weights = vec![0.0; n * n];
            self.sum_ms = vec![0.0; n];
            self.samples = vec![0; n];
            self.processing_ms = vec![0.0; n];
            self.last_in_node = vec![None; n];
            self.computed_at = None;
        }
    }

    fn recompute(&mut self, ctx: &PickContext<'_>, candidates: &[Candidate]) {
        let n = self.n;
        for j in 0..n {
            if self.samples[j] > 0 {
                self.processing_ms[j] = self.sum_ms[j] / f64::from(self.samples[j]);
            }
            self.sum_ms[j] = 0.0;
            self.samples[j] = 0;
        }
        let mut has_instance = vec![false; n];
        for c in candidates {
            if c.node < n {
                has_instance[c.node] = true;
            }
        }
        let any = has_instance.iter().any(|&h| h);
        for i in 0..n {
            let row = &mut self.weights[i * n..(i + 1) * n];
            if !any {
                row.iter_mut().enumerate().for_each(|(j, w)| *w = if i == j { 1.0 } else { 0.0 });
                continue;
            }
            let mut total = 0.0;
            for (j, w) in row.iter_mut().enumerate() {
                let r = ctx.rtt.get(i, j, ctx.now) + self.processing_ms[j];
                let r = if r <= 0.0 { 0.1 } else { r };
                *w = if has_instance[j] { 1.0 / r } else { 0.0 };
                total += *w;
            }
            row.iter_mut().for_each(|w| *w /= total);
        }
        self.computed_at = Some(ctx.now);
    }
}

impl Balancer for FaastBalancer {
    fn name(&self) -> &'static str {
        "faast"
    }

    fn pick(&mut self, ctx: &PickContext<'_>, candidates: &[Candidate]) -> Option<usize> {
        self.resize(ctx.rtt.len());
        if self.computed_at.is_none_or(|t| ctx.now.saturating_duration_since(t) >= self.period) {
            self.recompute(ctx, candidates);
        }
        let n = self.n;
        let mut room = vec![false; n];
        for c in candidates.iter().filter(|c| c.has_room() && c.node < n) {
            room[c.node] = true;
        }
        let row = &self.weights[ctx.origin * n..(ctx.origin + 1) * n];
        let total: f64 = row.iter().zip(&room).filter(|(_, r)| **r).map(|(w, _)| w).sum();
        let node = if total > 0.0 {
            let mut draw = self.rng.random::<f64>() * total;
            let mut chosen = None;
            for (j, w) in row.iter().enumerate().filter(|(j, _)| room[*j]) {
                chosen = Some(j);
                if draw < *w {
                    break;
                }
                draw -= w;
            }
            chosen?
        } else {
            // Stale weights point only at nodes without room: any node with room, at random.
            let with_room: Vec<usize> = (0..n).filter(|&j| room[j]).collect();
            if with_room.is_empty() {
                return None;
            }
            with_room[self.rng.random_range(0..with_room.len())]
        };
        let i = next_with_room(
            candidates.iter().enumerate().filter(|(_, c)| c.node == node),
            self.last_in_node[node],
        )?;
        self.last_in_node[node] = Some(candidates[i].id);
        Some(i)
    }

    fn observe(&mut self, done: &Completion) {
        if done.node < self.n {
            self.sum_ms[done.node] += done.processing_ms();
            self.samples[done.node] += 1;
        }
    }
}
