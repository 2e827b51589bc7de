//! The control loop: a pass every [`RECONCILE_PERIOD`], and at once on a poke (every poke queued
//! meanwhile goes into the same pass). A pass is its phases in order: observe_revisions,
//! record_stats, decide, converge, settle, publish_routes (then the starts the pacing allows
//! begin, and the instances taken out of the routes stop after their grace).
//!
//! Each phase visits only what `work` lists: the revisions not at rest, the ones something
//! happened to, and whatever has instances; the routes are rebuilt only when something that
//! goes into them changed. Revisions at rest cost nothing per pass (see `work`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use ikukantai_api::revision::Revision;
use ikukantai_api::status::awaits_readiness;
use ikukantai_dataplane::gateway::{InstanceRoute, RevisionReport, RevisionRoute, Routes, ServiceRoute};
use ikukantai_policy::autoscaler::{Stat, TickInputs};
use ikukantai_policy::occupancy::{instances_per_node, rooms_with_headroom, surplus};
use ikukantai_policy::scaler::ScaleInputs;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use super::defaults::{DECISION_PERIOD, RECONCILE_PERIOD, RESYNC_PERIOD, STATS_PERIOD};
use super::starts::RevisionKey;
use super::{
    Fleet, InstanceRecord, Poke, ServiceRecord, State, error_chain, revision_states, stored_status,
    traffic_split,
};
use crate::agent::{Instance, Phase};
use crate::store::RevisionRecordStatus;

/// The control loop: a pass every [`RECONCILE_PERIOD`], and at once on a poke (demand at zero,
/// apply, an instance changing state).
pub(super) async fn run(fleet: Arc<Fleet>, mut pokes: mpsc::UnboundedReceiver<Poke>) {
    let mut heartbeat = tokio::time::interval(RECONCILE_PERIOD);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            _ = heartbeat.tick() => None,
            p = pokes.recv() => {
                let Some(p) = p else { return };
                Some(p)
            }
        };
        // A burst of pokes (hundreds of instances getting ready) costs one pass, not one each.
        let mut batch: Vec<Poke> = first.into_iter().collect();
        while let Ok(p) = pokes.try_recv() {
            batch.push(p);
        }
        fleet.step(Instant::now(), batch);
    }
}

/// Stats of instances, by revision.
pub(super) type Measured = BTreeMap<RevisionKey, Vec<Stat>>;
/// Gateways' reports that had requests, by revision, with the gateway's node.
pub(super) type Reported = BTreeMap<RevisionKey, Vec<(usize, RevisionReport)>>;

/// Whether a gateway's report says the revision had requests (the rest are zeros, which every
/// revision not at rest is fed anyway).
fn busy(r: &RevisionReport) -> bool {
    let some = |s: &Stat| s.concurrency > 0.0 || s.requests > 0.0;
    some(&r.activator) || some(&r.origin)
}

impl Fleet {
    /// Takes in `pokes`, runs one pass at `now`, begins the starts it allows and stops what it
    /// took out of the routes.
    pub(super) fn step(self: &Arc<Self>, now: Instant, pokes: Vec<Poke>) {
        let (unwanted, starts, saves, order) = {
            let mut state = self.state.lock();
            let state = &mut *state;
            for p in pokes {
                self.take_poke(state, p, now);
            }
            let unwanted = self.reconcile(state, now);
            let saves = std::mem::take(&mut state.work.saves);
            // Taken before the books are unlocked: an apply or delete after this pass writes
            // after these, so a file never goes back to an older state.
            let order = (!saves.is_empty()).then(|| self.store_order.lock());
            (unwanted, state.starts.take(now), saves, order)
        };
        for (service, revisions, status) in &saves {
            if let Err(e) = self.store.save(service, revisions, status) {
                tracing::error!(error = %error_chain(&e), "cannot store a revision's state");
            }
        }
        drop(order);
        self.begin_starts(starts);
        self.stop_after_grace(unwanted);
    }

    /// Marks in the books what a poke says happened.
    fn take_poke(&self, state: &mut State, poke: Poke, now: Instant) {
        let nodes = self.options.topology.nodes.len();
        match poke {
            Poke::Demand { namespace, revision, origin } => {
                let key = (namespace, revision);
                if state.revision(&key).is_none() {
                    return;
                }
                state.wake(&key, now, nodes);
                let ready = state.instances.values().any(|x| {
                    x.namespace == key.0 && x.revision == key.1 && x.instance.phase() == Phase::Ready
                });
                if let Some(r) = state.revision_mut(&key) {
                    r.scaler.autoscaler.poke(now, origin);
                    r.waiting |= !ready;
                }
                if !ready {
                    // Someone waits: its starts go before any scale-up's.
                    state.starts.promote(&key);
                }
                state.work.decide_now = true;
            }
            Poke::Instance { namespace, revision, name } => {
                let phase = state.instances.get(&name).map(|r| r.instance.phase());
                if phase != Some(Phase::Starting) {
                    state.starts.finished(&name);
                }
                // One out of the books (stopping) no longer counts for its revision or the routes.
                if phase.is_some() {
                    state.wake(&(namespace, revision), now, nodes);
                    state.work.routes = true;
                }
            }
            Poke::Reconcile | Poke::Stopped => {}
        }
    }

    /// One pass of the control loop, phase by phase; each reads the books as the one before left
    /// them. Returns the instances taken out of the books, to stop after their grace.
    fn reconcile(self: &Arc<Self>, state: &mut State, now: Instant) -> Vec<Arc<Instance>> {
        // Finished stops leave the books (one still in its grace period is still running: it
        // stays, counted on its node and stopped on shutdown).
        state.stopping.retain(|_, r| r.instance.phase() != Phase::Stopped);
        if now.saturating_duration_since(state.work.last_resync) >= RESYNC_PERIOD {
            self.resync(state, now);
        }
        let dirty = std::mem::take(&mut state.work.dirty);
        self.observe_revisions(state, &dirty, now);
        if now.saturating_duration_since(state.last_stats) >= STATS_PERIOD {
            state.last_stats = now;
            self.record_stats(state, now);
        }
        let decide = std::mem::take(&mut state.work.decide_now)
            || now.saturating_duration_since(state.last_decision) >= DECISION_PERIOD;
        if decide {
            state.last_decision = now;
            self.decide(state, now);
        }
        let unwanted = self.converge(state, &dirty);
        if decide {
            settle(state, now);
        }
        if std::mem::take(&mut state.work.routes) {
            self.publish_routes(state);
        }
        unwanted
    }

    /// Every revision is visited once more, at rest or not, and the routes compared: a safety net
    /// under the event-driven passes.
    fn resync(&self, state: &mut State, now: Instant) {
        state.work.last_resync = now;
        let nodes = self.options.topology.nodes.len();
        let services: Vec<(String, String)> = state.services.keys().cloned().collect();
        for s in &services {
            state.wake_service(s, now, nodes);
        }
        state.work.routes = true;
        tracing::debug!(revisions = state.work.active.len(), "resync");
    }

    /// Observes what the revisions something happened to did: the first ready instance makes a
    /// revision ready for good (and ends its cold starts); an instance that fails or crashes
    /// before that makes it failed, with the instance's error. Changes are stored, so a restart
    /// routes the same way, and its service's revisions are decided again (where traffic goes
    /// changed).
    fn observe_revisions(&self, state: &mut State, dirty: &BTreeSet<RevisionKey>, now: Instant) {
        if dirty.is_empty() {
            return;
        }
        let mut phases: BTreeMap<RevisionKey, Vec<Phase>> = BTreeMap::new();
        for x in state.instances.values() {
            let key = (x.namespace.clone(), x.revision.clone());
            if dirty.contains(&key) {
                phases.entry(key).or_default().push(x.instance.phase());
            }
        }
        let mut changed = BTreeSet::new();
        for key in dirty {
            let Some(service) = state.owners.get(key).cloned() else { continue };
            let Some(r) = state.revision_mut(key) else { continue };
            let phases = phases.get(key).map_or(&[][..], Vec::as_slice);
            let ready = phases.contains(&Phase::Ready);
            if ready {
                r.waiting = false;
            }
            let (ever_ready, status) = (r.status.ever_ready, r.status.clone());
            state.work.visit(key);
            if ever_ready {
                continue;
            }
            let failure = phases.iter().find_map(|p| match p {
                Phase::Failed(m) | Phase::CrashLoopBackOff(m) => Some(m.clone()),
                _ => None,
            });
            let next = if ready {
                RevisionRecordStatus { ever_ready: true, failure: None }
            } else if let Some(f) = failure {
                RevisionRecordStatus { ever_ready: false, failure: Some(f) }
            } else {
                continue;
            };
            if status != next {
                tracing::info!(revision = %key.1, ready = next.ever_ready, failure = ?next.failure, "revision state");
                if let Some(r) = state.revision_mut(key) {
                    r.status = next;
                }
                changed.insert((key.0.clone(), service));
            }
        }
        let nodes = self.options.topology.nodes.len();
        for key in changed {
            if let Some(s) = state.services.get(&key) {
                // Written once the books are unlocked (an fsync each: hundreds of revisions
                // getting ready at once would hold up everything that waits for the books).
                let revisions: Vec<Revision> = s.revisions.iter().map(|r| r.revision.clone()).collect();
                state.work.saves.push((s.service.clone(), revisions, stored_status(s)));
            }
            state.wake_service(&key, now, nodes);
            state.work.routes = true;
        }
    }

    /// Feeds the revisions not at rest what their instances and the gateways measured since the
    /// last time. Gateways report every revision they route; only those that had requests are
    /// looked at: the others' zeros are what every active revision is fed anyway, and a revision
    /// at rest is fed nothing, unless a gateway says it had requests, which wakes it.
    fn record_stats(&self, state: &mut State, now: Instant) {
        let mut measured: Measured = BTreeMap::new();
        for r in state.instances.values() {
            if let Some(stat) = r.instance.report() {
                measured.entry((r.namespace.clone(), r.revision.clone())).or_default().push(stat);
            }
        }
        let mut reported: Reported = BTreeMap::new();
        for (node, g) in self.gateways.iter().enumerate() {
            for r in g.report().into_iter().filter(busy) {
                reported.entry((r.namespace.clone(), r.revision.clone())).or_default().push((node, r));
            }
        }
        self.feed_stats(state, now, &measured, &reported);
    }

    /// Feeds what [`Fleet::record_stats`] collected: every active revision gets zeros as every
    /// idle source would report them, then what was measured; a revision at rest that a gateway
    /// saw requests for wakes first.
    pub(super) fn feed_stats(
        &self,
        state: &mut State,
        now: Instant,
        measured: &Measured,
        reported: &Reported,
    ) {
        let nodes = self.options.topology.nodes.len();
        for key in reported.keys() {
            if !state.work.active.contains(key) && state.revision(key).is_some() {
                state.wake(key, now, nodes);
            }
        }
        let active: Vec<RevisionKey> = state.work.active.iter().cloned().collect();
        for key in &active {
            let Some(r) = state.revision_mut(key) else { continue };
            let a = &mut r.scaler.autoscaler;
            // What an idle source reports: every gateway's zero, as if each had sent one.
            a.record(now, &Stat::default());
            for node in 0..nodes {
                a.record_origin(now, node, 0.0);
            }
            for stat in measured.get(key).into_iter().flatten() {
                a.record(now, stat);
            }
            for (node, report) in reported.get(key).into_iter().flatten() {
                a.record(now, &report.activator);
                a.record_origin(now, *node, report.origin.concurrency);
            }
            state.work.visit(key);
        }
    }

    /// Runs the autoscaler and placement of every revision not at rest: how many instances it
    /// wants on each node. (A revision at rest would decide zero again.)
    fn decide(&self, state: &mut State, now: Instant) {
        fn at(x: &InstanceRecord) -> ((&str, &str), usize) {
            ((x.namespace.as_str(), x.revision.as_str()), x.node)
        }
        let n = self.options.topology.nodes.len();
        let capacity = self.options.topology.capacities();
        let State { services, instances, stopping, pending, rtt, owners, work, .. } = state;
        // Where instances are: running or starting ones are their revision's; stopping ones take
        // room on their node until gone.
        let placed: Vec<_> = instances
            .values()
            .map(at)
            .chain(pending.values().map(|(ns, rev, node)| ((ns.as_str(), rev.as_str()), *node)))
            .collect();
        let occupied: Vec<_> = placed.iter().copied().chain(stopping.values().map(at)).collect();
        let mut ready: BTreeMap<(&str, &str), u32> = BTreeMap::new();
        for x in instances.values().filter(|x| x.instance.phase() == Phase::Ready) {
            *ready.entry((x.namespace.as_str(), x.revision.as_str())).or_default() += 1;
        }
        // Each revision's headroom as last decided: room another revision's need may claim.
        let headroom: BTreeMap<(String, String), Vec<u32>> = services
            .iter()
            .flat_map(|((ns, _), svc)| {
                svc.revisions
                    .iter()
                    .map(|r| ((ns.clone(), r.revision.name().to_owned()), r.scaler.headroom().to_vec()))
            })
            .collect();
        let headroom_of = |&(ns, rev): &(&str, &str), node: usize| {
            headroom.get(&(ns.to_owned(), rev.to_owned())).and_then(|h| h.get(node)).copied().unwrap_or(0)
        };
        // Per service: routed to, or the new revision that must start to prove itself ready.
        let mut reachable: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        let active: Vec<RevisionKey> = work.active.iter().cloned().collect();
        for key in &active {
            let Some(service) = owners.get(key) else { continue };
            let service = (key.0.clone(), service.clone());
            let Some(svc) = services.get_mut(&service) else { continue };
            let routed = reachable.entry(service).or_insert_with(|| reachable_revisions(svc));
            let reachable = routed.contains(&key.1);
            let Some(record) = svc.revisions.iter_mut().find(|r| r.revision.name() == key.1) else {
                continue;
            };
            work.visit(key);
            let key = (key.0.as_str(), key.1.as_str());
            let ready = ready.get(&key).copied().unwrap_or(0);
            let current = instances_per_node(&placed, &key, n);
            let (room, free) = rooms_with_headroom(&placed, &occupied, &key, &capacity, headroom_of);
            let (decision, desired) = record.scaler.decide(
                now,
                ScaleInputs {
                    tick: TickInputs { ready, reachable, buffering_since: Some(self.started) },
                    current: &current,
                    room: &room,
                    free: &free,
                    rtt,
                },
            );
            tracing::debug!(revision = %key.1, desired = decision.desired, stable = decision.observed_stable, panic = decision.observed_panic, panicking = decision.panicking, ready, placed = ?desired, "autoscaler decision");
            record.desired = desired;
        }
    }

    /// Converges instances to the decided placement, for the revisions not at rest, those
    /// something happened to, and any that has instances or starts (a deleted service's): starts
    /// what is missing, drops queued starts no longer wanted, and takes what is no longer wanted
    /// out of the books, to be stopped once the gateways have let go of it.
    fn converge(self: &Arc<Self>, state: &mut State, dirty: &BTreeSet<RevisionKey>) -> Vec<Arc<Instance>> {
        let n = self.options.topology.nodes.len();
        let mut groups: BTreeMap<(RevisionKey, usize), Vec<String>> = BTreeMap::new();
        for (name, r) in &state.instances {
            groups.entry(((r.namespace.clone(), r.revision.clone()), r.node)).or_default().push(name.clone());
        }
        let mut starting: BTreeMap<(RevisionKey, usize), usize> = BTreeMap::new();
        for (ns, rev, node) in state.pending.values() {
            *starting.entry(((ns.clone(), rev.clone()), *node)).or_default() += 1;
        }
        let mut keys: BTreeSet<RevisionKey> = state.work.active.union(dirty).cloned().collect();
        keys.extend(groups.keys().chain(starting.keys()).map(|(k, _)| k.clone()));
        let mut to_stop = Vec::new();
        let mut to_start = Vec::new();
        for key in keys {
            state.work.visit(&key);
            // A revision without a record (its service was deleted) wants nothing.
            let desired = state.revision(&key).map(|r| r.desired.clone()).unwrap_or_default();
            for node in 0..n {
                let want = desired.get(node).copied().unwrap_or(0) as usize;
                let slot = (key.clone(), node);
                let names = groups.get(&slot).map_or(&[][..], Vec::as_slice);
                let mut pending = starting.get(&slot).copied().unwrap_or(0);
                // Starts not begun yet that are no longer wanted are dropped: nothing to stop.
                let excess = (names.len() + pending).saturating_sub(want);
                if excess > 0 && pending > 0 {
                    for name in state.starts.cancel(&key, node, excess) {
                        state.pending.remove(&name);
                        pending -= 1;
                    }
                }
                let ranked =
                    names.iter().map(|x| (x, state.instances[x].instance.phase() == Phase::Ready, x));
                to_stop.extend(surplus(ranked, want).into_iter().cloned());
                let have = (names.len() + pending).min(want);
                to_start.extend((have..want).map(|_| (key.clone(), node)));
            }
        }
        // Stopped only once the gateways have let go of them (publish_routes), and after a grace
        // period (stop_after_grace).
        let mut stopped = Vec::new();
        for name in to_stop {
            if let Some(r) = state.instances.remove(&name) {
                stopped.push(r.instance.clone());
                state.stopping.insert(name, r);
                state.work.routes = true;
            }
        }
        for (key, node) in to_start {
            self.start_instance(state, &key, node);
        }
        stopped
    }

    /// Tells every gateway the routes, if they changed.
    fn publish_routes(&self, state: &mut State) {
        let routes = self.routes(state);
        if routes != state.routes {
            for g in &self.gateways {
                if let Err(e) = g.set_routes(&routes) {
                    tracing::error!(error = %error_chain(&e), "gateway refused routes");
                }
            }
            state.routes = routes;
        }
    }

    fn routes(&self, state: &State) -> Routes {
        let mut ready: BTreeMap<(&str, &str), Vec<InstanceRoute>> = BTreeMap::new();
        for x in state.instances.values().filter(|x| x.instance.phase() == Phase::Ready) {
            ready.entry((x.namespace.as_str(), x.revision.as_str())).or_default().push(InstanceRoute {
                name: x.instance.name.clone(),
                node: x.node,
                addr: x.instance.queue_proxy,
            });
        }
        let mut routes = Routes::default();
        for s in state.services.values() {
            let split = traffic_split(s);
            let ns = s.service.metadata.namespace();
            routes.services.push(ServiceRoute {
                namespace: ns.to_owned(),
                name: s.service.metadata.name().to_owned(),
                traffic: split,
            });
            for r in &s.revisions {
                let instances = ready.remove(&(ns, r.revision.name())).unwrap_or_default();
                let config = &self.options.config;
                let spec = r.scaler.autoscaler.spec();
                let route = RevisionRoute::of(&r.revision, &r.settings, config, spec, instances);
                routes.revisions.push(RevisionRoute { failure: r.status.failure.clone(), ..route });
            }
        }
        routes
    }
}

/// The revisions of a service traffic can reach: routed to, or the new one that must start to
/// prove itself ready.
fn reachable_revisions(s: &ServiceRecord) -> Vec<String> {
    let states = revision_states(s);
    let mut reachable: Vec<String> = traffic_split(s).into_iter().map(|t| t.revision).collect();
    reachable.extend(states.iter().filter(|r| awaits_readiness(&states, r.name)).map(|r| r.name.to_owned()));
    reachable
}

/// Revisions at rest leave the active set: decided zero with empty windows, no instance or
/// start. So does a revision whose service is gone, once nothing of it is left. Nobody waits for
/// a revision at rest (a waiting request pokes, and a poke stays in the window), so its next
/// start is not a cold one unless a poke says so again (one whose only instance failed, say).
fn settle(state: &mut State, now: Instant) {
    let mut busy: BTreeSet<(&str, &str)> = BTreeSet::new();
    for x in state.instances.values() {
        busy.insert((x.namespace.as_str(), x.revision.as_str()));
    }
    for (ns, rev, _) in state.pending.values() {
        busy.insert((ns.as_str(), rev.as_str()));
    }
    let at_rest: Vec<RevisionKey> = state
        .work
        .active
        .iter()
        .filter(|key| {
            !busy.contains(&(key.0.as_str(), key.1.as_str()))
                && state
                    .revision(key)
                    .is_none_or(|r| r.desired.iter().all(|&d| d == 0) && r.scaler.autoscaler.is_at_rest(now))
        })
        .cloned()
        .collect();
    for key in at_rest {
        if let Some(r) = state.revision_mut(&key) {
            r.waiting = false;
        }
        state.work.active.remove(&key);
    }
}
