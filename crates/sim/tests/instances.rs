//! The simulator's instance events: a crowd that moves from one edge to another shows as
//! instances started where it goes and stopped where it left, at the nodes the placement chose;
//! a trickle far from the cloud keeps its edge's instance, and gives its slot to a busier function.

use ikukantai_eval::run::LevelRun;
use ikukantai_eval::scenario::{PolicySet, Scenario};
use ikukantai_eval::trace::{self, Change, InstanceEvent};
use ikukantai_sim::model::Model;

fn flash_crowd() -> Scenario {
    shipped("flash-crowd.yaml")
}

/// A scenario of `bench/`.
fn shipped(file: &str) -> Scenario {
    // Looked up when the test runs (one target dir may serve several clones).
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")), std::path::PathBuf::from);
    let path = root.join("../../bench").join(file);
    Scenario::parse(file, &std::fs::read_to_string(path).unwrap()).expect("valid scenario")
}

/// The most instances `node` held between `from` and `to` seconds, given its count steps.
fn most(steps: &[(f64, u32)], from: f64, to: f64) -> u32 {
    let before = steps.iter().rev().find(|(at, _)| *at < from).map_or(0, |(_, c)| *c);
    steps.iter().filter(|(at, _)| *at >= from && *at < to).map(|(_, c)| *c).fold(before, u32::max)
}

#[test]
fn a_moving_crowd_starts_instances_where_it_goes_and_stops_them_where_it_left() {
    let s = flash_crowd();
    let run = ikukantai_sim::run_set(&s, &PolicySet::named("ours").unwrap(), 1, &Model::default()).unwrap();
    let level = &run.levels[0];
    let events: &[InstanceEvent] = &level.instances;
    let node = |name: &str| s.topology.index_of(name).unwrap();
    let (cloud, a, b) = (node("cloud"), node("edge-a"), node("edge-b"));
    // Phase spans, on the samples' clock.
    let measure = level.began + s.load.warmup.0.as_secs_f64();
    let span = |k: usize| {
        let (_, from, to) = &s.phase_spans()[k];
        (measure + from, measure + to)
    };
    let (calm, crowd_a, crowd_b, idle) = (span(0), span(1), span(2), span(3));
    let steps = trace::counts(events, 3);

    // Every instance is started before it is ready or stopped, and stays within its node's room.
    for (n, capacity) in [(cloud, 10), (a, 2), (b, 2)] {
        assert!(steps[n].iter().all(|(_, c)| *c <= capacity), "node {n}: {:?}", steps[n]);
        let first = events.iter().find(|e| e.node == n).expect("every node serves its own users");
        assert_eq!(first.change, Change::Started, "node {n}");
    }
    // Calm: each edge its own instances (two, with room for them, against queueing). The crowd
    // at edge-a fills edge-a's room; when it moves on, instances start for it (where, is the
    // placement's call) while edge-b keeps its own.
    assert!(most(&steps[a], calm.0 + 2.0, calm.1) >= 1 && most(&steps[b], calm.0 + 2.0, calm.1) >= 1);
    assert_eq!(most(&steps[a], crowd_a.0, crowd_a.1), 2, "{:?}", steps[a]);
    let at = |n: usize, change: Change, (from, to): (f64, f64)| {
        events.iter().filter(|e| e.node == n && e.change == change && e.at >= from && e.at < to).count()
    };
    assert!([cloud, a].iter().any(|&n| at(n, Change::Started, crowd_a) >= 1), "{events:?}");
    assert!([cloud, a, b].iter().any(|&n| at(n, Change::Started, crowd_b) >= 1), "{events:?}");
    assert_eq!(at(b, Change::Stopped, crowd_b), 0, "{events:?}");
    // Once the crowd left edge-a, its extra instance goes; over the idle phase every instance
    // goes (scale to zero), and the burst after it starts them again at both edges.
    assert!(at(a, Change::Stopped, (crowd_b.0, idle.1)) >= 1, "{events:?}");
    let burst = (idle.1, idle.1 + 8.0);
    assert!(at(a, Change::Started, burst) >= 1 && at(b, Change::Started, burst) >= 1, "{events:?}");
    for n in [cloud, a, b] {
        assert_eq!(
            most(&steps[n], idle.1 - 0.01, idle.1),
            0,
            "node {n} at the idle phase's end: {:?}",
            steps[n]
        );
    }
}

#[test]
fn instance_events_are_deterministic_and_go_with_the_level_they_happen_in() {
    let s = flash_crowd();
    let set = PolicySet::named("knative").unwrap();
    let run = |seed| ikukantai_sim::run_set(&s, &set, seed, &Model::default()).unwrap();
    let (one, again) = (run(2), run(2));
    assert_eq!(one.levels[0].instances, again.levels[0].instances);
    let level = &one.levels[0];
    let end =
        level.began + (s.load.warmup.0 + s.load.duration.0).as_secs_f64() + s.load.timeout.0.as_secs_f64();
    assert!(!level.instances.is_empty());
    assert!(level.instances.iter().all(|e| e.at <= end && e.function == 0), "{:?}", level.instances);
    assert!(level.instances.windows(2).all(|w| w[0].at <= w[1].at), "in time order");
}

/// Asserts that at least 90 % of `function`'s requests from `node` sent in `[from, to)` seconds
/// (on the samples' clock) were served at `node`.
fn mostly_at_home(level: &LevelRun, function: usize, node: usize, (from, to): (f64, f64)) {
    let sent: Vec<_> = level
        .samples
        .iter()
        .filter(|x| x.function == function && x.origin == node && x.at >= from && x.at < to)
        .collect();
    let home = sent.iter().filter(|x| x.served == Some(node)).count();
    assert!(!sent.is_empty() && home * 10 >= sent.len() * 9, "node {node}: {home} of {} at home", sent.len());
}

#[test]
fn a_far_trickle_keeps_its_instance_and_is_served_at_home() {
    let s = shipped("far-trickle.yaml");
    let run = ikukantai_sim::run_set(&s, &PolicySet::named("ours").unwrap(), 1, &Model::default()).unwrap();
    let level = &run.levels[0];
    let measure = level.began + s.load.warmup.0.as_secs_f64();
    for name in ["edge-a", "edge-b"] {
        let node = s.topology.index_of(name).unwrap();
        // Once started, an edge's instance stays while its users keep sending: it was stopped
        // and started by turns when its demand served at home was weighed against the floor.
        let started =
            level.instances.iter().filter(|e| e.node == node && e.change == Change::Started).count();
        assert_eq!(started, 1, "{name}: {:?}", level.instances);
        mostly_at_home(level, 0, node, (measure, f64::INFINITY));
    }
}

#[test]
fn a_far_trickles_instance_gives_its_slot_to_a_busier_function() {
    let s = shipped("trickle-and-busy.yaml");
    let run = ikukantai_sim::run_set(&s, &PolicySet::named("ours").unwrap(), 1, &Model::default()).unwrap();
    let level = &run.levels[0];
    let edge = s.topology.index_of("edge-a").unwrap();
    let function = |name: &str| s.functions().iter().position(|f| f.name.as_deref() == Some(name)).unwrap();
    let measure = level.began + s.load.warmup.0.as_secs_f64();
    let (_, from, _) = &s.phase_spans()[1];
    // Before `busy`'s users came, the slot was `tiny`'s: its trickle served at home.
    mostly_at_home(level, function("tiny"), edge, (measure, measure + from));
    // From a few seconds after they come, the edge's one slot is theirs: `tiny`'s instance there
    // is kept as headroom for its trickle, and yields.
    mostly_at_home(level, function("busy"), edge, (measure + from + 5.0, f64::INFINITY));
}
