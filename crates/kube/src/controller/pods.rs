//! Instance Pods: what state each is in, and creating/deleting them to match a plan.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};

use super::apply::Plan;
use super::{Context, Error};
use crate::crd::NODE_LABEL;
use crate::pod::{INDEX_LABEL, PodParams, build_pod, pod_ready};

pub(super) fn pod_node(p: &Pod) -> Option<String> {
    p.spec.as_ref().and_then(|s| s.node_name.clone()).or_else(|| p.labels().get(NODE_LABEL).cloned())
}

/// Why a Pod cannot run, if it cannot (image pull errors, crash loops, unschedulable).
pub(super) fn pod_problem(p: &Pod) -> Option<String> {
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

pub(super) fn rev_of(p: &Pod) -> Option<&str> {
    p.labels().get(crate::crd::REVISION_LABEL).map(String::as_str)
}

/// Creates the missing Pods of a plan and deletes the extra ones (not ready first, then the
/// highest index), including those on nodes that are gone.
pub(super) async fn converge_pods(
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
