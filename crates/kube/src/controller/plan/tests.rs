//! [`plan`] on plain data: no API server, no client. The scenarios of `tests/reconcile.rs` at
//! the level of one decision each.

use std::time::{Duration, Instant};

use ikukantai_api::config::FleetConfig;
use ikukantai_api::revision::SERVICE_LABEL;
use ikukantai_api::service::ServiceStatus;
use ikukantai_policy::autoscaler::Stat;
use serde_json::{Value, json};

use super::*;
use crate::controller::to_local;
use crate::crd::{KnativeService, MANAGED_BY, MANAGED_BY_LABEL, NODE_LABEL, PlacementStatus, REVISION_LABEL};
use crate::pod::{INDEX_LABEL, pod_name};

const REV: &str = "hello-00001";

/// A cluster, the controller's memory and a clock, for plans made one after the other.
struct World {
    observed: Observed,
    state: ControlState,
    config: FleetConfig,
    started: Instant,
    now: Now,
}

impl World {
    /// The `hello` Service (containerConcurrency 10) with these template annotations, on
    /// ready nodes of capacity 10, with nothing placed yet.
    fn new(nodes: &[&str], annotations: &Value) -> Self {
        let mut config = FleetConfig::new();
        config.autoscaler.allow_zero_initial_scale = true;
        let ksvc: KnativeService = serde_json::from_value(json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": "hello", "namespace": "default", "uid": "uid-hello", "generation": 1},
            "spec": {"template": {
                "metadata": {"annotations": annotations},
                "spec": {"containerConcurrency": 10, "containers": [{"image": "hello:1"}]}
            }}
        }))
        .unwrap();
        let service = to_local(&ksvc, &config).expect("a valid Service");
        let nodes = nodes
            .iter()
            .map(|n| NodeInfo {
                name: (*n).to_owned(),
                ready: true,
                lost: None,
                cordoned: false,
                taints: Vec::new(),
                labels: BTreeMap::new(),
                capacity: 10,
            })
            .collect();
        let started = Instant::now();
        let wall: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        Self {
            observed: Observed { service, placements: Vec::new(), pods: Vec::new(), nodes },
            state: ControlState::default(),
            config,
            started,
            now: Now { at: started, wall },
        }
    }

    fn plan(&mut self) -> Plan<'_> {
        let under = Under { config: &self.config, seed: 7, started: self.started };
        plan(&self.observed, &mut self.state, under, self.now)
    }

    fn advance(&mut self, seconds: u64) {
        self.now.at += Duration::from_secs(seconds);
        self.now.wall = Timestamp::from_second(self.now.wall.as_second() + seconds as i64).unwrap();
    }

    /// The revision's Placement as the API server stores it, asking for `nodes` (none on the
    /// others), created at the start.
    fn place(&mut self, nodes: &[(&str, u32)], status: Option<PlacementStatus>) {
        let spec = PlacementSpec {
            service: "hello".into(),
            generation: 1,
            template: self.observed.service.spec.template.clone(),
            // Every node, as the controller writes it.
            nodes: self
                .observed
                .nodes
                .iter()
                .map(|n| (n.name.clone(), nodes.iter().find(|(m, _)| *m == n.name).map_or(0, |(_, c)| *c)))
                .collect(),
        };
        let mut p = Placement::new(REV, spec);
        p.metadata.namespace = Some("default".into());
        p.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2030-01-01T00:00:00Z".parse().unwrap(),
        ));
        p.status = status;
        self.observed.placements = vec![Arc::new(p)];
    }

    /// Instance `index` of the revision on `node`, with this Pod `status`.
    fn pod(&mut self, node: &str, index: u32, status: &Value) {
        let pod = json!({
            "metadata": {
                "name": pod_name(REV, node, index), "namespace": "default",
                "labels": {REVISION_LABEL: REV, SERVICE_LABEL: "hello", MANAGED_BY_LABEL: MANAGED_BY,
                           NODE_LABEL: node, INDEX_LABEL: index.to_string()}
            },
            "spec": {"nodeName": node, "containers": []},
            "status": status,
        });
        self.observed.pods.push(Arc::new(serde_json::from_value(pod).unwrap()));
    }

    /// The revision's scaler hears `concurrency` entering at `origin` for `seconds`, a push a
    /// second (as instances and gateways push), and the clock moves on.
    fn load(&mut self, seconds: u64, concurrency: f64, origin: &str) {
        let origin = self.state.node_index(origin);
        for _ in 0..seconds {
            self.advance(1);
            let scaler = self.state.scalers.get_mut(&("default".into(), REV.into())).expect("a scaler");
            scaler
                .autoscaler
                .record(self.now.at, &Stat { concurrency, requests: concurrency, ..Stat::default() });
            scaler.autoscaler.record_origin(self.now.at, origin, concurrency);
        }
    }

    /// The RTT between two nodes is measured as `ms`, both ways.
    fn rtt(&mut self, a: &str, b: &str, ms: f64) {
        let (a, b) = (self.state.node_index(a), self.state.node_index(b));
        self.state.rtt.record(a, b, ms, self.now.at);
        self.state.rtt.record(b, a, ms, self.now.at);
    }
}

fn running() -> Value {
    json!({"phase": "Running", "podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]})
}

fn ever_ready() -> Option<PlacementStatus> {
    Some(PlacementStatus { ever_ready: true, ..PlacementStatus::default() })
}

fn condition<'a>(status: &'a ServiceStatus, type_: &str) -> &'a ikukantai_api::service::Condition {
    status.conditions.iter().find(|c| c.type_ == type_).expect("the condition")
}

fn total(desired: &BTreeMap<String, u32>) -> u32 {
    desired.values().sum()
}

#[test]
fn a_new_service_gets_its_first_revision_a_placement_to_apply_and_one_instance() {
    let mut w = World::new(&["node1", "node2", "node3"], &json!({}));
    let plan = w.plan();
    assert_eq!(plan.scaled.len(), 1);
    let r = &plan.scaled[0];
    assert_eq!(r.revision.name(), REV);
    let PlacementChange::Apply(spec) = &r.placement else { panic!("a new revision's Placement is applied") };
    assert_eq!(
        (spec.service.as_str(), spec.generation, total(&spec.nodes)),
        ("hello", 1, 1),
        "initial scale 1"
    );
    let (node, _) = spec.nodes.iter().find(|(_, n)| **n == 1).unwrap();
    assert_eq!(r.pods.create, vec![(node.clone(), 0)]);
    assert!(r.pods.delete.is_empty() && r.pods.held.is_none());
    assert!(plan.claim_services && plan.active);

    // Still starting: the Service says so; the route sends its traffic there, to no instance yet.
    let outcome = plan.outcome(&[Converged::default()]);
    assert_eq!(outcome.status.latest_created_revision_name.as_deref(), Some(REV));
    let ready = condition(&outcome.status, "Ready");
    assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("Unknown", Some("Deploying")));
    assert_eq!(outcome.route.traffic[0].revision, REV);
    assert!(outcome.route.revisions[0].instances.is_empty());
    let status = plan.scaled[0].placement_status(&plan.node_names(), &Converged::default());
    assert_eq!((status.ever_ready, status.failure), (false, None));
}

#[test]
fn load_entering_at_a_node_scales_up_there_and_a_ready_instance_makes_the_service_ready() {
    let mut w = World::new(&["node1", "node2", "node3"], &json!({}));
    w.place(&[("node1", 1)], ever_ready());
    w.pod("node1", 0, &running());
    let plan = w.plan();
    assert!(matches!(plan.scaled[0].placement, PlacementChange::Keep(_)), "steady: nothing to apply");
    assert_eq!(plan.scaled[0].pods, PodChanges::default());
    let outcome = plan.outcome(&[Converged { refusal: None, ever_ready: true }]);
    assert_eq!(condition(&outcome.status, "Ready").status, "True");
    assert_eq!(outcome.route.revisions[0].instances.len(), 1, "the ready instance is routed");

    // 30 in flight, all entering at node3 (target 7 per instance): more instances, all there.
    w.load(10, 30.0, "node3");
    let plan = w.plan();
    let r = &plan.scaled[0];
    let PlacementChange::Apply(spec) = &r.placement else { panic!("new counts are applied") };
    assert_eq!(spec.nodes, r.desired);
    assert_eq!(r.desired["node1"], 1, "the running instance stays");
    assert!(r.desired["node3"] >= 2, "{:?}", r.desired);
    let at_node3: Vec<(String, u32)> = (0..r.desired["node3"]).map(|i| ("node3".to_owned(), i)).collect();
    assert_eq!(r.pods.create, at_node3);
    assert!(r.pods.delete.is_empty());
    assert_eq!((r.scaled.desired, r.scaled.ready), (total(&r.desired), 1));
}

#[test]
fn a_move_makes_before_it_breaks_holding_one_instance_more_for_one_decision() {
    let mut w = World::new(&["node1", "node2", "node3"], &json!({}));
    w.place(&[("node1", 1)], ever_ready());
    w.pod("node1", 0, &running());
    w.rtt("node1", "node3", 50.0);
    w.rtt("node2", "node3", 50.0);
    w.plan();
    // One instance's worth of demand, all at node3, 50 ms from the instance: it moves there.
    w.load(10, 1.0, "node3");
    let plan = w.plan();
    let r = &plan.scaled[0];
    assert_eq!(r.desired, BTreeMap::from([("node1".into(), 1), ("node2".into(), 0), ("node3".into(), 1)]));
    assert_eq!(r.pods.create, vec![("node3".to_owned(), 0)], "the new one first");
    assert!(r.pods.delete.is_empty(), "the old one stays while the new one starts");
    let desired = r.desired.clone();

    // Next decision, the new instance exists (still starting): the old one goes.
    w.place(&desired.iter().map(|(n, c)| (n.as_str(), *c)).collect::<Vec<_>>(), ever_ready());
    w.pod("node3", 0, &json!({"phase": "Pending"}));
    w.load(2, 1.0, "node3");
    let plan = w.plan();
    let r = &plan.scaled[0];
    assert_eq!(total(&r.desired), 1, "{:?}", r.desired);
    assert_eq!(r.desired["node3"], 1);
    assert_eq!(
        r.pods.delete,
        vec![Deletion { pod: pod_name(REV, "node1", 0), node: "node1".into(), ended: None }]
    );
    assert!(r.pods.create.is_empty());
}

#[test]
fn an_instance_that_ended_is_deleted_and_replaced_under_another_index() {
    let mut w = World::new(&["node1"], &json!({}));
    w.place(&[("node1", 1)], ever_ready());
    // Evicted for disk pressure: phase Failed, never runs again, still holds its name.
    w.pod("node1", 0, &json!({"phase": "Failed", "reason": "Evicted"}));
    let plan = w.plan();
    let r = &plan.scaled[0];
    assert_eq!(r.desired["node1"], 1, "the ended one is not counted");
    assert_eq!(
        r.pods.delete,
        vec![Deletion {
            pod: pod_name(REV, "node1", 0),
            node: "node1".into(),
            ended: Some("Evicted".into())
        }]
    );
    assert_eq!(r.pods.create, vec![("node1".to_owned(), 1)]);
}

#[test]
fn a_revision_whose_pods_crash_before_it_was_ever_ready_fails_and_says_why() {
    let mut w = World::new(&["node1"], &json!({}));
    w.place(&[("node1", 1)], None);
    w.pod(
        "node1",
        0,
        &json!({"phase": "Running", "containerStatuses": [{"name": "user-container", "ready": false, "restartCount": 3,
            "image": "hello:1", "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}}}]}),
    );
    let plan = w.plan();
    let outcome = plan.outcome(&[Converged::default()]);
    let ready = condition(&outcome.status, "Ready");
    assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("False", Some("RevisionFailed")));
    assert!(ready.message.as_deref().unwrap().contains("CrashLoopBackOff: back-off 40s"), "{ready:?}");
    let routed = &outcome.route.revisions[0];
    assert!(routed.failure.as_deref().unwrap().contains("CrashLoopBackOff"), "requests fail at once");
    // Kept in its Placement, so it stays failed once its Pods are gone.
    let status = plan.scaled[0].placement_status(&plan.node_names(), &Converged::default());
    assert!(status.failure.as_deref().unwrap().contains("CrashLoopBackOff"), "{status:?}");
}

#[test]
fn a_refused_create_fails_a_revision_never_ready_but_not_one_that_has_been() {
    let mut w = World::new(&["node1"], &json!({}));
    let plan = w.plan();
    let refused = Converged { refusal: Some("exceeded quota: pods=10".into()), ever_ready: false };
    let outcome = plan.outcome(std::slice::from_ref(&refused));
    let ready = condition(&outcome.status, "Ready");
    assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("False", Some("RevisionFailed")));
    assert!(ready.message.as_deref().unwrap().contains("exceeded quota"), "{ready:?}");
    assert_eq!(outcome.route.revisions[0].failure.as_deref(), Some("exceeded quota: pods=10"));
    let status = plan.scaled[0].placement_status(&plan.node_names(), &refused);
    assert_eq!(status.failure.as_deref(), Some("exceeded quota: pods=10"));

    // A revision that has been ready is not failed by a refusal, though the Service hears of it:
    // as its Placement says (applied just now, ahead of the store), or as its Pods do.
    let was_ready = Converged { ever_ready: true, ..refused.clone() };
    assert_eq!(plan.scaled[0].placement_status(&plan.node_names(), &was_ready).failure, None);
    w.place(&[("node1", 1)], ever_ready());
    w.pod("node1", 0, &running());
    let plan = w.plan();
    let outcome = plan.outcome(&[Converged { ever_ready: true, ..refused }]);
    let ready = condition(&outcome.status, "Ready");
    assert_eq!(ready.status, "Unknown", "{ready:?}");
    assert!(ready.message.as_deref().unwrap().contains("hello-00001: exceeded quota"), "{ready:?}");
    assert_eq!(outcome.route.revisions[0].failure, None);
}

#[test]
fn a_refusal_within_its_backoff_holds_the_creates_back() {
    let mut w = World::new(&["node1"], &json!({}));
    w.state.refuse(("default".into(), REV.into()), "forbidden: violates PodSecurity".into(), w.now.at);
    let plan = w.plan();
    let pods = &plan.scaled[0].pods;
    assert_eq!(pods.create.len(), 1, "still missing");
    assert_eq!(pods.held.as_deref(), Some("forbidden: violates PodSecurity"));
    w.advance(2);
    let plan = w.plan();
    assert_eq!(plan.scaled[0].pods.held, None, "tried again once the backoff ends");
}

#[test]
fn a_revision_at_zero_waits_and_demand_places_an_instance_where_it_entered() {
    let mut w = World::new(&["node1", "node2"], &json!({"autoscaling.knative.dev/initial-scale": "0"}));
    let plan = w.plan();
    let r = &plan.scaled[0];
    assert_eq!(total(&r.desired), 0);
    assert!(r.pods.create.is_empty());
    assert!(!plan.active, "nothing runs, nothing to tick");
    let outcome = plan.outcome(&[Converged::default()]);
    assert_eq!(condition(&outcome.status, "Ready").status, "True", "ready at zero, as in Knative");
    // Ready without instances: a refused create does not fail it.
    let refused = Converged { refusal: Some("exceeded quota".into()), ever_ready: false };
    assert_eq!(plan.scaled[0].placement_status(&plan.node_names(), &refused).failure, None);
    assert_eq!(plan.outcome(&[refused]).route.revisions[0].failure, None);

    // A request waits at node2's gateway: the scaler is poked there.
    w.advance(1);
    let origin = w.state.node_index("node2");
    let scaler = w.state.scalers.get_mut(&("default".into(), REV.into())).unwrap();
    scaler.autoscaler.poke(w.now.at, origin);
    let plan = w.plan();
    let r = &plan.scaled[0];
    assert_eq!(r.desired, BTreeMap::from([("node1".into(), 0), ("node2".into(), 1)]));
    assert_eq!(r.pods.create, vec![("node2".to_owned(), 0)]);
    assert!(plan.active);
}

#[test]
fn demand_that_arrived_before_the_revision_had_a_scaler_is_not_lost() {
    let mut w = World::new(&["node1", "node2"], &json!({"autoscaling.knative.dev/initial-scale": "0"}));
    // A new leader: the gateway's push came before the first reconcile.
    let origin = w.state.node_index("node2");
    w.state.remember_poke(("default".into(), REV.into()), w.now.at, origin);
    let plan = w.plan();
    assert_eq!(plan.scaled[0].pods.create, vec![("node2".to_owned(), 0)]);
}

#[test]
fn a_pod_still_draining_holds_its_node_and_a_failed_one_does_not() {
    let mut w = World::new(&["node1", "node2"], &json!({}));
    for n in &mut w.observed.nodes {
        n.capacity = 1;
    }
    // Another Service's Pods: one being deleted on node1 (still running until it drains), one
    // that failed on node2.
    let other = |node: &str, extra: Value| {
        let mut pod = json!({
            "metadata": {
                "name": format!("other-{node}"), "namespace": "default",
                "labels": {REVISION_LABEL: "other-00001", SERVICE_LABEL: "other", MANAGED_BY_LABEL: MANAGED_BY,
                           NODE_LABEL: node, INDEX_LABEL: "0"}
            },
            "spec": {"nodeName": node, "containers": []},
            "status": running(),
        });
        for (k, v) in extra.as_object().unwrap() {
            pod[k].as_object_mut().unwrap().extend(v.as_object().unwrap().clone());
        }
        Arc::new(serde_json::from_value::<Pod>(pod).unwrap())
    };
    w.observed.pods.push(other("node1", json!({"metadata": {"deletionTimestamp": "2030-01-01T00:00:00Z"}})));
    w.observed.pods.push(other("node2", json!({"status": {"phase": "Failed"}})));
    for first in [true, false] {
        // Whichever node the first instance would prefer, only node2 has room for it.
        if !first {
            w.observed.nodes.reverse();
        }
        let plan = w.plan();
        let PlacementChange::Apply(spec) = &plan.scaled[0].placement else { panic!("a new Placement") };
        assert_eq!(
            spec.nodes,
            BTreeMap::from([("node1".into(), 0), ("node2".into(), 1)]),
            "node order reversed: {}",
            !first
        );
    }
}
