//! `ikukantai controller`: reconciles Knative Services into Placements (one per revision) and
//! the Pods they ask for, with the same autoscaler and placement code as the local fleet.
//!
//! Reads come from reflector stores (nodes, pods, placements); writes go to the API server:
//! server-side apply for Placements, create/delete for Pods (named deterministically, so a
//! stale cache cannot double-create), merge patches for status. Stats arrive by push
//! ([`crate::wire`]); a demand push triggers the owning Service's reconcile at once.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ikukantai_api::config::FleetConfig;
use ikukantai_api::revision::SERVICE_LABEL;
use ikukantai_api::service::{ObjectMeta, SERVING_API_VERSION, Service};
use ikukantai_api::validate::validate_service;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalized, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::crd::{KnativeService, MANAGED_BY, MANAGED_BY_LABEL, Placement};
use crate::wire::{Demand, GatewayReport, InstanceStats};

mod apply;
mod nodes;
mod pods;
mod services;
mod state;
mod status;

use apply::apply;
use state::{ControlState, retry_delay};

/// Finalizer on Knative Services: their Pods are drained and their scaling state dropped first.
pub const FINALIZER: &str = "ikukantai.dev/cleanup";
/// How often a Service is reconciled without events (the autoscaler's tick).
pub const TICK: Duration = Duration::from_secs(2);

/// A reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
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
}

impl ControllerMetrics {
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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

    /// The fleet configuration now.
    pub fn config(&self) -> FleetConfig {
        self.config.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the fleet configuration (a ConfigMap changed).
    pub fn set_config(&self, config: FleetConfig) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// Records one instance's stats.
    pub fn record_stats(&self, s: &InstanceStats) {
        let now = self.clock.now();
        let mut state = lock(&self.state);
        if let Some(scaler) = state.scalers.get_mut(&(s.namespace.clone(), s.revision.clone())) {
            scaler.autoscaler.record(now, &s.stat.into());
        }
    }

    /// Records a gateway's report: activator load, demand by origin, RTTs.
    pub fn record_report(&self, r: &GatewayReport) {
        let now = self.clock.now();
        let mut state = lock(&self.state);
        let from = state.node_index(&r.node);
        for (peer, &ms) in &r.rtt_ms {
            if ms.is_finite() && ms >= 0.0 {
                let to = state.node_index(peer);
                state.rtt.insert((from, to), (ms, now));
            }
        }
        for load in &r.revisions {
            if let Some(scaler) = state.scalers.get_mut(&(load.namespace.clone(), load.revision.clone())) {
                scaler.autoscaler.record(now, &load.activator.into());
                scaler.autoscaler.record_origin(now, from, load.origin.concurrency);
            }
        }
    }

    /// Records demand at zero; returns the Service to reconcile now.
    pub fn record_demand(&self, d: &Demand) -> ObjectRef<KnativeService> {
        let now = self.clock.now();
        let mut state = lock(&self.state);
        let origin = state.node_index(&d.node);
        if let Some(scaler) = state.scalers.get_mut(&(d.namespace.clone(), d.revision.clone())) {
            scaler.autoscaler.poke(now, origin);
        }
        ObjectRef::new(&d.service).within(&d.namespace)
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

/// Reconciles one Knative Service (with the finalizer around it).
pub async fn reconcile(ksvc: Arc<KnativeService>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = ksvc.namespace().unwrap_or_else(|| "default".into());
    let ksvc_name = ksvc.name_any();
    let api: Api<KnativeService> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, ksvc, |event| async {
        match event {
            Finalized::Apply(s) => apply(&s, &ctx).await,
            Finalized::Cleanup(s) => cleanup(&s, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() {
        lock(&ctx.state).failures.remove(&(ns, ksvc_name));
    }
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics.reconciles.get_or_create(&OutcomeLabels { result: outcome.into() }).inc();
    result
}

/// Retries a failed reconcile later and later (2 s, 4 s, … up to 5 min) while it keeps failing,
/// so an API server that refuses is not asked again every few seconds.
#[allow(clippy::needless_pass_by_value, reason = "the signature kube's Controller::run asks for")]
pub fn error_policy(ksvc: Arc<KnativeService>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = (ksvc.namespace().unwrap_or_default(), ksvc.name_any());
    let failures = {
        let mut state = lock(&ctx.state);
        let n = state.failures.entry(key).or_insert(0);
        *n += 1;
        *n
    };
    let delay = retry_delay(failures);
    tracing::warn!(service = %ksvc.name_any(), %error, failures, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn cleanup(ksvc: &KnativeService, ctx: &Context) -> Result<Action, Error> {
    let ns = ksvc.namespace().unwrap_or_else(|| "default".into());
    let name = ksvc.name_any();
    let selector = format!("{SERVICE_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}");
    let lp = ListParams::default().labels(&selector);
    tracing::info!(service = %name, "deleting instances and placements");
    Api::<Pod>::namespaced(ctx.client.clone(), &ns).delete_collection(&DeleteParams::default(), &lp).await?;
    Api::<Placement>::namespaced(ctx.client.clone(), &ns)
        .delete_collection(&DeleteParams::default(), &lp)
        .await?;
    let revisions: Vec<String> = ctx
        .stores
        .placements
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()) && p.spec.service == name)
        .map(|p| p.name_any())
        .collect();
    let mut state = lock(&ctx.state);
    state.scalers.retain(|(n, r), _| *n != ns || !revisions.contains(r));
    state.routed.remove(&(ns, name));
    Ok(Action::await_change())
}
