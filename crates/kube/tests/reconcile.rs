//! Reconcile scenarios against the fake API server (`support::api`): every request the
//! controller makes is recorded, answered the way the API server would, and asserted.

mod support;

use std::time::Duration;

use http::Method;
use ikukantai_kube::controller::LEGACY_FINALIZER;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use serde_json::json;
use support::{Call, Harness, KSVC, PLACEMENTS, PODS, ROUTES, ksvc, node, total};

#[tokio::test]
async fn create_applies_a_placement_creates_the_pod_and_reports_status() {
    let mut h = Harness::new(&["node1", "node2", "node3"]);
    let svc = ksvc("Konnichiwa", &json!({}));
    let (action, calls) = h.reconcile(&svc).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(2)));

    // 1. The revision's Placement, server-side applied, owned by the Service.
    let apply = calls
        .iter()
        .find(|c| c.is(&Method::PATCH, &format!("{PLACEMENTS}/hello-00001")))
        .expect("placement applied");
    assert!(apply.content_type.contains("apply-patch"), "{apply:?}");
    assert!(apply.query.contains("fieldManager=ikukantai-controller") && apply.query.contains("force=true"));
    assert_eq!(apply.body["metadata"]["ownerReferences"][0]["kind"], "Service");
    assert_eq!(apply.body["spec"]["service"], "hello");
    assert_eq!(total(&apply.body["spec"]["nodes"]), 1, "initial scale 1: {apply:?}");
    // 2. Its Pod, pinned to the chosen node, with the sidecar, owned by the Placement.
    let create = calls.iter().find(|c| c.is(&Method::POST, PODS)).expect("pod created");
    let node = create.body["metadata"]["labels"]["ikukantai.dev/node"].as_str().unwrap();
    assert_eq!(apply.body["spec"]["nodes"][node], 1);
    assert_eq!(create.body["metadata"]["ownerReferences"][0]["kind"], "Placement");
    assert_eq!(create.body["spec"]["containers"][1]["name"], "queue-proxy");
    // 3. Placement status with the per-node summary; 4. its route, created as nobody had that
    // name (5. the look-up); 6. the Service's status; 7. the ServiceRoute gateways route by.
    let pstatus =
        calls.iter().find(|c| c.is(&Method::PATCH, &format!("{PLACEMENTS}/hello-00001/status"))).unwrap();
    assert_eq!(pstatus.body["status"]["summary"].as_str().unwrap().split('/').next(), Some("0-0-0"));
    let status = calls.iter().find(|c| c.is(&Method::PATCH, &format!("{KSVC}/status"))).unwrap();
    assert_eq!(status.body["status"]["latestCreatedRevisionName"], "hello-00001");
    assert_eq!(status.body["status"]["url"], "http://hello.default.example.com");
    let route = calls.iter().find(|c| c.is(&Method::POST, "/api/v1/namespaces/default/services")).unwrap();
    assert_eq!(route.body["spec"]["externalName"], "ikukantai-gateway.ikukantai-system.svc.cluster.local");
    assert_eq!(route.body["metadata"]["ownerReferences"][0]["uid"], "uid-hello");
    assert!(calls.iter().any(|c| c.is(&Method::PATCH, &format!("{ROUTES}/hello"))), "{calls:#?}");
    assert_eq!(calls.len(), 7, "{calls:#?}");

    // Once ready, the Service says so, and a quiet reconcile writes nothing but status changes
    // and the route's new instance.
    h.make_ready();
    let (_, calls) = h.reconcile(&svc).await;
    assert!(calls.iter().all(|c| c.path.ends_with("/status") || c.path.starts_with(ROUTES)), "{calls:#?}");
    let ready = h.ready_condition();
    assert_eq!(ready["status"], "True", "{ready}");
    assert_eq!(h.ksvc_status()["latestReadyRevisionName"], "hello-00001");
    let summary = h.placement("hello-00001")["status"]["summary"].as_str().unwrap().to_owned();
    let (ready_row, desired_row) = summary.split_once('/').unwrap();
    assert_eq!(ready_row, desired_row, "{summary}");
    // A Pod the node cannot fit says so in the Service's status.
    h.api.update_all(&format!("{PODS}/"), |_, pod| {
        pod["status"] = json!({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                               "message": "0/3 nodes are available: 1 Insufficient cpu."}]});
    });
    h.sync();
    h.reconcile(&svc).await;
    let ready = h.ready_condition();
    assert_eq!(ready["reason"], "RevisionFailed", "{ready}");
    assert!(ready["message"].as_str().unwrap().contains("Unschedulable: 0/3 nodes are available"), "{ready}");
    h.make_ready();
    h.reconcile(&svc).await;
    let mut svc2 = svc.clone();
    svc2.status = serde_json::from_value(h.ksvc_status()).unwrap();
    let (_, calls) = h.reconcile(&svc2).await;
    assert!(calls.is_empty(), "steady state writes nothing: {calls:#?}");
}

#[tokio::test]
async fn load_entering_at_a_node_scales_up_there_and_back_down_when_it_stops() {
    let mut h = Harness::new(&["node1", "node2", "node3"]);
    let svc = ksvc("Konnichiwa", &json!({"autoscaling.knative.dev/target": "10"}));
    h.reconcile(&svc).await;
    h.make_ready();
    let before = h.pods_by_node();
    assert_eq!(before.values().map(Vec::len).sum::<usize>(), 1);

    // 30 requests in flight, all entering at node3, for 10 s: the KPA wants 3, near node3.
    h.load(10, 30.0, "node3");
    let (_, calls) = h.reconcile(&svc).await;
    let created: Vec<&Call> = calls.iter().filter(|c| c.is(&Method::POST, PODS)).collect();
    assert!(!created.is_empty(), "{calls:#?}");
    assert!(
        created.iter().all(|c| c.body["metadata"]["labels"]["ikukantai.dev/node"] == "node3"),
        "new instances go where the demand enters: {created:#?}"
    );
    let placed = h.placement("hello-00001")["spec"]["nodes"].clone();
    assert!(placed["node3"].as_u64().unwrap() >= 2, "{placed}");
    let metrics = h.ctx.metrics_text();
    let desired = format!(
        "ikukantai_controller_desired_instances{{namespace=\"default\",revision=\"hello-00001\"}} {}",
        total(&placed)
    );
    assert!(metrics.contains(&desired), "{metrics}");
    assert!(metrics.contains("ikukantai_controller_reconciles_total{result=\"ok\"} 2"), "{metrics}");
    h.make_ready();

    // Load stops: the revision scales down step by step (at most halving per tick, as the
    // KPA's max-scale-down-rate says) and, past the stable window and grace, to zero.
    let mut counts = Vec::new();
    for _ in 0..60 {
        h.load(2, 0.0, "node3");
        h.reconcile(&svc).await;
        counts.push(h.pods_by_node().values().map(Vec::len).sum::<usize>());
    }
    // Never up again, but for one instance while a misplaced one moves (it makes before it
    // breaks: the new one first, the old one at the next decision).
    assert!(counts.windows(2).all(|w| w[1] <= w[0] + 1), "never up again: {counts:?}");
    assert!(counts.windows(3).all(|w| w[1] <= w[0] || w[2] <= w[0]), "a move is one step: {counts:?}");
    assert_eq!(counts.last(), Some(&0), "{counts:?}");
    assert_eq!(total(&h.placement("hello-00001")["spec"]["nodes"]), 0);
}

#[tokio::test]
async fn a_template_change_cuts_a_new_revision_and_moves_traffic() {
    let mut h = Harness::new(&["node1", "node2", "node3"]);
    h.reconcile(&ksvc("Konnichiwa", &json!({}))).await;
    h.make_ready();
    let mut svc = ksvc("Hello", &json!({}));
    svc.metadata.generation = Some(2);
    let (_, calls) = h.reconcile(&svc).await;
    let apply = calls
        .iter()
        .find(|c| c.is(&Method::PATCH, &format!("{PLACEMENTS}/hello-00002")))
        .expect("new revision");
    assert_eq!(apply.body["spec"]["generation"], 2);
    assert_eq!(apply.body["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"], "Hello");
    assert!(calls.iter().any(|c| c.is(&Method::POST, PODS)
        && c.body["metadata"]["name"].as_str().unwrap().starts_with("hello-00002-")));
    let status = calls.iter().find(|c| c.is(&Method::PATCH, &format!("{KSVC}/status"))).unwrap();
    assert_eq!(status.body["status"]["latestCreatedRevisionName"], "hello-00002");
    // Traffic moves once the new revision is ready (Knative's latestReadyRevisionName), not before.
    assert_eq!(status.body["status"]["traffic"][0]["revisionName"], "hello-00001");
    h.make_ready();
    h.reconcile(&svc).await;
    assert_eq!(h.ksvc_status()["traffic"][0]["revisionName"], "hello-00002");
    assert_eq!(h.ksvc_status()["latestReadyRevisionName"], "hello-00002");
    // The old revision keeps its frozen template.
    assert_eq!(
        h.placement("hello-00001")["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
        "Konnichiwa"
    );
}

#[tokio::test]
async fn a_new_revision_whose_pods_crash_never_takes_traffic_and_is_scaled_away() {
    let mut h = Harness::new(&["node1", "node2", "node3"]);
    h.reconcile(&ksvc("Konnichiwa", &json!({}))).await;
    h.make_ready();
    let mut svc = ksvc("Hello", &json!({}));
    svc.metadata.generation = Some(2);
    h.reconcile(&svc).await;
    h.api.update_all(&format!("{PODS}/hello-00002-"), |_, v| {
        v["status"] = json!({"containerStatuses": [{"name": "user-container", "ready": false, "restartCount": 3,
            "image": "x", "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff",
            "message": "back-off 40s restarting failed container"}}}]});
    });
    h.sync();
    h.reconcile(&svc).await;
    let ready = h.ready_condition();
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("RevisionFailed")));
    assert!(ready["message"].as_str().unwrap().contains("revision hello-00002 failed"), "{ready}");
    assert_eq!(h.ksvc_status()["traffic"][0]["revisionName"], "hello-00001");
    assert_eq!(h.ksvc_status()["latestReadyRevisionName"], "hello-00001");
    // Failed and without traffic: nothing keeps its Pods.
    for _ in 0..3 {
        h.reconcile(&svc).await;
    }
    let left: Vec<String> = h.pods_by_node().into_values().flatten().collect();
    assert!(left.iter().all(|p| !p.contains("hello-00002")), "{left:?}");
    assert!(left.iter().any(|p| p.contains("hello-00001")), "{left:?}");
    // Once its Pods are gone it stays failed (its Placement says so): nothing starts them again.
    h.api.finish_terminating();
    h.sync();
    for _ in 0..3 {
        let (_, calls) = h.reconcile(&svc).await;
        assert!(!calls.iter().any(|c| c.is(&Method::POST, PODS)), "{calls:#?}");
    }
    assert_eq!(
        h.placement("hello-00002")["status"]["failure"].as_str().map(|f| f.contains("CrashLoopBackOff")),
        Some(true)
    );
    assert_eq!(h.ready_condition()["reason"], "RevisionFailed");
}

#[tokio::test]
async fn instances_on_a_node_that_is_gone_are_replaced_elsewhere() {
    let mut h = Harness::new(&["node1", "node2", "node3"]);
    let svc = ksvc("Konnichiwa", &json!({"autoscaling.knative.dev/min-scale": "1"}));
    h.reconcile(&svc).await;
    h.make_ready();
    let (gone, pods) = h.pods_by_node().into_iter().next().unwrap();
    h.remove_node(&gone);
    let (_, calls) = h.reconcile(&svc).await;
    assert!(
        calls.iter().any(|c| c.method == Method::DELETE && c.path == format!("{PODS}/{}", pods[0])),
        "{calls:#?}"
    );
    let created = calls.iter().find(|c| c.is(&Method::POST, PODS)).expect("replacement");
    assert_ne!(created.body["metadata"]["labels"]["ikukantai.dev/node"], gone.as_str());
    let placed = h.placement("hello-00001")["spec"]["nodes"].clone();
    assert!(placed.get(&gone).is_none(), "{placed}");
    assert_eq!(total(&placed), 1);
}

#[tokio::test]
async fn a_cordoned_node_keeps_its_instances_and_gets_no_new_ones() {
    let mut h = Harness::new(&["node1", "node2", "node3"]);
    let svc = ksvc("Konnichiwa", &json!({"autoscaling.knative.dev/target": "10"}));
    h.reconcile(&svc).await;
    h.make_ready();
    let (cordoned, pods) = h.pods_by_node().into_iter().next().unwrap();
    let mut n = node(&cordoned);
    n.spec = Some(k8s_openapi::api::core::v1::NodeSpec { unschedulable: Some(true), ..Default::default() });
    h.set_node(n);
    let (_, calls) = h.reconcile(&svc).await;
    assert!(calls.iter().all(|c| c.method != Method::DELETE), "{calls:#?}");

    h.load(10, 30.0, &cordoned);
    let (_, calls) = h.reconcile(&svc).await;
    let created: Vec<&Call> = calls.iter().filter(|c| c.is(&Method::POST, PODS)).collect();
    assert!(!created.is_empty(), "{calls:#?}");
    assert!(
        created.iter().all(|c| c.body["metadata"]["labels"]["ikukantai.dev/node"] != cordoned.as_str()),
        "{created:#?}"
    );
    assert_eq!(h.pods_by_node()[&cordoned], pods, "the instance there stays");
}

/// Three nodes, node1 tainted like a control-plane node.
fn tainted_node1() -> Harness {
    let mut h = Harness::new(&["node1", "node2", "node3"]);
    let mut master = node("node1");
    let taint = json!({"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]});
    master.spec = Some(serde_json::from_value(taint).unwrap());
    h.set_node(master);
    h
}

#[tokio::test]
async fn tainted_nodes_get_instances_only_of_revisions_that_tolerate_them() {
    let mut h = tainted_node1();
    // Demand at node1 only: a revision that does not tolerate the taint is placed elsewhere.
    let svc = ksvc("Konnichiwa", &json!({"autoscaling.knative.dev/target": "10"}));
    h.reconcile(&svc).await;
    h.make_ready();
    h.load(10, 30.0, "node1");
    h.reconcile(&svc).await;
    let pods = h.pods_by_node();
    assert!(!pods.contains_key("node1"), "{pods:?}");
    assert!(pods.values().map(Vec::len).sum::<usize>() >= 2, "{pods:?}");

    // One that tolerates it may go there.
    let mut h = tainted_node1();
    let mut svc = ksvc("Konnichiwa", &json!({"autoscaling.knative.dev/target": "10"}));
    svc.spec.inner.template.spec.tolerations =
        Some(json!([{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]));
    h.reconcile(&svc).await;
    h.make_ready();
    h.load(10, 30.0, "node1");
    h.reconcile(&svc).await;
    assert!(h.pods_by_node().contains_key("node1"), "{:?}", h.pods_by_node());
}

#[tokio::test]
async fn deleting_a_service_needs_no_controller_garbage_collection_removes_the_rest() {
    let mut h = Harness::new(&["node1", "node2", "node3"]);
    let svc = ksvc("Konnichiwa", &json!({}));
    let (_, calls) = h.reconcile(&svc).await;
    assert!(!calls.iter().any(|c| c.is(&Method::PATCH, KSVC)), "no finalizer: {calls:#?}");
    h.make_ready();
    // Uninstalling removes the controller and the CRD together: nothing may wait for it.
    assert!(h.api.delete_object(KSVC));
    assert!(h.api.get(KSVC).is_none(), "a Service without finalizers goes at once");
    h.api.garbage_collect();
    assert!(h.api.objects().keys().all(|k| !k.starts_with(PLACEMENTS)), "its Placements follow it");
    assert!(h.pods_by_node().is_empty(), "and their Pods drain: {:?}", h.all_pods());
    h.api.finish_terminating();
    assert!(h.all_pods().is_empty());
}

#[tokio::test]
async fn the_finalizer_of_an_earlier_version_is_removed_and_deletion_completes() {
    let mut h = Harness::new(&["node1"]);
    let mut svc = ksvc("Konnichiwa", &json!({}));
    svc.metadata.finalizers = Some(vec![LEGACY_FINALIZER.into(), "example.com/keep".into()]);
    h.reconcile(&svc).await;
    assert_eq!(h.api.get(KSVC).unwrap()["metadata"]["finalizers"], json!(["example.com/keep"]));

    // One being deleted: its last finalizer goes, and with it the Service.
    let mut h = Harness::new(&["node1"]);
    let mut deleting = ksvc("Konnichiwa", &json!({}));
    deleting.metadata.finalizers = Some(vec![LEGACY_FINALIZER.into()]);
    deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    let (action, calls) = h.reconcile(&deleting).await;
    assert_eq!(action, Action::await_change());
    assert!(calls.iter().all(|c| c.path == KSVC), "nothing but the finalizer: {calls:#?}");
    assert!(h.api.get(KSVC).is_none());
}

#[tokio::test]
async fn removing_the_old_finalizer_never_drops_one_another_controller_added_meanwhile() {
    let mut h = Harness::new(&["node1"]);
    let mut seen = ksvc("Konnichiwa", &json!({}));
    seen.metadata.finalizers = Some(vec![LEGACY_FINALIZER.into()]);
    seen.metadata.resource_version = Some("5".into());
    // Since the controller's cache saw version 5, someone added a finalizer of their own.
    let mut stored = serde_json::to_value(&seen).unwrap();
    stored["metadata"]["finalizers"] = json!([LEGACY_FINALIZER, "example.com/keep"]);
    stored["metadata"]["resourceVersion"] = json!("6");
    h.api.put(KSVC, stored);
    let (result, _) = h.try_reconcile(&seen).await;
    assert!(result.is_err(), "a patch of version 5 is refused (409), not applied over 6");
    assert_eq!(h.api.get(KSVC).unwrap()["metadata"]["finalizers"][1], "example.com/keep");
    // The watch delivers version 6: only the old finalizer goes.
    h.reconcile(&h.stored_ksvc()).await;
    assert_eq!(h.api.get(KSVC).unwrap()["metadata"]["finalizers"], json!(["example.com/keep"]));
}

#[tokio::test]
async fn an_invalid_service_gets_a_status_that_names_the_field_and_nothing_else() {
    let mut h = Harness::new(&["node1"]);
    let svc = ksvc("Konnichiwa", &json!({"autoscaling.knative.dev/max-scale": "lots"}));
    let (action, calls) = h.reconcile(&svc).await;
    assert_eq!(action, Action::await_change());
    assert_eq!(calls.len(), 1, "{calls:#?}");
    let ready = calls[0].body["status"]["conditions"][1].clone();
    assert_eq!(ready["type"], "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "InvalidSpec");
    assert!(ready["message"].as_str().unwrap().contains("autoscaling.knative.dev/max-scale"), "{ready}");
    assert!(h.pods_by_node().is_empty());
}

#[tokio::test]
async fn a_node_whose_instance_went_unready_leaves_the_placement_status_and_stays_out() {
    let mut h = Harness::new(&["node1", "node2", "node3"]);
    let svc = ksvc("Konnichiwa", &json!({"autoscaling.knative.dev/min-scale": "1"}));
    h.reconcile(&svc).await;
    h.make_ready();
    h.reconcile(&svc).await;
    let (node, _) = h.pods_by_node().into_iter().next().unwrap();
    assert_eq!(h.placement("hello-00001")["status"]["ready"][&node], 1);
    // Its readiness probe fails: the node has no ready instance any more.
    h.api.update_all(&format!("{PODS}/"), |_, p| p["status"]["conditions"][1]["status"] = json!("False"));
    h.sync();
    h.reconcile(&svc).await;
    let status = h.placement("hello-00001")["status"].clone();
    assert!(status["ready"].get(&node).is_none(), "{status}");
    // And the next reconciles have nothing to write.
    for _ in 0..2 {
        let (_, calls) = h.reconcile(&svc).await;
        let writes: Vec<&Call> = calls.iter().filter(|c| c.path.starts_with(PLACEMENTS)).collect();
        assert!(writes.is_empty(), "{writes:#?}");
    }
}

#[tokio::test]
async fn the_service_route_tells_gateways_the_split_the_settings_and_the_ready_instances() {
    let mut h = Harness::new(&["node1", "node2", "node3"]);
    let svc = ksvc(
        "Konnichiwa",
        &json!({"autoscaling.knative.dev/min-scale": "2", "ikukantai.dev/balancer": "even",
                                         "ikukantai.dev/placement": "spread"}),
    );
    h.reconcile(&svc).await;
    let route = h.route();
    assert_eq!(route["metadata"]["ownerReferences"][0]["uid"], "uid-hello");
    assert_eq!(route["spec"]["traffic"], json!([{"revision": "hello-00001", "percent": 100}]));
    let rev = &route["spec"]["revisions"][0];
    assert_eq!(
        (rev["name"].as_str(), rev["balancer"].as_str(), rev["containerConcurrency"].as_u64()),
        (Some("hello-00001"), Some("even"), Some(10))
    );
    assert_eq!(rev["instances"], json!([]), "none ready yet");
    h.make_ready();
    h.reconcile(&svc).await;
    let instances = h.route()["spec"]["revisions"][0]["instances"].clone();
    assert_eq!(instances.as_array().unwrap().len(), 2, "{instances}");
    assert!(instances[0]["ip"].as_str().unwrap().starts_with("10.244."), "{instances}");
    // An instance that stops being ready leaves the route; unchanged routes are not rewritten.
    let (_, calls) = h.reconcile(&svc).await;
    assert!(!calls.iter().any(|c| c.path.starts_with(ROUTES)), "{calls:#?}");
    let first = instances[0]["name"].as_str().unwrap().to_owned();
    h.api.update(&format!("{PODS}/{first}"), |p| p["status"]["conditions"][1]["status"] = json!("False"));
    h.sync();
    h.reconcile(&svc).await;
    assert_eq!(h.route()["spec"]["revisions"][0]["instances"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_service_at_zero_waits_for_demand_instead_of_ticking() {
    let mut h = Harness::new(&["node1"]);
    let svc = ksvc("Konnichiwa", &json!({"autoscaling.knative.dev/initial-scale": "0"}));
    h.ctx.set_config({
        let mut c = ikukantai_api::config::FleetConfig::new();
        c.autoscaler.allow_zero_initial_scale = true;
        c
    });
    let (action, _) = h.reconcile(&svc).await;
    assert_eq!(action, Action::await_change(), "nothing runs, nothing to tick");
    h.ctx.record_demand(&ikukantai_kube::wire::Demand {
        namespace: "default".into(),
        service: "hello".into(),
        revision: "hello-00001".into(),
        node: "node1".into(),
    });
    let (action, calls) = h.reconcile(&svc).await;
    assert!(calls.iter().any(|c| c.is(&Method::POST, PODS)), "{calls:#?}");
    assert_eq!(action, Action::requeue(Duration::from_secs(2)), "ticks while it has instances");
}

#[tokio::test]
async fn instances_that_go_quiet_push_nothing_and_the_revision_still_scales_down() {
    let mut h = Harness::new(&["node1", "node2", "node3"]);
    // No panic mode (it holds the count for a stable window whatever the stats say).
    let svc = ksvc(
        "Konnichiwa",
        &json!({"autoscaling.knative.dev/target": "10", "autoscaling.knative.dev/panic-threshold-percentage": "1000"}),
    );
    h.reconcile(&svc).await;
    h.make_ready();
    h.load(10, 30.0, "node3");
    h.reconcile(&svc).await;
    h.make_ready();
    let peak: usize = h.pods_by_node().values().map(Vec::len).sum();
    assert!(peak >= 3, "{peak}");
    // The load stops; idle queue proxies stop pushing (one zero each, then nothing).
    h.load(1, 0.0, "node3");
    for _ in 0..15 {
        h.clock.advance(Duration::from_secs(2));
        h.reconcile(&svc).await;
    }
    let after: usize = h.pods_by_node().values().map(Vec::len).sum();
    assert!(after <= 2, "half a stable window of silence is half a window of zeros: {peak} → {after}");
}

#[tokio::test]
async fn a_service_back_at_zero_stops_ticking_until_demand_or_a_change() {
    let mut h = Harness::new(&["node1"]);
    let svc = ksvc("Konnichiwa", &json!({"autoscaling.knative.dev/window": "6s"}));
    let (action, _) = h.reconcile(&svc).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(2)), "initial scale 1: it ticks");
    h.make_ready();
    // No requests: past the stable window and the grace period it goes to zero, and once its
    // last Pod is gone nothing is left to tick for (Knative's KPA likewise waits at zero).
    let mut actions = Vec::new();
    for _ in 0..40 {
        h.load(2, 0.0, "node1");
        actions.push(h.reconcile(&svc).await.0);
        h.api.finish_terminating();
        h.sync();
        if actions.last() == Some(&Action::await_change()) {
            break;
        }
    }
    assert_eq!(h.pods_by_node().values().map(Vec::len).sum::<usize>(), 0);
    assert_eq!(actions.last(), Some(&Action::await_change()), "{actions:?}");
    assert!(actions[..actions.len() - 1].iter().all(|a| *a == Action::requeue(Duration::from_secs(2))));
}
