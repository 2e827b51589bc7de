//! The control loop stepped by hand at chosen instants (no loop or monitor runs): what a pass
//! visits, what wakes a revision at rest, timers, and the pacing of starts. Instances are real
//! processes: this very test binary listening on `$PORT` (`instance_process`), or `sleep`,
//! which never gets ready.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ikukantai_api::config::{DEFAULT_PROBE_INTERVAL, FleetConfig};
use ikukantai_api::topology::Topology;
use ikukantai_dataplane::gateway::{EdgePolicy, RevisionReport};
use ikukantai_policy::autoscaler::Stat;

use super::reconcile::{Measured, Reported};
use super::starts::{RevisionKey, StartQueue};
use super::{Fleet, FleetOptions, Poke};
use crate::agent::Phase;

/// Runs as an instance's process when the fleet's tests start one: accepts connections on
/// `$PORT` (the TCP readiness probe) until killed. Does nothing when run by hand.
#[test]
#[ignore = "an instance's process, started by the tests below"]
fn instance_process() {
    let Ok(port) = std::env::var("PORT") else { return };
    let listener = std::net::TcpListener::bind(("127.0.0.1", port.parse().unwrap())).unwrap();
    for conn in listener.incoming() {
        drop(conn);
    }
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn fleet(name: &str) -> (Arc<Fleet>, Scratch) {
    let dir = std::env::temp_dir().join(format!("ikukantai-fleet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = FleetConfig::new();
    config.autoscaler.allow_zero_initial_scale = true;
    let fleet = Fleet::start_idle(FleetOptions {
        state_dir: dir.clone(),
        topology: Topology::demo(),
        config,
        gateway_port: 0,
        admin_port: 0,
        probe_interval: DEFAULT_PROBE_INTERVAL,
        seed: 1,
        memory_release: None,
        edge: EdgePolicy::default(),
        holder: format!("test {name}"),
    })
    .await
    .unwrap();
    (fleet, Scratch(dir))
}

/// One pass at `now`, with every poke sent so far.
fn step(fleet: &Arc<Fleet>, now: Instant) {
    let mut pokes = Vec::new();
    if let Some(rx) = fleet.pokes.lock().as_mut() {
        while let Ok(p) = rx.try_recv() {
            pokes.push(p);
        }
    }
    fleet.step(now, pokes);
}

/// A Service `name` running `command`, with `annotations` on its template.
fn manifest(name: &str, command: &[&str], annotations: &[(&str, &str)]) -> String {
    let notes: String = annotations.iter().map(|(k, v)| format!("\n        {k}: \"{v}\"")).collect();
    let metadata =
        if notes.is_empty() { String::new() } else { format!("\n    metadata:\n      annotations:{notes}") };
    let command: Vec<String> = command.iter().map(|c| format!("{c:?}")).collect();
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:{metadata}\n    spec:\n      containers:\n        - image: test\n          command: [{}]\n",
        command.join(", ")
    )
}

const AT_ZERO: &[(&str, &str)] = &[("autoscaling.knative.dev/initial-scale", "0")];

fn apply(fleet: &Fleet, docs: &[String]) {
    fleet.apply(&[("test.yaml".into(), docs.join("---\n"))]).unwrap();
}

fn key(revision: &str) -> RevisionKey {
    ("default".to_owned(), revision.to_owned())
}

fn active(fleet: &Fleet) -> Vec<String> {
    fleet.state.lock().work.active.iter().map(|k| k.1.clone()).collect()
}

/// Forgets what was visited so far; returns how many visits that was.
fn reset_visits(fleet: &Fleet) -> u64 {
    let mut state = fleet.state.lock();
    state.work.visited.clear();
    std::mem::take(&mut state.work.visits)
}

fn visited(fleet: &Fleet) -> Vec<String> {
    fleet.state.lock().work.visited.iter().map(|k| k.1.clone()).collect()
}

/// Steps at real time until `done` holds (bounded: ten seconds).
async fn step_until(fleet: &Arc<Fleet>, what: &str, done: impl Fn(&Fleet) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(fleet) {
        assert!(Instant::now() < deadline, "never {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
        step(fleet, Instant::now());
    }
}

#[tokio::test]
async fn revisions_at_rest_are_not_visited_by_passes_and_the_resync_visits_each_once() {
    let (fleet, _dir) = fleet("rest").await;
    let docs: Vec<String> =
        (0..50).map(|i| manifest(&format!("s{i:02}"), &["sleep", "60"], AT_ZERO)).collect();
    apply(&fleet, &docs);
    let t0 = Instant::now();
    fleet.state.lock().work.last_resync = t0;
    step(&fleet, t0);
    assert_eq!(visited(&fleet).len(), 50, "an apply visits what it applied");
    assert_eq!(active(&fleet), Vec::<String>::new(), "all at rest after their first decision");
    reset_visits(&fleet);
    // A minute of passes, every stats period and decision period in it, short of the resync.
    let resync = super::defaults::RESYNC_PERIOD;
    let mut t = t0;
    while t + super::defaults::RECONCILE_PERIOD < t0 + resync - Duration::from_secs(1) {
        t += super::defaults::RECONCILE_PERIOD;
        step(&fleet, t);
    }
    assert_eq!(reset_visits(&fleet), 0, "nothing is visited while everything rests");
    // The resync looks at every revision once more, and they rest again.
    step(&fleet, t0 + resync + Duration::from_secs(1));
    step(&fleet, t0 + resync + Duration::from_secs(4));
    assert_eq!(visited(&fleet).len(), 50);
    assert_eq!(active(&fleet), Vec::<String>::new());
}

#[tokio::test]
async fn demand_wakes_only_its_revision_whose_instance_stops_after_the_grace_then_it_rests() {
    let (fleet, _dir) = fleet("poke").await;
    let me = std::env::current_exe().unwrap();
    let me = me.to_str().unwrap();
    let helper = [me, "--ignored", "--exact", "fleet::tests::instance_process", "--nocapture"];
    let window = ("autoscaling.knative.dev/window", "6s");
    let mut docs: Vec<String> = (0..10).map(|i| manifest(&format!("s{i}"), &helper, AT_ZERO)).collect();
    docs.push(manifest("hot", &helper, &[AT_ZERO[0], window]));
    apply(&fleet, &docs);
    step(&fleet, Instant::now());
    reset_visits(&fleet);
    // A gateway pokes: a request waits at node 2 for `hot`, which has no instance.
    fleet
        .poke
        .send(Poke::Demand { namespace: "default".into(), revision: "hot-00001".into(), origin: 2 })
        .unwrap();
    step(&fleet, Instant::now());
    assert_eq!(visited(&fleet), ["hot-00001"], "the others are not looked at");
    assert_eq!(active(&fleet), ["hot-00001"]);
    let ready = |f: &Fleet| f.instances().iter().any(|i| i.state == Phase::Ready.name() && i.node == "node3");
    step_until(&fleet, "an instance ready at the node the demand entered", ready).await;
    // No more requests. Knative's rules: one instance for a stable window (6 s), then zero once
    // the activator has been in front of the revision for the grace period (30 s), not before.
    let t0 = Instant::now();
    let grace = fleet.options.config.autoscaler.scale_to_zero_grace_period;
    let mut t = t0;
    while t < fleet.started + grace - Duration::from_secs(2) {
        t += Duration::from_millis(500);
        step(&fleet, t);
        assert_eq!(fleet.instances().len(), 1, "{:?} after the instance got ready", t - t0);
    }
    for _ in 0..8 {
        t += Duration::from_millis(500);
        step(&fleet, t);
    }
    assert!(fleet.state.lock().instances.is_empty(), "out of the books once the grace is over");
    // Out of the routes, it lists as being stopped for as long as it is listed (its process
    // still drains, ready as it is).
    let listed = fleet.instances();
    assert!(listed.iter().all(|i| i.state == Phase::Terminating.name()), "{listed:?}");
    // Once stopped, the next decision finds it at rest.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fleet.instances().is_empty() {
        assert!(Instant::now() < deadline, "the instance never stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
        step(&fleet, t);
    }
    t += super::defaults::DECISION_PERIOD;
    step(&fleet, t);
    assert_eq!(active(&fleet), Vec::<String>::new());
    reset_visits(&fleet);
    t += Duration::from_secs(10);
    step(&fleet, t);
    assert_eq!(reset_visits(&fleet), 0);
    fleet.shutdown().await;
}

#[tokio::test]
async fn stats_that_say_a_revision_at_rest_had_requests_wake_it() {
    let (fleet, _dir) = fleet("stats").await;
    let docs: Vec<String> = (0..5).map(|i| manifest(&format!("s{i}"), &["sleep", "60"], AT_ZERO)).collect();
    apply(&fleet, &docs);
    let t0 = Instant::now();
    step(&fleet, t0);
    reset_visits(&fleet);
    // A gateway at node 1 had two requests in flight for s3 over the last second.
    let load = Stat { concurrency: 2.0, requests: 2.0, ..Stat::default() };
    let report = RevisionReport {
        namespace: "default".into(),
        revision: "s3-00001".into(),
        activator: load,
        origin: load,
    };
    let reported: Reported = [(key("s3-00001"), vec![(1, report)])].into();
    let now = t0 + Duration::from_secs(100);
    fleet.feed_stats(&mut fleet.state.lock(), now, &Measured::new(), &reported);
    assert_eq!(active(&fleet), ["s3-00001"]);
    assert_eq!(visited(&fleet), ["s3-00001"]);
    // Fed after a hundred quiet seconds counted as zeros: averaged over its whole window.
    let state = fleet.state.lock();
    let demand = state.revision(&key("s3-00001")).unwrap().scaler.autoscaler.demand_by_origin(now);
    assert_eq!(demand, [0.0, 2.0 / 60.0, 0.0].map(|d| (d * 1e6_f64).round() / 1e6));
}

#[tokio::test]
async fn an_apply_wakes_the_revisions_of_the_services_it_changes_only() {
    let (fleet, _dir) = fleet("apply").await;
    let docs: Vec<String> = (0..5).map(|i| manifest(&format!("s{i}"), &["sleep", "60"], AT_ZERO)).collect();
    apply(&fleet, &docs);
    step(&fleet, Instant::now());
    reset_visits(&fleet);
    apply(&fleet, &[manifest("s1", &["sleep", "61"], AT_ZERO)]);
    step(&fleet, Instant::now());
    assert_eq!(visited(&fleet), ["s1-00001", "s1-00002"]);
    reset_visits(&fleet);
    fleet.delete("default", "s2").unwrap();
    step(&fleet, Instant::now());
    assert_eq!(visited(&fleet), ["s2-00001"], "once more, to find nothing is wanted of it");
    assert_eq!(active(&fleet), Vec::<String>::new());
}

#[tokio::test]
async fn a_cold_start_begins_at_once_while_another_services_burst_waits_for_its_turn() {
    let (fleet, _dir) = fleet("pacing").await;
    fleet.state.lock().starts = StartQueue::new(2, super::defaults::START_SLOT_TIMEOUT);
    // Six services at Knative's default initial scale (1), whose processes never get ready.
    let mut docs: Vec<String> = (0..6).map(|i| manifest(&format!("b{i}"), &["sleep", "60"], &[])).collect();
    docs.push(manifest("cold", &["sleep", "60"], AT_ZERO));
    apply(&fleet, &docs);
    let t0 = Instant::now();
    step(&fleet, t0);
    let pending = |f: &Fleet, svc: &str| -> Vec<String> {
        let state = f.state.lock();
        state.pending.iter().filter(|(_, (_, rev, _))| rev.starts_with(svc)).map(|(n, _)| n.clone()).collect()
    };
    let running =
        |f: &Fleet, names: &[String]| names.iter().filter(|n| f.state.lock().starts.is_running(n)).count();
    let burst: Vec<String> = (0..6).flat_map(|i| pending(&fleet, &format!("b{i}-"))).collect();
    assert_eq!(burst.len(), 6, "one start each, reserved");
    assert_eq!(running(&fleet, &burst), 2, "two under way, four waiting");
    // A request waits for `cold`: its start does not queue behind the burst.
    fleet
        .poke
        .send(Poke::Demand { namespace: "default".into(), revision: "cold-00001".into(), origin: 0 })
        .unwrap();
    step(&fleet, t0 + Duration::from_millis(10));
    let cold = pending(&fleet, "cold-");
    assert_eq!(cold.len(), 1);
    assert_eq!(running(&fleet, &cold), 1, "begun in the same pass");
    assert_eq!(running(&fleet, &burst), 2, "the burst still two at a time");
    // The burst goes on as slots free (here: when a start's slot times out).
    step(&fleet, t0 + super::defaults::START_SLOT_TIMEOUT + Duration::from_millis(20));
    let waiting = burst.iter().filter(|n| fleet.state.lock().starts.is_running(n)).count();
    assert_eq!(waiting, 2);
    fleet.shutdown().await;
}

#[tokio::test]
async fn a_revision_whose_instance_failed_comes_to_rest_after_the_activation_timeout() {
    let (fleet, _dir) = fleet("failed").await;
    apply(&fleet, &[manifest("broken", &["/nonexistent/ikukantai-test-binary"], AT_ZERO)]);
    step(&fleet, Instant::now());
    fleet
        .poke
        .send(Poke::Demand { namespace: "default".into(), revision: "broken-00001".into(), origin: 0 })
        .unwrap();
    step(&fleet, Instant::now());
    let failed = |f: &Fleet| f.instances().iter().any(|i| i.state == "Failed");
    step_until(&fleet, "the instance failed", failed).await;
    step(&fleet, Instant::now());
    assert_eq!(active(&fleet), ["broken-00001"]);
    // Knative gives an activation up after its timeout (630 s); then nothing is left of it to
    // visit, though the request that poked never got an instance.
    let t0 = Instant::now();
    let timeout = fleet.options.config.autoscaler.activation_timeout;
    step(&fleet, t0 + timeout + Duration::from_secs(3));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fleet.instances().is_empty() {
        assert!(Instant::now() < deadline, "the failed instance was never stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
        step(&fleet, t0 + timeout + Duration::from_secs(4));
    }
    step(&fleet, t0 + timeout + Duration::from_secs(8));
    assert_eq!(active(&fleet), Vec::<String>::new());
    reset_visits(&fleet);
    step(&fleet, t0 + timeout + Duration::from_secs(20));
    assert_eq!(reset_visits(&fleet), 0);
}
