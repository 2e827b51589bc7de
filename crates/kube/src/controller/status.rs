//! Writing status: the Knative Service's.

use ikukantai_api::service::ServiceStatus;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::{Context, Error};
use crate::crd::KnativeService;

pub(super) fn invalid_status(ksvc: &KnativeService, message: &str) -> ServiceStatus {
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

pub(super) async fn patch_service_status(
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
