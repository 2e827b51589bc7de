//! The ServiceRoute the controller publishes for each Knative Service: everything gateways route
//! by, so they need not watch Pods, Services and Placements themselves.

use std::sync::Arc;

use ikukantai_api::annotations::{PRIORITY_RULES_ANNOTATION, revision_settings};
use ikukantai_api::config::FleetConfig;
use ikukantai_api::revision::Revision;
use ikukantai_api::status::ResolvedTarget;
use ikukantai_dataplane::gateway::RevisionRoute;
use ikukantai_policy::autoscaler::ScalingSpec;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::pods::{Phase, phase, rev_of};
use super::{Context, Error};
use crate::crd::{
    FIELD_MANAGER, InstanceAddress, KnativeService, MANAGED_BY, MANAGED_BY_LABEL, RevisionRouting,
    ServiceRoute, ServiceRouteSpec, TrafficRoute,
};
use crate::pod::pod_ready;

/// A Pod a gateway may send to: live, ready, with an address and a node.
fn address(p: &Pod) -> Option<InstanceAddress> {
    if phase(p) != Phase::Live || !pod_ready(p) {
        return None;
    }
    let ip = p.status.as_ref()?.pod_ip.clone()?;
    let node = p.spec.as_ref()?.node_name.clone()?;
    Some(InstanceAddress { name: p.name_any(), node, ip })
}

/// The routes of one Service: `split` (the resolved traffic), and each revision (with its
/// failure, if it failed) with its ready instances among `pods` (the Service's Pods).
pub(super) fn route_spec(
    split: &[ResolvedTarget],
    revisions: &[(&Revision, Option<&str>)],
    pods: &[Arc<Pod>],
    config: &FleetConfig,
) -> ServiceRouteSpec {
    let traffic = split
        .iter()
        .map(|t| TrafficRoute { revision: t.revision.clone(), percent: t.percent, tag: t.tag.clone() })
        .collect();
    let revisions = revisions
        .iter()
        .filter_map(|(r, failure)| {
            let settings =
                revision_settings(&r.metadata.annotations, config, "spec.template.metadata.annotations")
                    .ok()?;
            let spec =
                ScalingSpec::resolve(&config.autoscaler, r.spec.container_concurrency(), &settings.scaling);
            // Built as the local fleet builds it; gateways read it back with `RevisionRouting::route`.
            let route = RevisionRoute {
                failure: failure.map(str::to_owned),
                ..RevisionRoute::of(r, &settings, config, &spec, Vec::new())
            };
            let rules = r.metadata.annotations.get(PRIORITY_RULES_ANNOTATION).map_or("", String::as_str);
            let mut instances: Vec<InstanceAddress> =
                pods.iter().filter(|p| rev_of(p) == Some(r.name())).filter_map(|p| address(p)).collect();
            instances.sort_by(|a, b| a.name.cmp(&b.name));
            Some(RevisionRouting::of(&route, rules, instances))
        })
        .collect();
    ServiceRouteSpec { traffic, revisions }
}

/// Applies the Service's ServiceRoute when the store's differs.
pub(super) async fn publish_route(
    ksvc: &KnativeService,
    spec: ServiceRouteSpec,
    ctx: &Context,
) -> Result<(), Error> {
    let ns = ksvc.namespace().unwrap_or_else(|| "default".into());
    let name = ksvc.name_any();
    if ctx.stores.routes.get(&ObjectRef::new(&name).within(&ns)).is_some_and(|r| r.spec == spec) {
        return Ok(());
    }
    let owner = ksvc.controller_owner_ref(&()).expect("services have a name");
    let body = json!({
        "apiVersion": "ikukantai.dev/v1alpha1",
        "kind": "ServiceRoute",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": { MANAGED_BY_LABEL: MANAGED_BY },
            "ownerReferences": [owner],
        },
        "spec": spec,
    });
    let api: Api<ServiceRoute> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(body)).await?;
    Ok(())
}
