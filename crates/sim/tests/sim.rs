//! The simulator on small scenarios whose answers are known.

use ikukantai_eval::report::stats;
use ikukantai_eval::run::SetRun;
use ikukantai_eval::scenario::{PolicySet, Scenario};
use ikukantai_sim::model::Model;

fn scenario(topology: &str, origins: &str, users: &str, work: &str, cc: u32) -> Scenario {
    let text = format!(
        "name: t\ntopology:\n{topology}\nfunction: {{work: {work}, containerConcurrency: {cc}, target: 1, window: 6s}}\n\
         load: {{origins: {origins}, users: {users}, rate_per_user: 2, warmup: 4s, duration: 8s, timeout: 2s}}\n"
    );
    Scenario::parse("t.yaml", &text).expect("valid scenario")
}

fn run(s: &Scenario, set: &str, seed: u64) -> SetRun {
    ikukantai_sim::run_set(s, &PolicySet::named(set).unwrap(), seed, &Model::default()).expect("runs")
}

const TWO_NODES: &str = "  nodes: [{name: edge, capacity: 2}, {name: cloud, capacity: 10}]\n  \
                         links: [{between: [edge, cloud], rtt: 40ms, jitter: 2ms}]";

#[test]
fn the_same_seed_gives_the_same_run_and_another_seed_another() {
    let s = scenario(TWO_NODES, "[edge, cloud]", "[5, 30]", "[3ms, 5ms]", 1);
    let json = |r: &SetRun| serde_json::to_string(r).unwrap();
    let a = run(&s, "ours", 7);
    assert_eq!(json(&a), json(&run(&s, "ours", 7)));
    assert_ne!(json(&a), json(&run(&s, "ours", 8)));
}

#[test]
fn every_request_sent_is_accounted_for() {
    let s = scenario(TWO_NODES, "[edge, cloud]", "[5, 200]", "[3ms, 5ms]", 1);
    for set in ["knative", "ikukantai", "ours"] {
        for level in run(&s, set, 1).levels {
            assert_eq!(level.samples.len(), level.sent, "{set}");
            // About rate × users × origins × seconds requests, Poisson.
            let expected = 2.0 * f64::from(level.users) * 2.0 * 8.0;
            let sent = level.sent as f64;
            assert!((sent - expected).abs() < 5.0 * expected.sqrt() + 3.0, "{set}: {sent} vs {expected}");
        }
    }
}

#[test]
fn light_load_on_one_node_costs_the_work_and_the_hops() {
    let s = scenario("  nodes: [{name: solo}]", "[solo]", "[3]", "[10ms, 10ms]", 1);
    let level = &run(&s, "ours", 1).levels[0];
    let st = stats(level, 1, |_| true);
    assert_eq!(st.completion_rate, 1.0);
    let m = Model::default();
    let floor = 10.0 + m.client_ms + 2.0 * m.hop_ms;
    assert!(st.p50 >= floor && st.p50 <= floor + m.timer_ms, "p50 {} vs {floor}", st.p50);
}

#[test]
fn an_edge_without_room_sends_its_users_across_the_link() {
    let topology = "  nodes: [{name: edge, capacity: 0}, {name: cloud}]\n  \
                    links: [{between: [edge, cloud], rtt: 40ms}]";
    let s = scenario(topology, "[edge]", "[3]", "[5ms, 5ms]", 1);
    let level = &run(&s, "ours", 1).levels[0];
    let st = stats(level, 2, |_| true);
    assert_eq!((st.completion_rate, st.served_share.clone()), (1.0, vec![0.0, 1.0]));
    let m = Model::default();
    let floor = 40.0 + 5.0 + m.client_ms + 2.0 * (m.hop_ms + m.remote_hop_ms);
    assert!(st.p50 >= floor && st.p50 <= floor + m.timer_ms, "p50 {} vs {floor}", st.p50);
}

#[test]
fn ours_keeps_light_load_local_where_the_edge_has_room() {
    let s = scenario(TWO_NODES, "[edge, cloud]", "[5]", "[3ms, 5ms]", 1);
    let level = &run(&s, "ours", 3).levels[0];
    let edge = stats(level, 2, |o| o == 0);
    assert!(edge.local_share > 0.99, "{edge:?}");
}

#[test]
fn beyond_capacity_requests_time_out_rather_than_vanish() {
    let topology = "  nodes: [{name: solo, capacity: 1}]";
    // One slot of 100 ms against 40 req/s: most must wait past the 2 s timeout.
    let s = scenario(topology, "[solo]", "[20]", "[100ms, 100ms]", 1);
    let level = &run(&s, "knative", 1).levels[0];
    let st = stats(level, 1, |_| true);
    assert!(st.completion_rate < 0.5, "{st:?}");
    assert!(st.throughput <= 10.0 + 1e-9, "one 100 ms slot serves at most 10/s: {st:?}");
}

#[test]
fn sweep_cases_are_valid_scenarios_within_the_ranges_and_round_trip_as_yaml() {
    use ikukantai_sim::sweep;
    for index in 0..30 {
        let s = sweep::case(5, index);
        let text = serde_saphyr::to_string(&s).unwrap();
        let back = Scenario::parse("case.yaml", &text).expect("a sweep case parses as a scenario");
        assert_eq!(back, s, "case {index} round-trips");
        let clouds = s.topology.nodes.iter().filter(|n| n.name.starts_with("cloud")).count();
        let edges = s.topology.nodes.len() - clouds;
        assert!((1..=3).contains(&clouds) && (2..=30).contains(&edges), "{clouds} clouds, {edges} edges");
        assert!(s.topology.nodes.iter().skip(clouds).all(|n| (1..=4).contains(&n.capacity)));
        let cc = s.functions()[0].container_concurrency;
        assert!((1..=4).contains(&cc));
        assert!(s.functions()[0].work[1].0 <= std::time::Duration::from_millis(50));
        assert!(s.load.origins.iter().any(|o| !o.node().starts_with("cloud")), "an edge origin at least");
        assert_eq!(sweep::case(5, index), s, "the same seed and index give the same case");
    }
}

#[test]
fn a_sweep_cases_repeated_runs_pool_every_runs_requests() {
    use ikukantai_sim::sweep;
    let model = Model::default();
    let s = sweep::case(5, 0);
    let a = ikukantai_sim::run(&s, 5, &model).unwrap();
    let b = ikukantai_sim::run(&s, 6, &model).unwrap();
    let pooled = ikukantai_eval::run::pool(vec![a.clone(), b.clone()]);
    assert_eq!(pooled.len(), a.len());
    for ((p, x), y) in pooled.iter().zip(&a).zip(&b) {
        assert_eq!(p.set, x.set);
        for ((pl, xl), yl) in p.levels.iter().zip(&x.levels).zip(&y.levels) {
            assert_eq!(pl.sent, xl.sent + yl.sent);
            assert_eq!(pl.samples.len(), xl.samples.len() + yl.samples.len());
        }
    }
    // Two runs of a case are their pool, judged as one (a run alone is judged as it was).
    let json = |r: &sweep::CaseResult| serde_json::to_string(r).unwrap();
    let two = sweep::run(5, 1, 2, 1, &model);
    assert_eq!(json(&two[0]), json(&sweep::compare(0, &s, &[5, 6], &pooled, &model)));
    assert_ne!(json(&two[0]), json(&sweep::compare(0, &s, &[5], &a, &model)));
}
