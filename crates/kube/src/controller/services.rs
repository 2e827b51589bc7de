//! The Kubernetes objects that make a Knative Service reachable and observable.

use ikukantai_api::revision::SERVICE_LABEL;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{Context, Error};
use crate::crd::{FIELD_MANAGER, KnativeService, MANAGED_BY, MANAGED_BY_LABEL};

/// Applies the Kubernetes objects that make a Knative Service reachable and observable: an
/// ExternalName Service `NAME` pointing at the gateways, and — when the Prometheus operator is
/// installed — a headless `NAME-metrics` Service over the queue proxies' admin ports with a
/// ServiceMonitor.
pub(super) async fn ensure_services(ksvc: &KnativeService, ctx: &Context) -> Result<(), Error> {
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
