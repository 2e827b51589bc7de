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

/// One cell over repeated runs: each run's value, in run order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpreadRow {
    /// Policy set.
    pub set: String,
    /// Users per origin.
    pub users: u32,
    /// Origin node name, or "all".
    pub origin: String,
    /// p50 per run (ms).
    pub p50: Vec<f64>,
    /// p90 per run (ms).
    pub p90: Vec<f64>,
    /// Share served at the origin, per run.
    pub local: Vec<f64>,
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
    /// With repeated runs: every cell's value in each run (the rows pool the runs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spread: Vec<SpreadRow>,
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
        Self { scenario, nodes, rows, runs, machine, spread: Vec::new() }
    }

    /// A report over repeated runs (`repeats[k]` = run k's sets): the rows pool every run's
    /// samples, and [`Report::spread`] keeps each run's value of every cell.
    pub fn repeated(scenario: Scenario, repeats: Vec<Vec<SetRun>>, machine: String) -> Self {
        let per_run: Vec<Report> =
            repeats.iter().map(|runs| Self::new(scenario.clone(), runs.clone(), String::new())).collect();
        let mut repeats = repeats.into_iter();
        let mut pooled: Vec<SetRun> = repeats.next().unwrap_or_default();
        for runs in repeats {
            for (into, run) in pooled.iter_mut().zip(&runs) {
                for (level, more) in into.levels.iter_mut().zip(&run.levels) {
                    level.samples.extend(more.samples.iter().cloned());
                    level.sent += more.sent;
                    level.seconds += more.seconds;
                }
            }
        }
        let mut report = Self::new(scenario, pooled, machine);
        if per_run.len() > 1 {
            report.spread = report
                .rows
                .iter()
                .map(|row| {
                    let cells: Vec<&Stats> = per_run
                        .iter()
                        .filter_map(|r| {
                            r.rows
                                .iter()
                                .find(|x| x.set == row.set && x.users == row.users && x.origin == row.origin)
                                .map(|x| &x.stats)
                        })
                        .collect();
                    SpreadRow {
                        set: row.set.clone(),
                        users: row.users,
                        origin: row.origin.clone(),
                        p50: cells.iter().map(|c| c.p50).collect(),
                        p90: cells.iter().map(|c| c.p90).collect(),
                        local: cells.iter().map(|c| c.local_share).collect(),
                    }
                })
                .collect();
        }
        report
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
        if !self.spread.is_empty() {
            let runs = self.spread[0].p50.len();
            out += &format!(
                "\n## Spread over {runs} runs\n\nThe rows above pool every run; here each run's value, in run order.\n\n\
                 | set | users/origin | origin | p50 ms per run | p90 ms per run | local per run |\n|---|---|---|---|---|---|\n"
            );
            let list = |v: &[f64], scale: f64| {
                v.iter().map(|x| format!("{:.1}", x * scale)).collect::<Vec<_>>().join(" / ")
            };
            for r in &self.spread {
                out += &format!(
                    "| {} | {} | {} | {} | {} | {} |\n",
                    r.set,
                    r.users,
                    r.origin,
                    list(&r.p50, 1.0),
                    list(&r.p90, 1.0),
                    list(&r.local, 100.0)
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{LevelRun, Sample};
    use crate::scenario::PolicySet;

    fn scenario() -> Scenario {
        let text = "name: t\ntopology: {nodes: [{name: a}, {name: b}]}\n\
                    function: {work: [1ms, 2ms], target: 1, window: 6s}\n\
                    load: {origins: [a], users: [1], rate_per_user: 1, warmup: 1s, duration: 2s, timeout: 1s}\n\
                    policies: [ours]\n";
        Scenario::parse("t.yaml", text).unwrap()
    }

    fn run(latencies: &[f64], served: usize) -> Vec<SetRun> {
        let samples = latencies
            .iter()
            .map(|&l| Sample { origin: 0, latency_ms: Some(l), served: Some(served), at: 0.0 })
            .collect::<Vec<_>>();
        let level = LevelRun { users: 1, sent: samples.len(), samples, seconds: 2.0 };
        vec![SetRun { set: PolicySet::named("ours").unwrap(), levels: vec![level] }]
    }

    #[test]
    fn repeated_runs_pool_their_samples_and_keep_each_runs_cells() {
        let report = Report::repeated(
            scenario(),
            vec![run(&[1.0, 2.0, 3.0], 0), run(&[10.0, 20.0, 30.0], 1)],
            String::new(),
        );
        let all = report.rows.iter().find(|r| r.origin == "all").unwrap();
        assert_eq!((all.stats.requests, all.stats.throughput), (6, 1.5), "six samples over 2 × 2 s");
        let spread = report.spread.iter().find(|r| r.origin == "a").unwrap();
        assert_eq!((spread.p50.clone(), spread.local.clone()), (vec![2.0, 20.0], vec![1.0, 0.0]));
        assert!(report.markdown().contains("| ours | 1 | a | 2.0 / 20.0 |"), "{}", report.markdown());
        let single = Report::repeated(scenario(), vec![run(&[1.0], 0)], String::new());
        assert!(single.spread.is_empty() && !single.markdown().contains("Spread"));
    }
}
