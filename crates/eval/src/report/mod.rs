//! Statistics and the written report (`report.json`, `report.md`).

mod markdown;

use serde::{Deserialize, Serialize};

use crate::run::{LevelRun, Sample, SetRun};
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

/// The `q` quantile of `sorted` by the report's rule: the nearest rank, rounded.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// Stats of the samples of `level` for which `keep(origin)`.
pub fn stats(level: &LevelRun, nodes: usize, keep: impl Fn(usize) -> bool) -> Stats {
    stats_of(level.samples.iter().filter(|s| keep(s.origin)), level.seconds, nodes)
}

/// Stats of `samples`, measured over `seconds`.
pub fn stats_of<'a>(samples: impl Iterator<Item = &'a Sample>, seconds: f64, nodes: usize) -> Stats {
    let samples: Vec<&Sample> = samples.collect();
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
        throughput: completed as f64 / seconds,
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
    /// Function (Service) name, or "all".
    #[serde(default = "all")]
    pub function: String,
    /// The phase of the measured time, for the per-phase rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Origin node name, or "all".
    pub origin: String,
    /// The stats.
    pub stats: Stats,
}

fn all() -> String {
    "all".into()
}

/// One cell over repeated runs: each run's value, in run order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpreadRow {
    /// Policy set.
    pub set: String,
    /// Users per origin.
    pub users: u32,
    /// Function (Service) name, or "all".
    #[serde(default = "all")]
    pub function: String,
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
    /// Rows: per set, per level, per function (with several) and for all, per origin and for
    /// all origins.
    pub rows: Vec<Row>,
    /// With phases: the same rows per phase of the measured time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phase_rows: Vec<Row>,
    /// The raw runs.
    pub runs: Vec<SetRun>,
    /// Machine and command, for the record.
    pub machine: String,
    /// With repeated runs: every cell's value in each run (the rows pool the runs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spread: Vec<SpreadRow>,
}

/// A group of samples a row is about: a function (or all) at an origin (or all).
struct Group {
    function: String,
    origin: String,
    keep: Box<dyn Fn(&Sample) -> bool>,
}

/// The groups of rows, in report order: all functions, then each one when there are several;
/// within each, all origins, then each of that function's origins.
fn groups(s: &Scenario) -> Vec<Group> {
    let mut groups = Vec::new();
    let mut add = |function: String, f: Option<usize>, origins: Vec<(String, usize)>| {
        groups.push(Group {
            function: function.clone(),
            origin: "all".into(),
            keep: Box::new(move |x: &Sample| f.is_none_or(|f| x.function == f)),
        });
        for (name, i) in origins {
            let keep = move |x: &Sample| x.origin == i && f.is_none_or(|f| x.function == f);
            groups.push(Group { function: function.clone(), origin: name, keep: Box::new(keep) });
        }
    };
    add("all".into(), None, s.all_origins());
    if s.functions().len() > 1 {
        for (f, spec) in s.functions().iter().enumerate() {
            let origins = s
                .origins_of(f)
                .iter()
                .filter_map(|o| Some((o.node().to_owned(), s.topology.index_of(o.node())?)));
            add(spec.service().to_owned(), Some(f), origins.collect());
        }
    }
    groups
}

impl Report {
    /// Builds the rows.
    pub fn new(scenario: Scenario, runs: Vec<SetRun>, machine: String) -> Self {
        let nodes: Vec<String> = scenario.topology.nodes.iter().map(|n| n.name.clone()).collect();
        let groups = groups(&scenario);
        let spans = scenario.phase_spans();
        let warmup = scenario.load.warmup.0.as_secs_f64();
        let (mut rows, mut phase_rows) = (Vec::new(), Vec::new());
        for run in &runs {
            for level in &run.levels {
                let row = |g: &Group, phase: Option<String>, stats: Stats| Row {
                    set: run.set.name.clone(),
                    users: level.users,
                    function: g.function.clone(),
                    phase,
                    origin: g.origin.clone(),
                    stats,
                };
                for g in &groups {
                    let st =
                        stats_of(level.samples.iter().filter(|x| (g.keep)(x)), level.seconds, nodes.len());
                    rows.push(row(g, None, st));
                }
                // A phase's samples are those sent in it; repeated runs pool their seconds.
                let runs_pooled = level.seconds / scenario.load.duration.0.as_secs_f64().max(1e-9);
                for (label, from, to) in &spans {
                    let (from, to) = (level.began + warmup + from, level.began + warmup + to);
                    let seconds = (to - from) * runs_pooled;
                    for g in &groups {
                        let inside =
                            level.samples.iter().filter(|x| x.at >= from && x.at < to && (g.keep)(x));
                        let st = stats_of(inside, seconds, nodes.len());
                        // An idle phase has nothing to say.
                        if st.requests > 0 {
                            phase_rows.push(row(g, Some(label.clone()), st));
                        }
                    }
                }
            }
        }
        Self { scenario, nodes, rows, phase_rows, runs, machine, spread: Vec::new() }
    }

    /// A report over repeated runs (`repeats[k]` = run k's sets): the rows pool every run's
    /// samples, and [`Report::spread`] keeps each run's value of every cell.
    pub fn repeated(scenario: Scenario, repeats: Vec<Vec<SetRun>>, machine: String) -> Self {
        let per_run: Vec<Report> =
            repeats.iter().map(|runs| Self::new(scenario.clone(), runs.clone(), String::new())).collect();
        let mut report = Self::new(scenario, crate::run::pool(repeats), machine);
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
                                .find(|x| {
                                    x.set == row.set
                                        && x.users == row.users
                                        && x.function == row.function
                                        && x.origin == row.origin
                                })
                                .map(|x| &x.stats)
                        })
                        .collect();
                    SpreadRow {
                        set: row.set.clone(),
                        users: row.users,
                        function: row.function.clone(),
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
            .map(|&l| Sample { origin: 0, function: 0, latency_ms: Some(l), served: Some(served), at: 0.0 })
            .collect::<Vec<_>>();
        let level = LevelRun {
            users: 1,
            sent: samples.len(),
            samples,
            seconds: 2.0,
            began: 0.0,
            instances: Vec::new(),
        };
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

    #[test]
    fn two_functions_get_rows_of_their_own_and_phases_rows_per_phase() {
        let text = "name: t\ntopology: {nodes: [{name: a}, {name: b}]}\n\
                    functions:\n\
                    - {name: one, work: [1ms, 2ms], target: 1, window: 6s}\n\
                    - {name: two, work: [1ms, 2ms], target: 1, window: 6s, load: {origins: [b]}}\n\
                    load: {origins: [a, b], users: [1], rate_per_user: 1, warmup: 1s, timeout: 1s,\n\
                           phases: [{name: calm, duration: 1s}, {name: storm, duration: 1s, scale: 4}]}\n\
                    policies: [ours]\n";
        let s = Scenario::parse("t.yaml", text).unwrap();
        // The level began 5 s into the set; measuring at 6 s, the storm at 7 s.
        let sample = |function, origin, latency, at| Sample {
            origin,
            function,
            latency_ms: Some(latency),
            served: Some(origin),
            at,
        };
        let samples = vec![
            sample(0, 0, 1.0, 6.1),
            sample(0, 0, 2.0, 6.5),
            sample(0, 1, 3.0, 7.2),
            sample(1, 1, 10.0, 7.5),
            Sample { latency_ms: None, served: None, ..sample(1, 1, 0.0, 7.9) },
        ];
        let level = LevelRun { users: 1, sent: 5, samples, seconds: 2.0, began: 5.0, instances: Vec::new() };
        let runs = vec![SetRun { set: PolicySet::named("ours").unwrap(), levels: vec![level] }];
        let report = Report::new(s, runs, String::new());
        let cell = |rows: &[Row], phase: Option<&str>, function: &str, origin: &str| {
            let r = rows
                .iter()
                .find(|r| r.phase.as_deref() == phase && r.function == function && r.origin == origin)
                .unwrap_or_else(|| panic!("no row {phase:?} {function} {origin}"));
            (r.stats.requests, r.stats.completed)
        };
        let keys: Vec<(&str, &str)> =
            report.rows.iter().map(|r| (r.function.as_str(), r.origin.as_str())).collect();
        assert_eq!(
            keys,
            [
                ("all", "all"),
                ("all", "a"),
                ("all", "b"),
                ("one", "all"),
                ("one", "a"),
                ("one", "b"),
                ("two", "all"),
                ("two", "b")
            ]
        );
        assert_eq!(cell(&report.rows, None, "all", "all"), (5, 4));
        assert_eq!(cell(&report.rows, None, "one", "b"), (1, 1));
        assert_eq!(cell(&report.rows, None, "two", "all"), (2, 1));
        // Groups with nothing sent in a phase have no row there (`two` in the calm, say).
        assert_eq!(report.phase_rows.len(), 4 + 6);
        assert!(!report.phase_rows.iter().any(|r| r.phase.as_deref() == Some("calm") && r.function == "two"));
        assert_eq!(cell(&report.phase_rows, Some("calm"), "all", "all"), (2, 2));
        assert_eq!(cell(&report.phase_rows, Some("storm"), "all", "all"), (3, 2));
        assert_eq!(cell(&report.phase_rows, Some("storm"), "two", "b"), (2, 1));
        let calm = report.phase_rows.iter().find(|r| r.phase.as_deref() == Some("calm")).unwrap();
        assert_eq!(calm.stats.throughput, 2.0, "two completed in the phase's one second");
        let md = report.markdown();
        assert!(md.contains("| ours | 1 | two | b | 10.0 |"), "{md}");
        assert!(md.contains("## Per phase") && md.contains("| ours | 1 | storm | all | all |"), "{md}");
        assert!(md.contains("Function `two`: 1ms–2ms per request") && md.contains("storm 1s ×4"), "{md}");
    }
}
