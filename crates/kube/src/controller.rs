//! `ikukantai controller`: reconciles Knative Services into Placements (one per revision) and
//! the Pods they ask for, with the same autoscaler and placement code as the local fleet.
//!
//! Reads come from reflector stores (nodes, pods, placements); writes go to the API server:
//! server-side apply for Placements, create/delete for Pods (named deterministically, so a
//! stale cache cannot double-create), merge patches for status. Stats arrive by push
//! ([`crate::wire`]); a demand push triggers the owning Service's reconcile at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ikukantai_api::annotations::revision_settings;
use ikukantai_api::config::FleetConfig;
use ikukantai_api::revision::{Revision, SERVICE_LABEL, next_revision};
use ikukantai_api::service::{ObjectMeta, SERVING_API_VERSION, Service, ServiceStatus};
use ikukantai_api::status::{RevisionState, awaits_readiness, resolve_traffic, service_status};
use ikukantai_api::validate::validate_service;
use ikukantai_policy::autoscaler::{ScalingSpec, TickInputs};
use ikukantai_policy::estimate::RttMatrix;
use ikukantai_policy::registry::{self, PolicyParams};
use ikukantai_policy::scaler::{RevisionScaler, ScaleInputs};
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalized, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::crd::{
    CAPACITY_LABEL, FIELD_MANAGER, KnativeService, MANAGED_BY, MANAGED_BY_LABEL, NODE_LABEL, Placement,
    PlacementSpec, PlacementStatus, summary,
};
use crate::pod::{INDEX_LABEL, PodParams, build_pod, pod_ready, revision_labels};
use crate::wire::{Demand, GatewayReport, InstanceStats};

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
    /// Now.
    fn now(&self) -> Instant;
}

/// The system's monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
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

/// Scaling state that lives between reconciles.
#[derive(Debug, Default)]
struct ControlState {
    /// Node names by index; append-only so indices stay valid in the autoscalers.
    nodes: Vec<String>,
    /// (namespace, revision) → scaler.
    scalers: HashMap<(String, String), RevisionScaler>,
    /// Latest RTT sample per (from, to) node index.
    rtt: HashMap<(usize, usize), (f64, Instant)>,
    /// (namespace, name) → generation whose Kubernetes Services were applied.
    routed: HashMap<(String, String), Option<i64>>,
}

impl ControlState {
    fn node_index(&mut self, name: &str) -> usize {
        if let Some(i) = self.nodes.iter().position(|n| n == name) {
            return i;
        }
        self.nodes.push(name.to_owned());
        self.nodes.len() - 1
    }

    fn rtt_matrix(&self, now: Instant) -> RttMatrix {
        // Unmeasured pairs get a 1 ms prior: on a cluster, nodes are close until measured otherwise.
        let mut m = RttMatrix::new(self.nodes.len(), 1.0, Duration::from_secs(30));
        for (&(from, to), &(ms, at)) in &self.rtt {
            if at <= now {
                m.record(from, to, ms, at);
            }
        }
        m
    }
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
    let api: Api<KnativeService> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, ksvc, |event| async {
        match event {
            Finalized::Apply(s) => apply(&s, &ctx).await,
            Finalized::Cleanup(s) => cleanup(&s, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics.reconciles.get_or_create(&OutcomeLabels { result: outcome.into() }).inc();
    result
}

/// Retry soon after a failure.
#[allow(clippy::needless_pass_by_value, reason = "the signature kube's Controller::run asks for")]
pub fn error_policy(ksvc: Arc<KnativeService>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(service = %ksvc.name_any(), %error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

struct NodeInfo {
    name: String,
    /// The node is Ready.
    ready: bool,
    /// `spec.unschedulable` (cordoned): instances there stay, no new ones go there.
    cordoned: bool,
    /// Taints that keep Pods off (`NoSchedule`, `NoExecute`): only revisions tolerating them go there.
    taints: Vec<Taint>,
    capacity: u32,
}

/// Whether `tolerations` (a revision's pass-through `spec.tolerations`) tolerate every taint, the
/// way the scheduler matches them: an empty key with `Exists` tolerates everything; otherwise the
/// keys match and, for `Equal` (the default), the values; an empty effect matches every effect.
fn tolerates(tolerations: Option<&serde_json::Value>, taints: &[Taint]) -> bool {
    let list: Vec<&serde_json::Value> =
        tolerations.and_then(|t| t.as_array()).map(|a| a.iter().collect()).unwrap_or_default();
    let field =
        |t: &serde_json::Value, k: &str| t.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    taints.iter().all(|taint| {
        list.iter().any(|t| {
            let (key, op, value, effect) =
                (field(t, "key"), field(t, "operator"), field(t, "value"), field(t, "effect"));
            let exists = op == "Exists";
            let key_ok = (key.is_empty() && exists) || key == taint.key;
            let value_ok = exists || value == taint.value.clone().unwrap_or_default();
            let effect_ok = effect.is_empty() || effect == taint.effect;
            key_ok && value_ok && effect_ok
        })
    })
}

fn nodes(store: &Store<Node>, default_capacity: u32) -> Vec<NodeInfo> {
    let mut out: Vec<NodeInfo> = store
        .state()
        .iter()
        .map(|n| {
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let cordoned = n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
            let capacity =
                n.labels().get(CAPACITY_LABEL).and_then(|c| c.parse().ok()).unwrap_or(default_capacity);
            let taints = n
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                .collect();
            NodeInfo { name: n.name_any(), ready, cordoned, taints, capacity }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A revision whose initial and minimum scale are 0 is ready with no instance (as in Knative).
fn starts_at_zero(revision: &Revision, config: &FleetConfig) -> bool {
    revision_settings(&revision.metadata.annotations, config, "spec.template.metadata.annotations").is_ok_and(
        |s| {
            ScalingSpec::resolve(&config.autoscaler, revision.spec.container_concurrency(), &s.scaling)
                .starts_at_zero()
        },
    )
}

fn pod_node(p: &Pod) -> Option<String> {
    p.spec.as_ref().and_then(|s| s.node_name.clone()).or_else(|| p.labels().get(NODE_LABEL).cloned())
}

/// Why a Pod cannot run, if it cannot (image pull errors, crash loops, unschedulable).
fn pod_problem(p: &Pod) -> Option<String> {
    let status = p.status.as_ref()?;
    if let Some(c) = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
    }) {
        return Some(format!(
            "{}: Unschedulable: {}",
            p.name_any(),
            c.message.as_deref().unwrap_or_default()
        ));
    }
    for cs in status.container_statuses.iter().flatten() {
        if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.as_deref().unwrap_or_default();
            if matches!(
                reason,
                "CrashLoopBackOff"
                    | "ImagePullBackOff"
                    | "ErrImagePull"
                    | "CreateContainerConfigError"
                    | "InvalidImageName"
            ) {
                return Some(format!(
                    "{}: {reason}: {}",
                    p.name_any(),
                    w.message.as_deref().unwrap_or_default()
                ));
            }
        }
    }
    None
}

/// One revision's plan for this reconcile.
struct Plan {
    revision: Revision,
    placement: Option<Arc<Placement>>,
    desired: BTreeMap<String, u32>,
    queue: String,
}

async fn apply(ksvc: &KnativeService, ctx: &Context) -> Result<Action, Error> {
    let ns = ksvc.namespace().unwrap_or_else(|| "default".into());
    let name = ksvc.name_any();
    let config = ctx.config();
    let svc = match to_local(ksvc, &config) {
        Ok(svc) => svc,
        Err(message) => {
            tracing::warn!(service = %name, %message, "invalid Service");
            let status = invalid_status(ksvc, &message);
            patch_service_status(ksvc, ctx, &status).await?;
            return Ok(Action::await_change());
        }
    };
    let now = ctx.clock.now();

    // Revisions: one Placement each, oldest first; cut a new one if the template changed.
    let mut placements: Vec<Arc<Placement>> = ctx
        .stores
        .placements
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()) && p.spec.service == name)
        .collect();
    placements.sort_by_key(|p| p.spec.generation);
    let mut revisions: Vec<(Revision, Option<Arc<Placement>>)> =
        placements.iter().map(|p| (p.revision(), Some(p.clone()))).collect();
    let existing: Vec<Revision> = revisions.iter().map(|(r, _)| r.clone()).collect();
    if let Some(new) = next_revision(&svc, &existing) {
        tracing::info!(service = %name, revision = %new.name(), "new revision");
        revisions.push((new, None));
    }

    let all_pods: Vec<Arc<Pod>> = ctx
        .stores
        .pods
        .state()
        .into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
        })
        .collect();
    let node_infos = nodes(&ctx.stores.nodes, config.kubernetes.node_capacity);
    let node_names: Vec<String> = node_infos.iter().map(|n| n.name.clone()).collect();
    let ever_ready: Vec<bool> = revisions
        .iter()
        .map(|(r, p)| {
            p.as_ref().is_some_and(|p| p.ever_ready())
                || all_pods.iter().any(|x| rev_of(x) == Some(r.name()) && pod_ready(x))
        })
        .collect();
    // A revision that was never ready fails with its Pods' problem (crash loop, image pull, ...).
    let failures: Vec<Option<String>> = revisions
        .iter()
        .zip(&ever_ready)
        .map(|((r, _), &ready)| {
            if ready {
                return None;
            }
            all_pods.iter().filter(|x| rev_of(x) == Some(r.name())).find_map(|x| pod_problem(x))
        })
        .collect();
    let states: Vec<RevisionState<'_>> = revisions
        .iter()
        .zip(ever_ready.iter().zip(&failures))
        .map(|((r, _), (&ever_ready, failure))| RevisionState {
            name: r.name(),
            ready: ever_ready || (failure.is_none() && starts_at_zero(r, &config)),
            failure: failure.as_deref(),
        })
        .collect();
    let split = resolve_traffic(&svc.spec, &states);

    // Decide, per revision, how many instances on which node.
    let mut plans = Vec::new();
    {
        let mut state = lock(&ctx.state);
        let idx: Vec<usize> = node_infos.iter().map(|n| state.node_index(&n.name)).collect();
        let n = state.nodes.len();
        let rtt = state.rtt_matrix(now);
        for (revision, placement) in &revisions {
            let rev = revision.name().to_owned();
            let settings = match revision_settings(
                &revision.metadata.annotations,
                &config,
                "spec.template.metadata.annotations",
            ) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(revision = %rev, errors = ?e, "revision settings no longer valid; left as is");
                    continue;
                }
            };
            let mine =
                |p: &&Arc<Pod>| rev_of(p) == Some(rev.as_str()) && p.namespace().as_deref() == Some(&ns);
            let mut current = vec![0u32; n];
            let mut room = vec![0u32; n];
            let mut ready = 0;
            for p in all_pods.iter().filter(mine) {
                if let Some(i) = pod_node(p).and_then(|node| state.nodes.iter().position(|x| *x == node)) {
                    current[i] += 1;
                }
                ready += u32::from(pod_ready(p));
            }
            for (info, &i) in node_infos.iter().zip(&idx) {
                // A node that is not Ready takes nothing (its instances are replaced elsewhere);
                // a cordoned one, or one whose taints the revision does not tolerate, keeps what
                // it has and gets nothing new.
                if info.ready {
                    let others = all_pods
                        .iter()
                        .filter(|p| pod_node(p).as_deref() == Some(info.name.as_str()) && !mine(p))
                        .count() as u32;
                    let free = info.capacity.saturating_sub(others);
                    let closed =
                        info.cordoned || !tolerates(revision.spec.tolerations.as_ref(), &info.taints);
                    room[i] = if closed { free.min(current[i]) } else { free };
                }
            }
            let queue = settings.queue.clone().unwrap_or_else(|| config.policies.queue.clone());
            let key = (ns.clone(), rev.clone());
            if !state.scalers.contains_key(&key) {
                let spec = ScalingSpec::resolve(
                    &config.autoscaler,
                    revision.spec.container_concurrency(),
                    &settings.scaling,
                );
                let placement_name =
                    settings.placement.clone().unwrap_or_else(|| config.policies.placement.clone());
                let params = PolicyParams { seed: ctx.settings.seed, ..PolicyParams::default() };
                let Ok(policy) = registry::placement(&placement_name, &params) else {
                    tracing::warn!(revision = %rev, placement = %placement_name, "unknown placement");
                    continue;
                };
                state
                    .scalers
                    .insert(key.clone(), RevisionScaler::new(spec, policy, now, current.iter().sum()));
            }
            let scaler = state.scalers.get_mut(&key).expect("inserted above");
            let (decision, per_node) = scaler.decide(
                now,
                ScaleInputs {
                    tick: TickInputs {
                        ready,
                        reachable: split.iter().any(|t| t.revision == rev) || awaits_readiness(&states, &rev),
                        buffering_since: Some(ctx.started),
                    },
                    current: &current,
                    room: &room,
                    rtt: &rtt,
                },
            );
            tracing::debug!(revision = %rev, desired = decision.desired, ready, ?per_node, "autoscaler decision");
            let labels = RevisionLabels { namespace: ns.clone(), revision: rev.clone() };
            let m = &ctx.metrics;
            m.desired.get_or_create(&labels).set(i64::from(per_node.iter().sum::<u32>()));
            m.ready.get_or_create(&labels).set(i64::from(ready));
            m.stable.get_or_create(&labels).set(decision.observed_stable);
            m.panic.get_or_create(&labels).set(i64::from(decision.panicking));
            let desired =
                node_infos.iter().zip(&idx).map(|(info, &i)| (info.name.clone(), per_node[i])).collect();
            plans.push(Plan { revision: revision.clone(), placement: placement.clone(), desired, queue });
        }
    }

    // Converge: Placements, Pods, Placement status.
    let mut failing = Vec::new();
    for plan in &plans {
        let placement = ensure_placement(ksvc, plan, ctx).await?;
        let owner = placement.controller_owner_ref(&()).expect("placements have a name");
        let pods: Vec<&Arc<Pod>> = all_pods
            .iter()
            .filter(|p| rev_of(p) == Some(plan.revision.name()) && p.namespace().as_deref() == Some(&ns))
            .collect();
        converge_pods(&name, plan, &pods, owner, &config.kubernetes.queue_proxy_image, ctx).await?;
        if split.iter().any(|t| t.revision == plan.revision.name()) {
            failing.extend(pods.iter().filter_map(|p| pod_problem(p)));
        }
        let mut ready = BTreeMap::new();
        for p in pods.iter().filter(|p| pod_ready(p)) {
            if let Some(node) = pod_node(p) {
                *ready.entry(node).or_insert(0) += 1;
            }
        }
        let status = PlacementStatus {
            summary: summary(&node_names, &ready, &plan.desired),
            ever_ready: placement.ever_ready() || !ready.is_empty(),
            ready,
        };
        if placement.status.as_ref() != Some(&status) {
            let api: Api<Placement> = Api::namespaced(ctx.client.clone(), &ns);
            api.patch_status(
                &placement.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await?;
        }
    }

    let status = service_status(&svc, &states, &failing, &config.domain);
    patch_service_status(ksvc, ctx, &status).await?;
    let key = (ns.clone(), name.clone());
    if lock(&ctx.state).routed.get(&key) != Some(&ksvc.metadata.generation) {
        ensure_services(ksvc, ctx).await?;
        lock(&ctx.state).routed.insert(key, ksvc.metadata.generation);
    }
    Ok(Action::requeue(TICK))
}

fn rev_of(p: &Pod) -> Option<&str> {
    p.labels().get(crate::crd::REVISION_LABEL).map(String::as_str)
}

/// Applies the Placement of a plan when it is missing or its spec differs; returns it.
async fn ensure_placement(
    ksvc: &KnativeService,
    plan: &Plan,
    ctx: &Context,
) -> Result<Arc<Placement>, Error> {
    let revision = &plan.revision;
    // An existing revision keeps its frozen template; only the node counts change. A new one
    // freezes the Service's current template (the one `next_revision` was cut from).
    let spec = match &plan.placement {
        Some(p) if p.spec.nodes == plan.desired => return Ok(p.clone()),
        Some(p) => PlacementSpec { nodes: plan.desired.clone(), ..p.spec.clone() },
        None => PlacementSpec {
            service: ksvc.name_any(),
            generation: revision.configuration_generation(),
            template: ksvc.spec.inner.template.clone(),
            nodes: plan.desired.clone(),
        },
    };
    let ns = revision.metadata.namespace();
    let owner = ksvc.controller_owner_ref(&()).expect("services have a name");
    let body = json!({
        "apiVersion": "ikukantai.dev/v1alpha1",
        "kind": "Placement",
        "metadata": {
            "name": revision.name(),
            "namespace": ns,
            "labels": revision_labels(revision),
            "ownerReferences": [owner],
        },
        "spec": spec,
    });
    let api: Api<Placement> = Api::namespaced(ctx.client.clone(), ns);
    let applied =
        api.patch(revision.name(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(body)).await?;
    Ok(Arc::new(applied))
}

/// Creates the missing Pods of a plan and deletes the extra ones (not ready first, then the
/// highest index), including those on nodes that are gone.
async fn converge_pods(
    service: &str,
    plan: &Plan,
    pods: &[&Arc<Pod>],
    owner: OwnerReference,
    queue_proxy_image: &str,
    ctx: &Context,
) -> Result<(), Error> {
    let ns = plan.revision.metadata.namespace().to_owned();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let index_of =
        |p: &Pod| p.labels().get(INDEX_LABEL).and_then(|i| i.parse::<u32>().ok()).unwrap_or(u32::MAX);
    let mut by_node: BTreeMap<String, Vec<&Arc<Pod>>> = BTreeMap::new();
    for p in pods {
        by_node.entry(pod_node(p).unwrap_or_default()).or_default().push(p);
    }
    // Deletions first: they free room on the node for what comes next.
    for (node, group) in &mut by_node {
        let want = plan.desired.get(node).copied().unwrap_or(0) as usize;
        if group.len() > want {
            group.sort_by_key(|p| (pod_ready(p), std::cmp::Reverse(index_of(p))));
            for p in group.iter().take(group.len() - want) {
                tracing::info!(pod = %p.name_any(), %node, "deleting instance");
                match api.delete(&p.name_any(), &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    for (node, &want) in &plan.desired {
        let have: Vec<u32> =
            by_node.get(node).map(|g| g.iter().map(|p| index_of(p)).collect()).unwrap_or_default();
        let mut missing = (want as usize).saturating_sub(have.len());
        let mut index = 0;
        while missing > 0 {
            if !have.contains(&index) {
                let params = PodParams {
                    service,
                    node,
                    index,
                    queue: &plan.queue,
                    queue_proxy_image,
                    controller_url: &ctx.settings.controller_url,
                    owner: owner.clone(),
                };
                match build_pod(&plan.revision, &params) {
                    Ok(pod) => {
                        tracing::info!(pod = %pod.name_any(), %node, "creating instance");
                        match api.create(&PostParams::default(), &pod).await {
                            Ok(_) => {}
                            Err(kube::Error::Api(e)) if e.code == 409 => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    Err(message) => {
                        tracing::warn!(revision = %plan.revision.name(), %message, "cannot build the instance's Pod");
                        return Ok(());
                    }
                }
                missing -= 1;
            }
            index += 1;
        }
    }
    Ok(())
}

fn invalid_status(ksvc: &KnativeService, message: &str) -> ServiceStatus {
    let mut status = ksvc.status.clone().unwrap_or_default();
    status.observed_generation = ksvc.metadata.generation;
    status.conditions = ["ConfigurationsReady", "Ready"]
        .into_iter()
        .map(|t| ikukantai_api::service::Condition {
            type_: t.into(),
            status: "False".into(),
            reason: Some("InvalidSpec".into()),
            message: Some(message.to_owned()),
            last_transition_time: None,
        })
        .collect();
    status
}

async fn patch_service_status(
    ksvc: &KnativeService,
    ctx: &Context,
    status: &ServiceStatus,
) -> Result<(), Error> {
    if ksvc.status.as_ref() == Some(status) {
        return Ok(());
    }
    let ns = ksvc.namespace().unwrap_or_else(|| "default".into());
    let api: Api<KnativeService> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch_status(&ksvc.name_any(), &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
        .await?;
    Ok(())
}

/// Applies the Kubernetes objects that make a Knative Service reachable and observable: an
/// ExternalName Service `NAME` pointing at the gateways, and — when the Prometheus operator is
/// installed — a headless `NAME-metrics` Service over the queue proxies' admin ports with a
/// ServiceMonitor.
async fn ensure_services(ksvc: &KnativeService, ctx: &Context) -> Result<(), Error> {
    use k8s_openapi::api::core::v1::Service as CoreService;
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let ns = ksvc.namespace().unwrap_or_else(|| "default".into());
    let name = ksvc.name_any();
    let owner = ksvc.controller_owner_ref(&()).expect("services have a name");
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let labels = json!({ SERVICE_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY });
    let services: Api<CoreService> = Api::namespaced(ctx.client.clone(), &ns);
    let route = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": ns, "labels": labels, "ownerReferences": [owner] },
        "spec": {
            "type": "ExternalName",
            "externalName": ctx.settings.gateway_host,
            "ports": [{ "name": "http", "port": 80, "protocol": "TCP" }]
        }
    });
    services.patch(&name, &pp, &Patch::Apply(route)).await?;
    if !ctx.settings.service_monitors {
        return Ok(());
    }
    let metrics_name = format!("{name}-metrics");
    let metrics = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": metrics_name, "namespace": ns, "labels": labels, "ownerReferences": [owner] },
        "spec": {
            "clusterIP": "None",
            "selector": { SERVICE_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY },
            "ports": [{ "name": "admin", "port": crate::pod::QUEUE_ADMIN_PORT, "protocol": "TCP" }]
        }
    });
    services.patch(&metrics_name, &pp, &Patch::Apply(metrics)).await?;
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"));
    let monitors: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ar);
    let monitor = json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": { "name": name, "namespace": ns, "labels": labels, "ownerReferences": [owner] },
        "spec": {
            "selector": { "matchLabels": labels },
            "endpoints": [{ "port": "admin", "path": "/metrics", "interval": "15s" }]
        }
    });
    monitors.patch(&name, &pp, &Patch::Apply(monitor)).await?;
    Ok(())
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
