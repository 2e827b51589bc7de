//! Writing status (the Knative Service's and the Placements') as merge patches that say what
//! changed, `null` included: a merge patch keeps every map key it does not mention.

use ikukantai_api::service::ServiceStatus;
use ikukantai_api::status::with_transition_times;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

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

/// Writes `status` as the Service's, each condition's `lastTransitionTime` carried over from
/// the stored status while its status is unchanged, set to now when it changed.
pub(super) async fn patch_service_status(
    ksvc: &KnativeService,
    ctx: &Context,
    status: &ServiceStatus,
) -> Result<(), Error> {
    let now =
        Timestamp::from_second(ctx.clock.wall().as_second()).unwrap_or(Timestamp::UNIX_EPOCH).to_string();
    let status = &with_transition_times(ksvc.status.as_ref(), status.clone(), &now);
    if ksvc.status.as_ref() == Some(status) {
        return Ok(());
    }
    let ns = ksvc.namespace().unwrap_or_else(|| "default".into());
    let api: Api<KnativeService> = Api::namespaced(ctx.client.clone(), &ns);
    patch_status(&api, &ksvc.name_any(), ksvc.status.as_ref(), status).await
}

/// Writes `next` as `name`'s status, as a merge patch from `stored` (what the store holds).
pub(super) async fn patch_status<K, S>(
    api: &Api<K>,
    name: &str,
    stored: Option<&S>,
    next: &S,
) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: serde::Serialize,
{
    let next = serde_json::to_value(next).unwrap_or_default();
    let patch = match stored.map(serde_json::to_value) {
        Some(Ok(old)) => merge_patch(&old, &next),
        _ => next,
    };
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({ "status": patch }))).await?;
    Ok(())
}

/// The RFC 7386 merge patch that turns `old` into `new`: changed and added fields, and `null`
/// for every field `new` no longer has (objects recursively; lists and scalars whole).
pub(super) fn merge_patch(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut patch = serde_json::Map::new();
            for (k, v) in n {
                match o.get(k) {
                    Some(was) if was == v => {}
                    Some(was) => {
                        patch.insert(k.clone(), merge_patch(was, v));
                    }
                    None => {
                        patch.insert(k.clone(), v.clone());
                    }
                }
            }
            for k in o.keys().filter(|k| !n.contains_key(*k)) {
                patch.insert(k.clone(), Value::Null);
            }
            Value::Object(patch)
        }
        _ => new.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_patch_removes_the_keys_a_map_lost() {
        let old = json!({"ready": {"node1": 1, "node2": 2}, "summary": "1-2/1-2", "failure": "x"});
        let new = json!({"ready": {"node2": 2}, "summary": "0-2/0-2"});
        let patch = merge_patch(&old, &new);
        assert_eq!(patch, json!({"ready": {"node1": null}, "summary": "0-2/0-2", "failure": null}));
        let mut stored = old;
        // As the API server applies it (RFC 7386).
        json_patch::merge(&mut stored, &patch);
        assert_eq!(stored, new);
        assert_eq!(merge_patch(&new, &new), json!({}));
    }
}
