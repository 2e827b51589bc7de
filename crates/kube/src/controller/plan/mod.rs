//! The decision of one reconcile, as plain data: from what the stores hold ([`Observed`]) and
//! the controller's scaling memory, which Placement each revision gets, which of its Pods go and
//! come, and (given what the API server answers) the status to write and the route to publish.
//! No client, no IO: `apply` observes, [`plan`] decides, `converge` performs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ikukantai_api::annotations::revision_settings;
use ikukantai_api::config::FleetConfig;
use ikukantai_api::duration::format_duration;
use ikukantai_api::revision::{Revision, next_revision};
use ikukantai_api::service::Service;
use ikukantai_api::status::{awaits_readiness, resolve_traffic};
use ikukantai_policy::autoscaler::ScalingSpec;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::nodes::NodeInfo;
use super::pods::{Phase, container_failure, phase, pod_changes, pod_node, pod_problem, rev_of};
use super::state::ControlState;
use crate::crd::{Placement, PlacementSpec};
use crate::pod::pod_ready;

mod outcome;
mod scale;
#[cfg(test)]
mod tests;

pub(super) use outcome::{Converged, Outcome};

/// What the stores hold for one Service, read once at the start of its reconcile.
#[derive(Debug, Clone)]
pub(super) struct Observed {
    /// The Service in the local model (validated).
    pub(super) service: Service,
    /// Its Placements, one per revision, oldest first.
    pub(super) placements: Vec<Arc<Placement>>,
    /// Every Pod this platform manages, in every phase: they share the nodes' room.
    pub(super) pods: Vec<Arc<Pod>>,
    /// The cluster's nodes, in name order.
    pub(super) nodes: Vec<NodeInfo>,
}

impl Observed {
    fn namespace(&self) -> &str {
        self.service.metadata.namespace()
    }

    fn name(&self) -> &str {
        self.service.metadata.name()
    }

    /// Whether `p` is a Pod of `revision` (of this Service's namespace).
    fn is_of(&self, p: &Pod, revision: &str) -> bool {
        rev_of(p) == Some(revision) && p.namespace().as_deref() == Some(self.namespace())
    }

    /// The Pods of `revision`, in every phase.
    fn pods_of<'a>(&'a self, revision: &'a str) -> impl Iterator<Item = &'a Arc<Pod>> + Clone + 'a {
        self.pods.iter().filter(move |p| self.is_of(p, revision))
    }

    /// The live Pods of `revision`: its instances, starting or running.
    fn live_of<'a>(&'a self, revision: &'a str) -> impl Iterator<Item = &'a Arc<Pod>> + Clone + 'a {
        self.pods_of(revision).filter(|p| phase(p) == Phase::Live)
    }
}

/// Now, on both clocks.
#[derive(Debug, Clone, Copy)]
pub(super) struct Now {
    /// For durations measured in this process (the autoscaler's windows, backoffs).
    pub(super) at: Instant,
    /// To compare with times the API server wrote (creation, transitions).
    pub(super) wall: Timestamp,
}

/// What a plan is made under besides the cluster: the configuration and this controller's own.
#[derive(Debug, Clone, Copy)]
pub(super) struct Under<'a> {
    /// The fleet configuration (ConfigMaps).
    pub(super) config: &'a FleetConfig,
    /// Seed of the policies' random choices.
    pub(super) seed: u64,
    /// When this controller started: no request has waited at a gateway for longer.
    pub(super) started: Instant,
}

/// What to do with a revision's Placement.
#[derive(Debug, Clone)]
pub(super) enum PlacementChange {
    /// The stored one already says it.
    Keep(Arc<Placement>),
    /// Apply this spec: the stored one's with new node counts, or a new revision's.
    Apply(Box<PlacementSpec>),
}

/// A Pod to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Deletion {
    pub(super) pod: String,
    pub(super) node: String,
    /// Why it ended, if it did (`Failed`/`Succeeded`); `None` for an instance no longer wanted.
    pub(super) ended: Option<String>,
}

/// Which of a revision's Pods go and come.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct PodChanges {
    /// In order: the ones that ended, then extra live ones per node (not ready first, then the
    /// highest index). Deleted first: they free room on their nodes.
    pub(super) delete: Vec<Deletion>,
    /// Missing instances as (node, index), under indices no Pod of the revision on that node
    /// holds (a Terminating one keeps its name until its kubelet confirms its end).
    pub(super) create: Vec<(String, u32)>,
    /// The API server's refusal that holds the creates back until its backoff ends.
    pub(super) held: Option<String>,
}

/// What the autoscaler said of a revision (the controller's metrics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Scaled {
    /// Instances placed, over every node.
    pub(super) desired: u32,
    /// Ready instances.
    pub(super) ready: u32,
    /// Stable-window average concurrency.
    pub(super) observed_stable: f64,
    pub(super) panicking: bool,
}

/// The plan of one revision scaled in this reconcile.
#[derive(Debug, Clone)]
pub(super) struct RevisionPlan {
    pub(super) revision: Revision,
    pub(super) placement: PlacementChange,
    /// Desired instances per node name (every node of the cluster).
    pub(super) desired: BTreeMap<String, u32>,
    /// Its queue discipline (the sidecar's).
    pub(super) queue: String,
    pub(super) pods: PodChanges,
    pub(super) scaled: Scaled,
    /// Ready instances per node name, as observed.
    ready: BTreeMap<String, u32>,
    /// Why it failed, as observed (Pods, Placement, progress deadline).
    failure: Option<String>,
    /// It can take traffic (ever ready, or starts at zero without a failure).
    can_serve: bool,
    /// Traffic goes to it, so its Pods' problems are the Service's.
    routed: bool,
    /// Why its live Pods cannot serve, when routed.
    problems: Vec<String>,
}

/// The decision of one reconcile of a Service.
#[derive(Debug)]
pub(super) struct Plan<'a> {
    observed: &'a Observed,
    config: &'a FleetConfig,
    /// Every revision, oldest first, with its stored Placement (none for a new one).
    revisions: Vec<(Revision, Option<Arc<Placement>>)>,
    /// Per revision: it has had a ready instance.
    ever_ready: Vec<bool>,
    /// Per revision: why it failed before it was ever ready, as observed.
    failures: Vec<Option<String>>,
    /// The revisions scaled now: those whose settings are valid and placement known.
    pub(super) scaled: Vec<RevisionPlan>,
    /// The Kubernetes Services that make it reachable are to be claimed (not yet done for this
    /// generation).
    pub(super) claim_services: bool,
    /// Nodes the controller keeps scaling state for.
    pub(super) known_nodes: usize,
    /// Reconcile again after a tick: it has instances or wants some. One at zero waits for a
    /// change or for demand (a gateway's push), as Knative's does.
    pub(super) active: bool,
}

/// Decides one reconcile of `observed`'s Service: cuts a new revision if the template changed,
/// then per revision how many instances on which node, and what that means for its Placement and
/// Pods. `state` is the controller's scaling memory (autoscaler windows, node indices, full
/// nodes, refusals); the decision updates it, as a tick does.
pub(super) fn plan<'a>(
    observed: &'a Observed,
    state: &mut ControlState,
    under: Under<'a>,
    now: Now,
) -> Plan<'a> {
    let config = under.config;
    let revisions = revisions(observed);
    let (ever_ready, failures) = readiness(observed, &revisions, config, now.wall);
    let states = outcome::revision_states(&revisions, &ever_ready, &failures, config);
    let split = resolve_traffic(&observed.service.spec, &states);
    let idx: Vec<usize> = observed.nodes.iter().map(|n| state.node_index(&n.name)).collect();
    let known_nodes = state.nodes.iter().flatten().count();
    let mut scaled = Vec::new();
    for (i, (revision, placement)) in revisions.iter().enumerate() {
        let routed = split.iter().any(|t| t.revision == revision.name());
        let reachable = routed || awaits_readiness(&states, revision.name());
        let Some(decided) = scale::decide(observed, revision, reachable, &idx, state, under, now) else {
            continue;
        };
        let desired: BTreeMap<String, u32> =
            observed.nodes.iter().zip(&idx).map(|(n, &i)| (n.name.clone(), decided.per_node[i])).collect();
        let key = (observed.namespace().to_owned(), revision.name().to_owned());
        let mut pods = pod_changes(&observed.pods_of(revision.name()).collect::<Vec<_>>(), &desired);
        if !pods.create.is_empty() {
            pods.held = state.refusal(&key, now.at).map(|r| r.message.clone());
        }
        let live = || observed.live_of(revision.name());
        let mut ready = BTreeMap::new();
        for node in live().filter(|p| pod_ready(p)).filter_map(|p| pod_node(p)) {
            *ready.entry(node).or_insert(0) += 1;
        }
        scaled.push(RevisionPlan {
            placement: placement_change(observed, revision, placement.as_ref(), &desired),
            revision: revision.clone(),
            desired,
            queue: decided.queue,
            pods,
            scaled: decided.scaled,
            ready,
            failure: failures[i].clone(),
            can_serve: states[i].ready,
            routed,
            problems: if routed { live().filter_map(|p| pod_problem(p)).collect() } else { Vec::new() },
        });
    }
    let key = (observed.namespace().to_owned(), observed.name().to_owned());
    let claim_services = state.routed.get(&key) != Some(&observed.service.metadata.generation);
    let active = observed.pods.iter().any(|p| outcome::of_service(observed, p))
        || scaled.iter().any(|p| p.desired.values().any(|&n| n > 0));
    Plan { observed, config, revisions, ever_ready, failures, scaled, claim_services, known_nodes, active }
}

/// The Service's revisions, oldest first: one per Placement, and a new one if the template
/// changed since the latest.
fn revisions(observed: &Observed) -> Vec<(Revision, Option<Arc<Placement>>)> {
    let mut revisions: Vec<(Revision, Option<Arc<Placement>>)> =
        observed.placements.iter().map(|p| (p.revision(), Some(p.clone()))).collect();
    let existing: Vec<Revision> = revisions.iter().map(|(r, _)| r.clone()).collect();
    if let Some(new) = next_revision(&observed.service, &existing) {
        tracing::info!(service = %observed.name(), revision = %new.name(), "new revision");
        revisions.push((new, None));
    }
    revisions
}

/// Per revision, whether it has ever been ready, and why it failed if it never was.
fn readiness(
    observed: &Observed,
    revisions: &[(Revision, Option<Arc<Placement>>)],
    config: &FleetConfig,
    wall: Timestamp,
) -> (Vec<bool>, Vec<Option<String>>) {
    let ever_ready: Vec<bool> = revisions
        .iter()
        .map(|(r, p)| {
            p.as_ref().is_some_and(|p| p.ever_ready()) || observed.live_of(r.name()).any(|x| pod_ready(x))
        })
        .collect();
    // A revision that was never ready fails with its Pods' container failure (crash loop, image
    // pull, ...), and stays failed once its Placement says so: its Pods are then scaled away, and
    // a failure read from them alone would vanish with them and start them again.
    let failures = revisions
        .iter()
        .zip(&ever_ready)
        .map(|((r, p), &ready)| {
            if ready {
                return None;
            }
            let pods = || observed.live_of(r.name());
            p.as_ref()
                .and_then(|p| p.failure().map(str::to_owned))
                .or_else(|| pods().find_map(|x| container_failure(x)))
                .or_else(|| {
                    let deadline = past_deadline(r, p.as_ref()?, config, wall)?;
                    let why =
                        pods().find_map(|x| pod_problem(x)).map(|w| format!(" ({w})")).unwrap_or_default();
                    Some(format!(
                        "ProgressDeadlineExceeded: not ready within {}{why}",
                        format_duration(deadline)
                    ))
                })
        })
        .collect();
    (ever_ready, failures)
}

/// The Placement a revision needs for `desired`. An existing revision keeps its frozen template;
/// only the node counts change. A new one freezes the Service's current template (the one
/// `next_revision` was cut from).
fn placement_change(
    observed: &Observed,
    revision: &Revision,
    stored: Option<&Arc<Placement>>,
    desired: &BTreeMap<String, u32>,
) -> PlacementChange {
    match stored {
        Some(p) if p.spec.nodes == *desired => PlacementChange::Keep(p.clone()),
        Some(p) => {
            PlacementChange::Apply(Box::new(PlacementSpec { nodes: desired.clone(), ..p.spec.clone() }))
        }
        None => PlacementChange::Apply(Box::new(PlacementSpec {
            service: observed.name().to_owned(),
            generation: revision.configuration_generation(),
            template: observed.service.spec.template.clone(),
            nodes: desired.clone(),
        })),
    }
}

pub(super) fn starts_at_zero(revision: &Revision, config: &FleetConfig) -> bool {
    revision_settings(&revision.metadata.annotations, config, "spec.template.metadata.annotations").is_ok_and(
        |s| {
            ScalingSpec::resolve(&config.autoscaler, revision.spec.container_concurrency(), &s.scaling)
                .starts_at_zero()
        },
    )
}

/// The progress deadline of a revision that should be ready by now and is not, if it is past:
/// its `serving.knative.dev/progress-deadline`, else the fleet's, from its Placement's creation
/// (Knative's `ProgressDeadlineExceeded`: a revision that never gets ready fails instead of
/// deploying for ever). A revision that starts at zero is ready without instances.
fn past_deadline(
    revision: &Revision,
    placement: &Placement,
    config: &FleetConfig,
    now: Timestamp,
) -> Option<Duration> {
    if starts_at_zero(revision, config) {
        return None;
    }
    let settings =
        revision_settings(&revision.metadata.annotations, config, "spec.template.metadata.annotations")
            .ok()?;
    let deadline = settings.progress_deadline.unwrap_or(config.kubernetes.progress_deadline);
    let created = placement.metadata.creation_timestamp.as_ref()?.0;
    let elapsed = now.as_second().saturating_sub(created.as_second());
    (elapsed >= i64::try_from(deadline.as_secs()).unwrap_or(i64::MAX)).then_some(deadline)
}
