//! The control loop: reconcile every [`RECONCILE_PERIOD`], and at once on a poke. A pass is its
//! phases in order: observe_revisions, record_stats, decide, converge, publish_routes (then the
//! instances taken out of the routes stop after their grace).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ikukantai_api::revision::Revision;
use ikukantai_api::status::awaits_readiness;
use ikukantai_dataplane::defaults::MAX_HEADER_BYTES;
use ikukantai_dataplane::gateway::{InstanceRoute, RevisionRoute, Routes, ServiceRoute};
use ikukantai_dataplane::queue_proxy::{QueueProxyConfig, Readiness};
use ikukantai_policy::autoscaler::TickInputs;
use ikukantai_policy::scaler::ScaleInputs;
use tokio::sync::mpsc;

use super::defaults::{DECISION_PERIOD, RECONCILE_PERIOD, STATS_PERIOD, STOP_GRACE_HOPS, TERMINATION_GRACE};
use super::{
    Fleet, InstanceRecord, Poke, RevisionRecord, ServiceRecord, State, error_chain, ready_count,
    revision_states, stored_status, traffic_split,
};
use crate::agent::{Instance, InstanceSpec, Phase};
use crate::lifetime::FLEET_ENV;
use crate::store::RevisionRecordStatus;
use ikukantai_policy::occupancy::{instances_per_node, room_per_node, surplus};

/// The control loop: reconcile every [`RECONCILE_PERIOD`], and at once on a poke (demand at zero,
/// apply).
pub(super) async fn run(fleet: Arc<Fleet>, mut pokes: mpsc::UnboundedReceiver<Poke>) {
    let mut interval = tokio::time::interval(RECONCILE_PERIOD);
    loop {
        let poke = tokio::select! {
            _ = interval.tick() => None,
            p = pokes.recv() => {
                let Some(p) = p else { return };
                Some(p)
            }
        };
        if let Some(Poke::Demand { namespace, revision, origin }) = &poke {
            let mut state = fleet.state.lock();
            for s in state.services.values_mut() {
                for r in s
                    .revisions
                    .iter_mut()
                    .filter(|r| r.revision.metadata.namespace() == namespace && r.revision.name() == revision)
                {
                    r.scaler.autoscaler.poke(Instant::now(), *origin);
                }
            }
        }
        fleet.reconcile(poke.is_some());
    }
}

impl Fleet {
    /// One pass of the control loop, phase by phase; each reads the books as the one before left
    /// them. `decide_now` (a poke) decides whatever the time since the last decision.
    fn reconcile(self: &Arc<Self>, decide_now: bool) {
        let now = Instant::now();
        let mut state = self.state.lock();
        let state = &mut *state;
        // Finished stops leave the books (one still in its grace period is still running: it
        // stays, counted on its node and stopped on shutdown).
        state.stopping.retain(|_, r| r.instance.phase() != Phase::Stopped);
        self.observe_revisions(state);
        if now.duration_since(state.last_stats) >= STATS_PERIOD {
            state.last_stats = now;
            self.record_stats(state, now);
        }
        if decide_now || now.duration_since(state.last_decision) >= DECISION_PERIOD {
            state.last_decision = now;
            self.decide(state, now);
        }
        let unwanted = self.converge(state);
        self.publish_routes(state);
        self.stop_after_grace(unwanted);
    }

    /// Observes what revisions did since the last pass: the first ready instance makes a revision
    /// ready for good; an instance that fails or crashes before that makes it failed, with the
    /// instance's error. Changes are stored, so a restart routes the same way.
    fn observe_revisions(&self, state: &mut State) {
        let State { services, instances, .. } = state;
        for s in services.values_mut() {
            let mut changed = false;
            for r in s.revisions.iter_mut().filter(|r| !r.status.ever_ready) {
                let (ns, name) = (r.revision.metadata.namespace(), r.revision.name());
                let mut phases = instances
                    .values()
                    .filter(|x| x.namespace == ns && x.revision == name)
                    .map(|x| x.instance.phase());
                let (mut ready, mut failure) = (false, None);
                for phase in &mut phases {
                    match phase {
                        Phase::Ready => ready = true,
                        Phase::Failed(m) | Phase::CrashLoopBackOff(m) => failure = failure.or(Some(m)),
                        _ => {}
                    }
                }
                let next = if ready {
                    RevisionRecordStatus { ever_ready: true, failure: None }
                } else if let Some(f) = failure {
                    RevisionRecordStatus { ever_ready: false, failure: Some(f) }
                } else {
                    continue;
                };
                if r.status != next {
                    tracing::info!(revision = %name, ready = next.ever_ready, failure = ?next.failure, "revision state");
                    r.status = next;
                    changed = true;
                }
            }
            if changed {
                let revisions: Vec<Revision> = s.revisions.iter().map(|r| r.revision.clone()).collect();
                if let Err(e) = self.store.save(&s.service, &revisions, &stored_status(s)) {
                    tracing::error!(error = %error_chain(&e), "cannot store a revision's state");
                }
            }
        }
    }

    /// Feeds the autoscalers what instances and gateways measured since the last time.
    fn record_stats(&self, state: &mut State, now: Instant) {
        let mut by_revision: BTreeMap<(String, String), Vec<ikukantai_policy::autoscaler::Stat>> =
            BTreeMap::new();
        for r in state.instances.values() {
            if let Some(stat) = r.instance.report() {
                by_revision.entry((r.namespace.clone(), r.revision.clone())).or_default().push(stat);
            }
        }
        let reports: Vec<_> = self.gateways.iter().enumerate().map(|(i, g)| (i, g.report())).collect();
        for s in state.services.values_mut() {
            for r in &mut s.revisions {
                let key = (r.revision.metadata.namespace().to_owned(), r.revision.name().to_owned());
                for stat in by_revision.get(&key).into_iter().flatten() {
                    r.scaler.autoscaler.record(now, stat);
                }
                for (node, report) in &reports {
                    for rep in report.iter().filter(|x| x.namespace == key.0 && x.revision == key.1) {
                        r.scaler.autoscaler.record(now, &rep.activator);
                        r.scaler.autoscaler.record_origin(now, *node, rep.origin.concurrency);
                    }
                }
            }
        }
    }

    /// Runs every revision's autoscaler and placement: how many instances it wants on each node.
    fn decide(&self, state: &mut State, now: Instant) {
        fn at(x: &InstanceRecord) -> ((&str, &str), usize) {
            ((x.namespace.as_str(), x.revision.as_str()), x.node)
        }
        let n = self.options.topology.nodes.len();
        let capacity = self.options.topology.capacities();
        let State { services, instances, stopping, pending, rtt, .. } = state;
        // Where instances are: running or starting ones are their revision's; stopping ones take
        // room on their node until gone.
        let placed: Vec<_> = instances
            .values()
            .map(at)
            .chain(pending.values().map(|(ns, rev, node)| ((ns.as_str(), rev.as_str()), *node)))
            .collect();
        let occupied: Vec<_> = placed.iter().copied().chain(stopping.values().map(at)).collect();
        for svc in services.values_mut() {
            // Routed to, or the new revision that must start to prove itself ready.
            let states = revision_states(svc);
            let mut reachable: Vec<String> = traffic_split(svc).into_iter().map(|t| t.revision).collect();
            reachable.extend(
                states.iter().filter(|r| awaits_readiness(&states, r.name)).map(|r| r.name.to_owned()),
            );
            for record in &mut svc.revisions {
                let key = (record.revision.metadata.namespace(), record.revision.name());
                let ready = ready_count(instances, key.0, key.1);
                let current = instances_per_node(&placed, &key, n);
                let room = room_per_node(&occupied, &key, &capacity);
                let (decision, desired) = record.scaler.decide(
                    now,
                    ScaleInputs {
                        tick: TickInputs {
                            ready,
                            reachable: reachable.iter().any(|r| r == key.1),
                            buffering_since: Some(self.started),
                        },
                        current: &current,
                        room: &room,
                        rtt,
                    },
                );
                tracing::debug!(revision = %key.1, desired = decision.desired, stable = decision.observed_stable, panic = decision.observed_panic, panicking = decision.panicking, ready, placed = ?desired, "autoscaler decision");
                record.desired = desired;
            }
        }
    }

    /// Converges instances to the decided placement: starts what is missing, and takes what is no
    /// longer wanted out of the books, to be stopped once the gateways have let go of it.
    fn converge(self: &Arc<Self>, state: &mut State) -> Vec<Arc<Instance>> {
        let mut wanted: BTreeMap<(String, String, usize), u32> = BTreeMap::new();
        for s in state.services.values() {
            for r in &s.revisions {
                for (node, &count) in r.desired.iter().enumerate() {
                    wanted.insert(
                        (r.revision.metadata.namespace().to_owned(), r.revision.name().to_owned(), node),
                        count,
                    );
                }
            }
        }
        let mut to_stop = Vec::new();
        let mut groups: BTreeMap<(String, String, usize), Vec<String>> = BTreeMap::new();
        for (name, r) in &state.instances {
            groups.entry((r.namespace.clone(), r.revision.clone(), r.node)).or_default().push(name.clone());
        }
        let mut starting: BTreeMap<(String, String, usize), u32> = BTreeMap::new();
        for (ns, rev, node) in state.pending.values() {
            *starting.entry((ns.clone(), rev.clone(), *node)).or_default() += 1;
        }
        for (key, names) in &groups {
            let want = wanted.get(key).copied().unwrap_or(0) as usize;
            let ranked = names.iter().map(|n| (n, state.instances[n].instance.phase() == Phase::Ready, n));
            to_stop.extend(surplus(ranked, want).into_iter().cloned());
        }
        // Stopped only once the gateways have let go of them (publish_routes), and after a grace
        // period (stop_after_grace).
        let mut stopped = Vec::new();
        for name in to_stop {
            if let Some(r) = state.instances.remove(&name) {
                stopped.push(r.instance.clone());
                state.stopping.insert(name, r);
            }
        }
        let mut to_start = Vec::new();
        for ((ns, rev, node), want) in &wanted {
            let key = (ns.clone(), rev.clone(), *node);
            let have =
                groups.get(&key).map_or(0, |v| v.len()) as u32 + starting.get(&key).copied().unwrap_or(0);
            let have = have.min(*want);
            for _ in have..*want {
                to_start.push((ns.clone(), rev.clone(), *node));
            }
        }
        for (ns, rev, node) in to_start {
            self.start_instance(state, ns, rev, node);
        }
        stopped
    }

    /// Starts one instance of a revision on a node, its slot reserved in the books at once.
    fn start_instance(self: &Arc<Self>, state: &mut State, ns: String, rev: String, node: usize) {
        let Some((svc, record)) = state.services.values().find_map(|s| {
            s.revisions
                .iter()
                .find(|r| r.revision.metadata.namespace() == ns && r.revision.name() == rev)
                .map(|r| (s, r))
        }) else {
            return;
        };
        state.counter += 1;
        let node_name = self.options.topology.nodes[node].name.clone();
        // Unique across restarts of the fleet too (log files are named after instances).
        let nonce = self.options.seed
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        let name = format!("{}-{}-{}", svc.service.metadata.name(), node_name, suffix(nonce, state.counter));
        let spec = self.instance_spec(&name, node, svc, record);
        let service = svc.service.metadata.name().to_owned();
        // Reserve the slot now; the instance moves to the books once its listeners exist.
        state.pending.insert(name.clone(), (ns.clone(), rev.clone(), node));
        let fleet = self.clone();
        tokio::spawn(async move {
            match Instance::start(spec).await {
                Ok(instance) => {
                    let instance = Arc::new(instance);
                    let mut watch = instance.watch();
                    {
                        let mut state = fleet.state.lock();
                        state.pending.remove(&name);
                        state.instances.insert(
                            name,
                            InstanceRecord { instance, namespace: ns, service, revision: rev, node },
                        );
                    }
                    // Route to it as soon as it is ready.
                    let f = fleet.clone();
                    tokio::spawn(async move {
                        while watch.changed().await.is_ok() {
                            f.reconcile(false);
                        }
                    });
                    fleet.reconcile(false);
                }
                Err(e) => {
                    tracing::error!(instance = %name, error = %error_chain(&e), "cannot start instance");
                    fleet.state.lock().pending.remove(&name);
                }
            }
        });
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

    /// Stops instances taken out of the routes, after the stop grace.
    fn stop_after_grace(self: &Arc<Self>, stopped: Vec<Arc<Instance>>) {
        // A request a gateway sent just before its routes changed may still be crossing a link:
        // the instance drains (refusing new work) only once it has had time to arrive.
        let grace = if stopped.is_empty() { Duration::ZERO } else { self.stop_grace() };
        for instance in stopped {
            let fleet = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                instance.stop().await;
                fleet.prune_logs();
            });
        }
    }

    fn instance_spec(
        &self,
        name: &str,
        node: usize,
        svc: &ServiceRecord,
        record: &RevisionRecord,
    ) -> InstanceSpec {
        let rev = &record.revision;
        let container = rev.spec.container().cloned().unwrap_or_default();
        let node_name = self.options.topology.nodes[node].name.clone();
        let service = svc.service.metadata.name().to_owned();
        let mut env: Vec<(String, String)> =
            container.env.iter().filter_map(|e| Some((e.name.clone(), e.value.clone()?))).collect();
        env.push(("K_SERVICE".into(), service.clone()));
        env.push(("K_CONFIGURATION".into(), service.clone()));
        env.push(("K_REVISION".into(), rev.name().to_owned()));
        env.push(("NODENAME".into(), node_name.clone()));
        env.push(("PODNAME".into(), name.to_owned()));
        env.push((FLEET_ENV.into(), self.state_dir.display().to_string()));
        let mut command = container.command.clone();
        command.extend(container.args.iter().cloned());
        let secs = |s: Option<u64>| s.filter(|x| *x > 0).map(Duration::from_secs);
        InstanceSpec {
            name: name.to_owned(),
            node: node_name.clone(),
            command,
            working_dir: container.working_dir.clone(),
            env,
            log: self.logs.join(format!("{name}.log")),
            grace: TERMINATION_GRACE,
            queue_proxy: QueueProxyConfig {
                namespace: rev.metadata.namespace().to_owned(),
                service,
                revision: rev.name().to_owned(),
                instance: name.to_owned(),
                node: node_name,
                app: SocketAddr::from(([127, 0, 0, 1], 0)),
                container_concurrency: rev.spec.container_concurrency(),
                queue_depth: None,
                queue: record.queue.clone(),
                priority_rules: record.settings.priority_rules.clone(),
                timeout: Duration::from_secs(rev.spec.timeout_seconds()),
                response_start_timeout: secs(rev.spec.response_start_timeout_seconds),
                idle_timeout: secs(rev.spec.idle_timeout_seconds),
                readiness: Readiness::from_probe(container.readiness_probe.as_ref()),
                max_header_bytes: MAX_HEADER_BYTES,
                upgrades: ikukantai_dataplane::edge::default_upgrades(),
            },
        }
    }

    /// How long an instance taken out of the routes keeps serving before it drains: the longest
    /// round trip between two nodes (a request picked just before is at most one way out) and
    /// [`STOP_GRACE_HOPS`] more for the hops on either side.
    fn stop_grace(&self) -> Duration {
        self.links.longest_rtt() + STOP_GRACE_HOPS
    }

    fn routes(&self, state: &State) -> Routes {
        let mut routes = Routes::default();
        for s in state.services.values() {
            let split = traffic_split(s);
            let ns = s.service.metadata.namespace().to_owned();
            routes.services.push(ServiceRoute {
                namespace: ns.clone(),
                name: s.service.metadata.name().to_owned(),
                traffic: split,
            });
            for r in &s.revisions {
                let name = r.revision.name().to_owned();
                let instances = state
                    .instances
                    .values()
                    .filter(|x| x.namespace == ns && x.revision == name && x.instance.phase() == Phase::Ready)
                    .map(|x| InstanceRoute {
                        name: x.instance.name.clone(),
                        node: x.node,
                        addr: x.instance.queue_proxy,
                    })
                    .collect();
                let config = &self.options.config;
                let spec = r.scaler.autoscaler.spec();
                let route = RevisionRoute::of(&r.revision, &r.settings, config, spec, instances);
                routes.revisions.push(RevisionRoute { failure: r.status.failure.clone(), ..route });
            }
        }
        routes
    }
}

fn suffix(seed: u64, counter: u64) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut x = (seed ^ counter.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (0..5)
        .map(|_| {
            let c = ALPHABET[(x % 36) as usize] as char;
            x /= 36;
            c
        })
        .collect()
}
