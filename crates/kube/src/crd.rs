//! The custom resources: Knative's `Service` (from the same Rust types as the local model) and
//! our `Placement` (the original's "Seika": one per revision, desired and ready instances per node).

// `printcolumn(... type_ = "string" ...)` repeated across columns reads as a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;
use std::time::Duration;

use ikukantai_api::revision::Revision;
use ikukantai_api::service::{RevisionTemplate, ServiceSpec, ServiceStatus};
use ikukantai_dataplane::gateway::{InstanceRoute, RevisionRoute};
use ikukantai_policy::queue::{PriorityRule, PriorityRuleError};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Label naming the revision on placements and pods (Knative's).
pub const REVISION_LABEL: &str = "serving.knative.dev/revision";
/// Label naming the node a pod is pinned to (a short form of the name where the name is longer
/// than a label value may be).
pub const NODE_LABEL: &str = "ikukantai.dev/node";
/// Annotation naming the node a pod is pinned to, always in full.
pub const NODE_ANNOTATION: &str = "ikukantai.dev/node";
/// Label marking objects this platform manages.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "ikukantai";
/// Node label overriding `node-capacity` (instances the node holds).
pub const CAPACITY_LABEL: &str = "ikukantai.dev/capacity";
/// Field manager for server-side apply.
pub const FIELD_MANAGER: &str = "ikukantai-controller";

/// `serving.knative.dev/v1` `Service`: the spec is the local model's [`ServiceSpec`], so a ksvc
/// manifest means the same on one machine and on a cluster.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "serving.knative.dev",
    version = "v1",
    kind = "Service",
    root = "KnativeService",
    plural = "services",
    namespaced,
    status = "ServiceStatus",
    shortname = "ksvc",
    category = "knative",
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
    printcolumn(name = "LatestCreated", type_ = "string", json_path = ".status.latestCreatedRevisionName"),
    printcolumn(name = "LatestReady", type_ = "string", json_path = ".status.latestReadyRevisionName"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type=='Ready')].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type=='Ready')].reason"
    )
)]
pub struct KnativeServiceSpec {
    /// The Knative spec (template and traffic).
    #[serde(flatten)]
    pub inner: ServiceSpec,
}

/// Where a revision's instances run: one per revision, named after it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ikukantai.dev",
    version = "v1alpha1",
    kind = "Placement",
    namespaced,
    status = "PlacementStatus",
    shortname = "pl",
    category = "ikukantai",
    printcolumn(name = "Service", type_ = "string", json_path = ".spec.service"),
    printcolumn(
        name = "Ready/Desired",
        type_ = "string",
        json_path = ".status.summary",
        description = "ready and desired instances per node, nodes in name order"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct PlacementSpec {
    /// The Knative Service this revision belongs to.
    pub service: String,
    /// Configuration generation that cut the revision (its number).
    pub generation: u64,
    /// The frozen revision template.
    pub template: RevisionTemplate,
    /// Desired instances per node name.
    #[serde(default)]
    pub nodes: BTreeMap<String, u32>,
}

/// Observed state of a placement.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlacementStatus {
    /// Ready instances per node name.
    #[serde(default)]
    pub ready: BTreeMap<String, u32>,
    /// `ready/desired` per node, like `0-0-1/0-0-1`.
    #[serde(default)]
    pub summary: String,
    /// The revision has had a ready instance at least once.
    #[serde(default)]
    pub ever_ready: bool,
    /// Why the revision failed before it was ever ready (its Pods' error, a rejected create, its
    /// progress deadline). Kept once set, so the revision stays failed after its Pods are gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl Placement {
    /// The revision this placement stands for, as the local model sees it.
    pub fn revision(&self) -> Revision {
        let ns = self.namespace().unwrap_or_else(|| "default".into());
        Revision::new(&self.spec.service, &ns, &self.spec.template, self.spec.generation)
    }

    /// Whether the revision has ever been ready.
    pub fn ever_ready(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.ever_ready)
    }

    /// Why the revision failed before it was ever ready, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.status.as_ref().and_then(|s| s.failure.as_deref())
    }
}

/// What gateways route by for one Knative Service, published by the controller: the resolved
/// traffic split and, per revision, its routing settings and ready instances. One compact object
/// per Service, so gateways watch these alone — not every Pod, Knative Service and Placement of
/// the cluster, whose specs carry tenants' environment.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ikukantai.dev",
    version = "v1alpha1",
    kind = "ServiceRoute",
    namespaced,
    shortname = "sroute",
    category = "ikukantai",
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRouteSpec {
    /// The traffic split, resolved to revision names.
    #[serde(default)]
    pub traffic: Vec<TrafficRoute>,
    /// The Service's revisions.
    #[serde(default)]
    pub revisions: Vec<RevisionRouting>,
}

/// One entry of the resolved traffic split.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficRoute {
    /// Revision name.
    pub revision: String,
    /// Share in percent.
    pub percent: u32,
    /// Tag, reachable at `TAG-NAME.NAMESPACE.DOMAIN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// What a gateway needs to route to one revision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRouting {
    /// Revision name.
    pub name: String,
    /// containerConcurrency (0 = unlimited).
    pub container_concurrency: u32,
    /// The autoscaler's target per instance.
    pub target_concurrency: f64,
    /// Request timeout, seconds.
    pub timeout_seconds: u64,
    /// Balancer.
    pub balancer: String,
    /// Queue discipline of the activator queue.
    pub queue: String,
    /// `ikukantai.dev/queue-priority-rules`, as written.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub priority_rules: String,
    /// Why the revision failed before it was ever ready: requests for it get this at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Ready instances.
    #[serde(default)]
    pub instances: Vec<InstanceAddress>,
}

impl RevisionRouting {
    /// The published form of `route`, as [`RevisionRoute::of`] builds it for both runtimes: its
    /// settings, `priority_rules` as the revision's annotation writes them (the rules `route`
    /// holds, parsed), its failure, and its ready `instances` by Pod address (a gateway knows
    /// nodes by its own indices, so the route's own instances are not published).
    pub fn of(route: &RevisionRoute, priority_rules: &str, instances: Vec<InstanceAddress>) -> Self {
        Self {
            name: route.revision.clone(),
            container_concurrency: route.container_concurrency,
            target_concurrency: route.target_concurrency,
            timeout_seconds: route.timeout.as_secs(),
            balancer: route.balancer.clone(),
            queue: route.queue.clone(),
            priority_rules: priority_rules.to_owned(),
            failure: route.failure.clone(),
            instances,
        }
    }

    /// A gateway's route of this revision of `namespace/service`, to `instances`: the route
    /// [`RevisionRouting::of`] was made from. Fails if the priority rules do not parse.
    pub fn route(
        &self,
        namespace: &str,
        service: &str,
        instances: Vec<InstanceRoute>,
    ) -> Result<RevisionRoute, PriorityRuleError> {
        Ok(RevisionRoute {
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            revision: self.name.clone(),
            container_concurrency: self.container_concurrency,
            target_concurrency: self.target_concurrency,
            timeout: Duration::from_secs(self.timeout_seconds),
            balancer: self.balancer.clone(),
            queue: self.queue.clone(),
            priority_rules: PriorityRule::parse_list(&self.priority_rules)?,
            instances,
            failure: self.failure.clone(),
        })
    }
}

/// A ready instance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceAddress {
    /// Pod name.
    pub name: String,
    /// Node name.
    pub node: String,
    /// Pod IP (its queue proxy listens on the serving port).
    pub ip: String,
}

/// `ready/desired` per node in `nodes` order, like `0-0-1/0-0-1`.
pub fn summary(nodes: &[String], ready: &BTreeMap<String, u32>, desired: &BTreeMap<String, u32>) -> String {
    let row = |m: &BTreeMap<String, u32>| {
        nodes.iter().map(|n| m.get(n).copied().unwrap_or(0).to_string()).collect::<Vec<_>>().join("-")
    };
    format!("{}/{}", row(ready), row(desired))
}

/// Every CRD this platform installs.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![KnativeService::crd(), Placement::crd(), ServiceRoute::crd()]
}

/// The CRDs as one multi-document YAML file (what `ikukantai crds` prints).
pub fn crds_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::from("# Generated by `ikukantai crds` from the Rust types; do not edit.\n");
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  namespace: default
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/target: "10"
    spec:
      containerConcurrency: 4
      containers:
        - image: ghcr.io/example/hello:1
          ports: [{ containerPort: 8080 }]
          resources: { limits: { cpu: 500m, memory: 128Mi }, requests: { cpu: 1 } }
          readinessProbe: { httpGet: { path: /healthz, port: 8080 } }
          securityContext: { runAsNonRoot: true }
  traffic:
    - latestRevision: true
      percent: 100
"#;

    #[test]
    fn a_knative_manifest_reads_as_the_crd_type_and_round_trips() {
        let svc: KnativeService = serde_saphyr::from_str(HELLO).expect("parses");
        assert_eq!(svc.spec.inner.template.spec.container_concurrency, Some(4));
        assert_eq!(svc.spec.inner.traffic.len(), 1);
        let back = serde_json::to_value(&svc).unwrap();
        assert_eq!(
            back["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonRoot"],
            true
        );
        assert_eq!(back["apiVersion"], "serving.knative.dev/v1");
    }

    #[test]
    fn unknown_spec_fields_are_refused_like_the_local_model() {
        let bad = HELLO.replace("containerConcurrency", "containerConcurency");
        let err = serde_saphyr::from_str::<KnativeService>(&bad).unwrap_err().to_string();
        assert!(err.contains("containerConcurency"), "{err}");
    }

    #[test]
    fn crds_are_structural() {
        fn walk(path: &str, v: &serde_json::Value, problems: &mut Vec<String>) {
            let Some(o) = v.as_object() else { return };
            let open = o.contains_key("x-kubernetes-preserve-unknown-fields")
                || o.contains_key("x-kubernetes-int-or-string");
            if !open && !o.contains_key("type") {
                problems.push(format!("{path}: no type"));
            }
            for bad in ["oneOf", "$ref", "$defs"] {
                if o.contains_key(bad) && !open {
                    problems.push(format!("{path}: {bad}"));
                }
            }
            if let Some(props) = o.get("properties").and_then(|p| p.as_object()) {
                for (k, s) in props {
                    walk(&format!("{path}.{k}"), s, problems);
                }
            }
            if let Some(items) = o.get("items") {
                walk(&format!("{path}[]"), items, problems);
            }
            if let Some(extra) = o.get("additionalProperties").filter(|a| a.is_object()) {
                walk(&format!("{path}{{}}"), extra, problems);
            }
        }
        for crd in crds() {
            let v = serde_json::to_value(&crd).unwrap();
            let schema = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            let mut problems = Vec::new();
            walk(&crd.spec.names.kind, schema, &mut problems);
            assert!(problems.is_empty(), "{problems:#?}");
        }
    }

    #[test]
    fn a_published_revision_route_reads_back_as_the_route_both_runtimes_build() {
        use ikukantai_api::annotations::revision_settings;
        use ikukantai_api::config::FleetConfig;
        use ikukantai_policy::autoscaler::ScalingSpec;

        let rules = "header:x-priority, path:/admin:10";
        let template: RevisionTemplate = serde_json::from_value(serde_json::json!({
            "metadata": {"annotations": {
                "ikukantai.dev/balancer": "even", "ikukantai.dev/queue": "priority",
                "ikukantai.dev/queue-priority-rules": rules, "autoscaling.knative.dev/target": "3"}},
            "spec": {"containerConcurrency": 4, "timeoutSeconds": 30, "containers": [{"image": "x"}]}
        }))
        .unwrap();
        let revision = Revision::new("hello", "team", &template, 2);
        let config = FleetConfig::new();
        let settings = revision_settings(&revision.metadata.annotations, &config, "").unwrap();
        let spec = ScalingSpec::resolve(&config.autoscaler, 4, &settings.scaling);
        let instances =
            vec![InstanceRoute { name: "a".into(), node: 1, addr: "10.0.3.7:8012".parse().unwrap() }];
        let route = RevisionRoute {
            failure: Some("CrashLoopBackOff".into()),
            ..RevisionRoute::of(&revision, &settings, &config, &spec, instances.clone())
        };
        assert_eq!(route.priority_rules.len(), 2);
        let address = InstanceAddress { name: "a".into(), node: "node2".into(), ip: "10.0.3.7".into() };
        let published = RevisionRouting::of(&route, rules, vec![address.clone()]);
        assert_eq!(
            (published.name.as_str(), published.timeout_seconds, published.target_concurrency),
            ("hello-00002", 30, spec.target)
        );
        assert_eq!((published.priority_rules.as_str(), &published.instances), (rules, &vec![address]));
        let wire: RevisionRouting =
            serde_json::from_value(serde_json::to_value(&published).unwrap()).unwrap();
        assert_eq!(wire.route("team", "hello", instances).unwrap(), route, "every field survives the trip");
        let bad = RevisionRouting { priority_rules: "tier:gold".into(), ..wire };
        assert!(bad.route("team", "hello", Vec::new()).is_err());
    }

    #[test]
    fn placement_summary_orders_nodes() {
        let nodes = vec!["node1".to_owned(), "node2".to_owned(), "node3".to_owned()];
        let desired = BTreeMap::from([("node3".to_owned(), 1)]);
        let ready = BTreeMap::new();
        assert_eq!(summary(&nodes, &ready, &desired), "0-0-0/0-0-1");
    }
}
