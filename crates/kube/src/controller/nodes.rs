//! The nodes as placement sees them: readiness (and for how long it has been lost), cordons,
//! taints, labels against a revision's node selector and required affinity, capacity.

use std::collections::BTreeMap;

use ikukantai_api::service::RevisionSpec;
use k8s_openapi::api::core::v1::{Node, Taint};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use serde_json::Value;

use crate::crd::CAPACITY_LABEL;

/// The taint the node lifecycle controller puts on a node whose kubelet stopped reporting.
pub(super) const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
/// The taint it puts on a node whose kubelet reports it not ready.
pub(super) const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
/// `tolerationSeconds` the DefaultTolerationSeconds admission plugin gives every Pod for both:
/// how long its Pods stay bound to a node that lost readiness before they are evicted.
pub(super) const DEFAULT_TOLERATION_SECONDS: i64 = 300;

#[derive(Debug, Clone)]
pub(super) struct NodeInfo {
    pub(super) name: String,
    /// The node is Ready.
    pub(super) ready: bool,
    /// When a node that is not Ready lost readiness (its Ready condition's last transition), and
    /// whether it is unreachable (`Unknown`: its kubelet stopped reporting) rather than not ready.
    pub(super) lost: Option<(Timestamp, bool)>,
    /// `spec.unschedulable` (cordoned): instances there stay, no new ones go there.
    pub(super) cordoned: bool,
    /// Taints that keep Pods off (`NoSchedule`, `NoExecute`): only revisions tolerating them go there.
    pub(super) taints: Vec<Taint>,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) capacity: u32,
}

impl NodeInfo {
    /// Whether the Pods of a revision with `spec` may run here: its `nodeSelector` and its
    /// required node affinity (any term; each term's label expressions and name fields), as
    /// the scheduler reads them.
    pub(super) fn admits(&self, spec: &RevisionSpec) -> bool {
        let selector = spec.node_selector.iter().flatten().all(|(k, v)| self.labels.get(k) == Some(v));
        let terms = spec
            .affinity
            .as_ref()
            .and_then(|a| {
                a.pointer("/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
            })
            .and_then(Value::as_array);
        selector && terms.is_none_or(|terms| terms.iter().any(|t| self.term_matches(t)))
    }

    fn term_matches(&self, term: &Value) -> bool {
        let requirement = |r: &Value, value: Option<&str>| {
            let values: Vec<&str> =
                r["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            let number = |s: &str| s.parse::<i64>().ok();
            let bound = values.first().and_then(|v| number(v));
            match r["operator"].as_str().unwrap_or_default() {
                "In" => value.is_some_and(|v| values.contains(&v)),
                "NotIn" => value.is_none_or(|v| !values.contains(&v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                "Gt" => value.and_then(number).zip(bound).is_some_and(|(v, b)| v > b),
                "Lt" => value.and_then(number).zip(bound).is_some_and(|(v, b)| v < b),
                _ => false,
            }
        };
        let list = |k: &str| term.get(k).and_then(Value::as_array).into_iter().flatten();
        let labels_ok = list("matchExpressions")
            .all(|r| requirement(r, r["key"].as_str().and_then(|k| self.labels.get(k)).map(String::as_str)));
        // The only field a node selector may name is `metadata.name`.
        let fields_ok = list("matchFields")
            .all(|r| r["key"] == "metadata.name" && requirement(r, Some(self.name.as_str())));
        // An empty term matches nothing, as in the scheduler.
        let empty = list("matchExpressions").next().is_none() && list("matchFields").next().is_none();
        !empty && labels_ok && fields_ok
    }

    /// Whether instances of a revision with `tolerations` on this node, which lost readiness,
    /// are still bound to it at `now`: evicted only once the unreachable (or not-ready)
    /// `NoExecute` taint's tolerationSeconds ran out, they must not be replaced before — a short
    /// partition of an edge link would otherwise wipe the node's instances, and the old ones come
    /// back when it heals. `false` for a Ready node.
    pub(super) fn holds_instances(&self, tolerations: Option<&Value>, now: Timestamp) -> bool {
        let Some((since, unreachable)) = self.lost else { return false };
        let key = if unreachable { UNREACHABLE_TAINT } else { NOT_READY_TAINT };
        match toleration_seconds(tolerations, key) {
            None => true,
            Some(s) => now.as_second() - since.as_second() < s,
        }
    }
}

/// How long Pods with `tolerations` tolerate the `NoExecute` taint `key` (`None`: for ever).
/// Without a toleration of their own, the one DefaultTolerationSeconds admission adds (300 s).
fn toleration_seconds(tolerations: Option<&Value>, key: &str) -> Option<i64> {
    let own = tolerations.and_then(Value::as_array).into_iter().flatten().find(|t| {
        let key_ok =
            t["key"] == key || (t["key"].as_str().is_none_or(str::is_empty) && t["operator"] == "Exists");
        let effect_ok = t["effect"].as_str().is_none_or(|e| e.is_empty() || e == "NoExecute");
        key_ok && effect_ok
    });
    match own {
        Some(t) => t["tolerationSeconds"].as_i64(),
        None => Some(DEFAULT_TOLERATION_SECONDS),
    }
}

/// Whether `tolerations` (a revision's pass-through `spec.tolerations`) tolerate every taint, the
/// way the scheduler matches them: an empty key with `Exists` tolerates everything; otherwise the
/// keys match and, for `Equal` (the default), the values; an empty effect matches every effect.
pub(super) fn tolerates(tolerations: Option<&Value>, taints: &[Taint]) -> bool {
    let list: Vec<&Value> =
        tolerations.and_then(|t| t.as_array()).map(|a| a.iter().collect()).unwrap_or_default();
    let field = |t: &Value, k: &str| t.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
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
            let condition = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
            let ready = condition.is_some_and(|c| c.status == "True");
            let lost = condition.filter(|c| c.status != "True").map(|c| {
                (
                    c.last_transition_time.as_ref().map_or(Timestamp::UNIX_EPOCH, |t| t.0),
                    c.status == "Unknown",
                )
            });
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
            NodeInfo {
                name: n.name_any(),
                ready,
                lost,
                cordoned,
                taints,
                labels: n.labels().clone(),
                capacity,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn info(labels: &[(&str, &str)]) -> NodeInfo {
        NodeInfo {
            name: "edge-1".into(),
            ready: true,
            lost: None,
            cordoned: false,
            taints: vec![],
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            capacity: 10,
        }
    }

    fn spec(extra: Value) -> RevisionSpec {
        let mut v = json!({"containers": [{"image": "x"}]});
        if let Value::Object(extra) = extra {
            v.as_object_mut().unwrap().extend(extra);
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn node_selector_and_required_affinity_choose_nodes_like_the_scheduler() {
        let arm = info(&[("kubernetes.io/arch", "arm64"), ("zone", "a"), ("gpus", "2")]);
        let amd = info(&[("kubernetes.io/arch", "amd64"), ("zone", "b")]);
        let by_selector = spec(json!({"nodeSelector": {"kubernetes.io/arch": "arm64"}}));
        assert!(arm.admits(&by_selector) && !amd.admits(&by_selector));
        let affinity = |terms: Value| {
            spec(
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}),
            )
        };
        // Terms are ORed, expressions ANDed.
        let either = affinity(json!([
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
            {"matchExpressions": [{"key": "gpus", "operator": "Gt", "values": ["1"]}, {"key": "zone", "operator": "Exists"}]}
        ]));
        assert!(arm.admits(&either) && amd.admits(&either));
        let not_b =
            affinity(json!([{"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["b"]}]}]));
        assert!(arm.admits(&not_b) && !amd.admits(&not_b));
        let by_name = affinity(
            json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["edge-2"]}]}]),
        );
        assert!(!arm.admits(&by_name));
        assert!(arm.admits(&spec(json!({}))), "no constraint: every node");
    }

    #[test]
    fn a_node_that_lost_readiness_holds_its_instances_for_the_toleration() {
        let since: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let mut n = info(&[]);
        n.ready = false;
        n.lost = Some((since, true));
        let at = |s: i64| Timestamp::from_second(since.as_second() + s).unwrap();
        assert!(n.holds_instances(None, at(299)));
        assert!(!n.holds_instances(None, at(300)), "the default 300 s");
        let short = json!([{"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]);
        assert!(!n.holds_instances(Some(&short), at(30)));
        let forever = json!([{"operator": "Exists"}]);
        assert!(n.holds_instances(Some(&forever), at(86_400)));
        n.lost = Some((since, false));
        assert!(n.holds_instances(Some(&short), at(100)), "not-ready, not unreachable: the default applies");
    }
}
