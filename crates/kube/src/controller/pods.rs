//! Instance Pods: what state each is in, which go and come to match a plan, and doing it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ikukantai_api::config::SidecarResources;
use ikukantai_policy::occupancy::surplus;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};

use super::plan::{Deletion, PodChanges, RevisionPlan};
use super::{Context, Error};
use crate::crd::{NODE_ANNOTATION, NODE_LABEL};
use crate::pod::{INDEX_LABEL, PodParams, build_pod, pod_ready};

/// The node a Pod is pinned to: bound, or (Pending) as its annotation says; Pods created before
/// the annotation have their node in the label.
pub(super) fn pod_node(p: &Pod) -> Option<String> {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .or_else(|| p.annotations().get(NODE_ANNOTATION).cloned())
        .or_else(|| p.labels().get(NODE_LABEL).cloned())
}

/// Where an instance Pod is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Starting or running: an instance.
    Live,
    /// Deleted and draining (Terminating): no longer an instance, but its name is still taken
    /// (a create of it gets 409) and it still uses its node until its kubelet confirms the end.
    Going,
    /// Failed or Succeeded (evicted, or stopped by its node's graceful shutdown): it never runs
    /// again and its kubelet does not replace it, so it is deleted and replaced.
    Done,
}

pub(super) fn phase(p: &Pod) -> Phase {
    if p.metadata.deletion_timestamp.is_some() {
        return Phase::Going;
    }
    match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Failed" | "Succeeded") => Phase::Done,
        _ => Phase::Live,
    }
}

/// The scheduler found no room for the Pod on its node: why, if so.
pub(super) fn unschedulable(p: &Pod) -> Option<String> {
    let status = p.status.as_ref()?;
    let c = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
    })?;
    Some(format!("{}: Unschedulable: {}", p.name_any(), c.message.as_deref().unwrap_or_default()))
}

/// Why the Pod's revision cannot run, if its containers say so (image pull errors, crash loops):
/// unlike a full node, nothing but a new revision fixes that.
pub(super) fn container_failure(p: &Pod) -> Option<String> {
    let status = p.status.as_ref()?;
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

/// Why a Pod cannot serve, if it cannot (unschedulable, or a container failure).
pub(super) fn pod_problem(p: &Pod) -> Option<String> {
    unschedulable(p).or_else(|| container_failure(p))
}

pub(super) fn rev_of(p: &Pod) -> Option<&str> {
    p.labels().get(crate::crd::REVISION_LABEL).map(String::as_str)
}

/// The API server refused the request itself (admission, quota, validation): trying again at
/// once would be refused again. A conflict (409) and throttling (429) are not refusals.
fn refused(e: &kube::core::Status) -> bool {
    (400..500).contains(&e.code) && e.code != 409 && e.code != 429
}

/// Which of a revision's Pods (`pods`, in every phase) go and come for `desired` instances per
/// node: its Failed/Succeeded ones and its extra live ones go (not ready first, then the highest
/// index), including those on nodes that are gone; missing ones come under indices no Pod of the
/// revision on that node holds. Nothing holds the creates back here ([`PodChanges::held`]).
pub(super) fn pod_changes(pods: &[&Arc<Pod>], desired: &BTreeMap<String, u32>) -> PodChanges {
    let mut changes = PodChanges::default();
    let mut taken: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    let mut by_node: BTreeMap<String, Vec<&Arc<Pod>>> = BTreeMap::new();
    for p in pods {
        let node = pod_node(p).unwrap_or_default();
        taken.entry(node.clone()).or_default().insert(index_of(p));
        match phase(p) {
            Phase::Live => by_node.entry(node).or_default().push(p),
            Phase::Going => {}
            Phase::Done => {
                let why = p.status.as_ref().and_then(|s| s.reason.clone()).unwrap_or_default();
                changes.delete.push(Deletion { pod: p.name_any(), node, ended: Some(why) });
            }
        }
    }
    for (node, group) in &by_node {
        let want = desired.get(node).copied().unwrap_or(0) as usize;
        let ranked = group.iter().map(|p| (p.name_any(), pod_ready(p), index_of(p)));
        for pod in surplus(ranked, want) {
            changes.delete.push(Deletion { pod, node: node.clone(), ended: None });
        }
    }
    for (node, &want) in desired {
        let have = by_node.get(node).map_or(0, Vec::len);
        let taken = taken.entry(node.clone()).or_default();
        for _ in have..want as usize {
            let index = (0..).find(|i| !taken.contains(i)).expect("a free index");
            taken.insert(index);
            changes.create.push((node.clone(), index));
        }
    }
    changes
}

/// The instance index in a Pod's name (as its label says).
fn index_of(p: &Pod) -> u32 {
    p.labels().get(INDEX_LABEL).and_then(|i| i.parse::<u32>().ok()).unwrap_or(u32::MAX)
}

/// Performs a revision's [`PodChanges`]: deletes, then (unless a refusal holds them back)
/// creates, each Pod built for `owner` (its Placement).
///
/// Returns why its Pods cannot be created, if the API server refused one (then no create is
/// tried again before an exponential backoff ends) or the Pod cannot be built.
pub(super) async fn converge_pods(
    service: &str,
    plan: &RevisionPlan,
    owner: OwnerReference,
    queue_proxy_image: &str,
    sidecar: &SidecarResources,
    ctx: &Context,
) -> Result<Option<String>, Error> {
    let ns = plan.revision.metadata.namespace().to_owned();
    let key = (ns.clone(), plan.revision.name().to_owned());
    let now = ctx.clock.now();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    for d in &plan.pods.delete {
        match &d.ended {
            Some(reason) => {
                tracing::info!(pod = %d.pod, node = %d.node, %reason, "deleting an instance that ended");
            }
            None => tracing::info!(pod = %d.pod, node = %d.node, "deleting instance"),
        }
        match api.delete(&d.pod, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(held) = &plan.pods.held {
        return Ok(Some(held.clone()));
    }
    for (node, index) in &plan.pods.create {
        let params = PodParams {
            service,
            node,
            index: *index,
            queue: &plan.queue,
            queue_proxy_image,
            sidecar,
            controller_url: &ctx.settings.controller_url,
            owner: owner.clone(),
        };
        let pod = match build_pod(&plan.revision, &params) {
            Ok(pod) => pod,
            Err(message) => {
                tracing::warn!(revision = %plan.revision.name(), %message, "cannot build the instance's Pod");
                return Ok(Some(message));
            }
        };
        tracing::info!(pod = %pod.name_any(), %node, "creating instance");
        match api.create(&PostParams::default(), &pod).await {
            Ok(_) => {
                ctx.state.lock().refused.remove(&key);
            }
            // A create retried on a stale cache: the instance exists.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(kube::Error::Api(e)) if refused(&e) => {
                let r = ctx.state.lock().refuse(key, e.message.clone(), now);
                tracing::warn!(pod = %pod.name_any(), message = %e.message, failures = r.failures,
                    retry_in = ?r.until.saturating_duration_since(now), "instance refused");
                return Ok(Some(r.message));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}
