//! The control plane and the monitor, as the local fleet runs them: a pass every
//! `RECONCILE_PERIOD` and at once on demand at zero or an instance becoming ready; stats every
//! `STATS_PERIOD`, decisions every `DECISION_PERIOD` (the fleet's own constants). Each revision's
//! `RevisionScaler` (KPA + placement) decides; surplus instances are chosen by
//! `policy::occupancy::surplus`, rooms by `rooms_with_headroom`: the fleet's code, not a copy.

use ikukantai_eval::trace::Change;
use ikukantai_fleet::fleet::defaults::{DECISION_PERIOD, RECONCILE_PERIOD, STATS_PERIOD, STOP_GRACE_HOPS};
use ikukantai_policy::autoscaler::{Stat, TickInputs};
use ikukantai_policy::occupancy::{instances_per_node, rooms_with_headroom, surplus};
use ikukantai_policy::scaler::ScaleInputs;
use ikukantai_policy::stats::RequestStats;
use rand::RngExt;

use crate::events::{Event, Time, ms, span};
use crate::world::{Instance, Phase, World};

/// The control loop's clock.
#[derive(Debug, Default)]
pub(crate) struct Control {
    last_stats: Time,
    last_decision: Time,
    /// A pass for pokes is due.
    poked: bool,
}

impl World {
    /// Starts the periodic control loop and monitor.
    pub(crate) fn start_control(&mut self, probe_interval: Time) {
        self.events.after(0, Event::Control);
        self.events.after(0, Event::Probe);
        self.probe_interval = probe_interval;
    }

    /// The periodic pass.
    pub(crate) fn control_tick(&mut self) {
        self.reconcile(false);
        self.events.after(span(RECONCILE_PERIOD), Event::Control);
    }

    /// Demand at zero: the autoscaler hears of it at once, and the control plane decides as soon
    /// as it gets to it — once for all the pokes that came meanwhile, as the fleet's reconciler
    /// wakes once for many.
    pub(crate) fn poke(&mut self, origin: u32, rev: u32) {
        let now = self.events.instant(self.events.now());
        self.revisions[rev as usize].scaler.autoscaler.poke(now, origin as usize);
        if !std::mem::replace(&mut self.control.poked, true) {
            self.events.after(0, Event::Poked);
        }
    }

    /// The pass the pokes asked for.
    pub(crate) fn poked(&mut self) {
        self.control.poked = false;
        self.reconcile(true);
    }

    /// An instance became ready: routed at once.
    pub(crate) fn ready(&mut self, instance: u32) {
        let inst = &mut self.instances[instance as usize];
        if inst.phase == Phase::Starting {
            inst.phase = Phase::Ready;
            let (rev, node) = (inst.rev, inst.node);
            self.trace.push(self.events.now(), rev, node, Change::Ready);
            self.reconcile(false);
        }
    }

    /// An instance's stop grace ended.
    pub(crate) fn drain(&mut self, instance: u32) {
        self.instances[instance as usize].phase = Phase::Draining;
        self.gone_if_idle(instance);
    }

    /// One pass: stats, decisions, instances, routes.
    fn reconcile(&mut self, decide_now: bool) {
        let now = self.events.now();
        if now - self.control.last_stats >= span(STATS_PERIOD) || self.control.last_stats == 0 {
            self.control.last_stats = now.max(1);
            self.record_stats();
        }
        if decide_now || now - self.control.last_decision >= span(DECISION_PERIOD) {
            self.control.last_decision = now;
            self.decide();
        }
        self.publish_routes();
    }

    /// Every queue proxy's and every gateway's stats since the last time, into the autoscalers.
    fn record_stats(&mut self) {
        let at = self.events.instant(self.events.now());
        let revs = self.revisions.len();
        for inst in self.instances.iter_mut().filter(|i| matches!(i.phase, Phase::Starting | Phase::Ready)) {
            let stat = inst.stats.report(at);
            self.revisions[inst.rev as usize].scaler.autoscaler.record(at, &stat);
        }
        for node in 0..self.n {
            for rev in 0..revs {
                let (activator, origin) = match &mut self.gateways[node * revs + rev] {
                    Some(g) => (g.activator.report(at), g.origin.report(at).concurrency),
                    None => (Stat::default(), 0.0),
                };
                let autoscaler = &mut self.revisions[rev].scaler.autoscaler;
                autoscaler.record(at, &activator);
                autoscaler.record_origin(at, node, origin);
            }
        }
    }

    /// Every revision's KPA and placement, then instances started and stopped to match.
    fn decide(&mut self) {
        let at = self.events.instant(self.events.now());
        let placed: Vec<(u32, usize)> = self
            .instances
            .iter()
            .filter(|i| matches!(i.phase, Phase::Starting | Phase::Ready))
            .map(|i| (i.rev, i.node as usize))
            .collect();
        let occupied: Vec<(u32, usize)> = self
            .instances
            .iter()
            .filter(|i| i.phase != Phase::Gone)
            .map(|i| (i.rev, i.node as usize))
            .collect();
        // Every revision's headroom as of the instances above, not as decided during this pass.
        let headrooms: Vec<Vec<u32>> = self.revisions.iter().map(|r| r.scaler.headroom().to_vec()).collect();
        for rev in 0..self.revisions.len() as u32 {
            let ready =
                self.instances.iter().filter(|i| i.rev == rev && i.phase == Phase::Ready).count() as u32;
            let current = instances_per_node(&placed, &rev, self.n);
            let headroom = |&r: &u32, node: usize| headrooms[r as usize].get(node).copied().unwrap_or(0);
            let (room, free) = rooms_with_headroom(&placed, &occupied, &rev, &self.capacity, headroom);
            let inputs = ScaleInputs {
                tick: TickInputs { ready, reachable: true, buffering_since: Some(self.events.instant(0)) },
                current: &current,
                room: &room,
                free: &free,
                rtt: &self.rtt,
            };
            let (_, desired) = self.revisions[rev as usize].scaler.decide(at, inputs);
            self.converge(rev, &desired);
        }
    }

    /// Starts what is missing on each node and stops the surplus (out of the routes now, gone
    /// after the stop grace).
    fn converge(&mut self, rev: u32, desired: &[u32]) {
        let grace = span(self.links.longest_rtt() + STOP_GRACE_HOPS);
        let mut by_node: Vec<Vec<(u32, bool, u32)>> = vec![Vec::new(); desired.len()];
        for (k, i) in self.instances.iter().enumerate() {
            if i.rev == rev && matches!(i.phase, Phase::Starting | Phase::Ready) {
                by_node[i.node as usize].push((k as u32, i.phase == Phase::Ready, k as u32));
            }
        }
        for (node, (&want, here)) in desired.iter().zip(by_node).enumerate() {
            let have = here.len();
            for k in surplus(here, want as usize) {
                self.instances[k as usize].phase = Phase::Stopping;
                self.trace.push(self.events.now(), rev, node as u32, Change::Stopped);
                self.events.after(grace, Event::Drain { instance: k });
            }
            for _ in have..want as usize {
                let (lo, hi) = self.model.cold_start_ms;
                let cold = if hi > lo { self.rng.random_range(lo..hi) } else { lo };
                let at = self.events.instant(self.events.now());
                self.instances.push(Instance {
                    rev,
                    node: node as u32,
                    phase: Phase::Starting,
                    busy: 0,
                    queue: Default::default(),
                    stats: RequestStats::new(at),
                });
                let instance = (self.instances.len() - 1) as u32;
                self.trace.push(self.events.now(), rev, node as u32, Change::Started);
                self.events.after(ms(cold), Event::Ready { instance });
            }
        }
    }

    /// New routes for every revision whose ready instances changed; gateways with waiting
    /// requests take them at once.
    fn publish_routes(&mut self) {
        let revs = self.revisions.len();
        for rev in 0..revs {
            let routed: Vec<u32> = self
                .instances
                .iter()
                .enumerate()
                .filter(|(_, i)| i.rev == rev as u32 && i.phase == Phase::Ready)
                .map(|(k, _)| k as u32)
                .collect();
            if routed == self.revisions[rev].routed {
                continue;
            }
            self.revisions[rev].routed = routed;
            self.revisions[rev].version += 1;
            for node in 0..self.n {
                let waiting =
                    self.gateways[node * revs + rev].as_ref().is_some_and(|g| !g.waiting.is_empty());
                if waiting {
                    self.dispatch(node as u32, rev as u32);
                }
            }
        }
    }

    /// A monitor round: each node probes its peers (a rotating subset of
    /// [`Model::probes_per_round`](crate::model::Model) in a large fleet) and records the round
    /// trips it measured.
    pub(crate) fn probe(&mut self) {
        let now = self.events.now();
        let at = self.events.instant(now);
        let n = self.n;
        let per = self.model.probes_per_round.min(n.saturating_sub(1));
        let round = (now / self.probe_interval.max(1)) as usize;
        for from in 0..n {
            for k in 0..per {
                let to = if per == n - 1 {
                    (from + 1 + k) % n
                } else {
                    (from + 1 + (round * per + k) % (n - 1)) % n
                };
                let there = self.links.one_way(from, to, &mut self.rng);
                let back = self.links.one_way(to, from, &mut self.rng);
                // As a gateway records it: the lower median of its last few probes to the peer.
                let ms =
                    self.probe_filters[from].push_median(to, there + back + self.model.probe_overhead_ms);
                self.rtt.record(from, to, ms, at);
            }
        }
        self.events.after(self.probe_interval, Event::Probe);
    }
}
