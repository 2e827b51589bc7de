//! Performing a [`Plan`]: Placements, Pods, Placement status, then the Kubernetes Services, the
//! Knative Service's status and its ServiceRoute. Each write only where the stores differ.

use std::sync::Arc;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::plan::{Converged, Outcome, PlacementChange, Plan, RevisionPlan};
use super::pods::converge_pods;
use super::routes::publish_route;
use super::services::{ensure_services, mark_not_owned};
use super::status::{patch_service_status, patch_status};
use super::{Context, Error, TICK};
use crate::crd::{FIELD_MANAGER, KnativeService, Placement};
use crate::pod::revision_labels;

/// Makes the cluster say what `plan` decided for `ksvc`; returns when to reconcile it again.
pub(super) async fn converge(ksvc: &KnativeService, plan: &Plan<'_>, ctx: &Context) -> Result<Action, Error> {
    let config = plan.config();
    let nodes = plan.node_names();
    let mut converged = Vec::new();
    for revision in &plan.scaled {
        let placement = ensure_placement(ksvc, revision, ctx).await?;
        let owner = placement.controller_owner_ref(&()).expect("placements have a name");
        let image = ctx.sidecar_image(config);
        let refusal =
            converge_pods(&ksvc.name_any(), revision, owner, image, &config.kubernetes.sidecar, ctx).await?;
        let c = Converged { refusal, ever_ready: placement.ever_ready() };
        let status = revision.placement_status(&nodes, &c);
        if placement.status.as_ref() != Some(&status) {
            let api: Api<Placement> =
                Api::namespaced(ctx.client.clone(), revision.revision.metadata.namespace());
            patch_status(&api, &placement.name_any(), placement.status.as_ref(), &status).await?;
        }
        converged.push(c);
    }
    let Outcome { mut status, route } = plan.outcome(&converged);
    // The placeholder Service, once per generation while ours; every time while someone else's.
    if plan.claim_services {
        let key = (ksvc.namespace().unwrap_or_else(|| "default".into()), ksvc.name_any());
        match ensure_services(ksvc, ctx).await? {
            None => {
                ctx.state.lock().routed.insert(key, ksvc.metadata.generation);
            }
            Some(not_owned) => {
                tracing::warn!(service = %key.1, %not_owned, "route not ready");
                mark_not_owned(&mut status, &not_owned);
            }
        }
    }
    patch_service_status(ksvc, ctx, &status).await?;
    publish_route(ksvc, route, ctx).await?;
    Ok(if plan.active { Action::requeue(TICK) } else { Action::await_change() })
}

/// Applies a revision's Placement when the plan changes it; returns it as stored.
async fn ensure_placement(
    ksvc: &KnativeService,
    plan: &RevisionPlan,
    ctx: &Context,
) -> Result<Arc<Placement>, Error> {
    let spec = match &plan.placement {
        PlacementChange::Keep(p) => return Ok(p.clone()),
        PlacementChange::Apply(spec) => spec,
    };
    let revision = &plan.revision;
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
