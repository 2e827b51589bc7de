//! The nodes as placement sees them: readiness, cordons, taints, capacity.

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::ResourceExt;
use kube::runtime::reflector::Store;

use crate::crd::CAPACITY_LABEL;

pub(super) struct NodeInfo {
    pub(super) name: String,
    /// The node is Ready.
    pub(super) ready: bool,
    /// `spec.unschedulable` (cordoned): instances there stay, no new ones go there.
    pub(super) cordoned: bool,
    /// Taints that keep Pods off (`NoSchedule`, `NoExecute`): only revisions tolerating them go there.
    pub(super) taints: Vec<Taint>,
    pub(super) capacity: u32,
}

/// Whether `tolerations` (a revision's pass-through `spec.tolerations`) tolerate every taint, the
/// way the scheduler matches them: an empty key with `Exists` tolerates everything; otherwise the
/// keys match and, for `Equal` (the default), the values; an empty effect matches every effect.
pub(super) fn tolerates(tolerations: Option<&serde_json::Value>, taints: &[Taint]) -> bool {
    let list: Vec<&serde_json::Value> =
        tolerations.and_then(|t| t.as_array()).map(|a| a.iter().collect()).unwrap_or_default();
    let field =
        |t: &serde_json::Value, k: &str| t.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    taints.iter().all(|taint| {
        list.iter().any(|t| {
            let (key, op, value, effect) =
                (field(t, "key"), field(t, "operator"), field(t, "value"), field(t, "effect"));
            let exists = op == "Exists";
            let key_ok = (key.is_empty() && exists) || key == taint.key;
            let value_ok = exists || value == taint.value.clone().unwrap_or_default();
            let effect_ok = effect.is_empty() || effect == taint.effect;
            key_ok && value_ok && effect_ok
        })
    })
}

pub(super) fn nodes(store: &Store<Node>, default_capacity: u32) -> Vec<NodeInfo> {
    let mut out: Vec<NodeInfo> = store
        .state()
        .iter()
        .map(|n| {
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let cordoned = n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
            let capacity =
                n.labels().get(CAPACITY_LABEL).and_then(|c| c.parse().ok()).unwrap_or(default_capacity);
            let taints = n
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                .collect();
            NodeInfo { name: n.name_any(), ready, cordoned, taints, capacity }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
