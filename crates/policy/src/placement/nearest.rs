//! `nearest`: ikukantai's default placement — demand-weighted, latency-aware, with hysteresis.
//!
//! 1. The ideal placement: the reachable total split over origin nodes by demand; each origin's
//!    units go to its own node while it has room, then to the nodes with the lowest estimated
//!    response time from that origin (RTT + processing time). Capacity is never exceeded.
//! 2. Hysteresis against churn: running instances stay. A scale-up adds only where the ideal has
//!    more than is running; a scale-down removes only where more runs than the ideal (largest
//!    surplus first, then the node with least demand). So an instance is not stopped on one node
//!    and started on another just because demand wobbled, and a cold start is not paid twice.
//! 3. When the total is right but instances sit far from where the demand is, one instance moves
//!    per `migrate_after`, and only if the move saves at least `min_gain_ms` for that demand — at
//!    once, though, and for any trip, when the demand's site has no instance at all (every such
//!    site in the same decision, as a scale-up would cover them; a move too small to pay for one
//!    site never holds up another's). A move makes before it breaks: the new instance is asked
//!    for first, the old one goes at the next decision, so for that while the placement holds one
//!    instance more than the total (never more: a decision's further moves break first).
//!
//! Without any demand signal the ideal is an even spread from the current placement.
//!
//! It also asks for a **minimum**: one instance per *site* with more than a trickle of demand (a
//! site groups origin nodes within `site_rtt_ms` of each other). The KPA sizes a revision by total
//! concurrency, so two users at two sites 50 ms apart get one instance, and one of them pays the
//! trip on every request; with the minimum each site keeps its own instance while it has demand.
//! The floor is absolute, not a share of the total: with twenty sites each has a twentieth of the
//! demand, and a share rule left most of them to travel to an instance that wandered between them.
//! And a site gets what its own demand needs at the autoscaler's target, not just one: a site short
//! of instances queues its users at home (the trip costs more), the KPA panics on that queue and
//! scales the whole revision up, then back down once it drains — at 1 000 nodes that swung between
//! 400 and 1 800 instances every 18 s.

use std::time::{Duration, Instant};

use super::{Placement, PlacementInput, SpreadPlacement};

/// Tuning of [`NearestPlacement`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NearestParams {
    /// How long instances must have been misplaced before one moves.
    pub migrate_after: Duration,
    /// Minimum estimated response-time saving (milliseconds) that justifies a move.
    pub min_gain_ms: f64,
    /// Origins closer than this (RTT, ms) are one site.
    pub site_rtt_ms: f64,
    /// A site needs at least this much demand (concurrency: the share of one instance its
    /// requests keep busy, trips included) to get its own instance, and keeps it down to
    /// a twentieth of this, its demand weighed as if its instance were gone.
    pub min_site_demand: f64,
}

impl Default for NearestParams {
    fn default() -> Self {
        Self {
            migrate_after: Duration::from_secs(30),
            min_gain_ms: 5.0,
            site_rtt_ms: 1.0,
            min_site_demand: 0.01,
        }
    }
}

/// Demand-weighted latency-aware placement.
#[derive(Debug)]
pub struct NearestPlacement {
    params: NearestParams,
    misplaced_since: Option<Instant>,
    /// Of the last placement's instances on each node, those that are headroom.
    headroom: Vec<u32>,
}

/// Origins close enough to be served as one, and their demand.
#[derive(Debug, Clone, Copy)]
struct Site {
    /// The busiest origin of the site: where its instances go.
    at: usize,
    /// The concurrency its origins' requests keep busy.
    demand: f64,
    /// Every origin of it asks only by what its demand weighs away from home
    /// ([`NearestPlacement::weight_away`]): its instance is headroom, in free room, and yields.
    weighed: bool,
}

/// The chance a site's request may find all its instances at their target concurrency, which
/// its instances are sized to stay under while its node has free room, so a lightly loaded site
/// answers as its own idle instances would: at 5 %, queueing hardly reaches a busy site's p90.
const WAIT_CHANCE: f64 = 0.05;

/// The same for a site one instance carries at [`WAIT_CHANCE`] — at the targets of one to a few
/// requests an instance, a site of at most a request or two in flight: its p90 is taken over a
/// few dozen requests, and of 23, three queued set it, one such span in ten at 5 %, one in 95 at
/// 2 % (the sweeps chose this against 5 % and 2 % for every site: docs/sweeps.md).
const THIN_WAIT_CHANCE: f64 = 0.02;

/// Of `min_site_demand`, what a site that has an instance keeps it down to, its demand weighed as
/// if served at the nearest instance outside its site ([`NearestPlacement::weight_away`]; kept only
/// so, as headroom). Over a window of a dozen requests a trickle measured under a quarter of the
/// floor now and then: a quarter started and stopped its instance by turns (docs/sweeps.md).
const HELD_SHARE: f64 = 0.05;

/// What a site with `demand` concurrency needs, `per_instance` each (the target; infinite when
/// the revision is not scaled on concurrency): the instances that keep it at the target — the
/// autoscaler's own sizing, so a site short of instances does not queue its users at home; at
/// least one — and, within `free` room at its node, the headroom that keeps the chance of a
/// request finding them all at the target under [`WAIT_CHANCE`] ([`THIN_WAIT_CHANCE`] where one
/// instance would do; Erlang C, each instance its target's slots as servers, one at least). Of
/// the `held` instances the site has, those beyond that stay while one fewer would queue more
/// than half as often: a demand hovering at a bound would otherwise start and stop an instance by
/// turns. Returns (at the target, headroom).
fn site_need(demand: f64, per_instance: f64, free: u32, held: u32) -> (u32, u32) {
    if !(per_instance.is_finite() && per_instance > 0.0 && demand.is_finite() && demand > 0.0) {
        return (1, 0);
    }
    let base = ((demand / per_instance).ceil() as u32).max(1);
    // An instance is one server at least: below a target of 1 a whole one is what it adds.
    let servers = |k: u32| f64::from(k) * per_instance.max(1.0);
    let queues_over = |k: u32, chance: f64| wait_chance(demand, servers(k)) > chance;
    let bound = if base == 1 && !queues_over(1, WAIT_CHANCE) { THIN_WAIT_CHANCE } else { WAIT_CHANCE };
    let mut k = base;
    while k < free && queues_over(k, bound) {
        k += 1;
    }
    while k < free.min(held) && queues_over(k, bound / 2.0) {
        k += 1;
    }
    (base, k - base)
}

/// Erlang C: the chance an arrival waits at `servers` (whole: at least one) with `load` Erlangs
/// offered; 1 when they cannot keep up.
pub(super) fn wait_chance(load: f64, servers: f64) -> f64 {
    let s = servers.floor().max(1.0);
    if load >= s {
        return 1.0;
    }
    // Erlang B by its recurrence, then C from B.
    let mut b = 1.0;
    let mut j = 1.0;
    while j <= s {
        b = load * b / (j + load * b);
        j += 1.0;
    }
    s * b / (s - load * (1.0 - b))
}

impl NearestPlacement {
    /// A new placement policy.
    pub fn new(params: NearestParams) -> Self {
        Self { params, misplaced_since: None, headroom: Vec::new() }
    }

    /// The sites with demand, the busiest first: origins with at least `min_site_demand`
    /// ([`HELD_SHARE`] of it where an instance runs already, weighed by
    /// [`NearestPlacement::weight_away`]; a site that asks only so is [`Site::weighed`]), each
    /// joining the first busier origin
    /// within `site_rtt_ms` of it (that origin stands for the site), with the demand of the
    /// origins it groups.
    fn sites(&self, input: &PlacementInput<'_>) -> Vec<Site> {
        let demand = input.demand;
        let min = self.params.min_site_demand;
        let keep = min * HELD_SHARE;
        // Whether an origin asks for an instance, and whether only by its weight away: held, by
        // what it would weigh without it; not held, a trickle that the trip it makes now lifts
        // over the floor and that would weigh under `keep` at home — a claim on free room only,
        // or two revisions' trickles at a small node would take the room from each other by turns.
        let wanted = |o: usize| {
            let held = input.current.get(o).is_some_and(|&c| c > 0);
            if held && demand[o] >= keep {
                Some(false)
            } else if held {
                (demand[o] * self.weight_away(input, o) >= keep).then_some(true)
            } else if demand[o] >= min {
                Some(demand[o] < keep * self.weight_away(input, o))
            } else {
                None
            }
        };
        let mut origins: Vec<(usize, bool)> = (0..demand.len().min(input.rtt.len()))
            .filter(|&o| demand[o].is_finite() && demand[o] > 0.0)
            .filter_map(|o| wanted(o).map(|weighed| (o, weighed)))
            .collect();
        origins.sort_by(|&(a, _), &(b, _)| demand[b].total_cmp(&demand[a]).then(a.cmp(&b)));
        let mut sites: Vec<Site> = Vec::new();
        // An origin's RTTs in one pass over its row: a lookup per site costs more at a thousand.
        let mut row = Vec::new();
        for (o, weighed) in origins {
            input.rtt.row_into(o, input.now, &mut row);
            match sites.iter_mut().find(|s| row[s.at] <= self.params.site_rtt_ms) {
                Some(site) => {
                    site.demand += demand[o];
                    site.weighed &= weighed;
                }
                None => sites.push(Site { at: o, demand: demand[o], weighed }),
            }
        }
        sites
    }

    /// How many times more the demand of origin `o`, served at home, would weigh were its site's
    /// instances gone: demand counts the trip, so the same users weigh `(trip + processing) /
    /// processing` times less once served at home — a hundred for a 1 ms function whose nearest
    /// instance outside the site is 100 ms away, and a floor on the demand as measured would stop
    /// their instance for a trickle that the trip makes weigh as much as the floor. For an origin
    /// without an instance, how many times more it weighs now than it would at home. 1 when no
    /// node outside the site runs the revision or the processing time is unknown.
    fn weight_away(&self, input: &PlacementInput<'_>, o: usize) -> f64 {
        let home = input.response_ms(o, o);
        if !(home.is_finite() && home > 0.0) {
            return 1.0;
        }
        // Looked up only where an instance runs: this is asked of trickles, at any fleet size.
        let away = (0..input.current.len().min(input.nodes()))
            .filter(|&j| j != o && input.current[j] > 0)
            .map(|j| (input.rtt.get(o, j, input.now), j))
            .filter(|&(rtt, _)| rtt > self.params.site_rtt_ms)
            .map(|(_, j)| input.response_ms(o, j))
            .fold(f64::INFINITY, f64::min);
        if away.is_finite() { (away / home).max(1.0) } else { 1.0 }
    }

    /// What each site's own demand needs at its node, the busiest site first: (node, at the
    /// target, headroom; see [`site_need`]). A site kept only by its weight away keeps one
    /// instance as headroom, while no other revision needs the room: a trickle's instance on a
    /// small edge node must not keep a busier function from it.
    fn site_needs(&self, input: &PlacementInput<'_>) -> Vec<(usize, u32, u32)> {
        self.sites(input)
            .into_iter()
            .filter_map(|site| {
                let free = input.free.get(site.at).copied().unwrap_or(0);
                let held = input.current.get(site.at).copied().unwrap_or(0);
                if site.weighed {
                    return (free > 0).then_some((site.at, 0, 1));
                }
                let (base, headroom) = site_need(site.demand, input.per_instance, free, held);
                Some((site.at, base, headroom))
            })
            .collect()
    }

    /// The ideal placement for the input (step 1), and the headroom in it per node; `None`
    /// without a demand signal.
    fn ideal(
        &self,
        input: &PlacementInput<'_>,
        total: u32,
        needs: &[(usize, u32, u32)],
    ) -> Option<(Vec<u32>, Vec<u32>)> {
        let n = input.nodes();
        let demand: Vec<f64> = (0..n).map(|j| input.demand.get(j).copied().unwrap_or(0.0)).collect();
        let sum: f64 = demand.iter().filter(|d| d.is_finite() && **d > 0.0).sum();
        if sum <= 0.0 {
            return None;
        }
        // Each site what its own demand needs, the busiest first, when the total allows it; one
        // each when it covers only that; whatever is left in whole shares of the demand, so an
        // origin with demand for k more instances gets them near it. Fewer instances than sites
        // are all placed where they are near most of the demand (below).
        let mut units = vec![0u32; n];
        let mut left = total;
        let mut headroom = vec![0u32; n];
        let all = sum_of(needs);
        if total as usize >= needs.iter().filter(|&&(_, base, _)| base > 0).count() {
            for &(at, base, extra) in needs {
                // Short of the total, one each: a site of headroom alone gets none.
                let here = if total >= all { base + extra } else { base.min(1) };
                units[at] += here;
                left -= here;
                if total >= all {
                    headroom[at] += extra;
                }
            }
        }
        let rest = left;
        for (o, &d) in demand.iter().enumerate() {
            if d.is_finite() && d > 0.0 {
                units[o] += (f64::from(rest) * d / sum).floor() as u32;
            }
        }
        let mut room: Vec<u32> = input.capacity.to_vec();
        let mut ideal = vec![0u32; n];
        let mut response = Vec::new();
        let fastest_processing = input.processing_ms.iter().flatten().copied().fold(f64::INFINITY, f64::min);
        let mut origins: Vec<usize> = (0..n).filter(|&o| units[o] > 0).collect();
        origins.sort_by(|&a, &b| units[b].cmp(&units[a]).then(a.cmp(&b)));
        for o in origins {
            let mut left = units[o];
            // Local is the best node whenever it processes as fast as any node (its RTT is 0).
            let local_processing = input.processing_ms.get(o).copied().flatten().unwrap_or(0.0);
            if local_processing <= fastest_processing || fastest_processing.is_infinite() {
                let here = left.min(room[o]);
                ideal[o] += here;
                room[o] -= here;
                left -= here;
            }
            if left == 0 {
                continue;
            }
            input.response_row(o, &mut response);
            let mut by_cost: Vec<(f64, usize)> =
                (0..n).filter(|&j| room[j] > 0).map(|j| (response[j], j)).collect();
            by_cost.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            for (_, j) in by_cost {
                let here = left.min(room[j]);
                ideal[j] += here;
                room[j] -= here;
                left -= here;
                if left == 0 {
                    break;
                }
            }
        }
        let placed: u32 = ideal.iter().sum();
        cover(input, &demand, total.saturating_sub(placed), &mut ideal, &mut room);
        Some((ideal, headroom))
    }
}

/// Places the fractional rest of the demand, `left` instances, where they cut the demand-weighted
/// distance to the nearest instance most (greedy k-median). With fewer instances than origins
/// this finds the node central to many (a cloud near every edge) rather than the single busiest
/// origin, which would make every other origin pay the trip to it. Once every origin with demand
/// has an instance at hand, the rest go where demand per instance is highest.
fn cover(input: &PlacementInput<'_>, demand: &[f64], mut left: u32, ideal: &mut [u32], room: &mut [u32]) {
    if left == 0 {
        // Nothing to place: the n × m response times below would be read for nothing.
        return;
    }
    let n = input.nodes();
    let origins: Vec<usize> = (0..n).filter(|&o| demand[o].is_finite() && demand[o] > 0.0).collect();
    let m = origins.len();
    // Every response time once, origin by origin as the RTT matrix lies: the gains below read
    // it that way too.
    let mut response = Vec::with_capacity(n * m);
    let mut row = Vec::new();
    for &o in &origins {
        input.response_row(o, &mut row);
        response.extend_from_slice(&row);
    }
    let from = |k: usize| &response[k * n..(k + 1) * n];
    // An origin without any instance pays at least the farthest trip there is, and then some.
    let uncovered = response.iter().copied().fold(0.0, f64::max) * 2.0 + 1.0;
    let mut nearest = vec![uncovered; m];
    for (k, near) in nearest.iter_mut().enumerate() {
        for j in (0..n).filter(|&j| ideal[j] > 0) {
            *near = near.min(from(k)[j]);
        }
    }
    // Each node's gain: how much placing an instance there would cut the demand-weighted
    // distance. Kept exact as instances are added: a placement changes the nearest instance of
    // only the origins it is nearer to, and every node's gain changes only through those — so
    // the first instance costs n × m and the next ones little, not n × m each.
    let mut gains = vec![0.0; n];
    for (k, &near) in nearest.iter().enumerate() {
        let d = demand[origins[k]];
        for (gain, &r) in gains.iter_mut().zip(from(k)) {
            *gain += d * (near - r).max(0.0);
        }
    }
    let mut improved: Vec<(usize, f64, f64)> = Vec::new();
    while left > 0 {
        // The highest gain, the lowest index on ties.
        let best = (0..n).filter(|&j| room[j] > 0).fold(None::<usize>, |best, j| match best {
            Some(b) if gains[b] >= gains[j] => Some(b),
            _ => Some(j),
        });
        let Some(mut j) = best else { return };
        if gains[j] <= 1e-9 {
            // Everyone is served at distance 0 already: add capacity where it is busiest.
            let busiest = (0..n).filter(|&j| room[j] > 0).max_by(|&a, &b| {
                let load = |x: usize| demand[x].max(0.0) / f64::from(ideal[x] + 1);
                load(a).total_cmp(&load(b)).then(b.cmp(&a))
            });
            let Some(b) = busiest else { return };
            j = b;
        }
        ideal[j] += 1;
        room[j] -= 1;
        left -= 1;
        improved.clear();
        for (k, near) in nearest.iter_mut().enumerate() {
            let r = from(k)[j];
            if r < *near {
                improved.push((k, *near, r));
                *near = r;
            }
        }
        for &(k, before, after) in &improved {
            let d = demand[origins[k]];
            for ((x, gain), &r) in gains.iter_mut().enumerate().zip(from(k)) {
                if room[x] > 0 {
                    *gain = (*gain - d * ((before - r).max(0.0) - (after - r).max(0.0))).max(0.0);
                }
            }
        }
    }
}

impl Placement for NearestPlacement {
    fn name(&self) -> &'static str {
        "nearest"
    }

    fn minimum(&self, input: &PlacementInput<'_>) -> u32 {
        sum_of(&self.site_needs(input))
    }

    fn place_at_least_minimum(&mut self, input: &PlacementInput<'_>, max_total: u32) -> Vec<u32> {
        // The sites once, for the minimum and the placement.
        let needs = self.site_needs(input);
        let desired = super::raised(input.desired, sum_of(&needs), max_total);
        let cap = (max_total > 0).then_some(max_total);
        self.place_for(&PlacementInput { desired, ..*input }, &needs, cap)
    }

    fn headroom(&self) -> &[u32] {
        &self.headroom
    }

    fn place(&mut self, input: &PlacementInput<'_>) -> Vec<u32> {
        let needs = self.site_needs(input);
        self.place_for(input, &needs, None)
    }
}

/// The instances that sites' `needs` ask for.
fn sum_of(needs: &[(usize, u32, u32)]) -> u32 {
    needs.iter().map(|&(_, base, extra)| base + extra).sum()
}

impl NearestPlacement {
    /// The move step 3 would make: from the node with the largest surplus over the ideal that
    /// saves enough for the demand of a node short of it, and whether that site has an instance
    /// already (then the move waits `migrate_after`). Each site with no instance at hand is
    /// weighed first, the largest deficit first, and any saving beyond `site_rtt_ms` is enough;
    /// then the largest deficit of all, which must save `min_gain_ms`. So a move too small to pay
    /// for one site does not hold up a site whose users pay a trip on every request.
    fn worth_moving(
        &self,
        input: &PlacementInput<'_>,
        out: &[u32],
        ideal: &[u32],
        headroom: &[u32],
    ) -> Option<(usize, usize, bool)> {
        let n = input.nodes();
        // Headroom is had where room is free, never moved for: the room it depends on comes and
        // goes with other revisions' decisions.
        // (A site whose node processes slower than another has its units placed there instead.)
        let needed = |j: usize| ideal[j].saturating_sub(headroom[j]);
        let covered = |d: usize| {
            out[d] > 0
                || (0..n).any(|j| out[j] > 0 && input.rtt.get(d, j, input.now) <= self.params.site_rtt_ms)
        };
        let mut surplus: Vec<usize> = (0..n).filter(|&j| out[j] > ideal[j]).collect();
        surplus.sort_by_key(|&j| std::cmp::Reverse((out[j] - ideal[j], j)));
        let mut deficit: Vec<usize> =
            (0..n).filter(|&j| out[j] < needed(j) && out[j] < input.capacity[j]).collect();
        deficit.sort_by_key(|&j| (std::cmp::Reverse(needed(j) - out[j]), j));
        let from = |d: usize, at_least: f64| {
            let gain = |s: usize| input.response_ms(d, s) - input.response_ms(d, d);
            surplus.iter().copied().find(|&s| gain(s) >= at_least)
        };
        // A site without an instance is owed one by the minimum; the trip its users pay, however
        // short, is what made it a site of its own. Lazily: at a thousand nodes every deficit's
        // scan of every node would cost on each call.
        let uncovered = deficit
            .iter()
            .filter(|&&d| !covered(d))
            .find_map(|&d| from(d, self.params.site_rtt_ms).map(|s| (s, d, false)));
        uncovered.or_else(|| {
            deficit.first().and_then(|&d| from(d, self.params.min_gain_ms).map(|s| (s, d, covered(d))))
        })
    }

    /// [`Placement::place`] with the sites' needs taken already; never more than `cap` instances
    /// (the revision's max-scale), not even while one moves.
    fn place_for(
        &mut self,
        input: &PlacementInput<'_>,
        needs: &[(usize, u32, u32)],
        cap: Option<u32>,
    ) -> Vec<u32> {
        let total = input.reachable_total();
        let Some((ideal, headroom)) = self.ideal(input, total, needs) else {
            self.misplaced_since = None;
            self.headroom.clear();
            return SpreadPlacement.place(input);
        };
        let n = input.nodes();
        let demand = |j: usize| input.demand.get(j).copied().unwrap_or(0.0);
        let mut out = input.current_within_capacity();
        let sum: u32 = out.iter().sum();
        if sum > total {
            let mut surplus: Vec<usize> = (0..n).filter(|&j| out[j] > ideal[j]).collect();
            surplus.sort_by(|&a, &b| {
                (out[b] - ideal[b])
                    .cmp(&(out[a] - ideal[a]))
                    .then(demand(a).total_cmp(&demand(b)))
                    .then(b.cmp(&a))
            });
            let mut remove = sum - total;
            for j in surplus {
                let here = remove.min(out[j] - ideal[j]);
                out[j] -= here;
                remove -= here;
                if remove == 0 {
                    break;
                }
            }
        } else if sum < total {
            let mut deficit: Vec<usize> = (0..n).filter(|&j| out[j] < ideal[j]).collect();
            deficit.sort_by(|&a, &b| (ideal[b] - out[b]).cmp(&(ideal[a] - out[a])).then(a.cmp(&b)));
            let mut add = total - sum;
            for j in deficit {
                let here = add.min(ideal[j] - out[j]);
                out[j] += here;
                add -= here;
                if add == 0 {
                    break;
                }
            }
        }
        // Step 3: one migration at a time, after the misplacement has lasted; every site with no
        // instance at all at once, as a scale-up would cover it.
        // The placement as if each instance moved away had gone already: what the next move weighs.
        let mut moved = out.clone();
        let mut sites_covered = false;
        loop {
            let Some((s, d, covered)) = self.worth_moving(input, &moved, &ideal, &headroom) else {
                self.misplaced_since = None;
                break;
            };
            if covered && sites_covered {
                // Sites were covered in this decision: the finer moves' wait starts at the next.
                break;
            }
            let since = *self.misplaced_since.get_or_insert(input.now);
            if covered && input.now.saturating_duration_since(since) < self.params.migrate_after {
                break;
            }
            // Make before break: the instance at `s` goes once the one at `d` exists (the next
            // decision's scale-down takes it), so a move never leaves the revision without an
            // instance while the new one starts. Only the first, and only below max-scale: a
            // revision's max-scale is a promise, so at it the move breaks first (a cold start
            // once, for a gain every request after it is paid; moves wait `migrate_after`).
            let at_cap = cap.is_some_and(|cap| out.iter().sum::<u32>() >= cap);
            out[d] += 1;
            moved[d] += 1;
            moved[s] -= 1;
            if at_cap || sites_covered || input.current.get(d).copied().unwrap_or(0) >= out[d] {
                out[s] -= 1;
            }
            self.misplaced_since = None;
            if covered {
                break;
            }
            sites_covered = true;
        }
        self.headroom = headroom.iter().zip(&out).map(|(&h, &o)| h.min(o)).collect();
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::estimate::RttMatrix;

    /// Greedy k-median as written down: every node's gain computed afresh for every instance.
    fn cover_by_the_book(
        response: &[Vec<f64>],
        demand: &[f64],
        mut left: u32,
        ideal: &mut [u32],
        room: &mut [u32],
    ) {
        let n = room.len();
        let distance = |ideal: &[u32]| -> f64 {
            let far = response.iter().flatten().copied().fold(0.0, f64::max) * 2.0 + 1.0;
            (0..n)
                .filter(|&o| demand[o] > 0.0)
                .map(|o| {
                    demand[o] * (0..n).filter(|&j| ideal[j] > 0).map(|j| response[o][j]).fold(far, f64::min)
                })
                .sum()
        };
        while left > 0 {
            let before = distance(ideal);
            let gain = |j: usize| {
                let mut with = ideal.to_vec();
                with[j] += 1;
                before - distance(&with)
            };
            let Some(j) = (0..n).filter(|&j| room[j] > 0).fold(None::<usize>, |best, j| match best {
                Some(b) if gain(b) >= gain(j) => Some(b),
                _ => Some(j),
            }) else {
                return;
            };
            let j = if gain(j) > 1e-9 {
                j
            } else {
                (0..n)
                    .filter(|&j| room[j] > 0)
                    .max_by(|&a, &b| {
                        let load = |x: usize| demand[x] / f64::from(ideal[x] + 1);
                        load(a).total_cmp(&load(b)).then(b.cmp(&a))
                    })
                    .expect("a node with room")
            };
            ideal[j] += 1;
            room[j] -= 1;
            left -= 1;
        }
    }

    proptest! {
        // Whole milliseconds and demands keep the sums exact, so ties break alike.
        #[test]
        fn cover_places_as_the_greedy_by_the_book(
            n in 2usize..9,
            rtts in proptest::collection::vec(1u32..60, 64),
            demand in proptest::collection::vec(0u32..4, 8),
            room in proptest::collection::vec(0u32..3, 8),
            placed in proptest::collection::vec(0u32..2, 8),
            left in 0u32..8,
        ) {
            let now = std::time::Instant::now();
            let mut rtt = RttMatrix::new(n, 1.0, Duration::from_secs(10));
            for a in 0..n {
                for b in a + 1..n {
                    rtt.set_prior_symmetric(a, b, f64::from(rtts[a * 8 + b]));
                }
            }
            let demand: Vec<f64> = demand[..n].iter().map(|&d| f64::from(d)).collect();
            let capacity = vec![4; n];
            let processing = vec![None; n];
            let input = PlacementInput {
                desired: 0, demand: &demand, capacity: &capacity, free: &capacity, current: &[], processing_ms: &processing, rtt: &rtt, now,
                per_instance: 1.0,
            };
            let response: Vec<Vec<f64>> = (0..n).map(|o| (0..n).map(|j| input.response_ms(o, j)).collect()).collect();
            let (mut ideal, mut room) = (placed[..n].to_vec(), room[..n].to_vec());
            let (mut expected, mut expected_room) = (ideal.clone(), room.clone());
            cover(&input, &demand, left, &mut ideal, &mut room);
            cover_by_the_book(&response, &demand, left, &mut expected, &mut expected_room);
            prop_assert_eq!(ideal, expected);
            prop_assert_eq!(room, expected_room);
        }
    }
}
