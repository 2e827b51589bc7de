//! `ikukantai gateway`: the per-node gateway on Kubernetes (a DaemonSet). It is the data plane's
//! [`Gateway`], fed by watches instead of the local control plane: routes come from Knative
//! Services' status and Placements, instances from Pods (node = `spec.nodeName`, address =
//! Pod IP; no CNI-specific lookup). It measures the RTT to its peer gateways (monlat), and pushes
//! activator/origin load, RTTs and demand at zero to the controller.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use ikukantai_api::annotations::revision_settings;
use ikukantai_api::config::FleetConfig;
use ikukantai_dataplane::gateway::{
    Gateway, GatewayConfig, GatewayEvents, InstanceRoute, MemoryRelease, RevisionRoute, RouteTarget, Routes,
    ServiceRoute,
};
use ikukantai_link::connect::{NodeConnector, probe_rtt};
use ikukantai_policy::autoscaler::ScalingSpec;
use ikukantai_policy::estimate::RttMatrix;
use ikukantai_policy::registry::PolicyParams;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::ProcessError;
use crate::crd::{KnativeService, MANAGED_BY, MANAGED_BY_LABEL, Placement, REVISION_LABEL};
use crate::manager::fleet_config;
use crate::pod::{QUEUE_PORT, pod_ready};
use crate::wire::{DEMAND_PATH, Demand, GatewayReport, Pusher, REPORT_PATH, RevisionLoad};

/// The RTT assumed between two nodes until the monitor measured it (ms): in-cluster links are
/// fast until proven otherwise.
const PRIOR_RTT_MS: f64 = 1.0;

/// Peer gateways probed at the same time.
const PROBES_AT_ONCE: usize = 32;

/// Options of `ikukantai gateway`.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// This node's name.
    pub node: String,
    /// Traffic listener.
    pub listen: SocketAddr,
    /// Admin listener (`/metrics`, `/healthz`); peers probe it.
    pub admin: SocketAddr,
    /// Namespace of the gateways and ConfigMaps.
    pub system_namespace: String,
    /// Label selector of the gateway Pods (to find peers).
    pub peer_selector: String,
    /// Where to push reports and demand.
    pub controller_url: String,
    /// How the gateway gives memory back to the system while many requests wait.
    pub memory_release: Option<MemoryRelease>,
    /// The gateway's policy towards clients (`ikukantai gateway`'s flags).
    pub edge: ikukantai_dataplane::gateway::EdgePolicy,
}

/// The cluster as a gateway sees it, from its stores.
#[derive(Debug)]
pub struct ClusterView<'a> {
    /// Node names by index (the gateway's order).
    pub nodes: &'a [String],
    /// Knative Services.
    pub services: &'a [Arc<KnativeService>],
    /// Placements.
    pub placements: &'a [Arc<Placement>],
    /// Managed Pods.
    pub pods: &'a [Arc<Pod>],
    /// Fleet configuration.
    pub config: &'a FleetConfig,
}

fn ready_ip(p: &Pod) -> Option<IpAddr> {
    if !pod_ready(p) || p.metadata.deletion_timestamp.is_some() {
        return None;
    }
    p.status.as_ref()?.pod_ip.as_ref()?.parse().ok()
}

/// The routing table: services from the traffic their status resolved, revisions from
/// Placements, instances from ready Pods.
pub fn routes(view: &ClusterView<'_>) -> Routes {
    let mut routes = Routes::default();
    for svc in view.services {
        let ns = svc.namespace().unwrap_or_else(|| "default".into());
        let traffic: Vec<RouteTarget> = svc
            .status
            .iter()
            .flat_map(|s| &s.traffic)
            .filter_map(|t| {
                Some(RouteTarget {
                    revision: t.revision_name.clone()?,
                    percent: t.percent.unwrap_or(0),
                    tag: t.tag.clone(),
                })
            })
            .collect();
        routes.services.push(ServiceRoute { namespace: ns, name: svc.name_any(), traffic });
    }
    for p in view.placements {
        let ns = p.namespace().unwrap_or_else(|| "default".into());
        let revision = p.revision();
        let annotations = &revision.metadata.annotations;
        let Ok(settings) = revision_settings(annotations, view.config, "spec.template.metadata.annotations")
        else {
            tracing::warn!(revision = %revision.name(), "revision annotations invalid; not routed");
            continue;
        };
        let cc = revision.spec.container_concurrency();
        let spec = ScalingSpec::resolve(&view.config.autoscaler, cc, &settings.scaling);
        let instances = view
            .pods
            .iter()
            .filter(|pod| {
                pod.namespace().as_deref() == Some(ns.as_str())
                    && pod.labels().get(REVISION_LABEL).map(String::as_str) == Some(revision.name())
            })
            .filter_map(|pod| {
                let ip = ready_ip(pod)?;
                let node_name = pod.spec.as_ref()?.node_name.as_ref()?;
                let node = view.nodes.iter().position(|n| n == node_name)?;
                Some(InstanceRoute { name: pod.name_any(), node, addr: SocketAddr::new(ip, QUEUE_PORT) })
            })
            .collect();
        routes.revisions.push(RevisionRoute {
            namespace: ns,
            service: p.spec.service.clone(),
            revision: revision.name().to_owned(),
            container_concurrency: cc,
            target_concurrency: spec.target,
            timeout: Duration::from_secs(revision.spec.timeout_seconds()),
            balancer: settings.balancer.clone().unwrap_or_else(|| view.config.policies.balancer.clone()),
            queue: settings.queue.clone().unwrap_or_else(|| view.config.policies.queue.clone()),
            priority_rules: settings.priority_rules.clone(),
            instances,
            failure: None,
        });
    }
    routes
}

/// Pushes demand at zero to the controller (revision → service from the routes), at most once a
/// second per revision: every request buffered at zero reports demand, one push is enough.
struct DemandPusher {
    pusher: Pusher,
    node: String,
    services: Arc<RwLock<HashMap<(String, String), String>>>,
    last: std::sync::Mutex<HashMap<(String, String), std::time::Instant>>,
}

/// True (and remembered) if `key` was not seen in the last second.
fn first_in_a_second(
    last: &std::sync::Mutex<HashMap<(String, String), std::time::Instant>>,
    key: &(String, String),
    now: std::time::Instant,
) -> bool {
    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
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
        let service =
            self.services.read().unwrap_or_else(|e| e.into_inner()).get(&key).cloned().unwrap_or_default();
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

/// Measures the RTT to every peer gateway (`(node, admin address)`), records it in the gateway
/// (balancers, `latency_between_nodes`) and in `rtt_ms` (reported to the controller). Probes run
/// concurrently: a peer that does not answer costs its own timeout, not everyone's.
pub async fn probe_peers(
    gateway: &Gateway,
    connector: &NodeConnector,
    peers: Vec<(String, SocketAddr)>,
    rtt_ms: &RwLock<BTreeMap<String, f64>>,
) {
    futures_util::stream::iter(peers)
        .for_each_concurrent(PROBES_AT_ONCE, |(node, admin)| async move {
            let ms = probe_rtt(connector, admin).await;
            if let (Some(ms), Some(i)) = (ms, gateway.node_index(&node)) {
                gateway.record_rtt(i, ms);
                rtt_ms.write().unwrap_or_else(|e| e.into_inner()).insert(node, ms);
            }
        })
        .await;
}

/// Runs the gateway until SIGTERM/Ctrl-C.
pub async fn run(options: GatewayOptions) -> Result<(), ProcessError> {
    let client = Client::try_default().await?;
    let mut nodes: Vec<String> = Api::<Node>::all(client.clone())
        .list(&Default::default())
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
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
        links: vec![None; n],
        rtt: RttMatrix::new(n, PRIOR_RTT_MS, Duration::from_secs(30)),
        policy: PolicyParams::default(),
        memory_release: options.memory_release,
        edge: options.edge,
        ..GatewayConfig::single(&options.node)
    };
    let listen = |addr: SocketAddr| async move {
        TcpListener::bind(addr).await.map_err(|source| ProcessError::Listen { addr, source })
    };
    let services_by_revision: Arc<RwLock<HashMap<(String, String), String>>> = Arc::default();
    let pusher = Pusher::new(&options.controller_url);
    let events = Arc::new(DemandPusher {
        pusher: pusher.clone(),
        node: options.node.clone(),
        services: services_by_revision.clone(),
        last: std::sync::Mutex::default(),
    });
    let gateway = Arc::new(
        Gateway::start(gateway_config, listen(options.listen).await?, listen(options.admin).await?, events)
            .map_err(|source| ProcessError::Listen { addr: options.listen, source })?,
    );
    tracing::info!(node = %options.node, addr = %gateway.addr(), admin = %gateway.admin_addr(), "gateway serving");

    // Watches feed stores; any change wakes the route builder.
    let changed = Arc::new(Notify::new());
    let managed = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let (svc_store, svc_writer) = reflector::store::<KnativeService>();
    let (pl_store, pl_writer) = reflector::store::<Placement>();
    let (pod_store, pod_writer) = reflector::store::<Pod>();
    let (cm_store, cm_writer) = reflector::store::<ConfigMap>();
    let (peer_store, peer_writer) = reflector::store::<Pod>();
    let (node_store, node_writer) = reflector::store::<Node>();
    macro_rules! drive {
        ($api:expr, $cfg:expr, $writer:expr) => {{
            let changed = changed.clone();
            tokio::spawn(watcher($api, $cfg).default_backoff().reflect($writer).for_each(move |_| {
                changed.notify_one();
                std::future::ready(())
            }));
        }};
    }
    drive!(Api::<KnativeService>::all(client.clone()), watcher::Config::default(), svc_writer);
    drive!(Api::<Placement>::all(client.clone()), watcher::Config::default(), pl_writer);
    drive!(Api::<Pod>::all(client.clone()), managed, pod_writer);
    drive!(configs_api.clone(), watcher::Config::default(), cm_writer);
    drive!(
        Api::<Pod>::namespaced(client.clone(), &options.system_namespace),
        watcher::Config::default().labels(&options.peer_selector),
        peer_writer
    );
    drive!(Api::<Node>::all(client.clone()), watcher::Config::default(), node_writer);

    // Latency monitor: probe every peer gateway's admin port.
    let rtt_ms: Arc<RwLock<BTreeMap<String, f64>>> = Arc::default();
    {
        let (gateway, rtt_ms, me) = (gateway.clone(), rtt_ms.clone(), options.node.clone());
        let admin_port = options.admin.port();
        let interval = config.kubernetes.probe_interval;
        tokio::spawn(async move {
            let connector = NodeConnector::new(None);
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let peers: Vec<(String, SocketAddr)> = peer_store
                    .state()
                    .iter()
                    .filter_map(|peer| Some((peer.spec.as_ref()?.node_name.clone()?, ready_ip(peer)?)))
                    .filter(|(node, _)| *node != me)
                    .map(|(node, ip)| (node, SocketAddr::new(ip, admin_port)))
                    .collect();
                probe_peers(&gateway, &connector, peers, &rtt_ms).await;
            }
        });
    }

    // Reports to the controller, every second.
    {
        let (gateway, rtt_ms, node) = (gateway.clone(), rtt_ms.clone(), options.node.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let revisions = gateway
                    .report()
                    .into_iter()
                    .map(|r| RevisionLoad {
                        namespace: r.namespace,
                        revision: r.revision,
                        activator: r.activator.into(),
                        origin: r.origin.into(),
                    })
                    .collect();
                let rtt_ms = rtt_ms.read().unwrap_or_else(|e| e.into_inner()).clone();
                let report = GatewayReport { node: node.clone(), revisions, rtt_ms };
                if let Err(e) = pusher.push(REPORT_PATH, &report).await {
                    tracing::debug!(error = %e, "report not delivered");
                }
            }
        });
    }

    // Route builder: on every change, rebuild the table from the stores.
    let builder = async {
        loop {
            changed.notified().await;
            let mut joined: Vec<String> = node_store.state().iter().map(|n| n.name_any()).collect();
            joined.sort();
            for name in joined {
                if gateway.node_index(&name).is_none() {
                    let i = gateway.add_node(&name, PRIOR_RTT_MS);
                    tracing::info!(node = %name, index = i, "node joined");
                }
            }
            let nodes = gateway.nodes();
            let config = fleet_config(&cm_store.state()).unwrap_or_else(|message| {
                tracing::error!(%message, "configuration rejected; using defaults");
                FleetConfig::new()
            });
            let (services, placements, pods) = (svc_store.state(), pl_store.state(), pod_store.state());
            let table = routes(&ClusterView {
                nodes: &nodes,
                services: &services,
                placements: &placements,
                pods: &pods,
                config: &config,
            });
            *services_by_revision.write().unwrap_or_else(|e| e.into_inner()) = table
                .revisions
                .iter()
                .map(|r| ((r.namespace.clone(), r.revision.clone()), r.service.clone()))
                .collect();
            if let Err(e) = gateway.set_routes(&table) {
                tracing::error!(error = %e, "routes refused");
            }
        }
    };
    // The route builder runs until shutdown.
    tokio::select! {
        _ = builder => {}
        () = shutdown_signal() => {}
    }
    tracing::info!("gateway stopping");
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
    use serde_json::json;

    use super::*;

    fn pod(name: &str, revision: &str, node: &str, ip: &str, ready: bool) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "labels": {REVISION_LABEL: revision}},
                "spec": {"nodeName": node, "containers": []},
                "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
            }))
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn peers_are_probed_and_their_rtt_recorded_where_balancers_and_metrics_see_it() {
        let listen = || async { TcpListener::bind("127.0.0.1:0").await.unwrap() };
        let events = Arc::new(ikukantai_dataplane::gateway::NoEvents);
        let me =
            Gateway::start(GatewayConfig::single("node1"), listen().await, listen().await, events.clone())
                .unwrap();
        let peer =
            Gateway::start(GatewayConfig::single("node2"), listen().await, listen().await, events).unwrap();
        // node3's gateway is gone: nothing listens on port 1, so the connection is refused.
        let gone: SocketAddr = "127.0.0.1:1".parse().unwrap();
        me.add_node("node2", PRIOR_RTT_MS);
        me.add_node("node3", PRIOR_RTT_MS);
        let rtt_ms = RwLock::default();
        let peers = vec![("node2".to_owned(), peer.admin_addr()), ("node3".to_owned(), gone)];
        probe_peers(&me, &NodeConnector::new(None), peers, &rtt_ms).await;
        let measured = rtt_ms.read().unwrap().clone();
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
    fn demand_is_pushed_once_a_second_per_revision() {
        let last = std::sync::Mutex::default();
        let t0 = std::time::Instant::now();
        let a = ("default".to_owned(), "hello-00001".to_owned());
        let b = ("default".to_owned(), "other-00001".to_owned());
        assert!(first_in_a_second(&last, &a, t0));
        assert!(!first_in_a_second(&last, &a, t0 + Duration::from_millis(900)));
        assert!(first_in_a_second(&last, &b, t0 + Duration::from_millis(900)));
        assert!(first_in_a_second(&last, &a, t0 + Duration::from_millis(1000)));
    }

    #[test]
    fn routes_follow_status_traffic_placements_and_ready_pods() {
        let svc: KnativeService = serde_json::from_value(json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": "hello", "namespace": "default"},
            "spec": {"template": {"spec": {"containers": [{"image": "x"}]}}},
            "status": {"traffic": [{"revisionName": "hello-00001", "percent": 100}]}
        }))
        .unwrap();
        let placement: Placement = serde_json::from_value(json!({
            "apiVersion": "ikukantai.dev/v1alpha1", "kind": "Placement",
            "metadata": {"name": "hello-00001", "namespace": "default"},
            "spec": {"service": "hello", "generation": 1, "nodes": {"node3": 1},
                     "template": {"metadata": {"annotations": {"ikukantai.dev/balancer": "even"}},
                                  "spec": {"containerConcurrency": 5, "containers": [{"image": "x"}]}}}
        }))
        .unwrap();
        let nodes = vec!["node1".to_owned(), "node2".to_owned(), "node3".to_owned()];
        let pods = vec![
            pod("a", "hello-00001", "node3", "10.0.3.7", true),
            pod("b", "hello-00001", "node1", "10.0.1.7", false),
            pod("c", "other-00001", "node1", "10.0.1.8", true),
        ];
        let config = FleetConfig::new();
        let table = routes(&ClusterView {
            nodes: &nodes,
            services: &[Arc::new(svc)],
            placements: &[Arc::new(placement)],
            pods: &pods,
            config: &config,
        });
        assert_eq!(
            table.services[0].traffic,
            vec![RouteTarget { revision: "hello-00001".into(), percent: 100, tag: None }]
        );
        let r = &table.revisions[0];
        assert_eq!((r.service.as_str(), r.container_concurrency, r.balancer.as_str()), ("hello", 5, "even"));
        assert_eq!(r.queue, config.policies.queue);
        assert_eq!(
            r.instances,
            vec![InstanceRoute { name: "a".into(), node: 2, addr: "10.0.3.7:8012".parse().unwrap() }],
            "only the ready pod, on its node, at the queue proxy's port"
        );
    }
}
