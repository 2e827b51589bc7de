//! One reconcile of a live Service: revisions, the scaling decision, Placements, Pods, status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ikukantai_api::annotations::revision_settings;
use ikukantai_api::config::FleetConfig;
use ikukantai_api::duration::format_duration;
use ikukantai_api::revision::{Revision, SERVICE_LABEL, next_revision};
use ikukantai_api::status::{RevisionState, awaits_readiness, resolve_traffic, service_status};
use ikukantai_policy::autoscaler::{ScalingSpec, Stat, TickInputs};
use ikukantai_policy::registry::{self, PolicyParams};
use ikukantai_policy::scaler::{RevisionScaler, ScaleInputs};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::nodes::{nodes, tolerates};
use super::pods::{
    Phase, container_failure, converge_pods, phase, pod_node, pod_problem, rev_of, unschedulable,
};
use super::routes::{publish_route, route_spec};
use super::services::{ensure_services, mark_not_owned};
use super::state::FULL_NODE_HOLD;
use super::status::{invalid_status, patch_service_status, patch_status};
use super::{Context, Error, RevisionLabels, TICK, to_local};
use crate::crd::{
    FIELD_MANAGER, KnativeService, MANAGED_BY, MANAGED_BY_LABEL, Placement, PlacementSpec, PlacementStatus,
    summary,
};
use crate::pod::{pod_ready, revision_labels};

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

/// What routing needs to know of each revision: ready (ever, or starting at zero without a
/// failure) and its failure.
fn revision_states<'a>(
    revisions: &'a [(Revision, Option<Arc<Placement>>)],
    ever_ready: &[bool],
    failures: &'a [Option<String>],
    config: &FleetConfig,
) -> Vec<RevisionState<'a>> {
    revisions
        .iter()
        .zip(ever_ready.iter().zip(failures))
        .map(|((r, _), (&ever_ready, failure))| RevisionState {
            name: r.name(),
            ready: ever_ready || (failure.is_none() && starts_at_zero(r, config)),
            failure: failure.as_deref(),
        })
        .collect()
}

pub(super) struct Plan {
    pub(super) revision: Revision,
    pub(super) placement: Option<Arc<Placement>>,
    pub(super) desired: BTreeMap<String, u32>,
    pub(super) queue: String,
}

pub(super) async fn apply(ksvc: &KnativeService, ctx: &Context) -> Result<Action, Error> {
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
    let wall = ctx.clock.wall();

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

    // Every managed Pod (they share the nodes' room), in every phase.
    let all_pods: Vec<Arc<Pod>> = ctx
        .stores
        .pods
        .state()
        .into_iter()
        .filter(|p| p.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY))
        .collect();
    let of_revision = |p: &Pod, rev: &str| rev_of(p) == Some(rev) && p.namespace().as_deref() == Some(&ns);
    let live = |p: &Pod| phase(p) == Phase::Live;
    let node_infos = nodes(&ctx.stores.nodes, config.kubernetes.node_capacity);
    let node_names: Vec<String> = node_infos.iter().map(|n| n.name.clone()).collect();
    let ever_ready: Vec<bool> = revisions
        .iter()
        .map(|(r, p)| {
            p.as_ref().is_some_and(|p| p.ever_ready())
                || all_pods.iter().any(|x| of_revision(x, r.name()) && live(x) && pod_ready(x))
        })
        .collect();
    // A revision that was never ready fails with its Pods' container failure (crash loop, image
    // pull, ...), and stays failed once its Placement says so: its Pods are then scaled away, and
    // a failure read from them alone would vanish with them and start them again.
    let failures: Vec<Option<String>> = revisions
        .iter()
        .zip(&ever_ready)
        .map(|((r, p), &ready)| {
            if ready {
                return None;
            }
            let pods = || all_pods.iter().filter(|x| of_revision(x, r.name()) && live(x));
            p.as_ref()
                .and_then(|p| p.failure().map(str::to_owned))
                .or_else(|| pods().find_map(|x| container_failure(x)))
                .or_else(|| {
                    let p = p.as_ref()?;
                    let deadline = past_deadline(r, p, &config, wall)?;
                    let why =
                        pods().find_map(|x| pod_problem(x)).map(|w| format!(" ({w})")).unwrap_or_default();
                    Some(format!(
                        "ProgressDeadlineExceeded: not ready within {}{why}",
                        format_duration(deadline)
                    ))
                })
        })
        .collect();
    let states = revision_states(&revisions, &ever_ready, &failures, &config);
    let split = resolve_traffic(&svc.spec, &states);

    // Decide, per revision, how many instances on which node.
    let mut plans = Vec::new();
    {
        let mut state = ctx.state.lock();
        let placements = &ctx.stores.placements;
        let gone =
            state.forget_gone(now, |(ns, rev)| placements.get(&ObjectRef::new(rev).within(ns)).is_some());
        for (namespace, revision) in gone {
            ctx.metrics.forget(&RevisionLabels { namespace, revision });
        }
        state.sweep_nodes(&node_names, now);
        let idx: Vec<usize> = node_infos.iter().map(|n| state.node_index(&n.name)).collect();
        ctx.metrics.nodes.set(state.nodes.iter().flatten().count() as i64);
        let n = state.nodes.len();
        // Fields borrowed apart: the RTT matrix is read in place while scalers change.
        let state = &mut *state;
        let rtt = &state.rtt;
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
            let mine = |p: &&Arc<Pod>| of_revision(p, &rev);
            let mut current = vec![0u32; n];
            let mut room = vec![0u32; n];
            let mut ready = 0;
            for p in all_pods.iter().filter(mine).filter(|p| live(p)) {
                let Some(node) = pod_node(p) else { continue };
                // One the scheduler cannot fit on its node is no instance: it is replaced on
                // another node, and this node takes none of the revision's for a while.
                if unschedulable(p).is_some() {
                    state.full.insert((ns.clone(), rev.clone(), node), now + FULL_NODE_HOLD);
                    continue;
                }
                if let Some(i) = state.index_of(&node) {
                    current[i] += 1;
                }
                ready += u32::from(pod_ready(p));
            }
            for (info, &i) in node_infos.iter().zip(&idx) {
                if !info.ready {
                    // A node that lost readiness keeps its instances until they would be
                    // evicted (a short partition heals), then takes nothing: they are replaced.
                    let holds = info.holds_instances(revision.spec.tolerations.as_ref(), wall);
                    room[i] = if holds { current[i] } else { 0 };
                    continue;
                }
                // Other revisions' instances use the node, and so does every Pod still draining
                // there; Failed ones do not.
                let others = all_pods
                    .iter()
                    .filter(|p| pod_node(p).as_deref() == Some(info.name.as_str()))
                    .filter(|p| match phase(p) {
                        Phase::Live => !mine(p),
                        Phase::Going => true,
                        Phase::Done => false,
                    })
                    .count() as u32;
                let free = info.capacity.saturating_sub(others);
                // A cordoned node, one whose taints the revision does not tolerate, one its node
                // selector or required affinity rules out, or one the scheduler just found full,
                // keeps what it has and gets nothing new.
                let full =
                    state.full.get(&(ns.clone(), rev.clone(), info.name.clone())).is_some_and(|&t| t > now);
                let closed = info.cordoned
                    || !tolerates(revision.spec.tolerations.as_ref(), &info.taints)
                    || !info.admits(&revision.spec)
                    || full;
                room[i] = if closed { free.min(current[i]) } else { free };
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
                let mut scaler = RevisionScaler::new(spec, policy, now, current.iter().sum());
                for (at, origin) in state.pokes.remove(&key).unwrap_or_default() {
                    scaler.autoscaler.poke(at, origin);
                }
                state.scalers.insert(key.clone(), scaler);
            }
            state.decided.insert(key.clone(), now);
            let scaler = state.scalers.get_mut(&key).expect("inserted above");
            // Idle instances and gateways push nothing: a zero now makes the seconds since the
            // last push count as zeros (not dropped from the windows), as if they had pushed them.
            scaler.autoscaler.record(now, &Stat::default());
            for &i in &idx {
                scaler.autoscaler.record_origin(now, i, 0.0);
            }
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
                    rtt,
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
    let mut refused: BTreeMap<String, String> = BTreeMap::new();
    for plan in &plans {
        let placement = ensure_placement(ksvc, plan, ctx).await?;
        let owner = placement.controller_owner_ref(&()).expect("placements have a name");
        let pods: Vec<&Arc<Pod>> = all_pods.iter().filter(|p| of_revision(p, plan.revision.name())).collect();
        let image = ctx.sidecar_image(&config);
        let refusal =
            converge_pods(&name, plan, &pods, owner, image, &config.kubernetes.sidecar, ctx).await?;
        let live_pods: Vec<&Arc<Pod>> = pods.into_iter().filter(|p| live(p)).collect();
        let rev = plan.revision.name();
        if split.iter().any(|t| t.revision == rev) {
            failing.extend(live_pods.iter().filter_map(|p| pod_problem(p)));
            failing.extend(refusal.iter().map(|r| format!("{rev}: {r}")));
        }
        // A refused create fails a revision that was never ready, like its Pods' own errors.
        let state = states.iter().find(|s| s.name == rev);
        let failure = state.and_then(|s| s.failure).map(str::to_owned).or_else(|| {
            refusal.clone().filter(|_| !placement.ever_ready() && state.is_some_and(|s| !s.ready))
        });
        if let Some(r) = &failure {
            refused.insert(rev.to_owned(), r.clone());
        }
        let mut ready = BTreeMap::new();
        for p in live_pods.iter().filter(|p| pod_ready(p)) {
            if let Some(node) = pod_node(p) {
                *ready.entry(node).or_insert(0) += 1;
            }
        }
        let status = PlacementStatus {
            summary: summary(&node_names, &ready, &plan.desired),
            ever_ready: placement.ever_ready() || !ready.is_empty(),
            failure: if ready.is_empty() { failure } else { None },
            ready,
        };
        if placement.status.as_ref() != Some(&status) {
            let api: Api<Placement> = Api::namespaced(ctx.client.clone(), &ns);
            patch_status(&api, &placement.name_any(), placement.status.as_ref(), &status).await?;
        }
    }

    // Status from what converging learnt: a revision whose Pods were refused has failed.
    let failures: Vec<Option<String>> = revisions
        .iter()
        .zip(&failures)
        .zip(&ever_ready)
        .map(|(((r, _), f), &ready)| f.clone().or_else(|| refused.get(r.name()).filter(|_| !ready).cloned()))
        .collect();
    let states = revision_states(&revisions, &ever_ready, &failures, &config);
    let mut status = service_status(&svc, &states, &failing, &config.domain);
    // The placeholder Service, once per generation while ours; every time while someone else's.
    let key = (ns.clone(), name.clone());
    if ctx.state.lock().routed.get(&key) != Some(&ksvc.metadata.generation) {
        match ensure_services(ksvc, ctx).await? {
            None => {
                ctx.state.lock().routed.insert(key, ksvc.metadata.generation);
            }
            Some(not_owned) => {
                tracing::warn!(service = %name, %not_owned, "route not ready");
                mark_not_owned(&mut status, &not_owned);
            }
        }
    }
    patch_service_status(ksvc, ctx, &status).await?;

    // What gateways route by.
    let split = resolve_traffic(&svc.spec, &states);
    let routed: Vec<(&Revision, Option<&str>)> =
        revisions.iter().zip(&failures).map(|((r, _), f)| (r, f.as_deref())).collect();
    let service_pods: Vec<Arc<Pod>> = all_pods
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(&ns) && p.labels().get(SERVICE_LABEL) == Some(&name))
        .cloned()
        .collect();
    publish_route(ksvc, route_spec(&split, &routed, &service_pods, &config), ctx).await?;

    // The autoscaler ticks while the Service has instances or wants some; one at zero waits for
    // a change or for demand (a gateway's push), as Knative's does.
    let active = !service_pods.is_empty() || plans.iter().any(|p| p.desired.values().any(|&n| n > 0));
    Ok(if active { Action::requeue(TICK) } else { Action::await_change() })
}

/// Applies the Placement of a plan when it is missing or its spec differs; returns it.
pub(super) async fn ensure_placement(
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
