//! `ikukantai controller`: reconciles Knative Services into Placements (one per revision) and
//! the Pods they ask for, with the same autoscaler and placement code as the local fleet.
//!
//! Reads come from reflector stores (nodes, pods, placements); writes go to the API server:
//! server-side apply for Placements, create/delete for Pods (named deterministically, so a
//! stale cache cannot double-create), merge patches for status. Stats arrive by push
//! ([`crate::wire`]); a demand push triggers the owning Service's reconcile at once.

use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use std::time::{Duration, Instant};

use ikukantai_api::config::FleetConfig;
use ikukantai_api::service::{ObjectMeta, SERVING_API_VERSION, Service};
use ikukantai_api::validate::validate_service;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::crd::{KnativeService, Placement, ServiceRoute};
use crate::wire::{Demand, GatewayReport, InstanceStats};

mod apply;
mod converge;
mod nodes;
mod plan;
mod pods;
mod routes;
mod services;
mod state;
mod status;

use apply::apply;
use state::{ControlState, retry_delay};

/// The finalizer earlier versions put on Knative Services. No longer added: owner references
/// (Service → Placement → Pod) already delete everything, and a finalizer outlives the
/// controller that removes it (uninstalling deletes the controller and the CRD together, and the
/// Services then never finish deleting). Removed wherever it is found.
pub const LEGACY_FINALIZER: &str = "ikukantai.dev/cleanup";
/// How often a Service is reconciled without events (the autoscaler's tick).
pub const TICK: Duration = Duration::from_secs(2);

/// A reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The caches never listed (their watches ended): reconciling would start from nothing.
    #[error("the watches ended before the caches were filled; not reconciling")]
    NotSynced,
}

/// Where time comes from (tests drive it by hand).
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, for durations measured in this process.
    fn now(&self) -> Instant;
    /// Now on the wall clock, to compare with times the API server wrote (creation, transitions).
    fn wall(&self) -> Timestamp;
}

/// The system's monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Reflector stores the controller reads from.
#[derive(Debug, Clone)]
pub struct Stores {
    /// Nodes.
    pub nodes: Store<Node>,
    /// Pods this platform manages.
    pub pods: Store<Pod>,
    /// Placements.
    pub placements: Store<Placement>,
    /// ServiceRoutes (what was published to the gateways).
    pub routes: Store<ServiceRoute>,
}

/// Settings of a controller process.
#[derive(Debug, Clone)]
pub struct Settings {
    /// URL sidecars and gateways push to (this controller's Service).
    pub controller_url: String,
    /// Seed of the policies' random choices.
    pub seed: u64,
    /// Create a ServiceMonitor per Knative Service (the CRD exists in the cluster).
    pub service_monitors: bool,
    /// DNS name of the gateways' Service; each Knative Service gets an ExternalName Service
    /// pointing there, so `NAME.NAMESPACE.svc.cluster.local` reaches the caller's node gateway.
    pub gateway_host: String,
    /// The controller's own image: the queue-proxy sidecar's unless `queue-proxy-image` says
    /// otherwise (one binary; one image reference to rewrite, e.g. kustomize's `images:`).
    pub sidecar_image: String,
}

/// Labels of a revision's controller metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct RevisionLabels {
    namespace: String,
    revision: String,
}

/// Labels of a reconcile outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct OutcomeLabels {
    result: String,
}

type GaugeF = prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>;

/// What the controller exports at the inbox's `/metrics`.
#[derive(Debug, Default)]
struct ControllerMetrics {
    desired: Family<RevisionLabels, Gauge>,
    ready: Family<RevisionLabels, Gauge>,
    stable: Family<RevisionLabels, GaugeF>,
    panic: Family<RevisionLabels, Gauge>,
    reconciles: Family<OutcomeLabels, Counter>,
    nodes: Gauge,
}

impl ControllerMetrics {
    /// Drops a revision that is gone from every per-revision metric.
    fn forget(&self, labels: &RevisionLabels) {
        self.desired.remove(labels);
        self.ready.remove(labels);
        self.stable.remove(labels);
        self.panic.remove(labels);
    }

    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("ikukantai_controller");
        r.register("desired_instances", "Instances the autoscaler and placement want", self.desired.clone());
        r.register("ready_instances", "Ready instance Pods", self.ready.clone());
        r.register(
            "observed_stable_concurrency",
            "Stable-window average concurrency the autoscaler saw",
            self.stable.clone(),
        );
        r.register("panic_mode", "1 while the autoscaler is in panic mode", self.panic.clone());
        r.register("reconciles", "Reconciles of Knative Services, by result", self.reconciles.clone());
        r.register("nodes", "Nodes the controller keeps scaling state for", self.nodes.clone());
    }
}

/// Everything a reconcile needs.
pub struct Context {
    client: Client,
    stores: Stores,
    config: RwLock<FleetConfig>,
    state: Mutex<ControlState>,
    settings: Settings,
    clock: Arc<dyn Clock>,
    started: Instant,
    metrics: ControllerMetrics,
    registry: Registry,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Context {
    /// A context over `client` and `stores`.
    pub fn new(
        client: Client,
        stores: Stores,
        config: FleetConfig,
        settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let started = clock.now();
        let metrics = ControllerMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        Self {
            client,
            stores,
            config: RwLock::new(config),
            state: Mutex::default(),
            settings,
            clock,
            started,
            metrics,
            registry,
        }
    }

    /// The controller's metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        ikukantai_dataplane::metrics::render(&self.registry)
    }

    /// The queue-proxy sidecar's image under `config`.
    fn sidecar_image<'a>(&'a self, config: &'a FleetConfig) -> &'a str {
        config.kubernetes.queue_proxy_image.as_deref().unwrap_or(&self.settings.sidecar_image)
    }

    /// The fleet configuration now.
    pub fn config(&self) -> FleetConfig {
        self.config.read().clone()
    }

    /// Replaces the fleet configuration (a ConfigMap changed).
    pub fn set_config(&self, config: FleetConfig) {
        *self.config.write() = config;
    }

    /// The revision and node of the instance Pod `namespace/pod`, if it is one this platform
    /// manages (as the Pod store has it).
    pub fn instance(&self, namespace: &str, pod: &str) -> Option<(String, Option<String>)> {
        let p = self.stores.pods.get(&ObjectRef::new(pod).within(namespace))?;
        if p.labels().get(crate::crd::MANAGED_BY_LABEL).map(String::as_str) != Some(crate::crd::MANAGED_BY) {
            return None;
        }
        let revision = p.labels().get(crate::crd::REVISION_LABEL)?.clone();
        Some((revision, p.spec.as_ref().and_then(|s| s.node_name.clone())))
    }

    /// Whether `node` is one of the cluster's nodes now.
    fn known_node(&self, node: &str) -> bool {
        self.stores.nodes.get(&ObjectRef::new(node)).is_some()
    }

    /// Records one instance's stats.
    pub fn record_stats(&self, s: &InstanceStats) {
        let now = self.clock.now();
        let mut state = self.state.lock();
        if let Some(scaler) = state.scalers.get_mut(&(s.namespace.clone(), s.revision.clone())) {
            scaler.autoscaler.record(now, &s.stat.into());
        }
    }

    /// Records a gateway's report: activator load, demand by origin, RTTs.
    /// Only the cluster's nodes are learnt: a report naming made-up nodes grows nothing.
    pub fn record_report(&self, r: &GatewayReport) {
        if !self.known_node(&r.node) {
            tracing::debug!(node = %r.node, "report from a node that is not (or no longer) in the cluster");
            return;
        }
        let now = self.clock.now();
        let mut state = self.state.lock();
        let from = state.node_index(&r.node);
        for (peer, &ms) in &r.rtt_ms {
            if ms.is_finite() && ms >= 0.0 && self.known_node(peer) {
                let to = state.node_index(peer);
                state.rtt.record(from, to, ms, now);
            }
        }
        if let Some(c) = r.coordinate.as_deref().and_then(|c| c.parse().ok()) {
            state.rtt.set_coordinate(from, c, now);
        }
        self.metrics.nodes.set(state.nodes.iter().flatten().count() as i64);
        for load in &r.revisions {
            if let Some(scaler) = state.scalers.get_mut(&(load.namespace.clone(), load.revision.clone())) {
                scaler.autoscaler.record(now, &load.activator.into());
                scaler.autoscaler.record_origin(now, from, load.origin.concurrency);
            }
        }
    }

    /// Records demand at zero; returns the Service to reconcile now. Demand for a revision
    /// without a scaler yet (a new leader) is kept for the scaler to come.
    pub fn record_demand(&self, d: &Demand) -> ObjectRef<KnativeService> {
        let target = ObjectRef::new(&d.service).within(&d.namespace);
        if !self.known_node(&d.node) {
            return target;
        }
        let now = self.clock.now();
        let mut state = self.state.lock();
        let origin = state.node_index(&d.node);
        let key = (d.namespace.clone(), d.revision.clone());
        match state.scalers.get_mut(&key) {
            Some(scaler) => {
                scaler.autoscaler.poke(now, origin);
            }
            None => state.remember_poke(key, now, origin),
        }
        target
    }
}

/// The local model of a Knative Service object, checked by the same rules as `ikukantai apply`.
pub fn to_local(ksvc: &KnativeService, config: &FleetConfig) -> Result<Service, String> {
    let m = &ksvc.metadata;
    let svc = Service {
        api_version: SERVING_API_VERSION.into(),
        kind: "Service".into(),
        metadata: ObjectMeta {
            name: m.name.clone(),
            namespace: Some(m.namespace.clone().unwrap_or_else(|| "default".into())),
            labels: m.labels.clone().unwrap_or_default(),
            annotations: m.annotations.clone().unwrap_or_default(),
            generation: m.generation,
            uid: m.uid.clone(),
            ..ObjectMeta::default()
        },
        spec: ksvc.spec.inner.clone(),
        status: None,
    };
    validate_service(&svc, config)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))?;
    Ok(svc)
}

/// Reconciles one Knative Service.
pub async fn reconcile(ksvc: Arc<KnativeService>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = (ksvc.namespace().unwrap_or_else(|| "default".into()), ksvc.name_any());
    let result = async {
        release_legacy_finalizer(&ksvc, &ctx).await?;
        if ksvc.metadata.deletion_timestamp.is_some() {
            // Garbage collection deletes its Placements and their Pods (which drain as usual).
            ctx.state.lock().forget_service(&key.0, &key.1);
            return Ok(Action::await_change());
        }
        apply(&ksvc, &ctx).await
    }
    .await;
    if result.is_ok() {
        ctx.state.lock().failures.remove(&key);
    }
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics.reconciles.get_or_create(&OutcomeLabels { result: outcome.into() }).inc();
    result
}

/// Removes [`LEGACY_FINALIZER`] from a Service an earlier version put it on. A merge patch
/// replaces the whole list; the resourceVersion makes the API server refuse it (409) if the
/// list changed since it was read, so nobody else's finalizer is lost.
async fn release_legacy_finalizer(ksvc: &KnativeService, ctx: &Context) -> Result<(), Error> {
    let finalizers = ksvc.metadata.finalizers.clone().unwrap_or_default();
    if !finalizers.iter().any(|f| f == LEGACY_FINALIZER) {
        return Ok(());
    }
    let rest: Vec<&String> = finalizers.iter().filter(|f| *f != LEGACY_FINALIZER).collect();
    let patch = serde_json::json!({
        "metadata": { "finalizers": rest, "resourceVersion": ksvc.metadata.resource_version }
    });
    let api: Api<KnativeService> =
        Api::namespaced(ctx.client.clone(), &ksvc.namespace().unwrap_or_else(|| "default".into()));
    tracing::info!(service = %ksvc.name_any(), "removing the finalizer of an earlier version");
    api.patch(&ksvc.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}

/// Retries a failed reconcile later and later (2 s, 4 s, … up to 5 min) while it keeps failing,
/// so an API server that refuses is not asked again every few seconds.
#[allow(clippy::needless_pass_by_value, reason = "the signature kube's Controller::run asks for")]
pub fn error_policy(ksvc: Arc<KnativeService>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = (ksvc.namespace().unwrap_or_default(), ksvc.name_any());
    let failures = {
        let mut state = ctx.state.lock();
        let n = state.failures.entry(key).or_insert(0);
        *n += 1;
        *n
    };
    let delay = retry_delay(failures);
    tracing::warn!(service = %ksvc.name_any(), %error, failures, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}
