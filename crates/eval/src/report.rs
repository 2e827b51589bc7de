//! Statistics and the written report (`report.json`, `report.md`).

use serde::{Deserialize, Serialize};

use crate::run::{LevelRun, SetRun};
use crate::scenario::Scenario;

/// Statistics of a group of samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Requests measured.
    pub requests: usize,
    /// Completed within the timeout.
    pub completed: usize,
    /// completed / requests.
    pub completion_rate: f64,
    /// Completed per second.
    pub throughput: f64,
    /// Response-time percentiles and mean (ms), over completed requests.
    pub p50: f64,
    /// p90.
    pub p90: f64,
    /// p99.
    pub p99: f64,
    /// Mean.
    pub mean: f64,
    /// Share of completed requests served on their origin node.
    pub local_share: f64,
    /// Share of completed requests per serving node (topology order).
    pub served_share: Vec<f64>,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// Stats of the samples of `level` for which `keep(origin)`.
pub fn stats(level: &LevelRun, nodes: usize, keep: impl Fn(usize) -> bool) -> Stats {
    let samples: Vec<_> = level.samples.iter().filter(|s| keep(s.origin)).collect();
    let mut lat: Vec<f64> = samples.iter().filter_map(|s| s.latency_ms).collect();
    lat.sort_by(f64::total_cmp);
    let completed = lat.len();
    let mut served = vec![0usize; nodes];
    let mut local = 0;
    for s in samples.iter().filter(|s| s.latency_ms.is_some()) {
        if let Some(n) = s.served {
            served[n] += 1;
            if n == s.origin {
                local += 1;
            }
        }
    }
    let share = |x: usize| if completed == 0 { 0.0 } else { x as f64 / completed as f64 };
    Stats {
        requests: samples.len(),
        completed,
        completion_rate: if samples.is_empty() { 0.0 } else { completed as f64 / samples.len() as f64 },
        throughput: completed as f64 / level.seconds,
        p50: percentile(&lat, 0.5),
        p90: percentile(&lat, 0.9),
        p99: percentile(&lat, 0.99),
        mean: if lat.is_empty() { f64::NAN } else { lat.iter().sum::<f64>() / lat.len() as f64 },
        local_share: share(local),
        served_share: served.into_iter().map(share).collect(),
    }
}

/// One row of the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// Policy set.
    pub set: String,
    /// Users per origin.
    pub users: u32,
    /// Origin node name, or "all".
    pub origin: String,
    /// The stats.
    pub stats: Stats,
}

/// The whole report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The scenario.
    pub scenario: Scenario,
    /// Node names.
    pub nodes: Vec<String>,
    /// Rows: per set, per level, per origin and for all origins.
    pub rows: Vec<Row>,
    /// The raw runs.
    pub runs: Vec<SetRun>,
    /// Machine and command, for the record.
    pub machine: String,
}

impl Report {
    /// Builds the rows.
    pub fn new(scenario: Scenario, runs: Vec<SetRun>, machine: String) -> Self {
        let nodes: Vec<String> = scenario.topology.nodes.iter().map(|n| n.name.clone()).collect();
        let origins: Vec<(String, usize)> = scenario
            .load
            .origins
            .iter()
            .filter_map(|o| Some((o.node().to_owned(), scenario.topology.index_of(o.node())?)))
            .collect();
        let mut rows = Vec::new();
        for run in &runs {
            for level in &run.levels {
                rows.push(Row {
                    set: run.set.name.clone(),
                    users: level.users,
                    origin: "all".into(),
                    stats: stats(level, nodes.len(), |_| true),
                });
                for (name, i) in &origins {
                    rows.push(Row {
                        set: run.set.name.clone(),
                        users: level.users,
                        origin: name.clone(),
                        stats: stats(level, nodes.len(), |o| o == *i),
                    });
                }
            }
        }
        Self { scenario, nodes, rows, runs, machine }
    }

    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let s = &self.scenario;
        let mut out = format!("# Scenario `{}`\n\n{}\n\n", s.name, s.description);
        out += &format!(
            "Load: {} users per origin on {} at {} req/s each (Poisson), warm-up {}, measured {}, timeout {}. Function: {}–{} per request, containerConcurrency {}, target {}, window {}.\n\nMachine: {}\n\n",
            s.load.users.iter().map(ToString::to_string).collect::<Vec<_>>().join(" / "),
            s.load.origins.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            s.load.rate_per_user,
            s.load.warmup,
            s.load.duration,
            s.load.timeout,
            s.function.work[0],
            s.function.work[1],
            s.function.container_concurrency,
            s.function.target,
            s.function.window,
            self.machine
        );
        out += "| set | users/origin | origin | p50 ms | p90 ms | p99 ms | mean ms | completed | req/s | local | served per node |\n|---|---|---|---|---|---|---|---|---|---|---|\n";
        for r in &self.rows {
            let st = &r.stats;
            let per_node: Vec<String> = st
                .served_share
                .iter()
                .zip(&self.nodes)
                .map(|(x, n)| format!("{n} {:.0}%", x * 100.0))
                .collect();
            out += &format!(
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1}% | {:.1} | {:.0}% | {} |\n",
                r.set,
                r.users,
                r.origin,
                st.p50,
                st.p90,
                st.p99,
                st.mean,
                st.completion_rate * 100.0,
                st.throughput,
                st.local_share * 100.0,
                per_node.join(", ")
            );
        }
        out
    }
}
