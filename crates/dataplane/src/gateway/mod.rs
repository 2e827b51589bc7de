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
//! instance (`tunnels`), one request in flight until it closes.
//!
//! Its parts: `routes` (the routing table the control plane sets), `hosts` (the name a request is
//! routed by), `activator` (the pick, and the queue for requests no instance can take yet) and
//! `ingress` (the request handler's phases — route, admit, forward — and the drop guards that
//! account for every request), `latency` (the RTTs it measured, its network coordinate and its
//! probe plan, which [`crate::monitor`] carries out).

mod activator;
mod hosts;
mod ingress;
mod latency;
mod routes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};
use ikukantai_http::body::{Body, error_response, full};
use ikukantai_http::h1::{Handler, RequestBody};
use ikukantai_http::peer::Peer;
use ikukantai_http::server::{ServerConfig, ServerHandle, serve, serve_with};
use ikukantai_link::connect::NodeConnector;
use ikukantai_policy::autoscaler::Stat;
use ikukantai_policy::estimate::{NodeIndex, RttMatrix, VivaldiParams};
use ikukantai_policy::probe::ProbeParams;
use ikukantai_policy::registry::{PolicyParams, UnknownPolicy};
use parking_lot::{Mutex, RwLock};
use prometheus_client::registry::Registry;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::defaults::{GATEWAY_QUEUE_DEPTH, MAX_BODY_BYTES, MAX_HEADER_BYTES};
pub use crate::edge::EdgePolicy;
use crate::headers::COORDINATE_NAME;
use crate::metrics::{GatewayMetrics, metrics_response};
use crate::recycling_timer::RecyclingTimer;
use crate::tunnels::Tunnels;
use activator::dispatch;
use ingress::Ingress;
use latency::Latency;
pub use latency::{Links, Recorded};
use routes::Table;
pub use routes::{InstanceRoute, RevisionRoute, RouteTarget, Routes, ServiceRoute};

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
    /// How the other nodes are reached: directly, or through emulated links made on first use.
    pub links: Links,
    /// RTT priors (measurements replace them while fresh).
    pub rtt: RttMatrix,
    /// Which peers to probe, how many and how often ([`crate::monitor`]).
    pub probe: ProbeParams,
    /// Tuning of this node's network coordinate.
    pub vivaldi: VivaldiParams,
    /// Giving memory back to the operating system while many requests wait (`None`: never).
    pub memory_release: Option<MemoryRelease>,
    /// What the gateway believes of clients and lets through ([`EdgePolicy`]'s defaults: upgrades
    /// to `websocket` only, no trusted proxy, no internal response headers, tunnels cut after
    /// 5 min without a byte).
    pub edge: EdgePolicy,
    /// Most client connections open at once; one more is answered 503 and closed. The default,
    /// a quarter of the open-files limit, leaves room for upstream connections.
    pub max_connections: usize,
}

/// How a gateway gives memory back to the operating system while many HTTP/1.1 requests wait.
///
/// A request head is read into an 8 KiB buffer; a waiting request's head is copied out of it
/// ([`detach_head`](ikukantai_http::proxy::detach_head)) and its connection lets go of the buffer
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
            domain: ikukantai_api::config::DEFAULT_DOMAIN.into(),
            queue_depth: GATEWAY_QUEUE_DEPTH,
            max_header_bytes: MAX_HEADER_BYTES,
            max_body_bytes: MAX_BODY_BYTES,
            policy: PolicyParams::default(),
            links: Links::Direct,
            rtt: RttMatrix::new(1, 0.0, Duration::from_secs(30)),
            probe: ProbeParams::default(),
            vivaldi: VivaldiParams::default(),
            memory_release: None,
            edge: EdgePolicy::default(),
            max_connections: ikukantai_http::server::default_max_connections(),
        }
    }
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
    #[error("revision {revision}")]
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

/// The nodes a gateway knows, by index, and how to connect to each (made when routes first
/// name the node). It only grows, so an index stays valid for the gateway's life.
struct NodeSet {
    names: Vec<String>,
    connectors: Vec<Option<NodeConnector>>,
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
    /// A routing table was set: until then `/ready` says no (a gateway that takes traffic before
    /// it knows any route would hold or refuse every request).
    routed: AtomicBool,
    /// Stopping: `/ready` says no, so traffic moves elsewhere while what is here finishes.
    draining: AtomicBool,
    /// Its coordinate and probe plan.
    latency: Mutex<Latency>,
    /// Set when the routes change (the monitor measures newly routed nodes at once).
    routes_changed: Notify,
    /// Tells apart the links made for single probes.
    probe_salt: AtomicU64,
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

    fn nodes(&self) -> parking_lot::RwLockReadGuard<'_, NodeSet> {
        self.nodes.read()
    }

    /// The connector of `node` for upstream connections, made on first use.
    fn route_connector(&self, node: NodeIndex) -> NodeConnector {
        if let Some(c) = self.nodes().connectors.get(node).and_then(Option::as_ref) {
            return c.clone();
        }
        let mut nodes = self.nodes.write();
        if nodes.connectors.len() <= node {
            nodes.connectors.resize(node + 1, None);
        }
        nodes.connectors[node]
            .get_or_insert_with(|| NodeConnector::new(self.config.links.make(node, 0)))
            .clone()
    }

    fn probes_made(&self) -> u64 {
        self.probe_salt.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn instance_id(&self, name: &str) -> u64 {
        *self
            .instance_ids
            .lock()
            .entry(name.to_owned())
            .or_insert_with(|| self.ids.fetch_add(1, Ordering::Relaxed))
    }
}

impl Gateway {
    /// Starts a gateway on `listener` (traffic) and `admin` (`/metrics`, `/healthz`). A config
    /// whose per-node lists disagree (nodes, RTT matrix, this node's index) is refused with
    /// `InvalidInput`.
    pub fn start(
        config: GatewayConfig,
        listener: TcpListener,
        admin: TcpListener,
        events: Arc<dyn GatewayEvents>,
    ) -> std::io::Result<Self> {
        let n = config.nodes.len();
        if config.rtt.len() != n || config.node >= n {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "gateway config: {n} nodes, an RTT matrix of {} nodes, and this node at index {}; \
                     the matrix must have one row per node and the index must be one of them",
                    config.rtt.len(),
                    config.node
                ),
            ));
        }
        let mut registry = Registry::default();
        let metrics = GatewayMetrics::new(&mut registry);
        let nodes = NodeSet { names: config.nodes.clone(), connectors: vec![None; n] };
        let max_header = config.max_header_bytes;
        let origin_value = HeaderValue::from_str(&config.nodes[config.node]).ok();
        let shared = Arc::new(Shared {
            rtt: RwLock::new(config.rtt.clone()),
            rng: Mutex::new(SmallRng::seed_from_u64(config.policy.seed ^ config.node as u64)),
            latency: Mutex::new(Latency::new(config.node, config.probe, config.vivaldi, config.policy.seed)),
            routes_changed: Notify::new(),
            probe_salt: AtomicU64::new(0),
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
        let limits =
            ServerConfig { max_header_bytes: max_header, max_connections: shared.config.max_connections };
        let server = serve_with(listener, Arc::new(Ingress(shared.clone())), limits)?;
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

    /// Learns a node that joined (reached as the config's `links` say: directly on Kubernetes;
    /// RTT prior `prior_ms` until measured) and returns its index; a known node keeps its index.
    /// Nothing in flight is disturbed: existing indices, connections and estimates stay as they
    /// are.
    pub fn add_node(&self, name: &str, prior_ms: f64) -> NodeIndex {
        let mut nodes = self.shared.nodes.write();
        if let Some(i) = nodes.names.iter().position(|n| n == name) {
            return i;
        }
        nodes.names.push(name.to_owned());
        nodes.connectors.push(None);
        let n = nodes.names.len();
        self.shared.rtt.write().grow(n, prior_ms);
        n - 1
    }

    /// Replaces the routing table. Instances keep their state (in-flight counts, estimates)
    /// across updates; waiting requests are dispatched to new capacity at once.
    pub fn set_routes(&self, routes: &Routes) -> Result<(), RoutesError> {
        let shared = &self.shared;
        let next = Table::build(shared, routes)?;
        // Ids of instances no longer routed are forgotten (names are never reused).
        shared
            .instance_ids
            .lock()
            .retain(|name, _| routes.revisions.iter().any(|r| r.instances.iter().any(|i| &i.name == name)));
        let revisions: Vec<_> = next.revisions.values().cloned().collect();
        *shared.table.write() = next;
        for r in revisions {
            dispatch(shared, &r);
        }
        shared.routed.store(true, Ordering::Release);
        if self.routes_moved() {
            shared.routes_changed.notify_one();
        }
        Ok(())
    }

    /// Says "not ready" on `/ready` from now on (the gateway is stopping), while it keeps serving.
    pub fn set_draining(&self) {
        self.shared.draining.store(true, Ordering::Release);
    }

    /// Requests waiting in activator queues (for an instance to start or to have room).
    pub fn waiting(&self) -> usize {
        let table = self.shared.table.read();
        table.revisions.values().map(|r| r.inner.lock().waiting.len()).sum()
    }

    /// Cuts this gateway's per-revision stats for the period since the last call, and returns
    /// those of the revisions that had requests in it. Every revision's counters are cut, so a
    /// period always runs from one call to the next; the rest report zero, which both control
    /// planes take as the default (a fleet with thousands of idle revisions allocates nothing for
    /// them here, each second).
    pub fn report(&self) -> Vec<RevisionReport> {
        let now = std::time::Instant::now();
        let busy = |s: &Stat| s.concurrency > 0.0 || s.requests > 0.0;
        let table = self.shared.table.read();
        table
            .revisions
            .values()
            .filter_map(|r| {
                let (activator, origin) = (r.activator.report(now), r.origin.report(now));
                (busy(&activator) || busy(&origin)).then(|| RevisionReport {
                    namespace: r.labels.namespace.clone(),
                    revision: r.labels.revision.clone(),
                    activator,
                    origin,
                })
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

struct Admin(Arc<Shared>);

impl Handler for Admin {
    async fn handle(self: Arc<Self>, req: Request<RequestBody>, _peer: Arc<Peer>) -> Response<Body> {
        match req.uri().path() {
            "/metrics" => metrics_response(&self.0.registry),
            "/healthz" => {
                // The coordinate goes with the answer to a probe, as Serf's does with its acks.
                let mut resp = Response::new(full(self.0.node_name().to_owned()));
                if let Some(c) = self.0.coordinate_header() {
                    resp.headers_mut().insert(COORDINATE_NAME.clone(), c);
                }
                resp
            }
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
    use ikukantai_http::h1::RequestBody;
    use tokio::time::Instant;

    /// A gateway routing `hello` to one instance with containerConcurrency 1 (never sent to).
    async fn one_slot() -> (Gateway, Arc<routes::RevisionState>) {
        let listen = || async { TcpListener::bind("127.0.0.1:0").await.unwrap() };
        let gw = Gateway::start(
            GatewayConfig::single("node1"),
            listen().await,
            listen().await,
            Arc::new(NoEvents),
        )
        .unwrap();
        let revision = RevisionRoute {
            namespace: "default".into(),
            service: "hello".into(),
            revision: "hello-00001".into(),
            container_concurrency: 1,
            target_concurrency: 1.0,
            timeout: Duration::from_secs(30),
            balancer: "even".into(),
            queue: "fifo".into(),
            priority_rules: Vec::new(),
            instances: vec![InstanceRoute {
                name: "a".into(),
                node: 0,
                addr: "127.0.0.1:9".parse().unwrap(),
            }],
            failure: None,
        };
        let traffic = vec![RouteTarget { revision: "hello-00001".into(), percent: 100, tag: None }];
        let service = ServiceRoute { namespace: "default".into(), name: "hello".into(), traffic };
        gw.set_routes(&Routes { services: vec![service], revisions: vec![revision] }).unwrap();
        let rev = gw.shared.table.read().revisions.values().next().unwrap().clone();
        (gw, rev)
    }

    fn request() -> Request<RequestBody> {
        Request::get("/").header("host", "hello.default").body(RequestBody::empty()).unwrap()
    }

    /// The instance's slot is taken; a waiter queues; the slot is freed and dispatched to the
    /// waiter. Returns the waiter, holding the reservation.
    fn dispatched_to_a_waiter<'a>(
        gw: &'a Gateway,
        rev: &'a routes::RevisionState,
        waiters: usize,
    ) -> Vec<activator::Waiter<'a>> {
        let shared = &gw.shared;
        let now = Instant::now();
        let mut inner = rev.inner.lock();
        assert!(activator::pick(shared, &mut inner, Some(0), now).is_some());
        let req = request();
        let queued: Vec<_> = (0..waiters)
            .map(|_| {
                activator::enqueue(
                    shared,
                    rev,
                    &mut inner,
                    &req,
                    "client",
                    now,
                    now + Duration::from_secs(30),
                )
            })
            .collect();
        // The request in flight ends: its slot goes to the first waiter at once.
        inner.instances[0].load.in_flight -= 1;
        activator::dispatch_locked(shared, rev, &mut inner);
        assert_eq!(inner.instances[0].load.in_flight, 1, "reserved for the waiter");
        queued
    }

    fn in_flight(rev: &routes::RevisionState) -> (u32, usize) {
        let inner = rev.inner.lock();
        (inner.instances[0].load.in_flight, inner.waiting.len())
    }

    #[tokio::test]
    async fn a_waiter_that_goes_as_it_is_dispatched_to_gives_its_instance_back() {
        let (gw, rev) = one_slot().await;
        let mut waiters = dispatched_to_a_waiter(&gw, &rev, 1);
        // The client went away (or its timeout ended) just as the instance was handed to it.
        drop(waiters.pop());
        assert_eq!(in_flight(&rev), (0, 0), "the reservation leaked");
    }

    #[tokio::test]
    async fn an_instance_given_back_goes_to_the_next_waiter() {
        let (gw, rev) = one_slot().await;
        let mut waiters = dispatched_to_a_waiter(&gw, &rev, 2);
        let second = waiters.pop().unwrap();
        drop(waiters.pop());
        assert_eq!(in_flight(&rev), (1, 0), "passed on, not freed");
        let mut second = second;
        let id = activator::wait_for_instance(&mut second, Instant::now() + Duration::from_secs(1)).await;
        assert!(id.is_some(), "the second waiter got the instance");
        second.taken();
        assert_eq!(in_flight(&rev), (1, 0));
    }

    #[tokio::test]
    async fn a_config_whose_per_node_lists_disagree_is_refused() {
        let listen = || async { TcpListener::bind("127.0.0.1:0").await.unwrap() };
        let mut config = GatewayConfig::single("node1");
        config.nodes.push("node2".into());
        let err = Gateway::start(config, listen().await, listen().await, Arc::new(NoEvents)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().starts_with("gateway config: 2 nodes, an RTT matrix of 1 nodes"), "{err}");
    }
}
