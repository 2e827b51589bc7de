//! `ikukantai gateway`: the per-node gateway on Kubernetes (a DaemonSet). It is the data plane's
//! [`Gateway`], fed by watches instead of the local control plane: the routing table from the
//! ServiceRoutes the controller publishes (traffic, revision settings, ready instances by Pod IP
//! and node), node names from metadata-only Node watches, peers from the gateways' own
//! EndpointSlices. It reads no Pod, Knative Service or Placement: their specs carry tenants'
//! environment. It measures the RTT to its peer gateways (monlat), and pushes activator/origin
//! load, RTTs and demand at zero to the controller.
//!
//! Ready (`/ready` on the admin port) only once it has routes; on SIGTERM it turns unready,
//! keeps routing while requests wait in its activator queues, then stops accepting and finishes
//! what is open ([`drain`]).

mod view;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use ikukantai_api::config::FleetConfig;
use ikukantai_dataplane::gateway::{Gateway, GatewayConfig, GatewayEvents, Links, MemoryRelease};
use ikukantai_dataplane::monitor::{self, Measurement, Peer};
use ikukantai_policy::estimate::RttMatrix;
use ikukantai_policy::probe::ProbeParams;
use ikukantai_policy::registry::PolicyParams;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;
pub use view::{ClusterView, peers, routes};

use crate::ProcessError;
use crate::crd::{MANAGED_BY, MANAGED_BY_LABEL, ServiceRoute};
use crate::manager::fleet_config;
use crate::wire::{DEMAND_PATH, Demand, GatewayReport, Pusher, REPORT_PATH, RevisionLoad};

/// The RTT assumed between two nodes until the monitor measured it (ms): in-cluster links are
/// fast until proven otherwise.
const PRIOR_RTT_MS: f64 = 1.0;

/// Options of `ikukantai gateway`.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// This node's name.
    pub node: String,
    /// Traffic listener.
    pub listen: SocketAddr,
    /// Admin listener (`/metrics`, `/healthz`, `/ready`); peers probe it.
    pub admin: SocketAddr,
    /// Namespace of the gateways and ConfigMaps.
    pub system_namespace: String,
    /// Label selector of the gateways' EndpointSlices (to find peers).
    pub peer_selector: String,
    /// Where to push reports and demand.
    pub controller_url: String,
    /// How the gateway gives memory back to the system while many requests wait.
    pub memory_release: Option<MemoryRelease>,
    /// The gateway's policy towards clients (`ikukantai gateway`'s flags).
    pub edge: ikukantai_dataplane::gateway::EdgePolicy,
    /// The projected token that authenticates its pushes ([`crate::auth`]).
    pub token_file: Option<std::path::PathBuf>,
}

/// Pushes demand at zero to the controller (revision → service from the routes), at most once a
/// second per revision: every request buffered at zero reports demand, one push is enough.
struct DemandPusher {
    pusher: Pusher,
    node: String,
    services: Arc<RwLock<HashMap<(String, String), String>>>,
    last: Mutex<HashMap<(String, String), std::time::Instant>>,
}

/// True (and remembered) if `key` was not seen in the last second.
fn first_in_a_second(
    last: &Mutex<HashMap<(String, String), std::time::Instant>>,
    key: &(String, String),
    now: std::time::Instant,
) -> bool {
    let mut last = last.lock();
    if last.get(key).is_some_and(|t| now.saturating_duration_since(*t) < Duration::from_secs(1)) {
        return false;
    }
    last.insert(key.clone(), now);
    true
}

impl GatewayEvents for DemandPusher {
    fn demand(&self, namespace: &str, revision: &str, _origin: usize) {
        let key = (namespace.to_owned(), revision.to_owned());
        if !first_in_a_second(&self.last, &key, std::time::Instant::now()) {
            return;
        }
        let service = self.services.read().get(&key).cloned().unwrap_or_default();
        let msg = Demand {
            namespace: namespace.into(),
            service,
            revision: revision.into(),
            node: self.node.clone(),
        };
        let pusher = self.pusher.clone();
        tokio::spawn(async move {
            if let Err(e) = pusher.push(DEMAND_PATH, &msg).await {
                tracing::warn!(error = %e, "demand not delivered; the controller's next tick will scale up");
            }
        });
    }
}

/// How often unchanged RTTs are reported again (the controller lets a sample go after 30 s).
const RTT_RESEND: Duration = Duration::from_secs(10);

/// The RTTs last reported, and when.
#[derive(Debug, Default)]
struct SentRtts {
    rtt_ms: BTreeMap<String, f64>,
    at: Option<std::time::Instant>,
}

/// The report worth sending this second, if any: the revisions with load, and the RTTs when they
/// changed or were last sent [`RTT_RESEND`] ago. A gateway of a quiet node pushes a few RTTs
/// every 10 s instead of every revision and every peer each second.
fn report_to_send(
    node: &str,
    loads: Vec<RevisionLoad>,
    rtt_ms: BTreeMap<String, f64>,
    sent: &mut SentRtts,
    now: std::time::Instant,
) -> Option<GatewayReport> {
    let busy = |s: &crate::wire::WireStat| s.concurrency > 0.0 || s.requests > 0.0;
    let revisions: Vec<RevisionLoad> =
        loads.into_iter().filter(|l| busy(&l.activator) || busy(&l.origin)).collect();
    let stale = sent.at.is_none_or(|t| now.saturating_duration_since(t) >= RTT_RESEND);
    let rtt_ms = if rtt_ms != sent.rtt_ms || stale {
        sent.rtt_ms.clone_from(&rtt_ms);
        sent.at = Some(now);
        rtt_ms
    } else {
        BTreeMap::new()
    };
    (!revisions.is_empty() || !rtt_ms.is_empty()).then(|| GatewayReport {
        node: node.to_owned(),
        revisions,
        rtt_ms,
        coordinate: None,
    })
}

/// Runs the gateway's latency monitor, the local fleet's too (`ikukantai_dataplane::monitor`),
/// over the peer gateways `peers` lists (`(node, admin address)`; nodes the gateway does not know
/// yet are left out): at most the planner's budget of probes an interval, spread over it. Results
/// go to the gateway (balancers, `latency_between_nodes`, its coordinate) and to `rtt_ms`
/// (reported to the controller); a peer that does not answer costs its own probe only.
pub async fn probe_peers(
    gateway: Arc<Gateway>,
    peers: impl Fn() -> Vec<(String, SocketAddr)> + Send + 'static,
    rtt_ms: Arc<RwLock<BTreeMap<String, f64>>>,
) {
    let names = gateway.clone();
    let known = move || {
        peers()
            .into_iter()
            .filter_map(|(node, admin)| Some(Peer { node: names.node_index(&node)?, admin }))
            .collect()
    };
    let names = gateway.clone();
    let record = move |m: &Measurement| {
        if let Some(name) = names.node_name(m.to) {
            rtt_ms.write().insert(name, m.rtt_ms);
        }
    };
    monitor::run(gateway, known, record).await;
}

/// Logs a watch's errors: it retries with backoff, and until it lists the gateway is not ready.
fn logged<T, S>(what: &'static str, stream: S) -> impl futures_util::Stream<Item = Result<T, watcher::Error>>
where
    S: futures_util::Stream<Item = Result<T, watcher::Error>>,
{
    stream.inspect(move |r| {
        if let Err(e) = r {
            tracing::error!(watch = what, error = %e, "watch failed; retrying (check RBAC and that the CRDs match this version)");
        }
    })
}

/// Stops a gateway the way a rolling update needs (the kubelet ran the preStop sleep first, so
/// endpoints have stopped sending here): unready at once; routes kept up to date by `routing`
/// while requests wait in activator queues (they wait for instances that start elsewhere);
/// then no new connections, and the open ones finished.
pub async fn drain(gateway: Arc<Gateway>, routing: impl Future<Output = ()>) {
    gateway.set_draining();
    {
        let waiting = async {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while gateway.waiting() > 0 {
                tick.tick().await;
            }
        };
        tokio::pin!(routing);
        tokio::select! {
            () = &mut routing => {}
            () = waiting => {}
        }
    } // `routing` (and its share of the gateway) ends here.
    match Arc::try_unwrap(gateway) {
        Ok(gateway) => gateway.shutdown().await,
        Err(_) => tracing::error!("the gateway is still shared; open connections are cut"),
    }
}

/// Runs the gateway until SIGTERM/Ctrl-C, then drains it.
pub async fn run(options: GatewayOptions) -> Result<(), ProcessError> {
    run_with(Client::try_default().await?, options).await
}

/// [`run`] with this client (the tests': a fake API server).
pub async fn run_with(client: Client, options: GatewayOptions) -> Result<(), ProcessError> {
    let node_api = Api::<PartialObjectMeta<Node>>::all(client.clone());
    let mut nodes: Vec<String> =
        node_api.list(&Default::default()).await?.items.iter().map(ResourceExt::name_any).collect();
    nodes.sort();
    let me = nodes
        .iter()
        .position(|n| *n == options.node)
        .ok_or_else(|| ProcessError::UnknownNode(options.node.clone()))?;
    let configs_api = Api::<ConfigMap>::namespaced(client.clone(), &options.system_namespace);
    let initial: Vec<ConfigMap> = configs_api.list(&Default::default()).await?.items;
    let config = fleet_config(&initial).unwrap_or_else(|message| {
        tracing::error!(%message, "configuration rejected; using defaults");
        FleetConfig::new()
    });
    let n = nodes.len();
    let gateway_config = GatewayConfig {
        nodes,
        node: me,
        domain: config.domain.clone(),
        links: Links::Direct,
        rtt: RttMatrix::new(n, PRIOR_RTT_MS, Duration::from_secs(30)),
        probe: ProbeParams { interval: config.kubernetes.probe_interval, ..ProbeParams::default() },
        policy: PolicyParams::default(),
        memory_release: options.memory_release,
        edge: options.edge,
        ..GatewayConfig::single(&options.node)
    };
    let listen = |addr: SocketAddr| async move {
        TcpListener::bind(addr).await.map_err(|source| ProcessError::Listen { addr, source })
    };
    let services_by_revision: Arc<RwLock<HashMap<(String, String), String>>> = Arc::default();
    let pusher = match &options.token_file {
        Some(path) => Pusher::new(&options.controller_url).with_token_file(path),
        None => Pusher::new(&options.controller_url),
    };
    let events = Arc::new(DemandPusher {
        pusher: pusher.clone(),
        node: options.node.clone(),
        services: services_by_revision.clone(),
        last: Mutex::default(),
    });
    let gateway = Arc::new(
        Gateway::start(gateway_config, listen(options.listen).await?, listen(options.admin).await?, events)
            .map_err(|source| ProcessError::Listen { addr: options.listen, source })?,
    );
    tracing::info!(node = %options.node, addr = %gateway.addr(), admin = %gateway.admin_addr(), "gateway serving; ready once it has routes");

    // Watches feed stores; any change wakes the route builder.
    let changed = Arc::new(Notify::new());
    let managed = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let (route_store, route_writer) = reflector::store::<ServiceRoute>();
    let (cm_store, cm_writer) = reflector::store::<ConfigMap>();
    let (peer_store, peer_writer) = reflector::store::<EndpointSlice>();
    let (node_store, node_writer) = reflector::store::<PartialObjectMeta<Node>>();
    macro_rules! drive {
        ($what:expr, $api:expr, $cfg:expr, $writer:expr) => {{
            let changed = changed.clone();
            tokio::spawn(logged($what, watcher($api, $cfg)).default_backoff().reflect($writer).for_each(
                move |_| {
                    changed.notify_one();
                    std::future::ready(())
                },
            ));
        }};
    }
    drive!("serviceroutes", Api::<ServiceRoute>::all(client.clone()), managed, route_writer);
    drive!("configmaps", configs_api.clone(), watcher::Config::default(), cm_writer);
    drive!(
        "endpointslices",
        Api::<EndpointSlice>::namespaced(client.clone(), &options.system_namespace),
        watcher::Config::default().labels(&options.peer_selector),
        peer_writer
    );
    drive!("nodes", node_api, watcher::Config::default(), node_writer);

    // Latency monitor: probe the peer gateways' admin ports as the planner says.
    let rtt_ms: Arc<RwLock<BTreeMap<String, f64>>> = Arc::default();
    let probes = {
        let me = options.node.clone();
        let admin_port = options.admin.port();
        let listed = move || peers(&peer_store.state(), &me, admin_port);
        tokio::spawn(probe_peers(gateway.clone(), listed, rtt_ms.clone()))
    };

    // Reports to the controller, every second when there is something to say.
    let reports = {
        let (gateway, rtt_ms, node) = (gateway.clone(), rtt_ms.clone(), options.node.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut sent = SentRtts::default();
            loop {
                tick.tick().await;
                let loads = gateway
                    .report()
                    .into_iter()
                    .map(|r| RevisionLoad {
                        namespace: r.namespace,
                        revision: r.revision,
                        activator: r.activator.into(),
                        origin: r.origin.into(),
                    })
                    .collect();
                let rtt_ms = rtt_ms.read().clone();
                let now = std::time::Instant::now();
                let Some(mut report) = report_to_send(&node, loads, rtt_ms, &mut sent, now) else {
                    continue;
                };
                // The coordinate goes with the RTTs, for placement's estimates of the rest.
                if !report.rtt_ms.is_empty() {
                    report.coordinate = Some(gateway.coordinate().to_string());
                }
                if let Err(e) = pusher.push(REPORT_PATH, &report).await {
                    tracing::debug!(error = %e, "report not delivered");
                }
            }
        })
    };

    // Route builder: once every store has listed, and on every change after, rebuild the table.
    let builder = {
        let gateway = gateway.clone();
        async move {
            let listed = async {
                route_store.wait_until_ready().await?;
                cm_store.wait_until_ready().await?;
                node_store.wait_until_ready().await
            };
            if let Err(e) = listed.await {
                tracing::error!(error = %e, "a watch ended before it listed; never ready");
                return std::future::pending().await;
            }
            loop {
                let mut joined: Vec<String> = node_store.state().iter().map(|n| n.name_any()).collect();
                joined.sort();
                for name in joined {
                    if gateway.node_index(&name).is_none() {
                        let i = gateway.add_node(&name, PRIOR_RTT_MS);
                        tracing::info!(node = %name, index = i, "node joined");
                    }
                }
                let nodes = gateway.nodes();
                let published = route_store.state();
                let table = routes(&ClusterView { nodes: &nodes, routes: &published });
                *services_by_revision.write() = table
                    .revisions
                    .iter()
                    .map(|r| ((r.namespace.clone(), r.revision.clone()), r.service.clone()))
                    .collect();
                if let Err(e) = gateway.set_routes(&table) {
                    tracing::error!(error = %ikukantai_http::error::chain(&e), "routes refused");
                }
                changed.notified().await;
            }
        }
    };
    let mut builder = Box::pin(builder);
    tokio::select! {
        () = &mut builder => {}
        () = shutdown_signal() => {}
    }
    tracing::info!("gateway stopping: unready, draining");
    probes.abort();
    reports.abort();
    let _ = (probes.await, reports.await);
    drain(gateway, builder).await;
    tracing::info!("gateway stopped");
    Ok(())
}

/// SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn peers_are_probed_and_their_rtt_recorded_where_balancers_and_metrics_see_it() {
        let listen = || async { TcpListener::bind("127.0.0.1:0").await.unwrap() };
        let events = Arc::new(ikukantai_dataplane::gateway::NoEvents);
        let me = Arc::new(
            Gateway::start(GatewayConfig::single("node1"), listen().await, listen().await, events.clone())
                .unwrap(),
        );
        let peer =
            Gateway::start(GatewayConfig::single("node2"), listen().await, listen().await, events).unwrap();
        // node3's gateway is gone: nothing listens on port 1, so the connection is refused; node4
        // is not a node this gateway knows.
        let gone: SocketAddr = "127.0.0.1:1".parse().unwrap();
        me.add_node("node2", PRIOR_RTT_MS);
        me.add_node("node3", PRIOR_RTT_MS);
        let rtt_ms: Arc<RwLock<BTreeMap<String, f64>>> = Arc::default();
        let listed = vec![
            ("node2".to_owned(), peer.admin_addr()),
            ("node3".to_owned(), gone),
            ("node4".to_owned(), peer.admin_addr()),
        ];
        let monitor = tokio::spawn(probe_peers(me.clone(), move || listed.clone(), rtt_ms.clone()));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !rtt_ms.read().contains_key("node2") {
            assert!(std::time::Instant::now() < deadline, "node2 never measured");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        monitor.abort();
        let measured = rtt_ms.read().clone();
        assert_eq!(measured.keys().collect::<Vec<_>>(), vec!["node2"], "{measured:?}");
        assert!(measured["node2"] >= 0.0);
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let resp = client.get(format!("http://{}/metrics", me.admin_addr()).parse().unwrap()).await.unwrap();
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("latency_between_nodes{from=\"node1\",to=\"node2\"}"), "{text}");
        assert!(!text.contains("to=\"node3\""), "{text}");
    }

    #[test]
    fn reports_carry_load_and_changed_rtts_and_are_skipped_when_there_is_neither() {
        use crate::wire::WireStat;
        let t0 = std::time::Instant::now();
        let load = |revision: &str, requests: f64| RevisionLoad {
            namespace: "default".into(),
            revision: revision.into(),
            activator: WireStat::default(),
            origin: WireStat { requests, ..WireStat::default() },
        };
        let rtts = BTreeMap::from([("node2".to_owned(), 12.0)]);
        let mut sent = SentRtts::default();
        let first =
            report_to_send("node1", vec![load("a", 3.0), load("b", 0.0)], rtts.clone(), &mut sent, t0)
                .unwrap();
        assert_eq!(first.revisions.len(), 1, "only revisions with load");
        assert_eq!(first.rtt_ms, rtts);
        let quiet = report_to_send(
            "node1",
            vec![load("b", 0.0)],
            rtts.clone(),
            &mut sent,
            t0 + Duration::from_secs(1),
        );
        assert!(quiet.is_none(), "nothing new: no push");
        let again = report_to_send("node1", vec![], rtts.clone(), &mut sent, t0 + RTT_RESEND).unwrap();
        assert_eq!(again.rtt_ms, rtts, "unchanged RTTs again before the controller forgets them");
        let moved = BTreeMap::from([("node2".to_owned(), 40.0)]);
        let changed = report_to_send(
            "node1",
            vec![],
            moved.clone(),
            &mut sent,
            t0 + RTT_RESEND + Duration::from_secs(1),
        );
        assert_eq!(changed.unwrap().rtt_ms, moved);
    }

    #[test]
    fn demand_is_pushed_once_a_second_per_revision() {
        let last = Mutex::default();
        let t0 = std::time::Instant::now();
        let a = ("default".to_owned(), "hello-00001".to_owned());
        let b = ("default".to_owned(), "other-00001".to_owned());
        assert!(first_in_a_second(&last, &a, t0));
        assert!(!first_in_a_second(&last, &a, t0 + Duration::from_millis(900)));
        assert!(first_in_a_second(&last, &b, t0 + Duration::from_millis(900)));
        assert!(first_in_a_second(&last, &a, t0 + Duration::from_millis(1000)));
    }
}
