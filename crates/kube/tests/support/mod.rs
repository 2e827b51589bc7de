//! What the reconcile tests share: the fake API server ([`api`]), Pod Security admission
//! ([`psa`]), and a harness that runs the controller's reconcile against them with stores fed the
//! way watches would feed them, and a scheduler and kubelets that act on the Pods it creates.

#![allow(dead_code, unreachable_pub, reason = "each test crate uses part of the harness, private to it")]

pub mod api;
pub mod psa;
pub mod validation;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use ikukantai_api::config::FleetConfig;
use ikukantai_kube::controller::{Context, Settings, Stores, reconcile};
use ikukantai_kube::crd::KnativeService;
use ikukantai_kube::wire::{GatewayReport, InstanceStats, RevisionLoad, WireStat};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};

pub use api::{Call, FakeApi, ManualClock};

pub const KSVC: &str = "/apis/serving.knative.dev/v1/namespaces/default/services/hello";
pub const PLACEMENTS: &str = "/apis/ikukantai.dev/v1alpha1/namespaces/default/placements";
pub const ROUTES: &str = "/apis/ikukantai.dev/v1alpha1/namespaces/default/serviceroutes";
pub const PODS: &str = "/api/v1/namespaces/default/pods";
pub const SERVICES: &str = "/api/v1/namespaces/default/services";

pub struct Harness {
    pub ctx: Arc<Context>,
    /// A client of the fake API server.
    pub client: Client,
    pub clock: Arc<ManualClock>,
    pub api: Arc<FakeApi>,
    nodes: Writer<Node>,
    /// The cluster's nodes as the scheduler sees them.
    pub node_objects: BTreeMap<String, Node>,
    /// Nodes whose resources are used up: the scheduler fits nothing more there.
    pub full: BTreeSet<String>,
    pods: Writer<k8s_openapi::api::core::v1::Pod>,
    placements: Writer<ikukantai_kube::crd::Placement>,
    routes: Writer<ikukantai_kube::crd::ServiceRoute>,
    next_ip: u32,
}

/// Re-lists a store from the objects under `prefix`, as a restarted watch would.
fn relist<K>(writer: &mut Writer<K>, objects: &BTreeMap<String, Value>, prefix: &str)
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + 'static,
{
    writer.apply_watcher_event(&watcher::Event::Init);
    for (k, v) in objects.iter().filter(|(k, _)| k.starts_with(&format!("{prefix}/"))) {
        if k[prefix.len() + 1..].contains('/') {
            continue;
        }
        writer.apply_watcher_event(&watcher::Event::InitApply(serde_json::from_value(v.clone()).unwrap()));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
}

/// A Ready node with the labels the kubelet sets.
pub fn node(name: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/arch": "amd64"}},
        "status": {"conditions": [{"type": "Ready", "status": "True",
                                   "lastTransitionTime": "2029-12-31T00:00:00Z"}]}
    }))
    .unwrap()
}

/// The `hello` Service with env `TARGET=env` and these template annotations.
pub fn ksvc(env: &str, annotations: &Value) -> KnativeService {
    serde_json::from_value(json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "hello", "namespace": "default", "uid": "uid-hello", "generation": 1},
        "spec": {"template": {
            "metadata": {"annotations": annotations},
            "spec": {"containerConcurrency": 10, "containers": [{"image": "hello:1", "env": [{"name": "TARGET", "value": env}]}]}
        }}
    }))
    .unwrap()
}

pub fn total(nodes: &Value) -> u64 {
    nodes.as_object().map(|o| o.values().map(|v| v.as_u64().unwrap()).sum()).unwrap_or(0)
}

/// Whether `tolerations` tolerate `taint`, the scheduler's way.
fn tolerated(tolerations: &Value, taint: &Value) -> bool {
    tolerations.as_array().into_iter().flatten().any(|t| {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let exists = t["operator"] == "Exists";
        let key_ok = (s(&t["key"]).is_empty() && exists) || t["key"] == taint["key"];
        let value_ok = exists || s(&t["value"]) == s(&taint["value"]);
        let effect_ok = s(&t["effect"]).is_empty() || t["effect"] == taint["effect"];
        key_ok && value_ok && effect_ok
    })
}

/// Whether a node selector term (`matchExpressions` on labels, `matchFields` on the name) matches.
fn term_matches(term: &Value, name: &str, labels: &Value) -> bool {
    let check = |req: &Value, value: Option<&str>| {
        let values: Vec<&str> =
            req["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        match req["operator"].as_str().unwrap_or_default() {
            "In" => value.is_some_and(|v| values.contains(&v)),
            "NotIn" => value.is_none_or(|v| !values.contains(&v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            op => panic!("operator {op}"),
        }
    };
    term["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|r| check(r, labels[r["key"].as_str().unwrap()].as_str()))
        && term["matchFields"].as_array().into_iter().flatten().all(|r| check(r, Some(name)))
}

impl Harness {
    pub fn new(nodes: &[&str]) -> Self {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "default");
        let clock = Arc::new(ManualClock::new());
        let api = FakeApi::new(clock.clone());
        let server = api.clone();
        tokio::spawn(async move {
            // Open watches: answered never, they stay open without events.
            let mut watching = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap();
                let call = Call {
                    method: parts.method.clone(),
                    path: parts.uri.path().to_owned(),
                    query: parts.uri.query().unwrap_or_default().to_owned(),
                    content_type: parts
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default(),
                    accept: parts
                        .headers
                        .get(http::header::ACCEPT)
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default(),
                    body: if bytes.is_empty() {
                        Value::Null
                    } else {
                        serde_json::from_slice(&bytes).unwrap()
                    },
                };
                let (status, reply) = server.answer(&call);
                let watch = call.is_watch() && status == 200;
                server.calls.lock().unwrap().push(call);
                if watch {
                    watching.push(send);
                    continue;
                }
                send.send_response(
                    Response::builder()
                        .status(status)
                        .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                        .unwrap(),
                );
            }
        });
        let (node_store, node_writer) = reflector::store();
        let (pod_store, pod_writer) = reflector::store();
        let (placement_store, placement_writer) = reflector::store();
        let (route_store, route_writer) = reflector::store();
        let settings = Settings {
            controller_url: "http://ikukantai-controller.ikukantai-system:9090".into(),
            seed: 7,
            service_monitors: false,
            gateway_host: "ikukantai-gateway.ikukantai-system.svc.cluster.local".into(),
            sidecar_image: "registry.example/ikukantai@sha256:0123abcd".into(),
        };
        let stores =
            Stores { nodes: node_store, pods: pod_store, placements: placement_store, routes: route_store };
        let ctx = Arc::new(Context::new(client.clone(), stores, FleetConfig::new(), settings, clock.clone()));
        let mut h = Self {
            ctx,
            client,
            clock,
            api,
            nodes: node_writer,
            node_objects: BTreeMap::new(),
            full: BTreeSet::new(),
            pods: pod_writer,
            placements: placement_writer,
            routes: route_writer,
            next_ip: 1,
        };
        for n in nodes {
            h.set_node(node(n));
        }
        h
    }

    /// Adds or changes a node (its watch delivers it).
    pub fn set_node(&mut self, n: Node) {
        self.nodes.apply_watcher_event(&watcher::Event::Apply(n.clone()));
        self.node_objects.insert(n.metadata.name.clone().unwrap(), n);
    }

    /// Removes a node (its watch delivers the deletion).
    pub fn remove_node(&mut self, name: &str) {
        let n = self.node_objects.remove(name).unwrap();
        self.nodes.apply_watcher_event(&watcher::Event::Delete(n));
    }

    /// Runs one reconcile; returns its calls. The stores then see what the API server holds
    /// (as their watches would).
    pub async fn reconcile(&mut self, svc: &KnativeService) -> (Action, Vec<Call>) {
        let (result, calls) = self.try_reconcile(svc).await;
        (result.expect("reconcile succeeds"), calls)
    }

    /// Runs one reconcile of the Service as the API server holds it (after the first, which
    /// stores `svc` if it is not there yet).
    pub async fn try_reconcile(
        &mut self,
        svc: &KnativeService,
    ) -> (Result<Action, ikukantai_kube::controller::Error>, Vec<Call>) {
        self.api.calls.lock().unwrap().clear();
        if self.api.get(KSVC).is_none() {
            self.api.put(KSVC, serde_json::to_value(svc).unwrap());
        }
        let result = reconcile(Arc::new(svc.clone()), self.ctx.clone()).await;
        let calls = std::mem::take(&mut *self.api.calls.lock().unwrap());
        self.sync();
        (result, calls)
    }

    /// The Service as the API server holds it now (what the controller's watch would deliver).
    pub fn stored_ksvc(&self) -> KnativeService {
        serde_json::from_value(self.api.get(KSVC).expect("the Service exists")).unwrap()
    }

    pub fn sync(&mut self) {
        let objects = self.api.objects();
        relist(&mut self.pods, &objects, PODS);
        relist(&mut self.placements, &objects, PLACEMENTS);
        relist(&mut self.routes, &objects, ROUTES);
    }

    /// The scheduler and the kubelets act on every Pod that is neither going nor done: a Pod
    /// that fits its node (its affinity, node selector and the node's taints and resources)
    /// runs and is ready, unless a probe names a port its container does not have; one that
    /// does not fit stays Pending, Unschedulable, with the scheduler's message.
    pub fn make_ready(&mut self) {
        let nodes = self.node_objects.clone();
        let full = self.full.clone();
        let count = nodes.len();
        let mut next_ip = self.next_ip;
        self.api.update_all(&format!("{PODS}/"), |_, pod| {
            let phase = pod["status"]["phase"].as_str().unwrap_or_default();
            if !pod["metadata"]["deletionTimestamp"].is_null() || matches!(phase, "Failed" | "Succeeded") {
                return;
            }
            let spec = &pod["spec"];
            let pinned = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"][0]["matchFields"][0]["values"][0]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let unschedulable = |why: String| {
                json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                    "reason": "Unschedulable", "message": format!("0/{count} nodes are available: {why}")}]})
            };
            let Some(n) = nodes.get(&pinned) else {
                pod["status"] = unschedulable("1 node(s) didn't match Pod's node affinity/selector.".into());
                return;
            };
            let node_json = serde_json::to_value(n).unwrap();
            let labels = &node_json["metadata"]["labels"];
            let selector_ok = spec["nodeSelector"]
                .as_object()
                .into_iter()
                .flatten()
                .all(|(k, v)| labels[k] == *v);
            let terms = &spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"];
            let affinity_ok = terms.as_array().is_none_or(|t| t.iter().any(|t| term_matches(t, &pinned, labels)));
            if !selector_ok || !affinity_ok {
                pod["status"] = unschedulable("1 node(s) didn't match Pod's node affinity/selector.".into());
                return;
            }
            let untolerated = node_json["spec"]["taints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| t["effect"] == "NoSchedule" || t["effect"] == "NoExecute")
                .find(|t| !tolerated(&spec["tolerations"], t));
            if let Some(t) = untolerated {
                pod["status"] = unschedulable(format!("1 node(s) had untolerated taint {{{}: }}.", t["key"].as_str().unwrap()));
                return;
            }
            if full.contains(&pinned) {
                pod["status"] = unschedulable("1 Insufficient cpu.".into());
                return;
            }
            // The kubelet runs it; a probe naming a port the container lacks never passes.
            let mut statuses = Vec::new();
            let mut ready = true;
            for c in spec["containers"].as_array().into_iter().flatten() {
                let names: Vec<&str> =
                    c["ports"].as_array().into_iter().flatten().filter_map(|p| p["name"].as_str()).collect();
                let missing = ["livenessProbe", "readinessProbe", "startupProbe"].iter().find_map(|probe| {
                    ["httpGet", "tcpSocket"].iter().find_map(|a| {
                        let port = c[*probe][*a]["port"].as_str()?;
                        (!names.contains(&port)).then(|| (probe.to_string(), port.to_owned()))
                    })
                });
                let name = c["name"].as_str().unwrap_or_default();
                match missing {
                    Some((probe, port)) => {
                        ready = false;
                        statuses.push(json!({"name": name, "ready": false, "restartCount": 3, "image": c["image"], "imageID": "",
                            "state": {"waiting": {"reason": "CrashLoopBackOff",
                                "message": format!("{probe}: couldn't find port {port:?} in container {name:?}")}}}));
                    }
                    None => statuses.push(json!({"name": name, "ready": true, "restartCount": 0, "image": c["image"],
                        "imageID": "", "state": {"running": {}}})),
                }
            }
            let ip = pod["status"]["podIP"].as_str().map(str::to_owned).unwrap_or_else(|| {
                next_ip += 1;
                format!("10.244.{}.{}", next_ip / 250, next_ip % 250)
            });
            pod["spec"]["nodeName"] = json!(pinned);
            pod["status"] = json!({
                "phase": "Running",
                "podIP": ip,
                "conditions": [{"type": "PodScheduled", "status": "True"},
                               {"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "containerStatuses": statuses,
            });
        });
        self.next_ip = next_ip;
        self.sync();
    }

    /// The kubelet evicts `pod` (disk pressure, or the node's graceful shutdown): it is Failed.
    pub fn evict(&mut self, pod: &str, reason: &str, message: &str) {
        self.api.update(&format!("{PODS}/{pod}"), |p| {
            p["status"] = json!({"phase": "Failed", "reason": reason, "message": message,
                                 "podIP": p["status"]["podIP"].clone(),
                                 "conditions": [{"type": "Ready", "status": "False"}]});
        });
        self.sync();
    }

    /// `node`'s kubelet stops reporting (a partitioned edge link): the node lifecycle controller
    /// marks the node's Ready condition Unknown, taints it unreachable (NoExecute) and marks its
    /// Pods not ready.
    pub fn partition(&mut self, node: &str) {
        let now = self.clock.rfc3339();
        let mut n = serde_json::to_value(&self.node_objects[node]).unwrap();
        n["status"]["conditions"] = json!([{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                                            "lastTransitionTime": now}]);
        n["spec"]["taints"] =
            json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": now}]);
        self.set_node(serde_json::from_value(n).unwrap());
        self.api.update_all(&format!("{PODS}/"), |_, p| {
            if p["spec"]["nodeName"] == node {
                p["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
            }
        });
        self.sync();
    }

    /// Live instance Pods (neither Terminating nor done) by their node.
    pub fn pods_by_node(&self) -> BTreeMap<String, Vec<String>> {
        self.pods_where(|_| true)
    }

    /// Live instance Pods that `keep` keeps, by their node.
    pub fn pods_where(&self, keep: impl Fn(&Value) -> bool) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in self.api.objects() {
            let phase = v["status"]["phase"].as_str().unwrap_or_default();
            if k.starts_with(&format!("{PODS}/"))
                && v["metadata"]["deletionTimestamp"].is_null()
                && !matches!(phase, "Failed" | "Succeeded")
                && keep(&v)
            {
                let node = v["metadata"]["annotations"]["ikukantai.dev/node"].as_str().unwrap().to_owned();
                out.entry(node).or_default().push(v["metadata"]["name"].as_str().unwrap().to_owned());
            }
        }
        out
    }

    /// Every Pod the API server holds, Terminating or not.
    pub fn all_pods(&self) -> Vec<Value> {
        self.api
            .objects()
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{PODS}/")))
            .map(|(_, v)| v)
            .collect()
    }

    /// The Service's ServiceRoute, as gateways read it.
    pub fn route(&self) -> Value {
        self.api.get(&format!("{ROUTES}/hello")).expect("a ServiceRoute")
    }

    pub fn placement(&self, name: &str) -> Value {
        self.api.get(&format!("{PLACEMENTS}/{name}")).unwrap_or_else(|| panic!("no placement {name}"))
    }

    pub fn ksvc_status(&self) -> Value {
        self.api.get(KSVC).unwrap()["status"].clone()
    }

    pub fn condition(&self, type_: &str) -> Value {
        let status = self.ksvc_status();
        status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == type_).cloned().unwrap()
    }

    pub fn ready_condition(&self) -> Value {
        self.condition("Ready")
    }

    /// `seconds` of load: `concurrency` in flight on every instance, entering at `origin`.
    pub fn load(&self, seconds: u64, concurrency: f64, origin: &str) {
        let pods: Vec<(String, String)> = self
            .pods_by_node()
            .into_iter()
            .flat_map(|(node, names)| names.into_iter().map(move |n| (node.clone(), n)))
            .collect();
        let nodes: Vec<String> = self.node_objects.keys().cloned().collect();
        for _ in 0..seconds {
            self.clock.advance(Duration::from_secs(1));
            for (node, pod) in &pods {
                let revision = pod.split('-').take(2).collect::<Vec<_>>().join("-");
                self.ctx.record_stats(&InstanceStats {
                    namespace: "default".into(),
                    revision,
                    instance: pod.clone(),
                    node: node.clone(),
                    stat: WireStat { concurrency, requests: concurrency * 10.0, ..WireStat::default() },
                });
            }
            let total = concurrency * pods.len() as f64;
            self.ctx.record_report(&GatewayReport {
                node: origin.into(),
                revisions: vec![RevisionLoad {
                    namespace: "default".into(),
                    revision: "hello-00001".into(),
                    activator: WireStat::default(),
                    origin: WireStat { concurrency: total, requests: total * 10.0, ..WireStat::default() },
                }],
                rtt_ms: nodes.iter().map(|n| (n.clone(), if n == origin { 0.0 } else { 60.0 })).collect(),
                coordinate: None,
            });
        }
    }
}
