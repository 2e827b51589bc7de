//! One reconcile of a live Service, in three phases: [`observe`] reads what the stores hold,
//! [`plan`] decides (pure, in `plan/`), [`converge`] makes the API server's objects say it.

use std::sync::Arc;

use ikukantai_api::config::FleetConfig;
use ikukantai_api::service::Service;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

use super::converge::converge;
use super::nodes::nodes;
use super::plan::{Now, Observed, Plan, Under, plan};
use super::state::ControlState;
use super::status::{invalid_status, patch_service_status};
use super::{Context, Error, RevisionLabels, to_local};
use crate::crd::{KnativeService, MANAGED_BY, MANAGED_BY_LABEL, Placement};

pub(super) async fn apply(ksvc: &KnativeService, ctx: &Context) -> Result<Action, Error> {
    let config = ctx.config();
    let svc = match to_local(ksvc, &config) {
        Ok(svc) => svc,
        Err(message) => {
            tracing::warn!(service = %ksvc.name_any(), %message, "invalid Service");
            let status = invalid_status(ksvc, &message);
            patch_service_status(ksvc, ctx, &status).await?;
            return Ok(Action::await_change());
        }
    };
    let now = Now { at: ctx.clock.now(), wall: ctx.clock.wall() };
    let observed = observe(svc, &config, ctx);
    let under = Under { config: &config, seed: ctx.settings.seed, started: ctx.started };
    let plan = {
        let mut state = ctx.state.lock();
        tidy(ctx, &mut state, &observed, now);
        plan(&observed, &mut state, under, now)
    };
    record(ctx, &plan);
    converge(ksvc, &plan, ctx).await
}

/// What the stores hold for the Service `svc`: its Placements, every managed Pod, the nodes.
fn observe(svc: Service, config: &FleetConfig, ctx: &Context) -> Observed {
    let (ns, name) = (svc.metadata.namespace().to_owned(), svc.metadata.name().to_owned());
    let mut placements: Vec<Arc<Placement>> = ctx
        .stores
        .placements
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()) && p.spec.service == name)
        .collect();
    placements.sort_by_key(|p| p.spec.generation);
    let pods: Vec<Arc<Pod>> = ctx
        .stores
        .pods
        .state()
        .into_iter()
        .filter(|p| p.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY))
        .collect();
    let nodes = nodes(&ctx.stores.nodes, config.kubernetes.node_capacity);
    Observed { service: svc, placements, pods, nodes }
}

/// Forgets what is gone before deciding: revisions whose Placement went long ago (and their
/// metrics), and nodes gone for a while.
fn tidy(ctx: &Context, state: &mut ControlState, observed: &Observed, now: Now) {
    let placements = &ctx.stores.placements;
    let gone =
        state.forget_gone(now.at, |(ns, rev)| placements.get(&ObjectRef::new(rev).within(ns)).is_some());
    for (namespace, revision) in gone {
        ctx.metrics.forget(&RevisionLabels { namespace, revision });
    }
    let present: Vec<String> = observed.nodes.iter().map(|n| n.name.clone()).collect();
    state.sweep_nodes(&present, now.at);
}

/// The plan's numbers, as the controller's metrics.
fn record(ctx: &Context, plan: &Plan<'_>) {
    let m = &ctx.metrics;
    m.nodes.set(plan.known_nodes as i64);
    for p in &plan.scaled {
        let labels = RevisionLabels {
            namespace: p.revision.metadata.namespace().to_owned(),
            revision: p.revision.name().to_owned(),
        };
        m.desired.get_or_create(&labels).set(i64::from(p.scaled.desired));
        m.ready.get_or_create(&labels).set(i64::from(p.scaled.ready));
        m.stable.get_or_create(&labels).set(p.scaled.observed_stable);
        m.panic.get_or_create(&labels).set(i64::from(p.scaled.panicking));
    }
}
