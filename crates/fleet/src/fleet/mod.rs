//! The control plane of a local fleet: services → revisions → autoscaler → placement → instances
//! per node → gateway routes, reconciled continuously; plus one gateway per node.
//!
//! - this module: the fleet, its start and shutdown, and the books it keeps;
//! - `apply`: applying and deleting services;
//! - `reconcile`: the control loop, one function per phase;
//! - `work`: what the loop has to do (revisions not at rest, dirty ones, timers), so that idle
//!   revisions cost nothing per pass;
//! - `instances`: starting instances (paced by `starts`) and stopping them;
//! - `views`: what the API shows of the fleet;
//! - `error`: `FleetError`; `defaults`: the fleet's constants.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ikukantai_api::annotations::RevisionSettings;
use ikukantai_api::config::FleetConfig;
use ikukantai_api::revision::Revision;
use ikukantai_api::service::Service;
use ikukantai_api::status::{RevisionState, resolve_traffic};
use ikukantai_api::topology::{LinkIndex, Topology};
use ikukantai_dataplane::defaults::{GATEWAY_QUEUE_DEPTH, MAX_BODY_BYTES, MAX_HEADER_BYTES};
use ikukantai_dataplane::gateway::{
    EdgePolicy, Gateway, GatewayConfig, GatewayEvents, Links, MemoryRelease, RouteTarget, Routes,
};
use ikukantai_dataplane::monitor::Measurement;
use ikukantai_link::link::Link;
use ikukantai_policy::estimate::{RttMatrix, VivaldiParams};
use ikukantai_policy::probe::ProbeParams;
use ikukantai_policy::registry::PolicyParams;
use ikukantai_policy::scaler::RevisionScaler;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::agent::{Instance, InstanceSpec, Phase};
use crate::lifetime::{KEPT_LOGS, StateLock, prune_logs, reap_orphans};
use crate::store::{RevisionRecordStatus, Store, StoreProblem};
use defaults::{START_SLOT_TIMEOUT, concurrent_starts};
use starts::{RevisionKey, StartQueue};
use work::Work;

mod apply;
pub mod defaults;
mod error;
mod instances;
mod names;
mod reconcile;
mod starts;
#[cfg(test)]
mod tests;
mod views;
mod work;

pub use apply::local_warning;
pub use error::FleetError;
pub(crate) use error::error_chain;

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
    /// The gateways' policy towards clients (`ikukantai up` passes the queue proxy's
    /// `x-ikukantai-*` headers on, for `ikukantai invoke` to say where a request was served).
    pub edge: EdgePolicy,
    /// How this fleet is described to another that finds its state directory taken (e.g. its
    /// API address).
    pub holder: String,
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
    /// Requests wait for its first instance (a gateway poked): its starts are cold ones.
    waiting: bool,
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
    last_decision: Instant,
    routes: Routes,
    counter: u64,
    /// The service (its name) of each revision, by (namespace, revision).
    owners: BTreeMap<RevisionKey, String>,
    /// What the control loop has to do.
    work: Work,
    /// Instance starts waiting for their turn or under way.
    starts: StartQueue<InstanceSpec>,
}

impl State {
    /// The revision `key`, if its service exists.
    fn revision(&self, key: &RevisionKey) -> Option<&RevisionRecord> {
        let service = self.owners.get(key)?;
        let s = self.services.get(&(key.0.clone(), service.clone()))?;
        s.revisions.iter().find(|r| r.revision.name() == key.1)
    }

    fn revision_mut(&mut self, key: &RevisionKey) -> Option<&mut RevisionRecord> {
        let service = self.owners.get(key)?;
        let s = self.services.get_mut(&(key.0.clone(), service.clone()))?;
        s.revisions.iter_mut().find(|r| r.revision.name() == key.1)
    }
}

/// A running local fleet.
pub struct Fleet {
    options: FleetOptions,
    /// The topology's links by pair (it lists every pair of a large fleet).
    links: Arc<LinkIndex>,
    store: Store,
    gateways: Vec<Gateway>,
    state: Mutex<State>,
    started: Instant,
    /// Problems found while loading the state directory.
    pub problems: Vec<StoreProblem>,
    poke: mpsc::UnboundedSender<Poke>,
    /// The control loop's end of the pokes until it starts (tests step it by hand instead).
    pokes: Mutex<Option<mpsc::UnboundedReceiver<Poke>>>,
    logs: PathBuf,
    /// The state directory, canonical (instances are marked with it).
    state_dir: PathBuf,
    /// Held until shutdown.
    lock: Mutex<Option<StateLock>>,
    /// Orders the writes of the store: taken with the books locked, so writes happen in the
    /// order of the changes even when one is written after the books are unlocked.
    store_order: Mutex<()>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("nodes", &self.options.topology.nodes.len()).finish_non_exhaustive()
    }
}

/// What wakes the control loop before its next period.
enum Poke {
    /// A request for a revision without instances arrived at node `origin`: its autoscaler
    /// records the demand (Knative's activator poke) and the fleet decides at once.
    Demand { namespace: String, revision: String, origin: usize },
    /// The books changed (apply, delete: what to do is marked in them already): a pass now.
    Reconcile,
    /// An instance of `revision` changed state, or entered the books.
    Instance { namespace: String, revision: String, name: String },
    /// An instance finished stopping: its room is free.
    Stopped,
}

/// A gateway's events, as pokes.
struct Pokes(mpsc::UnboundedSender<Poke>);

impl GatewayEvents for Pokes {
    fn demand(&self, namespace: &str, revision: &str, origin: usize) {
        let _ = self.0.send(Poke::Demand {
            namespace: namespace.to_owned(),
            revision: revision.to_owned(),
            origin,
        });
    }
}

/// What the local fleet's monitors probe. A probe through the link emulator costs ~0.7 ms of
/// CPU on a 2-vCPU VM, however it is sent (docs/latency.md): a hundred nodes at the default (up to
/// 12 random peers and 4 candidates a round each) would take a fifth of a core doing nothing
/// else. So fewer, and the coordinates settle more slowly here than on a real network.
fn local_probe_params(interval: Duration) -> ProbeParams {
    ProbeParams { interval, explore: 2, candidates: 2, ..ProbeParams::default() }
}

/// Loopback address of node `i`'s gateway.
pub fn node_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, (i + 1).min(254) as u8))
}

/// Binds one of a node's listeners (`what` names it in the error).
async fn listen(node: &str, what: &str, addr: SocketAddr) -> Result<TcpListener, FleetError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| FleetError::Io { what: format!("node {node}: {what} on {addr}"), source })
}

impl Fleet {
    /// Starts the gateways, restores the stored services and starts reconciling.
    pub async fn start(options: FleetOptions) -> Result<Arc<Self>, FleetError> {
        let fleet = Self::start_idle(options).await?;
        let pokes = fleet.pokes.lock().take();
        if let Some(pokes) = pokes {
            tokio::spawn(reconcile::run(fleet.clone(), pokes));
        }
        crate::monitor::start(&fleet);
        Ok(fleet)
    }

    /// A fleet whose control loop and monitors are not running (tests step the loop by hand).
    async fn start_idle(options: FleetOptions) -> Result<Arc<Self>, FleetError> {
        let store = Store::open(&options.state_dir)?;
        let state_dir = options.state_dir.canonicalize().map_err(|source| FleetError::Io {
            what: format!("state directory {}", options.state_dir.display()),
            source,
        })?;
        let state_lock = StateLock::acquire(&state_dir, &options.holder)?;
        let reaped = reap_orphans(&state_dir);
        if !reaped.is_empty() {
            tracing::warn!(pids = ?reaped, "killed processes left running by an earlier fleet of this state directory");
        }
        let logs = options.state_dir.join("logs");
        std::fs::create_dir_all(&logs)
            .map_err(|source| FleetError::Io { what: format!("log directory {}", logs.display()), source })?;
        let topology = &options.topology;
        let n = topology.nodes.len();
        let rtt = topology.rtt_matrix(options.probe_interval * 3);
        let link_index = Arc::new(topology.link_index());
        let (poke_tx, poke_rx) = mpsc::unbounded_channel();
        let mut gateways = Vec::new();
        for i in 0..n {
            // A node's links are made when first used: by routes to a node, or for one probe.
            let (index, seed) = (link_index.clone(), options.seed);
            let links = Links::Emulated(Arc::new(move |j, salt| {
                let seed = seed ^ ((i * n + j) as u64) ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                (i != j).then(|| Link::new(&index.link(i, j), seed))
            }));
            let config = GatewayConfig {
                nodes: topology.nodes.iter().map(|x| x.name.clone()).collect(),
                node: i,
                domain: options.config.domain.clone(),
                queue_depth: GATEWAY_QUEUE_DEPTH,
                max_header_bytes: MAX_HEADER_BYTES,
                max_body_bytes: MAX_BODY_BYTES,
                policy: PolicyParams { seed: options.seed ^ i as u64, ..PolicyParams::default() },
                links,
                rtt: rtt.clone(),
                probe: local_probe_params(options.probe_interval),
                vivaldi: VivaldiParams::default(),
                memory_release: options.memory_release,
                edge: options.edge.clone(),
                max_connections: ikukantai_http::server::default_max_connections(),
            };
            let (node, ip) = (&topology.nodes[i].name, node_ip(i));
            let listener = listen(node, "gateway", SocketAddr::new(ip, options.gateway_port)).await?;
            let admin = listen(node, "admin", SocketAddr::new(ip, options.admin_port)).await?;
            let gateway = Gateway::start(config, listener, admin, Arc::new(Pokes(poke_tx.clone())))
                .map_err(|source| FleetError::Gateway { node: node.clone(), source })?;
            gateways.push(gateway);
        }
        let (stored, problems) = store.load();
        let now = Instant::now();
        let fleet = Arc::new(Self {
            links: link_index,
            store,
            gateways,
            state: Mutex::new(State {
                services: BTreeMap::new(),
                instances: BTreeMap::new(),
                stopping: BTreeMap::new(),
                pending: BTreeMap::new(),
                rtt,
                last_stats: now,
                last_decision: now,
                routes: Routes::default(),
                counter: 0,
                owners: BTreeMap::new(),
                work: Work::new(now),
                starts: StartQueue::new(concurrent_starts(), START_SLOT_TIMEOUT),
            }),
            started: now,
            problems,
            poke: poke_tx,
            pokes: Mutex::new(Some(poke_rx)),
            logs,
            state_dir,
            lock: Mutex::new(Some(state_lock)),
            store_order: Mutex::new(()),
            options,
        });
        {
            let mut state = fleet.state.lock();
            for s in stored {
                let mut record = ServiceRecord { service: s.service, revisions: Vec::new() };
                for r in s.revisions {
                    let status = s.status.get(r.name()).cloned().unwrap_or_default();
                    match fleet.revision_record(r) {
                        Ok(rec) => record.revisions.push(RevisionRecord { status, ..rec }),
                        Err(e) => tracing::error!(error = %error_chain(&e), "cannot restore a revision"),
                    }
                }
                let key = (
                    record.service.metadata.namespace().to_owned(),
                    record.service.metadata.name().to_owned(),
                );
                for r in &record.revisions {
                    state.owners.insert((key.0.clone(), r.revision.name().to_owned()), key.1.clone());
                }
                state.services.insert(key.clone(), record);
                // Visited in the first pass; those at rest leave the active set there.
                state.wake_service(&key, now, n);
            }
        }
        fleet.prune_logs();
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

    /// The topology's links by node pair.
    pub fn links(&self) -> &LinkIndex {
        &self.links
    }

    /// Takes in one of the monitors' probes (the gateway that sent it has recorded it already):
    /// the sample and both nodes' coordinates go to the matrix placement decides with.
    pub(crate) fn record_measurement(&self, m: &Measurement) {
        let mut state = self.state.lock();
        state.rtt.record(m.from, m.to, m.rtt_ms, m.at);
        state.rtt.set_coordinate(m.from, m.own.clone(), m.at);
        if let Some(peer) = &m.peer {
            state.rtt.set_coordinate(m.to, peer.clone(), m.at);
        }
    }

    /// Keeps the logs of the [`KEPT_LOGS`] instances that stopped last, and of every live one.
    fn prune_logs(&self) {
        let live: std::collections::BTreeSet<String> = {
            let state = self.state.lock();
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
            let mut state = self.state.lock();
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
        self.lock.lock().take();
    }
}

fn ready_count(instances: &BTreeMap<String, InstanceRecord>, ns: &str, revision: &str) -> u32 {
    instances
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
