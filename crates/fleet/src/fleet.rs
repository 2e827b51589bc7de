//! The control plane of a local fleet: services → revisions → autoscaler → placement → instances
//! per node → gateway routes, reconciled continuously; plus one gateway per node.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ikukantai_api::annotations::RevisionSettings;
use ikukantai_api::config::FleetConfig;
use ikukantai_api::parse::{Document, load};
use ikukantai_api::revision::{Revision, next_revision};
use ikukantai_api::service::Service;
use ikukantai_api::status::{RevisionState, awaits_readiness, resolve_traffic, service_status};
use ikukantai_api::topology::Topology;
use ikukantai_dataplane::gateway::{
    Gateway, GatewayConfig, GatewayEvents, InstanceRoute, MemoryRelease, RevisionRoute, RouteTarget, Routes,
    ServiceRoute,
};
use ikukantai_dataplane::queue_proxy::{QueueProxyConfig, Readiness};
use ikukantai_link::link::Link;
use ikukantai_policy::autoscaler::{ScalingSpec, TickInputs};
use ikukantai_policy::estimate::RttMatrix;
use ikukantai_policy::registry::{self, PolicyParams};
use ikukantai_policy::scaler::{RevisionScaler, ScaleInputs};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::agent::{Instance, InstanceSpec, Phase};
use crate::lifetime::{FLEET_ENV, KEPT_LOGS, LockError, StateLock, prune_logs, reap_orphans};
use crate::store::{RevisionRecordStatus, Store, StoreProblem};
use crate::view::{ApplyResult, InstanceView, LatencyView, NodeView, PlacementView, RevisionView};

/// How a fleet is started.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// State directory (services, logs).
    pub state_dir: PathBuf,
    /// The nodes and links.
    pub topology: Topology,
    /// Fleet-wide configuration.
    pub config: FleetConfig,
    /// Port of every node's gateway (node i listens on 127.0.1.(i+1)).
    pub gateway_port: u16,
    /// Port of every gateway's admin listener.
    pub admin_port: u16,
    /// How often the latency monitor probes.
    pub probe_interval: Duration,
    /// Seed of every policy's randomness.
    pub seed: u64,
    /// How gateways give memory back to the system while many requests wait.
    pub memory_release: Option<MemoryRelease>,
    /// How this fleet is described to another that finds its state directory taken (e.g. its
    /// API address).
    pub holder: String,
}

/// A fleet-level failure.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Listeners, files.
    #[error("{0}")]
    Io(String),
    /// Another fleet holds the state directory.
    #[error(transparent)]
    Locked(#[from] LockError),
    /// Input the fleet refuses (the message names file, document, field and rule).
    #[error("{0}")]
    Invalid(String),
    /// Unknown object.
    #[error("{0}")]
    NotFound(String),
}

struct RevisionRecord {
    revision: Revision,
    settings: RevisionSettings,
    scaler: RevisionScaler,
    balancer: String,
    queue: String,
    desired: Vec<u32>,
    /// Ready once, or failed before that (kept in the store).
    status: RevisionRecordStatus,
}

struct ServiceRecord {
    service: Service,
    revisions: Vec<RevisionRecord>,
}

struct InstanceRecord {
    instance: Arc<Instance>,
    namespace: String,
    service: String,
    revision: String,
    node: usize,
}

struct State {
    services: BTreeMap<(String, String), ServiceRecord>,
    instances: BTreeMap<String, InstanceRecord>,
    /// Instances being stopped (still counted against capacity until gone).
    stopping: BTreeMap<String, InstanceRecord>,
    /// Instances being started: (namespace, revision, node) by name.
    pending: BTreeMap<String, (String, String, usize)>,
    rtt: RttMatrix,
    last_stats: Instant,
    last_tick: Instant,
    routes: Routes,
    counter: u64,
}

/// A running local fleet.
pub struct Fleet {
    options: FleetOptions,
    store: Store,
    gateways: Vec<Gateway>,
    state: Mutex<State>,
    started: Instant,
    /// Problems found while loading the state directory.
    pub problems: Vec<StoreProblem>,
    poke: mpsc::UnboundedSender<(String, String, usize)>,
    logs: PathBuf,
    /// The state directory, canonical (instances are marked with it).
    state_dir: PathBuf,
    /// Held until shutdown.
    lock: Mutex<Option<StateLock>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("nodes", &self.options.topology.nodes.len()).finish_non_exhaustive()
    }
}

struct Pokes(mpsc::UnboundedSender<(String, String, usize)>);

impl GatewayEvents for Pokes {
    fn demand(&self, namespace: &str, revision: &str, origin: usize) {
        let _ = self.0.send((namespace.to_owned(), revision.to_owned(), origin));
    }
}

/// Loopback address of node `i`'s gateway.
pub fn node_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, (i + 1).min(254) as u8))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Fleet {
    /// Starts the gateways, restores the stored services and starts reconciling.
    pub async fn start(options: FleetOptions) -> Result<Arc<Self>, FleetError> {
        let io = |e: &dyn std::fmt::Display| FleetError::Io(e.to_string());
        let store = Store::open(&options.state_dir).map_err(|e| io(&e))?;
        let state_dir = options.state_dir.canonicalize().map_err(|e| io(&e))?;
        let state_lock = StateLock::acquire(&state_dir, &options.holder)?;
        let reaped = reap_orphans(&state_dir);
        if !reaped.is_empty() {
            tracing::warn!(pids = ?reaped, "killed processes left running by an earlier fleet of this state directory");
        }
        let logs = options.state_dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| io(&e))?;
        let topology = &options.topology;
        let n = topology.nodes.len();
        let rtt = topology.rtt_matrix(options.probe_interval * 3);
        let (poke_tx, poke_rx) = mpsc::unbounded_channel();
        let mut gateways = Vec::new();
        for i in 0..n {
            let links = (0..n)
                .map(|j| {
                    (i != j).then(|| Link::new(&topology.link(i, j), options.seed ^ ((i * n + j) as u64)))
                })
                .collect();
            let config = GatewayConfig {
                nodes: topology.nodes.iter().map(|x| x.name.clone()).collect(),
                node: i,
                domain: options.config.domain.clone(),
                queue_depth: 10_000,
                max_header_bytes: 64 * 1024,
                max_body_bytes: 64 * 1024 * 1024,
                policy: PolicyParams { seed: options.seed ^ i as u64, ..PolicyParams::default() },
                links,
                rtt: rtt.clone(),
                memory_release: options.memory_release,
            };
            let ip = node_ip(i);
            let listener =
                TcpListener::bind(SocketAddr::new(ip, options.gateway_port)).await.map_err(|e| {
                    FleetError::Io(format!(
                        "node {}: gateway on {ip}:{}: {e}",
                        topology.nodes[i].name, options.gateway_port
                    ))
                })?;
            let admin = TcpListener::bind(SocketAddr::new(ip, options.admin_port)).await.map_err(|e| {
                FleetError::Io(format!(
                    "node {}: admin on {ip}:{}: {e}",
                    topology.nodes[i].name, options.admin_port
                ))
            })?;
            gateways.push(
                Gateway::start(config, listener, admin, Arc::new(Pokes(poke_tx.clone())))
                    .map_err(|e| io(&e))?,
            );
        }
        let (stored, problems) = store.load();
        let now = Instant::now();
        let fleet = Arc::new(Self {
            store,
            gateways,
            state: Mutex::new(State {
                services: BTreeMap::new(),
                instances: BTreeMap::new(),
                stopping: BTreeMap::new(),
                pending: BTreeMap::new(),
                rtt,
                last_stats: now,
                last_tick: now,
                routes: Routes::default(),
                counter: 0,
            }),
            started: now,
            problems,
            poke: poke_tx,
            logs,
            state_dir,
            lock: Mutex::new(Some(state_lock)),
            options,
        });
        {
            let mut state = lock(&fleet.state);
            for s in stored {
                let mut record = ServiceRecord { service: s.service, revisions: Vec::new() };
                for r in s.revisions {
                    let status = s.status.get(r.name()).cloned().unwrap_or_default();
                    match fleet.revision_record(r) {
                        Ok(rec) => record.revisions.push(RevisionRecord { status, ..rec }),
                        Err(e) => tracing::error!(error = %e, "cannot restore a revision"),
                    }
                }
                let key = (
                    record.service.metadata.namespace().to_owned(),
                    record.service.metadata.name().to_owned(),
                );
                state.services.insert(key, record);
            }
        }
        fleet.prune_logs();
        tokio::spawn(run(fleet.clone(), poke_rx));
        tokio::spawn(crate::monitor::run(fleet.clone()));
        Ok(fleet)
    }

    /// The options it runs with.
    pub fn options(&self) -> &FleetOptions {
        &self.options
    }

    /// Gateway of node `i`.
    pub fn gateway(&self, i: usize) -> &Gateway {
        &self.gateways[i]
    }

    /// Records a measured RTT.
    pub fn record_rtt(&self, from: usize, to: usize, ms: f64) {
        self.gateways[from].record_rtt(to, ms);
        lock(&self.state).rtt.record(from, to, ms, std::time::Instant::now());
    }

    fn revision_record(&self, revision: Revision) -> Result<RevisionRecord, FleetError> {
        let config = &self.options.config;
        let settings = ikukantai_api::annotations::revision_settings(
            &revision.metadata.annotations,
            config,
            "spec.template.metadata.annotations",
        )
        .map_err(|e| FleetError::Invalid(e.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")))?;
        let spec = ScalingSpec::resolve(
            &config.autoscaler,
            revision.spec.container_concurrency(),
            &settings.scaling,
        );
        let params = PolicyParams { seed: self.options.seed, ..PolicyParams::default() };
        let placement_name = settings.placement.clone().unwrap_or_else(|| config.policies.placement.clone());
        let placement =
            registry::placement(&placement_name, &params).map_err(|e| FleetError::Invalid(e.to_string()))?;
        Ok(RevisionRecord {
            scaler: RevisionScaler::new(spec, placement, Instant::now(), 0),
            balancer: settings.balancer.clone().unwrap_or_else(|| config.policies.balancer.clone()),
            queue: settings.queue.clone().unwrap_or_else(|| config.policies.queue.clone()),
            desired: vec![0; self.options.topology.nodes.len()],
            status: RevisionRecordStatus::default(),
            settings,
            revision,
        })
    }

    /// Applies manifests (`(file, text)` pairs). Everything is validated first; on any error
    /// nothing changes.
    pub fn apply(&self, sources: &[(String, String)]) -> Result<ApplyResult, FleetError> {
        let (docs, _) =
            load(sources, &self.options.config).map_err(|d| FleetError::Invalid(d.to_string()))?;
        if docs.is_empty() {
            let files: Vec<&str> = sources.iter().map(|(f, _)| f.as_str()).collect();
            return Err(FleetError::Invalid(format!(
                "{}: no documents found; nothing applied",
                files.join(", ")
            )));
        }
        let mut problems = Vec::new();
        for d in &docs {
            match &d.document {
                Document::Service(_) => {}
                Document::Config(_) => problems.push(format!("{}: document {}: fleet configuration is read at start: pass it to `ikukantai up --config`", d.file, d.index)),
                Document::Topology(_) => problems.push(format!("{}: document {}: the topology is read at start: pass it to `ikukantai up --topology`", d.file, d.index)),
            }
        }
        if !problems.is_empty() {
            return Err(FleetError::Invalid(problems.join("\n")));
        }
        let mut lines = Vec::new();
        let mut state = lock(&self.state);
        // Prepare every change first, then commit them all.
        let mut prepared = Vec::new();
        for d in docs {
            let Document::Service(svc) = d.document else { continue };
            // `load` above already checked every Service against the fleet's configuration.
            let mut svc = *svc;
            svc.status = None;
            svc.metadata.namespace = Some(svc.metadata.namespace().to_owned());
            let key = (svc.metadata.namespace().to_owned(), svc.metadata.name().to_owned());
            let existing = state.services.get(&key);
            let revisions: Vec<Revision> = existing
                .map(|r| r.revisions.iter().map(|x| x.revision.clone()).collect())
                .unwrap_or_default();
            let old_generation = existing.and_then(|r| r.service.metadata.generation).unwrap_or(0);
            let unchanged = existing.is_some_and(|r| {
                r.service.spec == svc.spec
                    && r.service.metadata.labels == svc.metadata.labels
                    && r.service.metadata.annotations == svc.metadata.annotations
            });
            svc.metadata.generation = Some(if unchanged { old_generation } else { old_generation + 1 });
            let existing_uid = existing.map(|e| e.service.metadata.uid.clone());
            let existed = existing.is_some();
            let new_revision = next_revision(&svc, &revisions);
            svc.metadata.uid = match existing_uid {
                Some(uid) => uid,
                None => {
                    state.counter += 1;
                    Some(format!(
                        "{:016x}",
                        self.options.seed
                            ^ state.counter.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                            ^ self.started.elapsed().as_nanos() as u64
                    ))
                }
            };
            if let Some(r) = &new_revision
                && revisions.iter().any(|x| x.name() == r.name())
            {
                return Err(FleetError::Invalid(format!(
                    "{}: document {} (Service {}/{}): spec.template.metadata.name: revision {:?} already exists with a different template; change the name with the template",
                    d.file,
                    d.index,
                    key.0,
                    key.1,
                    r.name()
                )));
            }
            let record = new_revision.map(|r| self.revision_record(r)).transpose()?;
            lines.push(match (existed, unchanged && record.is_none()) {
                (false, _) => format!("service/{} created", key.1),
                (true, true) => format!("service/{} unchanged", key.1),
                (true, false) => format!("service/{} configured", key.1),
            });
            if let Some(warning) = local_warning(&svc) {
                lines.push(format!(
                    "warning: {}: document {} (Service {}/{}): {warning}",
                    d.file, d.index, key.0, key.1
                ));
            }
            prepared.push((key, svc, record));
        }
        for (key, svc, record) in prepared {
            let existing = state.services.get(&key);
            let mut all: Vec<Revision> = existing
                .map(|r| r.revisions.iter().map(|x| x.revision.clone()).collect())
                .unwrap_or_default();
            if let Some(r) = &record {
                all.push(r.revision.clone());
            }
            let status = existing.map(stored_status).unwrap_or_default();
            self.store.save(&svc, &all, &status).map_err(|e| FleetError::Io(e.to_string()))?;
            let entry = state
                .services
                .entry(key)
                .or_insert_with(|| ServiceRecord { service: svc.clone(), revisions: Vec::new() });
            entry.service = svc;
            if let Some(r) = record {
                entry.revisions.push(r);
            }
        }
        drop(state);
        let _ = self.poke.send((String::new(), String::new(), usize::MAX));
        Ok(ApplyResult { lines })
    }

    /// Deletes a service, its revisions and instances.
    pub fn delete(&self, namespace: &str, name: &str) -> Result<(), FleetError> {
        let mut state = lock(&self.state);
        if state.services.remove(&(namespace.to_owned(), name.to_owned())).is_none() {
            return Err(FleetError::NotFound(format!("service {namespace}/{name} not found")));
        }
        self.store.delete(namespace, name).map_err(|e| FleetError::Io(e.to_string()))?;
        drop(state);
        let _ = self.poke.send((String::new(), String::new(), usize::MAX));
        Ok(())
    }

    /// Node views.
    pub fn nodes(&self) -> Vec<NodeView> {
        let state = lock(&self.state);
        self.options
            .topology
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeView {
                name: n.name.clone(),
                labels: n.labels.clone(),
                capacity: n.capacity,
                instances: state.instances.values().filter(|r| r.node == i).count() as u32,
                gateway: self.gateways[i].addr(),
                admin: self.gateways[i].admin_addr(),
            })
            .collect()
    }

    /// Every service with its status.
    pub fn services(&self) -> Vec<Service> {
        let state = lock(&self.state);
        state.services.values().map(|r| with_status(r, &self.options.config.domain, &state)).collect()
    }

    /// One service.
    pub fn service(&self, namespace: &str, name: &str) -> Option<Service> {
        let state = lock(&self.state);
        state
            .services
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|r| with_status(r, &self.options.config.domain, &state))
    }

    /// Every revision.
    pub fn revisions(&self) -> Vec<RevisionView> {
        let state = lock(&self.state);
        let mut out = Vec::new();
        for s in state.services.values() {
            let split = traffic_split(s);
            for r in &s.revisions {
                let (ns, name) = (r.revision.metadata.namespace(), r.revision.name());
                out.push(RevisionView {
                    namespace: ns.to_owned(),
                    service: s.service.metadata.name().to_owned(),
                    name: name.to_owned(),
                    generation: r.revision.configuration_generation(),
                    ready: ready_count(&state, ns, name),
                    desired: r.desired.iter().sum(),
                    traffic: split.iter().filter(|t| t.revision == name).map(|t| t.percent).sum(),
                    balancer: r.balancer.clone(),
                    placement: r.scaler.placement_name().to_owned(),
                    queue: r.queue.clone(),
                });
            }
        }
        out
    }

    /// Every instance.
    pub fn instances(&self) -> Vec<InstanceView> {
        let state = lock(&self.state);
        state
            .instances
            .values()
            .chain(state.stopping.values())
            .map(|r| {
                let phase = r.instance.phase();
                InstanceView {
                    name: r.instance.name.clone(),
                    namespace: r.namespace.clone(),
                    service: r.service.clone(),
                    revision: r.revision.clone(),
                    node: self.options.topology.nodes[r.node].name.clone(),
                    state: phase.name().to_owned(),
                    message: phase.message(),
                    restarts: r.instance.restarts(),
                    queue_proxy: r.instance.queue_proxy,
                    address: r.instance.address,
                    pid: r.instance.pid(),
                }
            })
            .collect()
    }

    /// Desired and ready instances per node, per revision.
    pub fn placements(&self) -> Vec<PlacementView> {
        let state = lock(&self.state);
        let nodes: Vec<String> = self.options.topology.nodes.iter().map(|n| n.name.clone()).collect();
        let now = Instant::now();
        let mut out = Vec::new();
        for s in state.services.values() {
            for r in &s.revisions {
                let (ns, name) = (r.revision.metadata.namespace(), r.revision.name());
                let ready = (0..nodes.len())
                    .map(|i| {
                        state
                            .instances
                            .values()
                            .filter(|x| {
                                x.namespace == ns
                                    && x.revision == name
                                    && x.node == i
                                    && x.instance.phase() == Phase::Ready
                            })
                            .count() as u32
                    })
                    .collect();
                let mut demand = r.scaler.autoscaler.demand_by_origin(now);
                demand.resize(nodes.len(), 0.0);
                out.push(PlacementView {
                    namespace: ns.to_owned(),
                    service: s.service.metadata.name().to_owned(),
                    revision: name.to_owned(),
                    nodes: nodes.clone(),
                    ready,
                    desired: r.desired.clone(),
                    demand,
                });
            }
        }
        out
    }

    /// Measured and configured latencies.
    pub fn latency(&self) -> LatencyView {
        let state = lock(&self.state);
        let t = &self.options.topology;
        let n = t.nodes.len();
        let now = std::time::Instant::now();
        LatencyView {
            nodes: t.nodes.iter().map(|x| x.name.clone()).collect(),
            measured: (0..n)
                .map(|i| {
                    (0..n)
                        .map(|j| {
                            if i == j {
                                None
                            } else {
                                state.rtt.sample(i, j).filter(|_| state.rtt.is_fresh(i, j, now)).map(|s| s.0)
                            }
                        })
                        .collect()
                })
                .collect(),
            configured: (0..n)
                .map(|i| (0..n).map(|j| t.link(i, j).rtt.as_secs_f64() * 1e3).collect())
                .collect(),
        }
    }

    /// Keeps the logs of the [`KEPT_LOGS`] instances that stopped last, and of every live one.
    fn prune_logs(&self) {
        let live: std::collections::BTreeSet<String> = {
            let state = lock(&self.state);
            state.instances.keys().chain(state.stopping.keys()).chain(state.pending.keys()).cloned().collect()
        };
        prune_logs(&self.logs, KEPT_LOGS, |name| live.contains(name));
    }

    /// The log file of an instance.
    pub fn log_path(&self, instance: &str) -> Option<PathBuf> {
        let p = self.logs.join(format!("{instance}.log"));
        p.exists().then_some(p)
    }

    /// Stops every instance and gateway (Ctrl-C).
    pub async fn shutdown(&self) {
        let all: Vec<Arc<Instance>> = {
            let mut state = lock(&self.state);
            let mut v: Vec<_> =
                std::mem::take(&mut state.instances).into_values().map(|r| r.instance).collect();
            v.extend(std::mem::take(&mut state.stopping).into_values().map(|r| r.instance));
            v
        };
        // Stop them all at once: each drains and may wait out its grace period.
        let stops: Vec<_> = all.into_iter().map(|i| tokio::spawn(async move { i.stop().await })).collect();
        for s in stops {
            let _ = s.await;
        }
        lock(&self.lock).take();
    }

    /// One reconcile pass.
    fn reconcile(self: &Arc<Self>, force_tick: bool) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let state = &mut *state;
        // Finished stops leave the books (one still in its grace period is still running: it
        // stays, counted on its node and stopped on shutdown).
        state.stopping.retain(|_, r| r.instance.phase() != Phase::Stopped);
        let n = self.options.topology.nodes.len();
        self.observe_revisions(state);

        // 1. Stats, every second.
        if now.duration_since(state.last_stats) >= Duration::from_secs(1) {
            state.last_stats = now;
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

        // 2. Autoscaler and placement, every 2 s or when poked.
        let tick = force_tick || now.duration_since(state.last_tick) >= Duration::from_secs(2);
        if tick {
            state.last_tick = now;
            let capacity = self.options.topology.capacities();
            let rtt = state.rtt.clone();
            for key in state.services.keys().cloned().collect::<Vec<_>>() {
                // Routed to, or the new revision that must start to prove itself ready.
                let svc = &state.services[&key];
                let states = revision_states(svc);
                let mut reachable: Vec<String> = traffic_split(svc).into_iter().map(|t| t.revision).collect();
                reachable.extend(
                    states.iter().filter(|r| awaits_readiness(&states, r.name)).map(|r| r.name.to_owned()),
                );
                for idx in 0..state.services[&key].revisions.len() {
                    let (ns, name) = {
                        let r = &state.services[&key].revisions[idx].revision;
                        (r.metadata.namespace().to_owned(), r.name().to_owned())
                    };
                    let ready = ready_count(state, &ns, &name);
                    let current: Vec<u32> = (0..n)
                        .map(|i| {
                            (state
                                .instances
                                .values()
                                .filter(|x| x.namespace == ns && x.revision == name && x.node == i)
                                .count()
                                + state
                                    .pending
                                    .values()
                                    .filter(|p| p.0 == ns && p.1 == name && p.2 == i)
                                    .count()) as u32
                        })
                        .collect();
                    // Room for this revision: node capacity minus everything else running there.
                    let room: Vec<u32> = (0..n)
                        .map(|i| {
                            let others = state
                                .instances
                                .values()
                                .chain(state.stopping.values())
                                .filter(|x| x.node == i && !(x.namespace == ns && x.revision == name))
                                .count()
                                + state
                                    .pending
                                    .values()
                                    .filter(|p| p.2 == i && !(p.0 == ns && p.1 == name))
                                    .count();
                            let others = others as u32;
                            capacity[i].saturating_sub(others)
                        })
                        .collect();
                    let record = &mut state.services.get_mut(&key).expect("key from keys()").revisions[idx];
                    let (decision, desired) = record.scaler.decide(
                        now,
                        ScaleInputs {
                            tick: TickInputs {
                                ready,
                                reachable: reachable.contains(&name),
                                buffering_since: Some(self.started),
                            },
                            current: &current,
                            room: &room,
                            rtt: &rtt,
                        },
                    );
                    tracing::debug!(revision = %name, desired = decision.desired, stable = decision.observed_stable, panic = decision.observed_panic, panicking = decision.panicking, ready, placed = ?desired, "autoscaler decision");
                    record.desired = desired;
                }
            }
        }

        // 3. Converge instances to the desired placement; stop what is no longer wanted.
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
            if names.len() > want {
                // Stop the least useful first: not ready before ready, newest first.
                let mut ranked: Vec<&String> = names.iter().collect();
                ranked.sort_by_key(|n| {
                    (state.instances[*n].instance.phase() == Phase::Ready, std::cmp::Reverse((*n).clone()))
                });
                to_stop.extend(ranked.into_iter().take(names.len() - want).cloned());
            }
        }
        // Stopped only once the gateways have let go of them (step 4), and after a grace period.
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
            let Some((svc, record)) = state.services.values().find_map(|s| {
                s.revisions
                    .iter()
                    .find(|r| r.revision.metadata.namespace() == ns && r.revision.name() == rev)
                    .map(|r| (s, r))
            }) else {
                continue;
            };
            state.counter += 1;
            let node_name = self.options.topology.nodes[node].name.clone();
            // Unique across restarts of the fleet too (log files are named after instances).
            let nonce = self.options.seed
                ^ std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
            let name =
                format!("{}-{}-{}", svc.service.metadata.name(), node_name, suffix(nonce, state.counter));
            let spec = self.instance_spec(&name, node, svc, record);
            let fleet = self.clone();
            let (ns2, rev2, svc_name) = (ns.clone(), rev.clone(), svc.service.metadata.name().to_owned());
            // Reserve the slot now; the instance moves to the books once its listeners exist.
            let placeholder_name = name.clone();
            state.pending.insert(name.clone(), (ns.clone(), rev.clone(), node));
            tokio::spawn(async move {
                match Instance::start(spec).await {
                    Ok(instance) => {
                        let instance = Arc::new(instance);
                        let mut watch = instance.watch();
                        {
                            let mut state = lock(&fleet.state);
                            state.pending.remove(&placeholder_name);
                            state.instances.insert(
                                placeholder_name,
                                InstanceRecord {
                                    instance,
                                    namespace: ns2,
                                    service: svc_name,
                                    revision: rev2,
                                    node,
                                },
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
                        tracing::error!(instance = %placeholder_name, error = %e, "cannot start instance");
                        lock(&fleet.state).pending.remove(&placeholder_name);
                    }
                }
            });
        }

        // 4. Routes for every gateway.
        let routes = self.routes(state);
        if routes != state.routes {
            for g in &self.gateways {
                if let Err(e) = g.set_routes(&routes) {
                    tracing::error!(error = %e, "gateway refused routes");
                }
            }
            state.routes = routes;
        }
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
                    tracing::error!(error = %e, "cannot store a revision's state");
                }
            }
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
            grace: Duration::from_secs(10),
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
                max_header_bytes: 64 * 1024,
            },
        }
    }

    /// How long an instance taken out of the routes keeps serving before it drains: the longest
    /// round trip between two nodes (a request picked just before is at most one way out) and
    /// 100 ms more for the hops on either side.
    fn stop_grace(&self) -> Duration {
        let t = &self.options.topology;
        let n = t.nodes.len();
        let longest = (0..n).flat_map(|a| (0..n).map(move |b| t.link(a, b).rtt)).max().unwrap_or_default();
        longest + Duration::from_millis(100)
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
                routes.revisions.push(RevisionRoute {
                    namespace: ns.clone(),
                    service: s.service.metadata.name().to_owned(),
                    revision: name,
                    container_concurrency: r.revision.spec.container_concurrency(),
                    target_concurrency: r.scaler.autoscaler.spec().target,
                    timeout: Duration::from_secs(r.revision.spec.timeout_seconds()),
                    balancer: r.balancer.clone(),
                    queue: r.queue.clone(),
                    priority_rules: r.settings.priority_rules.clone(),
                    instances,
                    failure: r.status.failure.clone(),
                });
            }
        }
        routes
    }
}

/// What keeps a valid Service from running on the local fleet, which runs processes, not images.
pub fn local_warning(svc: &Service) -> Option<String> {
    let container = svc.spec.template.spec.container()?;
    container.command.is_empty().then(|| {
        "spec.template.spec.containers[0].command: not set: the local fleet runs the command as a process (the image is not pulled), so this revision cannot start here; it runs as is on Kubernetes".to_owned()
    })
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

fn ready_count(state: &State, ns: &str, revision: &str) -> u32 {
    state
        .instances
        .values()
        .filter(|x| x.namespace == ns && x.revision == revision && x.instance.phase() == Phase::Ready)
        .count() as u32
}

fn revision_states(s: &ServiceRecord) -> Vec<RevisionState<'_>> {
    s.revisions
        .iter()
        .map(|r| RevisionState {
            name: r.revision.name(),
            ready: r.status.ever_ready
                || (r.status.failure.is_none() && r.scaler.autoscaler.spec().starts_at_zero()),
            failure: r.status.failure.as_deref(),
        })
        .collect()
}

fn stored_status(s: &ServiceRecord) -> BTreeMap<String, RevisionRecordStatus> {
    s.revisions.iter().map(|r| (r.revision.name().to_owned(), r.status.clone())).collect()
}

/// The service's traffic resolved to revision names.
fn traffic_split(s: &ServiceRecord) -> Vec<RouteTarget> {
    resolve_traffic(&s.service.spec, &revision_states(s))
        .into_iter()
        .map(|t| RouteTarget { revision: t.revision, percent: t.percent, tag: t.tag })
        .collect()
}

fn with_status(s: &ServiceRecord, domain: &str, state: &State) -> Service {
    let mut svc = s.service.clone();
    let (ns, name) = (svc.metadata.namespace().to_owned(), svc.metadata.name().to_owned());
    let serving: Vec<String> = traffic_split(s).into_iter().map(|t| t.revision).collect();
    let failing: Vec<String> = state
        .instances
        .values()
        .filter(|x| {
            x.namespace == ns
                && x.service == name
                && serving.contains(&x.revision)
                && matches!(x.instance.phase(), Phase::Failed(_) | Phase::CrashLoopBackOff(_))
        })
        .map(|x| format!("{}: {}", x.instance.name, x.instance.phase().message().unwrap_or_default()))
        .collect();
    svc.status = Some(service_status(&svc, &revision_states(s), &failing, domain));
    svc
}

/// The control loop: reconcile every 250 ms, and at once on a poke (demand at zero, apply).
async fn run(fleet: Arc<Fleet>, mut pokes: mpsc::UnboundedReceiver<(String, String, usize)>) {
    let mut interval = tokio::time::interval(Duration::from_millis(250));
    loop {
        let poked = tokio::select! {
            _ = interval.tick() => false,
            p = pokes.recv() => {
                let Some((ns, rev, origin)) = p else { return };
                if origin != usize::MAX {
                    let mut state = lock(&fleet.state);
                    for s in state.services.values_mut() {
                        for r in s.revisions.iter_mut().filter(|r| r.revision.metadata.namespace() == ns && r.revision.name() == rev) {
                            r.scaler.autoscaler.poke(Instant::now(), origin);
                        }
                    }
                }
                true
            }
        };
        fleet.reconcile(poked);
    }
}
