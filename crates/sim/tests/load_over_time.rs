//! The simulator under load that changes over time and with several functions: the scenario's
//! phases and functions are what the generators send, deterministically, and every request is
//! accounted for.

use ikukantai_eval::report::stats_of;
use ikukantai_eval::run::SetRun;
use ikukantai_eval::scenario::{PolicySet, Scenario};
use ikukantai_sim::model::Model;

const TOPOLOGY: &str = "topology:\n  nodes: [{name: cloud, capacity: 10}, {name: edge-a, capacity: 2}, {name: edge-b, capacity: 2}]\n  \
     links: [{between: [cloud, edge-a], rtt: 20ms}, {between: [cloud, edge-b], rtt: 40ms}, {between: [edge-a, edge-b], rtt: 50ms}]\n";

/// Calm, a crowd at edge-a, idle long enough to scale to zero, a burst everywhere.
fn phased() -> Scenario {
    let text = format!(
        "name: t\n{TOPOLOGY}function: {{work: [5ms, 5ms], containerConcurrency: 1, target: 1, window: 6s}}\n\
         load:\n  origins: [cloud, edge-a, edge-b]\n  users: [5]\n  rate_per_user: 2\n  warmup: 5s\n  timeout: 3s\n  \
         phases:\n  - {{name: calm, duration: 10s}}\n  - {{name: crowd, duration: 10s, origins: {{edge-a: 8}}}}\n  \
         - {{name: idle, duration: 15s, scale: 0}}\n  - {{name: burst, duration: 5s, scale: 4}}\n"
    );
    Scenario::parse("t.yaml", &text).expect("valid scenario")
}

fn run(s: &Scenario, set: &str, seed: u64) -> SetRun {
    ikukantai_sim::run_set(s, &PolicySet::named(set).unwrap(), seed, &Model::default()).expect("runs")
}

/// Whether `got` is within five standard deviations of a Poisson count expected to be `want`.
fn poisson_close(got: usize, want: f64) -> bool {
    (got as f64 - want).abs() < 5.0 * want.sqrt() + 3.0
}

#[test]
fn with_phases_the_same_seed_gives_the_same_bytes() {
    let s = phased();
    let json = |r: &SetRun| serde_json::to_string(r).unwrap();
    for set in ["knative", "ours"] {
        let a = run(&s, set, 7);
        assert_eq!(json(&a), json(&run(&s, set, 7)), "{set}");
        assert_ne!(json(&a), json(&run(&s, set, 8)), "{set}");
    }
}

#[test]
fn each_phase_sends_what_its_rate_says() {
    let s = phased();
    let level = &run(&s, "ours", 1).levels[0];
    assert_eq!(level.samples.len(), level.sent);
    let streams = s.streams(5);
    let measure = level.began + 5.0;
    for (label, from, to) in s.phase_spans() {
        for (i, stream) in streams.iter().enumerate() {
            let got = level
                .samples
                .iter()
                .filter(|x| x.origin == stream.origin && x.at >= measure + from && x.at < measure + to)
                .count();
            let want = stream.curve.expected(5.0 + from, 5.0 + to);
            assert!(poisson_close(got, want), "{label}, stream {i}: {got} sent, {want} expected");
            if label == "idle" {
                assert_eq!(got, 0);
            }
        }
    }
}

#[test]
fn a_burst_after_idle_meets_a_cold_start_and_calm_does_not() {
    let s = phased();
    let level = &run(&s, "ours", 1).levels[0];
    let spans = s.phase_spans();
    let measure = level.began + 5.0;
    let within = |from: f64, to: f64| {
        level.samples.iter().filter(move |x| x.at >= measure + from && x.at < measure + to)
    };
    let calm = stats_of(within(spans[0].1 + 2.0, spans[0].2), 8.0, 3);
    let cold = Model::default().cold_start_ms.0;
    assert!(calm.p90 < 5.0 + cold, "calm, instances warm: {calm:?}");
    // Fifteen idle seconds are enough to scale to zero (window 6 s): the burst's first request
    // waits for an instance to start.
    let first = within(spans[3].1, spans[3].2).min_by(|a, b| a.at.total_cmp(&b.at)).expect("a burst");
    assert!(first.latency_ms.expect("answered") > 5.0 + cold, "{first:?}");
}

/// Two functions on the same nodes: `slow` everywhere, `quick` at the edges at 3 × the rate with
/// its own ramp.
fn two_functions() -> Scenario {
    let text = format!(
        "name: t\n{TOPOLOGY}functions:\n\
         - {{name: slow, work: [20ms, 30ms], containerConcurrency: 1, target: 1, window: 6s}}\n\
         - {{name: quick, work: [2ms, 3ms], containerConcurrency: 4, target: 4, window: 6s, \
             load: {{origins: [edge-a, edge-b], rate_per_user: 3, phases: [{{duration: 4s, scale: 0, ramp_to: 1}}, {{duration: 6s}}]}}}}\n\
         load: {{origins: [cloud, edge-a, edge-b], users: [5, 20], rate_per_user: 1, warmup: 4s, duration: 10s, timeout: 3s}}\n"
    );
    Scenario::parse("t.yaml", &text).expect("valid scenario")
}

#[test]
fn with_two_functions_every_request_is_accounted_for() {
    let s = two_functions();
    for set in ["knative", "ikukantai", "ours"] {
        let r = run(&s, set, 2);
        for level in &r.levels {
            assert_eq!(level.samples.len(), level.sent, "{set}: every request sent has an outcome");
            let streams = s.streams(level.users);
            for f in 0..2 {
                let got = level.samples.iter().filter(|x| x.function == f).count();
                let want: f64 =
                    streams.iter().filter(|x| x.function == f).map(|x| x.curve.expected(4.0, 14.0)).sum();
                assert!(poisson_close(got, want), "{set}, function {f}: {got} sent, {want} expected");
            }
            assert!(
                level.samples.iter().all(|x| x.function == 0 || x.origin != 0),
                "quick has no cloud users"
            );
            let slow = stats_of(level.samples.iter().filter(|x| x.function == 0), 10.0, 3);
            let quick = stats_of(level.samples.iter().filter(|x| x.function == 1), 10.0, 3);
            assert!(slow.completion_rate > 0.99 && quick.completion_rate > 0.99, "{set}: {slow:?} {quick:?}");
            // Each function's own work time: nothing of `slow` under 20 ms; `quick`, served at home
            // by `ours`, well under it.
            let fastest = |f| {
                level
                    .samples
                    .iter()
                    .filter(|x| x.function == f)
                    .filter_map(|x| x.latency_ms)
                    .fold(f64::MAX, f64::min)
            };
            assert!(fastest(0) >= 20.0 && fastest(1) >= 2.0, "{set}: {} and {}", fastest(0), fastest(1));
            if set == "ours" {
                assert!(quick.p50 < 10.0 && slow.p50 >= 20.0, "{set}: {quick:?} {slow:?}");
            }
        }
    }
}

#[test]
fn two_functions_with_the_same_seed_give_the_same_bytes() {
    let s = two_functions();
    let json = |r: &SetRun| serde_json::to_string(r).unwrap();
    assert_eq!(json(&run(&s, "ours", 3)), json(&run(&s, "ours", 3)));
}

#[test]
fn a_rate_near_zero_sends_nothing_rather_than_a_flood() {
    // A gap of ~1e12 s once wrapped past the 64-bit nanosecond clock and sent every request at
    // once (at 1e-20 a second, until memory ran out).
    for rate in ["1e-12", "1e-20"] {
        let text = format!(
            "name: t\n{TOPOLOGY}function: {{work: [5ms, 5ms], containerConcurrency: 1, target: 1, window: 6s}}\n\
             load: {{origins: [cloud, edge-a], users: [1], rate_per_user: {rate}, warmup: 0s, duration: 3s, timeout: 1s}}\n"
        );
        let s = Scenario::parse("t.yaml", &text).expect("valid scenario");
        let level = &run(&s, "ours", 1).levels[0];
        assert_eq!((level.sent, level.samples.len()), (0, 0), "rate {rate}");
    }
}
