//! `sim-scale`: how long `ikukantai sim` takes for a large fleet — by default issue #24's
//! 1 000 nodes at 20 000 requests a second for ten minutes of virtual time.
//!
//! The fleet is `topology`'s (cloud nodes and edge sites at 5–120 ms, every pair an RTT), users at
//! every node with an equal share of the rate, a 9–11 ms function with one request per instance.

use std::fmt::Write;
use std::time::Instant;

use anyhow::Context;
use ikukantai_eval::report::stats;
use ikukantai_eval::scenario::Scenario;

/// What to simulate.
pub(crate) struct Scale {
    pub cloud: usize,
    pub edge: usize,
    pub rate: f64,
    pub seconds: u64,
    pub seed: u64,
    pub sets: Vec<String>,
}

pub(crate) fn sim_scale(s: &Scale) -> anyhow::Result<()> {
    let scenario = scenario(s)?;
    let n = scenario.topology.nodes.len();
    println!(
        "| nodes | rate (req/s) | virtual time | policy set | requests | wall | virtual/wall | p50 | p90 | local | completed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for set in &s.sets {
        let set = ikukantai_eval::scenario::PolicySet::named(set).context("unknown policy set")?;
        let started = Instant::now();
        let run = ikukantai_sim::run_set(&scenario, &set, s.seed, &ikukantai_sim::model::Model::default())?;
        let wall = started.elapsed().as_secs_f64();
        let level = &run.levels[0];
        let all = stats(level, n, |_| true);
        println!(
            "| {n} | {:.0} | {} s (+{} s warm-up) | {} | {} | {wall:.1} s | {:.1}× | {:.1} ms | {:.1} ms | {:.1} % | {:.2} % |",
            s.rate,
            s.seconds,
            WARMUP_S,
            set.name,
            level.sent,
            (s.seconds + WARMUP_S) as f64 / wall,
            all.p50,
            all.p90,
            100.0 * all.local_share,
            100.0 * all.completion_rate,
        );
    }
    Ok(())
}

const WARMUP_S: u64 = 10;

/// The scenario: its nodes written out (so origins check against them), its half-million links
/// built in place.
fn scenario(s: &Scale) -> anyhow::Result<Scenario> {
    let topology = crate::topology::fleet(s.cloud, s.edge, s.seed);
    let n = topology.nodes.len();
    let mut text = String::from("name: sim-scale\ntopology:\n  nodes:\n");
    for node in &topology.nodes {
        let _ = writeln!(text, "    - {{name: {}}}", node.name);
    }
    let origins: Vec<&str> = topology.nodes.iter().map(|x| x.name.as_str()).collect();
    let _ = write!(
        text,
        "function: {{work: [9ms, 11ms], containerConcurrency: 1, target: 1, window: 12s}}\n\
         load:\n  origins: [{}]\n  users: [1]\n  rate_per_user: {}\n  warmup: {WARMUP_S}s\n  duration: {}s\n  timeout: 5s\n",
        origins.join(", "),
        s.rate / n as f64,
        s.seconds,
    );
    let mut scenario = Scenario::parse("sim-scale", &text)?;
    scenario.topology = topology;
    Ok(scenario)
}
