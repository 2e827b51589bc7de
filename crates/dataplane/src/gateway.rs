//! The gateway: one per node. Ingress, activator and load balancer in one hop.
//!
//! A request is routed by its Host header the Knative way (`SVC.NS.DOMAIN`, `SVC.NS`,
//! `SVC.NS.svc`, `SVC.NS.svc.cluster.local`, and `TAG-SVC.NS…` for tagged targets), split across
//! revisions by traffic percent, and handed to the revision's balancer, which picks an instance
//! knowing where the request entered, the RTT to every node and the load of every instance.
//!
//! When no instance can take it (none exists yet, or all are at containerConcurrency) the request
//! waits in the revision's bounded activator queue (503 when full, 504 when its timeout ends). The
//! first request at zero tells the control plane at once that there is demand at this node.
//!
//! Every response's serving instance and node, its processing time and the instance's piggybacked
//! load feed back into the balancer and into the per-instance processing-time estimates.
//!
//! A request that asks to switch protocols (WebSocket) and gets a `101` becomes a tunnel to its
//! instance ([`crate::upgrade`]), one request in flight until it closes.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use ikukantai_policy::autoscaler::Stat;
use ikukantai_policy::balance::{Balancer, Candidate, Completion, PickContext};
use ikukantai_policy::estimate::{NodeIndex, PeakEwma, RttMatrix};
use ikukantai_policy::queue::{PriorityRule, QueueDiscipline, RequestMeta};
use ikukantai_policy::registry::{self, PolicyParams, UnknownPolicy};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout_at};

use crate::answer_poll::{self, AnswerPoll};
use crate::body::{Body, Guarded, Limited, boxed, error_response, full, is_too_large};
use crate::connect::NodeConnector;
use crate::h1::RequestBody;
use crate::link::Link;
use crate::metrics::{
    GatewayMetrics, LinkLabels, OutcomeHandles, RejectLabels, RequestLabels, RevisionLabels, metrics_response,
};
use crate::pool::{Forwarding, PooledBody, Upstream, UpstreamError};
use crate::proxy::{HeaderView, detach_head};
use crate::queue_proxy::{INSTANCE_HEADER, LOAD_HEADER, NODE_HEADER, PROXY_HEADER, SERVICE_TIME_HEADER};
use crate::recycling_timer::RecyclingTimer;
use crate::server::{Handler, Peer, ServerHandle, serve};
use crate::stats::RequestStats;
use crate::upgrade::{Tunnels, strip_request, strip_response};

/// Request header telling the instance where the request entered the fleet.
pub const ORIGIN_HEADER: &str = "x-ikukantai-origin";
static ORIGIN_NAME: HeaderName = HeaderName::from_static(ORIGIN_HEADER);
static PROXY_NAME: HeaderName = HeaderName::from_static(PROXY_HEADER);
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The proxy header's value on a request that waited in the activator queue.
static ACTIVATOR: HeaderValue = HeaderValue::from_static("activator");

/// How often a waiting request re-checks for capacity (a safety net beside the wake-ups).
const RECHECK: Duration = Duration::from_millis(50);

/// Static settings of a gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Node names by index; the topology's order. More can join later
    /// ([`Gateway::add_node`]); indices never change.
    pub nodes: Vec<String>,
    /// This gateway's node.
    pub node: NodeIndex,
    /// Route domain (`example.com`).
    pub domain: String,
    /// Activator queue depth per revision.
    pub queue_depth: usize,
    /// Largest request head (431 beyond).
    pub max_header_bytes: usize,
    /// Largest request body (413 beyond).
    pub max_body_bytes: u64,
    /// Seeds and tuning of the policies.
    pub policy: PolicyParams,
    /// Links to the other nodes (`None` = direct).
    pub links: Vec<Option<Link>>,
    /// RTT priors (measurements replace them while fresh).
    pub rtt: RttMatrix,
    /// Giving memory back to the operating system while many requests wait (`None`: never).
    pub memory_release: Option<MemoryRelease>,
    /// Polling for an instance's answer, at light load and when it is expected within this long,
    /// instead of sleeping ([`crate::answer_poll`] says when; zero: never).
    pub answer_poll: Duration,
}

/// How a gateway gives memory back to the operating system while many HTTP/1.1 requests wait.
///
/// A request head is read into an 8 KiB buffer; a waiting request's head is copied out of it
/// ([`detach_head`]) and its connection lets go of the buffer
/// ([`RequestBody::release_read_buffer`]), which is then freed. The allocator keeps freed
/// blocks, their touched pages resident, for later allocations (with hyper's server, whose next
/// 8 KiB allocation was a buffer it never wrote to, that was one page per waiting connection:
/// 39 MiB for 10 000). Releasing freed memory when the request parks ends that. It costs a few
/// system calls, so only requests that park in a queue already `from_depth` deep pay it, and the
/// fast path never does.
#[derive(Debug, Clone, Copy)]
pub struct MemoryRelease {
    /// Returns memory the process freed to the operating system (the allocator's business:
    /// `ikukantai_alloc::release_freed` in ikukantai's binaries).
    pub release: fn(),
    /// Depth of a revision's activator queue from which a parking HTTP/1.1 request calls it.
    pub from_depth: usize,
}

impl MemoryRelease {
    /// Default depth: below it, waiting connections keep at most 1 MiB of such pages per revision.
    pub const FROM_DEPTH: usize = 256;

    /// `release`, from the default depth.
    pub fn new(release: fn()) -> Self {
        Self { release, from_depth: Self::FROM_DEPTH }
    }
}

impl GatewayConfig {
    /// Defaults for a single-node gateway named `node`.
    pub fn single(node: &str) -> Self {
        Self {
            nodes: vec![node.to_owned()],
            node: 0,
            domain: "example.com".into(),
            queue_depth: 10_000,
            max_header_bytes: 64 * 1024,
            max_body_bytes: 64 * 1024 * 1024,
            policy: PolicyParams::default(),
            links: vec![None],
            rtt: RttMatrix::new(1, 0.0, Duration::from_secs(30)),
            memory_release: None,
            answer_poll: answer_poll::DEFAULT_BUDGET,
        }
    }
}

/// Where a service's traffic goes.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteTarget {
    /// Revision name.
    pub revision: String,
    /// Share in percent.
    pub percent: u32,
    /// Tag, reachable at `TAG-SVC.NS…`.
    pub tag: Option<String>,
}

/// A routable service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRoute {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Traffic split (percent sums to 100; tag-only targets may have 0).
    pub traffic: Vec<RouteTarget>,
}

/// An instance a revision can send to.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRoute {
    /// Unique instance name.
    pub name: String,
    /// Node index.
    pub node: NodeIndex,
    /// Its queue proxy.
    pub addr: SocketAddr,
}

/// A revision and its ready instances.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionRoute {
    /// Namespace.
    pub namespace: String,
    /// Service.
    pub service: String,
    /// Revision name.
    pub revision: String,
    /// containerConcurrency (0 = unlimited).
    pub container_concurrency: u32,
    /// Autoscaler target per instance (balancers use it as a soft limit).
    pub target_concurrency: f64,
    /// Request timeout.
    pub timeout: Duration,
    /// Balancer name.
    pub balancer: String,
    /// Queue discipline of the activator queue.
    pub queue: String,
    /// Rules for the `priority` discipline.
    pub priority_rules: Vec<PriorityRule>,
    /// Ready instances.
    pub instances: Vec<InstanceRoute>,
    /// Why the revision cannot start, if it failed: with no instance, requests for it are
    /// answered at once with this rather than wait for the request timeout.
    pub failure: Option<String>,
}

/// The whole routing table of a gateway.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routes {
    /// Services.
    pub services: Vec<ServiceRoute>,
    /// Revisions.
    pub revisions: Vec<RevisionRoute>,
}

/// What the gateway tells the control plane as it happens.
pub trait GatewayEvents: Send + Sync + 'static {
    /// A request for a revision without instances arrived at `origin`.
    fn demand(&self, namespace: &str, revision: &str, origin: NodeIndex);
}

/// Ignores events.
#[derive(Debug)]
pub struct NoEvents;

impl GatewayEvents for NoEvents {
    fn demand(&self, _: &str, _: &str, _: NodeIndex) {}
}

/// One revision's stats from this gateway, for the autoscaler.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionReport {
    /// Namespace.
    pub namespace: String,
    /// Revision.
    pub revision: String,
    /// Requests that went through the activator queue (Knative's activator stats).
    pub activator: Stat,
    /// All requests that entered at this node (demand by origin).
    pub origin: Stat,
}

/// Invalid routes.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    /// A policy name is not registered.
    #[error("revision {revision}: {source}")]
    Policy {
        /// The revision.
        revision: String,
        /// The error.
        source: UnknownPolicy,
    },
    /// An instance names a node index this gateway does not know.
    #[error(
        "revision {revision}: instance {instance} is on node #{node}, but this gateway knows {known} nodes"
    )]
    UnknownNode {
        /// The revision.
        revision: String,
        /// The instance.
        instance: String,
        /// The node index it named.
        node: NodeIndex,
        /// How many nodes the gateway knows.
        known: usize,
    },
}

struct InstanceState {
    id: u64,
    name: Arc<str>,
    node: NodeIndex,
    /// Its address and the pooled connections to it.
    upstream: Arc<Upstream>,
    in_flight: u32,
    service_ms: PeakEwma,
    /// Send → response headers, as this gateway sees it (how long a slot stays taken).
    held_ms: PeakEwma,
}

struct RevisionInner {
    route: RevisionRoute,
    instances: Vec<InstanceState>,
    scratch: Vec<Candidate>,
    balancer: Box<dyn Balancer>,
    waiting: Box<dyn QueueDiscipline<oneshot::Sender<u64>>>,
}

struct RevisionState {
    labels: RevisionLabels,
    inner: Mutex<RevisionInner>,
    activator: RequestStats,
    origin: RequestStats,
    /// Metric handles, resolved once instead of on every request.
    in_flight_gauge: Gauge,
    buffered_gauge: Gauge,
    buffered_counter: Counter,
    /// A handful of (serving node, code) pairs per revision: a list beats hashing.
    outcomes: OutcomeHandles<Outcome>,
}

/// How a forwarded request ended: serving node and status code.
type Outcome = (Option<NodeIndex>, u16);

/// A traffic target resolved to its revision (`Err` = named revision not routable yet).
type Target = Result<Arc<RevisionState>, String>;

struct ServiceState {
    namespace: String,
    name: String,
    /// (percent, target); percents sum to 100 or the service routes nothing.
    split: Vec<(u32, Target)>,
}

#[derive(Default)]
struct Table {
    /// Host → service, and the tag's target for tagged hosts. Looked up for every request;
    /// foldhash (seeded per map) hashes a host in a fraction of SipHash's time, and the keys
    /// come from configuration, not from clients.
    hosts: foldhash::HashMap<String, (Arc<ServiceState>, Option<Target>)>,
    revisions: HashMap<(String, String), Arc<RevisionState>>,
}

/// The nodes a gateway knows, by index, and how to connect to each. It only grows, so an index
/// stays valid for the gateway's life.
struct NodeSet {
    names: Vec<String>,
    connectors: Vec<NodeConnector>,
}

struct Shared {
    config: GatewayConfig,
    table: RwLock<Table>,
    rtt: RwLock<RttMatrix>,
    nodes: RwLock<NodeSet>,
    events: Arc<dyn GatewayEvents>,
    metrics: GatewayMetrics,
    registry: Registry,
    rng: Mutex<SmallRng>,
    ids: AtomicU64,
    instance_ids: Mutex<HashMap<String, u64>>,
    /// This node's name as the origin header's value (`None` if it is not a valid header value).
    origin_value: Option<HeaderValue>,
    /// Sleeps for the request timeout, reused from request to request.
    timers: RecyclingTimer,
    /// Connections that switched protocols, spliced to their instances.
    tunnels: Tunnels,
    /// Shared by all instances' connections.
    answer_poll: Arc<AnswerPoll>,
    /// A routing table was set: until then `/ready` says no (a gateway that takes traffic before
    /// it knows any route would hold or refuse every request).
    routed: AtomicBool,
    /// Stopping: `/ready` says no, so traffic moves elsewhere while what is here finishes.
    draining: AtomicBool,
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    server: ServerHandle,
    admin: ServerHandle,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("node", &self.shared.node_name()).field("addr", &self.addr()).finish()
    }
}

impl Shared {
    fn node_name(&self) -> &str {
        &self.config.nodes[self.config.node]
    }

    fn nodes(&self) -> std::sync::RwLockReadGuard<'_, NodeSet> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner())
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn instance_id(&self, name: &str) -> u64 {
        *Self::lock(&self.instance_ids)
            .entry(name.to_owned())
            .or_insert_with(|| self.ids.fetch_add(1, Ordering::Relaxed))
    }
}

impl Gateway {
    /// Starts a gateway on `listener` (traffic) and `admin` (`/metrics`, `/healthz`). A config
    /// whose per-node lists disagree (nodes, links, RTT matrix, this node's index) is refused with
    /// `InvalidInput`.
    pub fn start(
        config: GatewayConfig,
        listener: TcpListener,
        admin: TcpListener,
        events: Arc<dyn GatewayEvents>,
    ) -> std::io::Result<Self> {
        let n = config.nodes.len();
        if config.links.len() != n || config.rtt.len() != n || config.node >= n {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "gateway config: {n} nodes, {} links, an RTT matrix of {} nodes, and this node at index {}; \
                     the lists must have one entry per node and the index must be one of them",
                    config.links.len(),
                    config.rtt.len(),
                    config.node
                ),
            ));
        }
        let mut registry = Registry::default();
        let metrics = GatewayMetrics::new(&mut registry);
        let nodes = NodeSet {
            names: config.nodes.clone(),
            connectors: config.links.iter().map(|l| NodeConnector::new(l.clone())).collect(),
        };
        let max_header = config.max_header_bytes;
        let origin_value = HeaderValue::from_str(&config.nodes[config.node]).ok();
        let shared = Arc::new(Shared {
            rtt: RwLock::new(config.rtt.clone()),
            rng: Mutex::new(SmallRng::seed_from_u64(config.policy.seed ^ config.node as u64)),
            answer_poll: AnswerPoll::new(config.answer_poll, metrics.answer_polls.clone()),
            config,
            table: RwLock::default(),
            nodes: RwLock::new(nodes),
            events,
            metrics,
            registry,
            ids: AtomicU64::new(1),
            instance_ids: Mutex::default(),
            origin_value,
            timers: RecyclingTimer::default(),
            tunnels: Tunnels::default(),
            routed: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        });
        let server = serve(listener, Arc::new(Ingress(shared.clone())), max_header)?;
        let admin = serve(admin, Arc::new(Admin(shared.clone())), 8192)?;
        Ok(Self { shared, server, admin })
    }

    /// Where traffic goes.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Where `/metrics` and `/healthz` are.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.addr()
    }

    /// The nodes this gateway knows, by index.
    pub fn nodes(&self) -> Vec<String> {
        self.shared.nodes().names.clone()
    }

    /// The index of node `name`, if this gateway knows it.
    pub fn node_index(&self, name: &str) -> Option<NodeIndex> {
        self.shared.nodes().names.iter().position(|n| n == name)
    }

    /// Learns a node that joined (reached directly, no emulated link; RTT prior `prior_ms` until
    /// measured) and returns its index; a known node keeps its index. Nothing in flight is
    /// disturbed: existing indices, connections and estimates stay as they are.
    pub fn add_node(&self, name: &str, prior_ms: f64) -> NodeIndex {
        let mut nodes = self.shared.nodes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = nodes.names.iter().position(|n| n == name) {
            return i;
        }
        nodes.names.push(name.to_owned());
        nodes.connectors.push(NodeConnector::new(None));
        let n = nodes.names.len();
        self.shared.rtt.write().unwrap_or_else(|e| e.into_inner()).grow(n, prior_ms);
        n - 1
    }

    /// Records a measured RTT from this node to `to` (milliseconds).
    pub fn record_rtt(&self, to: NodeIndex, ms: f64) {
        let node = self.shared.config.node;
        let Some(peer) = self.shared.nodes().names.get(to).cloned() else { return };
        let labels = LinkLabels { from: self.shared.node_name().to_owned(), to: peer };
        self.shared.metrics.latency.get_or_create(&labels).set(ms);
        self.shared.rtt.write().unwrap_or_else(|e| e.into_inner()).record(
            node,
            to,
            ms,
            std::time::Instant::now(),
        );
    }

    /// Replaces the routing table. Instances keep their state (in-flight counts, estimates)
    /// across updates; waiting requests are dispatched to new capacity at once.
    pub fn set_routes(&self, routes: &Routes) -> Result<(), RoutesError> {
        let shared = &self.shared;
        let known = shared.nodes().names.len();
        for r in &routes.revisions {
            if let Some(i) = r.instances.iter().find(|i| i.node >= known) {
                return Err(RoutesError::UnknownNode {
                    revision: r.revision.clone(),
                    instance: i.name.clone(),
                    node: i.node,
                    known,
                });
            }
        }
        let mut next = Table::default();
        let old = shared.table.read().unwrap_or_else(|e| e.into_inner());
        for r in &routes.revisions {
            let key = (r.namespace.clone(), r.revision.clone());
            let state = match old.revisions.get(&key) {
                Some(s) => {
                    let mut inner = Shared::lock(&s.inner);
                    if inner.route.balancer != r.balancer {
                        inner.balancer = registry::balancer(&r.balancer, &shared.config.policy)
                            .map_err(|source| RoutesError::Policy { revision: r.revision.clone(), source })?;
                    }
                    let mut previous: HashMap<Arc<str>, InstanceState> =
                        inner.instances.drain(..).map(|i| (i.name.clone(), i)).collect();
                    inner.instances = r
                        .instances
                        .iter()
                        .map(|i| match previous.remove(i.name.as_str()) {
                            Some(mut s) => {
                                if s.upstream.addr() != i.addr || s.node != i.node {
                                    s.upstream = new_upstream(shared, i);
                                }
                                s.node = i.node;
                                s
                            }
                            None => new_instance(shared, i),
                        })
                        .collect();
                    inner.instances.sort_by_key(|i| i.id);
                    inner.route = r.clone();
                    if r.failure.is_some() && inner.instances.is_empty() {
                        // No instance will come: the waiting requests are answered with the failure.
                        while inner.waiting.pop().is_some() {}
                        s.buffered_gauge.set(0);
                    }
                    drop(inner);
                    s.clone()
                }
                None => {
                    let params = PolicyParams {
                        priority_rules: r.priority_rules.clone(),
                        ..shared.config.policy.clone()
                    };
                    let err = |source| RoutesError::Policy { revision: r.revision.clone(), source };
                    let mut instances: Vec<_> = r.instances.iter().map(|i| new_instance(shared, i)).collect();
                    instances.sort_by_key(|i| i.id);
                    let now = std::time::Instant::now();
                    let labels = RevisionLabels {
                        namespace: r.namespace.clone(),
                        service: r.service.clone(),
                        revision: r.revision.clone(),
                    };
                    Arc::new(RevisionState {
                        in_flight_gauge: shared.metrics.in_flight.get_or_create(&labels).clone(),
                        buffered_gauge: shared.metrics.buffered.get_or_create(&labels).clone(),
                        buffered_counter: shared.metrics.buffered_total.get_or_create(&labels).clone(),
                        outcomes: OutcomeHandles::default(),
                        labels,
                        inner: Mutex::new(RevisionInner {
                            route: r.clone(),
                            instances,
                            scratch: Vec::new(),
                            balancer: registry::balancer(&r.balancer, &params).map_err(err)?,
                            waiting: registry::queue(&r.queue, &params).map_err(err)?,
                        }),
                        activator: RequestStats::new(now),
                        origin: RequestStats::new(now),
                    })
                }
            };
            next.revisions.insert(key, state);
        }
        drop(old);
        let domain = &shared.config.domain;
        for s in &routes.services {
            let resolve = |revision: &String| -> Target {
                next.revisions
                    .get(&(s.namespace.clone(), revision.clone()))
                    .cloned()
                    .ok_or_else(|| revision.clone())
            };
            let state = Arc::new(ServiceState {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                split: s
                    .traffic
                    .iter()
                    .filter(|t| t.percent > 0)
                    .map(|t| (t.percent, resolve(&t.revision)))
                    .collect(),
            });
            let tagged: Vec<(String, Target)> =
                s.traffic.iter().filter_map(|t| Some((t.tag.clone()?, resolve(&t.revision)))).collect();
            let base = [
                format!("{}.{}.{domain}", s.name, s.namespace),
                format!("{}.{}", s.name, s.namespace),
                format!("{}.{}.svc", s.name, s.namespace),
                format!("{}.{}.svc.cluster.local", s.name, s.namespace),
            ];
            for host in &base {
                next.hosts.insert(host.clone(), (state.clone(), None));
                for (tag, target) in &tagged {
                    next.hosts.insert(format!("{tag}-{host}"), (state.clone(), Some(target.clone())));
                }
            }
        }
        // Ids of instances no longer routed are forgotten (names are never reused).
        Shared::lock(&shared.instance_ids)
            .retain(|name, _| routes.revisions.iter().any(|r| r.instances.iter().any(|i| &i.name == name)));
        let revisions: Vec<_> = next.revisions.values().cloned().collect();
        *shared.table.write().unwrap_or_else(|e| e.into_inner()) = next;
        for r in revisions {
            dispatch(shared, &r);
        }
        shared.routed.store(true, Ordering::Release);
        Ok(())
    }

    /// Says "not ready" on `/ready` from now on (the gateway is stopping), while it keeps serving.
    pub fn set_draining(&self) {
        self.shared.draining.store(true, Ordering::Release);
    }

    /// Requests waiting in activator queues (for an instance to start or to have room).
    pub fn waiting(&self) -> usize {
        let table = self.shared.table.read().unwrap_or_else(|e| e.into_inner());
        table.revisions.values().map(|r| Shared::lock(&r.inner).waiting.len()).sum()
    }

    /// Cuts this gateway's per-revision stats for the period since the last call.
    pub fn report(&self) -> Vec<RevisionReport> {
        let now = std::time::Instant::now();
        let table = self.shared.table.read().unwrap_or_else(|e| e.into_inner());
        table
            .revisions
            .values()
            .map(|r| RevisionReport {
                namespace: r.labels.namespace.clone(),
                revision: r.labels.revision.clone(),
                activator: r.activator.report(now),
                origin: r.origin.report(now),
            })
            .collect()
    }

    /// Stops accepting, finishes open requests, cuts tunnels (connections that switched
    /// protocols), and returns.
    pub async fn shutdown(self) {
        self.shared.tunnels.close();
        self.server.shutdown().await;
        self.admin.shutdown().await;
    }
}

fn new_upstream(shared: &Shared, i: &InstanceRoute) -> Arc<Upstream> {
    Arc::new(
        Upstream::new(i.addr, shared.nodes().connectors[i.node].clone())
            .with_answer_poll(shared.answer_poll.clone()),
    )
}

fn new_instance(shared: &Shared, i: &InstanceRoute) -> InstanceState {
    InstanceState {
        id: shared.instance_id(&i.name),
        name: i.name.as_str().into(),
        node: i.node,
        upstream: new_upstream(shared, i),
        in_flight: 0,
        service_ms: PeakEwma::new(Duration::from_secs(5)),
        held_ms: PeakEwma::new(Duration::from_secs(5)),
    }
}

/// Builds the balancer's view of the instances.
///
/// A gateway counts a request in flight from sending it to the end of its response, which for an
/// instance across a link includes the round trip; the instance itself is busy only while it
/// processes. So, as seen from this gateway, an instance with containerConcurrency `cc` can have
/// `cc × (1 + RTT / processing time)` requests in flight (its bandwidth-delay product) before it
/// is really full; the queue proxy still enforces `cc` at the instance.
fn fill_candidates(
    out: &mut Vec<Candidate>,
    instances: &[InstanceState],
    capacity: u32,
    rtt_to: impl Fn(NodeIndex) -> f64,
) {
    out.clear();
    out.extend(instances.iter().map(|i| {
        let service_ms = i.service_ms.get();
        let capacity = if capacity == 0 {
            0
        } else {
            let rtt = rtt_to(i.node);
            let in_transit = (f64::from(capacity) * rtt / service_ms.unwrap_or(1.0).max(1.0)).ceil();
            capacity.saturating_add(in_transit.min(f64::from(u32::MAX / 2)) as u32)
        };
        Candidate {
            id: i.id,
            node: i.node,
            in_flight: i.in_flight,
            capacity,
            service_time_ms: service_ms,
            held_ms: i.held_ms.get(),
        }
    }));
}

/// A picked instance: where to send, and who to tell when done.
struct Picked {
    id: u64,
    name: Arc<str>,
    node: NodeIndex,
    upstream: Arc<Upstream>,
}

impl Picked {
    fn of(i: &InstanceState) -> Self {
        Self { id: i.id, name: i.name.clone(), node: i.node, upstream: i.upstream.clone() }
    }
}

fn pick(shared: &Shared, inner: &mut RevisionInner, queued: u32, now: Instant) -> Option<Picked> {
    let RevisionInner { route, instances, scratch, balancer, .. } = inner;
    let rtt = shared.rtt.read().unwrap_or_else(|e| e.into_inner());
    let origin = shared.config.node;
    let std_now = now.into_std();
    fill_candidates(scratch, instances, route.container_concurrency, |node| rtt.get(origin, node, std_now));
    let ctx = PickContext {
        origin: shared.config.node,
        rtt: &rtt,
        now: now.into_std(),
        target_concurrency: route.target_concurrency,
        queued,
    };
    let i = balancer.pick(&ctx, scratch)?;
    // Candidates are built in instance order, so the index is the instance's.
    let inst = &mut instances[i];
    inst.in_flight += 1;
    Some(Picked::of(inst))
}

/// Hands free capacity to waiting requests, in queue order.
fn dispatch(shared: &Shared, rev: &RevisionState) {
    dispatch_locked(shared, rev, &mut Shared::lock(&rev.inner));
}

/// [`dispatch`] with the revision already locked.
fn dispatch_locked(shared: &Shared, rev: &RevisionState, inner: &mut RevisionInner) {
    if inner.waiting.is_empty() {
        return;
    }
    let now = Instant::now();
    while !inner.waiting.is_empty() {
        let Some(p) = pick(shared, inner, 0, now) else { break };
        let mut delivered = false;
        while let Some(waiter) = inner.waiting.pop() {
            if waiter.send(p.id).is_ok() {
                delivered = true;
                break;
            }
        }
        if !delivered {
            // Everyone had given up: undo the reservation.
            if let Some(i) = inner.instances.iter_mut().find(|x| x.id == p.id) {
                i.in_flight = i.in_flight.saturating_sub(1);
            }
        }
    }
    rev.buffered_gauge.set(inner.waiting.len() as i64);
}

/// Finishes a forwarded request however it ends: frees the slot, feeds back, records metrics.
struct Forwarded {
    shared: Arc<Shared>,
    rev: Arc<RevisionState>,
    id: u64,
    node: NodeIndex,
    arrival: Instant,
    buffered: bool,
    code: u16,
    /// Counted among the requests already (a tunnel's `101`, when it was passed on).
    recorded: bool,
}

impl Forwarded {
    /// Counts the request now, as answered at `now` with its `code`, rather than when it ends.
    fn record(&mut self, now: Instant) {
        record_outcome(&self.shared, &self.rev, Some(self.node), self.code, now - self.arrival);
        self.recorded = true;
    }
}

impl Drop for Forwarded {
    fn drop(&mut self) {
        let shared = &self.shared;
        {
            let mut inner = Shared::lock(&self.rev.inner);
            if let Some(i) = inner.instances.iter_mut().find(|x| x.id == self.id) {
                i.in_flight = i.in_flight.saturating_sub(1);
            }
            dispatch_locked(shared, &self.rev, &mut inner);
        }
        let now = Instant::now();
        self.rev.origin.request_out(now.into_std(), false);
        if self.buffered {
            self.rev.activator.request_out(now.into_std(), false);
        }
        self.rev.in_flight_gauge.dec();
        if !self.recorded {
            record_outcome(shared, &self.rev, Some(self.node), self.code, now - self.arrival);
        }
    }
}

/// Counts a finished request and its duration, with cached metric handles.
fn record_outcome(
    shared: &Shared,
    rev: &RevisionState,
    serving: Option<NodeIndex>,
    code: u16,
    elapsed: Duration,
) {
    rev.outcomes.record((serving, code), elapsed.as_secs_f64(), || {
        let labels = request_labels(shared, &rev.labels, serving, code);
        (
            shared.metrics.requests.get_or_create(&labels).clone(),
            shared.metrics.duration.get_or_create(&labels).clone(),
        )
    });
}

fn request_labels(
    shared: &Shared,
    rev: &RevisionLabels,
    serving: Option<NodeIndex>,
    code: u16,
) -> RequestLabels {
    RequestLabels {
        namespace: rev.namespace.clone(),
        service: rev.service.clone(),
        revision: rev.revision.clone(),
        origin_node: shared.node_name().to_owned(),
        serving_node: serving.map_or_else(String::new, |n| shared.nodes().names[n].clone()),
        code,
    }
}

struct Ingress(Arc<Shared>);

/// Counts a request as entered at this node until dropped (covers cancellation while waiting).
struct Entered<'a> {
    rev: &'a RevisionState,
    buffered: bool,
    handed_over: bool,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        if !self.handed_over {
            let now = std::time::Instant::now();
            self.rev.origin.request_out(now, false);
            if self.buffered {
                self.rev.activator.request_out(now, false);
            }
        }
    }
}

impl Ingress {
    fn reject(
        &self,
        status: StatusCode,
        namespace: &str,
        service: &str,
        reason: &'static str,
        message: String,
    ) -> Response<Body> {
        let labels = RejectLabels { namespace: namespace.to_owned(), service: service.to_owned(), reason };
        self.0.metrics.rejected.get_or_create(&labels).inc();
        error_response(status, message)
    }

    fn choose(&self, service: &ServiceState) -> Option<Target> {
        match service.split.as_slice() {
            [] => None,
            [(_, only)] => Some(only.clone()),
            split => {
                let total: u32 = split.iter().map(|(p, _)| p).sum();
                let mut draw = Shared::lock(&self.0.rng).random_range(0..total);
                for (percent, target) in split {
                    if draw < *percent {
                        return Some(target.clone());
                    }
                    draw -= percent;
                }
                None
            }
        }
    }
}

/// The request's host, without port or trailing dot, lowercase (borrowed when already so).
fn host_of<B>(req: &Request<B>) -> Option<std::borrow::Cow<'_, str>> {
    let header = req.headers().get(header::HOST).and_then(|h| host_parts(h.as_bytes()));
    let (host, upper) = header.or_else(|| host_parts(req.uri().host()?.as_bytes()))?;
    Some(if upper {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    })
}

/// A Host value without a numeric port and trailing dots, and whether it holds an uppercase
/// letter; `None` if it is not UTF-8. (A non-ASCII host is looked up like any other, and no
/// service answers to it.) Port and dots are found from the end, without searching the name.
fn host_parts(raw: &[u8]) -> Option<(&str, bool)> {
    let mut end = raw.len();
    let mut digits = end;
    while digits > 0 && raw[digits - 1].is_ascii_digit() {
        digits -= 1;
    }
    if digits > 0 && raw[digits - 1] == b':' {
        end = digits - 1;
    }
    while end > 0 && raw[end - 1] == b'.' {
        end -= 1;
    }
    // Only ASCII was cut off, so the rest is UTF-8 exactly when the whole value is.
    let host = &raw[..end];
    // No early exit, so that it runs over whole vectors.
    let upper = host.iter().fold(false, |upper, b| upper | b.is_ascii_uppercase());
    Some((std::str::from_utf8(host).ok()?, upper))
}

impl Handler for Ingress {
    // Not an `async fn`: that would store the arguments twice in the future, which the
    // connection holds for every request and which lives as long as a request waits. For the same reason values
    // that are gone before an `.await` live in blocks that end before it.
    #[expect(clippy::manual_async_fn, reason = "an async fn stores its arguments twice")]
    fn handle(
        self: Arc<Self>,
        mut req: Request<RequestBody>,
        peer: Arc<Peer>,
    ) -> impl Future<Output = Response<Body>> + Send {
        async move {
            let arrival = Instant::now();
            let shared = &self.0;
            // Locals that are gone before the upstream `.await` live in blocks (or are never
            // named), so that the future does not keep room for them while a request waits.
            let (service, tagged) = {
                let Some(host) = host_of(&req) else {
                    return self.reject(
                        StatusCode::BAD_REQUEST,
                        "",
                        "",
                        "no_route",
                        "request has no Host header".into(),
                    );
                };
                let found =
                    shared.table.read().unwrap_or_else(|e| e.into_inner()).hosts.get(host.as_ref()).cloned();
                let Some(found) = found else {
                    return self.reject(
                        StatusCode::NOT_FOUND,
                        "",
                        "",
                        "no_route",
                        format!("no service answers to host {host:?}"),
                    );
                };
                found
            };
            let (ns, svc) = (service.namespace.as_str(), service.name.as_str());
            let limit = shared.config.max_body_bytes;
            // The declared length, as the server read it (no header lookup).
            if let Some(len) = http_body::Body::size_hint(req.body()).exact()
                && len > limit
            {
                return self.reject(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ns,
                    svc,
                    "too_large",
                    format!("request body of {len} bytes is larger than the {limit}-byte limit"),
                );
            }
            let rev = match tagged.or_else(|| self.choose(&service)) {
                Some(Ok(rev)) => rev,
                Some(Err(revision)) => {
                    return self.reject(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ns,
                        svc,
                        "no_route",
                        format!("revision {revision} of {ns}/{svc} is not ready"),
                    );
                }
                None => {
                    return self.reject(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ns,
                        svc,
                        "no_route",
                        format!("service {ns}/{svc} routes no traffic"),
                    );
                }
            };
            let revision = rev.labels.revision.as_str();

            // One clock reading serves the arrival, the stats, the pick and (for requests that do
            // not wait) the start of the upstream exchange.
            rev.origin.request_in(arrival.into_std(), false);
            // Take an instance now, or wait in the activator queue.
            let timeout;
            let deadline;
            let (picked, buffered) = {
                let mut entered = Entered { rev: &rev, buffered: false, handed_over: false };
                let waiting = {
                    let mut inner = Shared::lock(&rev.inner);
                    timeout = inner.route.timeout;
                    deadline = arrival + timeout;
                    let queued = inner.waiting.len() as u32;
                    match pick(shared, &mut inner, queued, arrival) {
                        Some(p) => Ok(p),
                        None if inner.instances.is_empty() && inner.route.failure.is_some() => {
                            let message = cannot_start(revision, &inner.route);
                            drop(inner);
                            // Still demand: the control plane may try the revision again.
                            shared.events.demand(ns, revision, shared.config.node);
                            return self.reject(StatusCode::SERVICE_UNAVAILABLE, ns, svc, "failed", message);
                        }
                        None => {
                            let depth = shared.config.queue_depth;
                            if inner.waiting.len() >= depth {
                                drop(inner);
                                let message = format!(
                                    "revision {revision} has no capacity and {depth} requests are already waiting"
                                );
                                return self.reject(
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    ns,
                                    svc,
                                    "queue_full",
                                    message,
                                );
                            }
                            Err((
                                enqueue(shared, &rev, &mut inner, &req, peer.addr_text(), arrival, deadline),
                                queued,
                            ))
                        }
                    }
                };
                let picked = match waiting {
                    Ok(p) => p,
                    Err((mut rx, ahead)) => {
                        entered.buffered = true;
                        req = detach_head(req);
                        req.body().release_read_buffer();
                        release_memory(&shared.config, &req, ahead);
                        rev.activator.request_in(std::time::Instant::now(), false);
                        rev.buffered_counter.inc();
                        // Boxed: the wait's timer and channel then take room only in requests that wait.
                        let id = Box::pin(wait_for_instance(shared, &rev, &mut rx, deadline)).await;
                        let (found, failure, none_ready) = {
                            let inner = Shared::lock(&rev.inner);
                            let found =
                                id.and_then(|id| inner.instances.iter().find(|x| x.id == id).map(Picked::of));
                            let failure =
                                inner.route.failure.is_some().then(|| cannot_start(revision, &inner.route));
                            (found, failure, inner.instances.is_empty())
                        };
                        match (found, failure) {
                            (Some(p), _) => p,
                            (None, Some(message)) if none_ready => {
                                return self.reject(
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    ns,
                                    svc,
                                    "failed",
                                    message,
                                );
                            }
                            (None, _) => {
                                drop(rx);
                                dispatch(shared, &rev);
                                let message = if none_ready {
                                    format!(
                                        "no instance of revision {revision} became ready within the {timeout:?} request timeout"
                                    )
                                } else {
                                    format!(
                                        "every instance of revision {revision} stayed busy for the {timeout:?} request timeout"
                                    )
                                };
                                return self.reject(StatusCode::GATEWAY_TIMEOUT, ns, svc, "timeout", message);
                            }
                        }
                    }
                };
                entered.handed_over = true;
                (picked, entered.buffered)
            };
            rev.in_flight_gauge.inc();
            let mut done = Forwarded {
                shared: shared.clone(),
                rev: rev.clone(),
                id: picked.id,
                node: picked.node,
                arrival,
                buffered,
                code: 0,
                recorded: false,
            };

            // In a block: a moved-from local still takes room in the future until its scope ends.
            let (request, client_upgrade) = {
                let (mut parts, body) = req.into_parts();
                let client_upgrade = strip_request(&mut parts);
                let upstream = Request::from_parts(parts, boxed(Limited::new(body, limit)));
                let (ip, origin) = (peer.ip_header(), shared.origin_value.as_ref());
                let upgrade = client_upgrade.is_some();
                (forward(&picked.upstream, upstream, ip, origin, buffered, upgrade), client_upgrade)
            };
            let sent = if buffered { Instant::now() } else { arrival };
            let response = match shared.timers.timeout_at(deadline, request).await {
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    let too_large = std::error::Error::source(&e).is_some_and(is_too_large);
                    let (status, reason, message) = if too_large {
                        (
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "too_large",
                            format!("request body is larger than the {limit}-byte limit"),
                        )
                    } else {
                        (
                            StatusCode::BAD_GATEWAY,
                            "upstream",
                            format!(
                                "instance {} on {} did not answer: {e}",
                                picked.name,
                                shared.nodes().names[picked.node]
                            ),
                        )
                    };
                    done.code = status.as_u16();
                    return self.reject(status, ns, svc, reason, message);
                }
                None => {
                    done.code = 504;
                    return self.reject(
                        StatusCode::GATEWAY_TIMEOUT,
                        ns,
                        svc,
                        "timeout",
                        format!(
                            "instance {} did not answer within the {timeout:?} request timeout",
                            picked.name
                        ),
                    );
                }
            };
            let now = Instant::now();
            let (mut parts, body) = response.into_parts();
            let switched = strip_response(&mut parts, client_upgrade);
            done.code = parts.status.as_u16();
            feedback(shared, &rev, &picked, &parts.headers, now, now - sent, parts.status.is_server_error());
            if let Some((client, upstream)) = switched {
                // Counted as a request now, with the time to its 101 (the tunnel has metrics of
                // its own), and in flight until the tunnel closes.
                done.record(now);
                let meter = shared.metrics.tunnels.meter(&rev.labels);
                shared.tunnels.open(client, upstream, None, done, meter);
                return Response::from_parts(parts, boxed(http_body_util::Empty::new()));
            }
            let body = Guarded::new(body, done);
            Response::from_parts(parts, boxed(body))
        }
    }
}

/// Sends `req` to `to` with the gateway's own headers, written straight into the forwarded head:
/// the origin (`origin`) and proxy (`buffered`) headers replace whatever the client sent under
/// those names; X-Forwarded-For (`ip`) appends; `upgrade` says the request asks to switch
/// protocols. Boxed: the request's future, whose size every waiting request pays, holds a pointer
/// rather than the forward's state.
fn forward<'a>(
    to: &'a Upstream,
    req: Request<Body>,
    ip: &'a HeaderValue,
    origin: Option<&'a HeaderValue>,
    buffered: bool,
    upgrade: bool,
) -> std::pin::Pin<Box<impl Future<Output = Result<Response<PooledBody>, UpstreamError>> + Send + 'a>> {
    Box::pin(async move {
        let mut added = [(&X_FORWARDED_FOR, ip); 3];
        let mut count = 1;
        if let Some(v) = origin {
            added[count] = (&ORIGIN_NAME, v);
            count += 1;
        }
        if buffered {
            added[count] = (&PROXY_NAME, &ACTIVATOR);
            count += 1;
        }
        let forwarding = Forwarding { remove: &[&ORIGIN_NAME, &PROXY_NAME], add: &added[..count], upgrade };
        to.forward(req, forwarding).await
    })
}

/// The answer to a request for a revision that failed to start.
fn cannot_start(revision: &str, route: &RevisionRoute) -> String {
    format!("revision {revision} cannot start: {}", route.failure.as_deref().unwrap_or("it failed"))
}

/// Puts a request that found no instance with room into the revision's activator queue, and
/// tells the control plane about demand at this node if the revision has no instance at all.
fn enqueue(
    shared: &Shared,
    rev: &RevisionState,
    inner: &mut RevisionInner,
    req: &Request<RequestBody>,
    source: &str,
    arrival: Instant,
    deadline: Instant,
) -> oneshot::Receiver<u64> {
    let (tx, rx) = oneshot::channel();
    let headers = HeaderView(req.headers());
    let host = host_of(req).unwrap_or_default();
    let meta = RequestMeta {
        id: shared.ids.fetch_add(1, Ordering::Relaxed),
        source: Some(source),
        host: &host,
        path: req.uri().path(),
        method: req.method().as_str(),
        headers: &headers,
        arrival: arrival.into_std(),
        deadline: Some(deadline.into_std()),
    };
    inner.waiting.push(&meta, tx);
    rev.buffered_gauge.set(inner.waiting.len() as i64);
    if inner.instances.is_empty() {
        let RevisionLabels { namespace, revision, .. } = &rev.labels;
        shared.events.demand(namespace, revision, shared.config.node);
    }
    rx
}

/// Gives freed memory back to the system for an HTTP/1.x request that parks behind `ahead`
/// others (after its head was detached), if the queue is deep enough to be worth the cost.
fn release_memory<B>(config: &GatewayConfig, req: &Request<B>, ahead: u32) {
    if let Some(m) = config.memory_release
        && ahead as usize >= m.from_depth
        && req.version() <= http::Version::HTTP_11
    {
        (m.release)();
    }
}

/// Waits for the activator queue to hand this request an instance (its id), re-dispatching
/// every `RECHECK` in case capacity appeared without a wake-up; `None` at the deadline.
async fn wait_for_instance(
    shared: &Shared,
    rev: &RevisionState,
    rx: &mut oneshot::Receiver<u64>,
    deadline: Instant,
) -> Option<u64> {
    loop {
        let wake = (Instant::now() + RECHECK).min(deadline);
        match timeout_at(wake, &mut *rx).await {
            Ok(Ok(id)) => return Some(id),
            Ok(Err(_)) => return None,
            Err(_) if Instant::now() >= deadline => return None,
            Err(_) => dispatch(shared, rev),
        }
    }
}

fn feedback(
    shared: &Shared,
    rev: &RevisionState,
    picked: &Picked,
    headers: &http::HeaderMap,
    now: Instant,
    latency: Duration,
    failed: bool,
) {
    let number = |v: &HeaderValue| v.to_str().ok().and_then(|v| v.parse::<f64>().ok());
    // One pass over the response's few headers, rather than a hashed lookup per name.
    let (mut service_ms, mut load, mut instance, mut node) = (None, None, false, false);
    for (name, value) in headers {
        match name.as_str() {
            SERVICE_TIME_HEADER => service_ms = number(value),
            LOAD_HEADER => load = number(value).map(|l| l as u32),
            INSTANCE_HEADER => instance = true,
            NODE_HEADER => node = true,
            _ => {}
        }
    }
    let served_by_queue_proxy = instance && node;
    let mut inner = Shared::lock(&rev.inner);
    if !failed && let Some(i) = inner.instances.iter_mut().find(|x| x.id == picked.id) {
        let held = latency.as_secs_f64() * 1e3;
        i.service_ms.observe(now.into_std(), service_ms.unwrap_or(held));
        i.held_ms.observe(now.into_std(), held);
    }
    let done = Completion {
        id: picked.id,
        node: picked.node,
        origin: shared.config.node,
        latency,
        service_time: service_ms
            .filter(|_| served_by_queue_proxy)
            .map(|ms| Duration::from_secs_f64(ms / 1e3)),
        reported_in_flight: load,
        success: !failed,
        now: now.into_std(),
    };
    inner.balancer.observe(&done);
}

struct Admin(Arc<Shared>);

impl Handler for Admin {
    async fn handle(self: Arc<Self>, req: Request<RequestBody>, _peer: Arc<Peer>) -> Response<Body> {
        match req.uri().path() {
            "/metrics" => metrics_response(&self.0.registry),
            "/healthz" => Response::new(full(self.0.node_name().to_owned())),
            "/ready" => {
                if self.0.draining.load(Ordering::Acquire) {
                    error_response(StatusCode::SERVICE_UNAVAILABLE, "draining")
                } else if !self.0.routed.load(Ordering::Acquire) {
                    error_response(StatusCode::SERVICE_UNAVAILABLE, "no routes yet")
                } else {
                    Response::new(full("ready".to_owned()))
                }
            }
            other => error_response(
                StatusCode::NOT_FOUND,
                format!("no such admin path {other:?}; try /metrics, /healthz or /ready"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_config_whose_per_node_lists_disagree_is_refused() {
        let listen = || async { TcpListener::bind("127.0.0.1:0").await.unwrap() };
        let mut config = GatewayConfig::single("node1");
        config.nodes.push("node2".into());
        let err = Gateway::start(config, listen().await, listen().await, Arc::new(NoEvents)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(
            err.to_string().starts_with("gateway config: 2 nodes, 1 links, an RTT matrix of 1 nodes"),
            "{err}"
        );
    }

    fn future_size<F, Fut>(_: F) -> usize
    where
        F: Fn(Arc<Ingress>, Request<RequestBody>, Arc<Peer>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// The connection holds this future for every request, and it lives as long as the request
    /// waits in the activator queue: its size is paid once per buffered request (it was 1,616 bytes
    /// before the arguments stopped being stored twice and the forwarding temporaries moved into
    /// blocks; 552 with rustc 1.95). 6518465 moved the request's parts out of their block, and
    /// the future grew to 784 bytes (2.3 MiB more for 10 000 waiting requests) until they went
    /// back into it (`-Zprint-type-sizes` showed the moved-from `parts` stored across the
    /// forward's `.await`).
    #[test]
    fn the_request_future_stays_small() {
        let size = future_size(<Ingress as Handler>::handle);
        assert!(size <= 600, "the gateway's request future grew to {size} bytes");
    }

    #[test]
    fn hosts_lose_port_and_trailing_dots_and_are_lowercased() {
        // What the gateway did with `str` methods before `host_parts`: the reference.
        fn reference(raw: &str) -> String {
            let host = match raw.rsplit_once(':') {
                Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
                _ => raw,
            };
            host.trim_end_matches('.').to_ascii_lowercase()
        }
        let cases = [
            "hello.default.example.com",
            "Hello.Default.Example.COM:8080",
            "hello.default.:80",
            "hello.default..",
            "hello:",
            "hello:8a",
            "Hello:X",
            "[::1]:8080",
            "[::1]",
            "127.0.0.1:19101",
            ":80",
            "",
            "a\tb",
            "Café.default:80",
        ];
        for raw in cases {
            let req = Request::builder().header(header::HOST, raw).body(()).unwrap();
            assert_eq!(host_of(&req).as_deref(), Some(reference(raw).as_str()), "{raw:?}");
            let already_lower = raw == raw.to_ascii_lowercase();
            assert_eq!(
                matches!(host_of(&req), Some(std::borrow::Cow::Borrowed(_))),
                already_lower,
                "{raw:?} allocates only when it has uppercase"
            );
        }
        // Not UTF-8: the URI's host instead, else nothing.
        let bad = HeaderValue::from_bytes(b"caf\xe9.default").unwrap();
        let req = Request::builder()
            .uri("http://Hello.Default/")
            .header(header::HOST, bad.clone())
            .body(())
            .unwrap();
        assert_eq!(host_of(&req).as_deref(), Some("hello.default"));
        let req = Request::builder().header(header::HOST, bad).body(()).unwrap();
        assert_eq!(host_of(&req), None);
        let req = Request::builder().uri("/").body(()).unwrap();
        assert_eq!(host_of(&req), None);
    }
}
