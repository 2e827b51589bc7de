//! The Kubernetes objects that make a Knative Service reachable and observable. Each is created
//! only if absent and then kept only while this Service controls it: one a user made with the
//! same name stays theirs (Knative's "NotOwned"), never taken over or garbage-collected with the
//! Knative Service.

use ikukantai_api::revision::SERVICE_LABEL;
use ikukantai_api::service::{Condition, ServiceStatus};
use k8s_openapi::api::core::v1::Service as CoreService;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{Context, Error};
use crate::crd::{FIELD_MANAGER, KnativeService, MANAGED_BY, MANAGED_BY_LABEL};

/// Who holds an object of a given name.
enum Holder {
    Nobody,
    /// This Knative Service (its controller owner reference).
    Us,
    Someone,
}

async fn holder<K>(api: &Api<K>, name: &str, uid: &str) -> Result<Holder, Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    Ok(match api.get_opt(name).await? {
        None => Holder::Nobody,
        Some(o) if o.owner_references().iter().any(|r| r.controller == Some(true) && r.uid == uid) => {
            Holder::Us
        }
        Some(_) => Holder::Someone,
    })
}

/// Creates `body` as `name` if nobody holds that name, or applies it if this Service does;
/// `false` if someone else holds it (left untouched).
async fn claim<K>(api: &Api<K>, name: &str, uid: &str, body: Value) -> Result<bool, Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    match holder(api, name, uid).await? {
        Holder::Someone => Ok(false),
        Holder::Us => {
            api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(body)).await?;
            Ok(true)
        }
        Holder::Nobody => {
            let object: K = serde_json::from_value(body).map_err(kube::Error::SerdeError)?;
            match api
                .create(
                    &PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() },
                    &object,
                )
                .await
            {
                Ok(_) => Ok(true),
                // Someone created it since: whose it is shows on the next reconcile.
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Creates (or keeps) the Kubernetes objects that make a Knative Service reachable and
/// observable: an ExternalName Service `NAME` pointing at the gateways, and — when the
/// Prometheus operator is installed — a headless `NAME-metrics` Service over the queue proxies'
/// admin ports with a ServiceMonitor. Returns Knative's "not owned" message if a Service
/// `NAME` exists that this Knative Service does not control.
pub(super) async fn ensure_services(ksvc: &KnativeService, ctx: &Context) -> Result<Option<String>, Error> {
    let ns = ksvc.namespace().unwrap_or_else(|| "default".into());
    let name = ksvc.name_any();
    let uid = ksvc.uid().unwrap_or_default();
    let owner = ksvc.controller_owner_ref(&()).expect("services have a name");
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
    if !claim(&services, &name, &uid, route).await? {
        return Ok(Some(format!("There is an existing placeholder Service {name:?} that we do not own.")));
    }
    if !ctx.settings.service_monitors {
        return Ok(None);
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
    if !claim(&services, &metrics_name, &uid, metrics).await? {
        tracing::warn!(service = %name, existing = %metrics_name, "a Service of that name is not ours; no metrics Service");
    }
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
    if !claim(&monitors, &name, &uid, monitor).await? {
        tracing::warn!(service = %name, "a ServiceMonitor of that name is not ours; left as is");
    }
    Ok(None)
}

/// The status of a Service whose placeholder Service someone else holds: routes not ready, as
/// in Knative (`RoutesReady` and `Ready` False, reason `NotOwned`).
pub(super) fn mark_not_owned(status: &mut ServiceStatus, message: &str) {
    for type_ in ["RoutesReady", "Ready"] {
        let c = Condition {
            type_: type_.into(),
            status: "False".into(),
            reason: Some("NotOwned".into()),
            message: Some(message.to_owned()),
            last_transition_time: None,
        };
        match status.conditions.iter_mut().find(|x| x.type_ == type_) {
            Some(x) => *x = c,
            None => status.conditions.push(c),
        }
    }
}
