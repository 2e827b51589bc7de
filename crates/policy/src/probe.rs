//! Which peers a node probes, and when: measure what decisions need, spread over time.
//!
//! A node's decisions need RTTs to a few peers: the nodes hosting instances of the revisions its
//! gateway routes to (the balancer's candidates, `routed`) and the nodes placement would put an
//! instance on for demand entering here (its nearest peers by the current estimate,
//! [`nearest`]). Every probe interval the [`ProbePlanner`] picks at most `budget` probes, however
//! large the fleet:
//!
//! 1. routed peers never measured, or whose sample could go stale before the next round has
//!    measured them again — within `urgent_window` of now (a routing decision is waiting);
//! 2. placement candidates in the same state, oldest first (so a set larger than the budget is
//!    measured in turns). A needed peer whose sample stays fresh until then is left alone: with
//!    samples fresh for three intervals, each needed pair is measured every other round;
//! 3. `explore` peers drawn at random from all (needed or not), which feed the node's network
//!    coordinate ([`crate::estimate::Vivaldi`]). The coordinates learn from these alone: they
//!    stand in for the pairs nobody measures, and a uniform sample of peers is what trains them
//!    for those. Fed with the nearest peers too, a node at a site of several nodes (a shared
//!    access link, sub-millisecond between them) saw its error estimate swell from ~9 % to ~46 %
//!    at 1 000 nodes while its real error was ~6 % (`tests/latency_at_scale.rs`).
//!
//! All but the first are spread evenly over the interval, each slot jittered, so a fleet's probes
//! never leave in a burst. Between rounds, [`ProbePlanner::urgent`] measures a newly routed peer
//! at once, from what is left of the round's budget.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use crate::estimate::{NodeIndex, RttMatrix};

/// Tuning of the [`ProbePlanner`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeParams {
    /// How often a round is planned.
    pub interval: Duration,
    /// Most probes per node per interval, urgent ones included.
    pub budget: usize,
    /// Random peers probed per interval to feed the coordinates (kept even when decisions need
    /// the whole budget, up to half of it). 12 brings 1 000 nodes to a median error of ~6 %
    /// within 20 rounds (`tests/latency_at_scale.rs`).
    pub explore: usize,
    /// How many nearest peers count as placement candidates ([`nearest`]).
    pub candidates: usize,
    /// Urgent probes are spread over this much time right away, not sent in one burst.
    pub urgent_window: Duration,
}

impl Default for ProbeParams {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            budget: 32,
            explore: 12,
            candidates: 4,
            urgent_window: Duration::from_millis(250),
        }
    }
}

/// The peers a node's decisions need RTTs to.
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs<'a> {
    /// Nodes hosting instances of revisions this node's gateway routes to.
    pub routed: &'a [NodeIndex],
    /// Nodes placement may put an instance on for demand entering here.
    pub candidates: &'a [NodeIndex],
}

/// Why a peer is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeReason {
    /// Needed, and never measured.
    New,
    /// Needed, and its sample is stale or could be before the next round measures it again.
    Stale,
    /// Drawn at random (needed or not): its sample feeds the coordinates.
    Explore,
}

/// One probe to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedProbe {
    /// The peer.
    pub to: NodeIndex,
    /// When to send it.
    pub at: Instant,
    /// Why.
    pub reason: ProbeReason,
}

/// Plans one node's probes, round after round.
#[derive(Debug, Clone)]
pub struct ProbePlanner {
    me: NodeIndex,
    params: ProbeParams,
    rng: SmallRng,
    /// Start of the current round and the probes planned in it.
    round: Option<(Instant, usize)>,
    /// When each peer was last planned (an urgent probe is not repeated within an interval).
    planned: HashMap<NodeIndex, Instant>,
}

/// A needed peer and what its sample looks like.
struct Want {
    to: NodeIndex,
    routed: bool,
    reason: ProbeReason,
    age: Option<Duration>,
}

impl ProbePlanner {
    /// A planner for node `me`; its jitter and random peers follow `seed`.
    pub fn new(me: NodeIndex, params: ProbeParams, seed: u64) -> Self {
        Self {
            me,
            params,
            rng: SmallRng::seed_from_u64(seed ^ (me as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            round: None,
            planned: HashMap::new(),
        }
    }

    /// Its tuning.
    pub fn params(&self) -> &ProbeParams {
        &self.params
    }

    /// Forgets `peer` (it left the fleet).
    pub fn forget(&mut self, peer: NodeIndex) {
        self.planned.remove(&peer);
    }

    /// The needed peers among `peers` that must be measured now, most pressing first.
    fn wants(&self, now: Instant, needs: &Needs<'_>, peers: &[NodeIndex], rtt: &RttMatrix) -> Vec<Want> {
        // The next round's probe of this pair may go out as late as two intervals from now.
        let goes_stale = rtt.max_age().saturating_sub(self.params.interval * 2);
        let mut seen = HashMap::new();
        for (&to, routed) in
            needs.routed.iter().map(|t| (t, true)).chain(needs.candidates.iter().map(|t| (t, false)))
        {
            if to != self.me && peers.contains(&to) {
                let r = seen.entry(to).or_insert(routed);
                *r |= routed;
            }
        }
        let mut wants: Vec<Want> = seen
            .into_iter()
            .filter_map(|(to, routed)| {
                let age = rtt.sample(self.me, to).map(|(_, at)| now.saturating_duration_since(at));
                let reason = match age {
                    None => ProbeReason::New,
                    Some(a) if a >= goes_stale => ProbeReason::Stale,
                    Some(_) => return None,
                };
                Some(Want { to, routed, reason, age })
            })
            .collect();
        // Routed before candidates, new before stale, then the oldest samples first.
        wants.sort_by(|a, b| {
            b.routed
                .cmp(&a.routed)
                .then(a.reason.cmp(&b.reason))
                .then(b.age.cmp(&a.age))
                .then(a.to.cmp(&b.to))
        });
        wants
    }

    /// Plans the round starting at `now` among the probe-able `peers` (alive, reachable; this
    /// node may be among them). At most `budget` probes, each at most once, all within
    /// `[now, now + interval)`, sorted by time.
    pub fn plan(
        &mut self,
        now: Instant,
        needs: &Needs<'_>,
        peers: &[NodeIndex],
        rtt: &RttMatrix,
    ) -> Vec<PlannedProbe> {
        let p = self.params;
        let wants = self.wants(now, needs, peers, rtt);
        let mut all: Vec<NodeIndex> = peers.iter().copied().filter(|&j| j != self.me).collect();
        all.sort_unstable();
        all.dedup();
        let explore = p.explore.min(p.budget / 2).min(all.len());
        let needed = wants.len().min(p.budget - explore);
        // Drawn from every peer, needed or not: the coordinates learn from these alone, an
        // unbiased sample of the pairs they estimate (a needed peer drawn is probed once).
        let (random, _) = all.partial_shuffle(&mut self.rng, explore);
        let random: &[NodeIndex] = random;

        let mut out = Vec::with_capacity(needed + explore);
        let mut spread = Vec::with_capacity(needed + explore);
        for w in &wants[..needed] {
            let reason = if random.contains(&w.to) { ProbeReason::Explore } else { w.reason };
            if w.routed {
                out.push((w.to, reason));
            } else {
                spread.push((w.to, reason));
            }
        }
        for &j in random {
            if !wants[..needed].iter().any(|w| w.to == j) {
                spread.push((j, ProbeReason::Explore));
            }
        }

        let mut planned = self.urgent_times(now, &out);
        let m = spread.len() as f64;
        for (k, (to, reason)) in spread.into_iter().enumerate() {
            let u: f64 = self.rng.random();
            let at = now + p.interval.mul_f64(((k as f64 + u) / m).min(1.0 - f64::EPSILON));
            planned.push(PlannedProbe { to, at, reason });
        }
        planned.sort_by_key(|x| (x.at, x.to));
        for x in &planned {
            self.planned.insert(x.to, x.at);
        }
        self.round = Some((now, planned.len()));
        planned
    }

    /// Probes to send at once because routing needs them: routed peers never measured or
    /// stale, not already planned within the last interval, from what this round's budget has
    /// left. For a change of routes between rounds.
    pub fn urgent(
        &mut self,
        now: Instant,
        needs: &Needs<'_>,
        peers: &[NodeIndex],
        rtt: &RttMatrix,
    ) -> Vec<PlannedProbe> {
        let interval = self.params.interval;
        let (start, spent) = match self.round {
            Some((start, spent)) if now.saturating_duration_since(start) < interval => (start, spent),
            _ => (now, 0),
        };
        let left = self.params.budget.saturating_sub(spent);
        let recently = |to: &NodeIndex| self.planned.get(to).is_some_and(|&at| at + interval > now);
        let todo: Vec<(NodeIndex, ProbeReason)> = self
            .wants(now, needs, peers, rtt)
            .into_iter()
            .filter(|w| w.routed && !recently(&w.to))
            .take(left)
            .map(|w| (w.to, w.reason))
            .collect();
        let planned = self.urgent_times(now, &todo);
        for x in &planned {
            self.planned.insert(x.to, x.at);
        }
        self.round = Some((start, spent + planned.len()));
        planned
    }

    /// Times within the urgent window, evenly spread and jittered.
    fn urgent_times(&mut self, now: Instant, todo: &[(NodeIndex, ProbeReason)]) -> Vec<PlannedProbe> {
        let m = todo.len() as f64;
        let window = self.params.urgent_window.min(self.params.interval);
        todo.iter()
            .enumerate()
            .map(|(k, &(to, reason))| {
                let u: f64 = self.rng.random();
                PlannedProbe { to, at: now + window.mul_f64((k as f64 + u) / m), reason }
            })
            .collect()
    }
}

/// The `k` peers likely nearest to `me`, nearest first, ties to the lower index: where placement
/// would put an instance for demand entering at `me`, to be measured.
///
/// A peer measured before (by either end, fresh or not: two nodes a site apart stay a site apart)
/// ranks by its measurement. One never measured ranks by how alike the two coordinates are
/// (`|x_a − x_b| + |h_a − h_b|`), not by their RTT estimate: two nodes of one site look at the world
/// through the same access link, so their coordinates are alike, yet the estimate adds both
/// heights and puts them farther apart than the next site. Alike but far is measured once and
/// drops out. Without coordinates, the matrix's RTT.
pub fn nearest(
    me: NodeIndex,
    peers: &[NodeIndex],
    k: usize,
    rtt: &RttMatrix,
    now: Instant,
) -> Vec<NodeIndex> {
    let mine = rtt.coordinate(me).map(|(c, _)| c);
    let score = |j: NodeIndex| {
        if let Some((ms, _)) = rtt.sample(me, j).or_else(|| rtt.sample(j, me)) {
            return ms;
        }
        match (mine, rtt.coordinate(j)) {
            (Some(a), Some((b, _))) if a.is_compatible_with(b) => {
                let dx: f64 = a.vec.iter().zip(&b.vec).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
                dx + (a.height - b.height).abs()
            }
            _ => rtt.get(me, j, now),
        }
    };
    let mut by_rtt: Vec<(f64, NodeIndex)> =
        peers.iter().filter(|&&j| j != me).map(|&j| (score(j), j)).collect();
    let cmp = |a: &(f64, NodeIndex), b: &(f64, NodeIndex)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
    if by_rtt.len() > k && k > 0 {
        by_rtt.select_nth_unstable_by(k - 1, cmp);
    }
    by_rtt.truncate(k);
    by_rtt.sort_by(cmp);
    by_rtt.into_iter().map(|(_, j)| j).collect()
}

#[cfg(test)]
mod tests;
