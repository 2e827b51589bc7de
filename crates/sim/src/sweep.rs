//! Random edge–cloud sweeps: `ikukantai sim --sweep N --seed S`.
//!
//! Each case is a scenario of its own shape, drawn from the ranges a real edge spans: 1–3 cloud
//! nodes with plenty of room, 2–30 edge sites holding 1–4 instances, RTTs of 2–150 ms with jitter
//! (some edges close to each other), demand skewed across origins (cloud origins too), functions
//! of 1–50 ms with containerConcurrency 1–4, and load levels from light (every origin's demand
//! fits its own site) to several times what the edges can serve. Every case runs every policy set
//! on the same requests; [`compare`] sets `ours` against the better baseline per (level, origin).

use std::collections::BTreeMap;
use std::time::Duration;

use ikukantai_api::duration::GoDuration;
use ikukantai_api::topology::{LinkSpec, NodeSpec, Topology};
use ikukantai_eval::report::stats;
use ikukantai_eval::run::SetRun;
use ikukantai_eval::scenario::{FunctionSpec, LoadSpec, Origin, Scenario};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::model::Model;

/// The load of each level, as a multiple of what the busiest edge origin's own site can serve.
pub const LEVELS: [f64; 4] = [0.3, 0.8, 1.6, 3.2];

/// Requests per second the heaviest level of a case may reach (all origins): keeps a case to
/// about a second of simulation; a case whose edges would need more is run below that.
const MAX_RATE: f64 = 2000.0;

fn ms(x: f64) -> GoDuration {
    GoDuration(Duration::from_secs_f64((x * 1e3).round() / 1e6))
}

/// The `index`-th case of the sweep seeded `seed`.
pub fn case(seed: u64, index: usize) -> Scenario {
    let mut rng = SmallRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let clouds = rng.random_range(1..=3usize);
    let edges = rng.random_range(2..=30usize);
    let node = |name: String, tier: &str, capacity: u32| NodeSpec {
        name,
        labels: BTreeMap::from([("tier".to_owned(), tier.to_owned())]),
        capacity,
    };
    let mut nodes = Vec::new();
    for c in 0..clouds {
        nodes.push(node(format!("cloud-{c}"), "cloud", rng.random_range(20..=50)));
    }
    for e in 0..edges {
        nodes.push(node(format!("edge-{e}"), "edge", rng.random_range(1..=4)));
    }
    // Each edge's distance from the cloud; edges reach each other roughly through the cloud,
    // a few pairs are close neighbours.
    let distance: Vec<f64> = (0..edges).map(|_| rng.random_range(2.0..150.0)).collect();
    let mut links = Vec::new();
    let mut link = |a: &str, b: &str, rtt: f64, rng: &mut SmallRng| {
        let jitter = rtt * rng.random_range(0.02..0.12);
        links.push(LinkSpec {
            between: vec![a.to_owned(), b.to_owned()],
            rtt: ms(rtt),
            jitter: Some(ms(jitter)),
            bandwidth: None,
        });
    };
    for a in 0..clouds {
        for b in a + 1..clouds {
            link(&nodes[a].name.clone(), &nodes[b].name.clone(), rng.random_range(1.0..3.0), &mut rng);
        }
    }
    for (e, d) in distance.iter().enumerate() {
        for c in 0..clouds {
            let rtt = d + if c == 0 { 0.0 } else { rng.random_range(0.0..3.0) };
            link(&nodes[c].name.clone(), &nodes[clouds + e].name.clone(), rtt, &mut rng);
        }
    }
    for a in 0..edges {
        for b in a + 1..edges {
            let (da, db) = (distance[a], distance[b]);
            let rtt = if rng.random_bool(0.1) {
                rng.random_range(2.0..10.0)
            } else {
                ((da - db).abs() + rng.random_range(0.5..1.0) * da.min(db)).clamp(2.0, da + db + 5.0)
            };
            link(&nodes[clouds + a].name.clone(), &nodes[clouds + b].name.clone(), rtt, &mut rng);
        }
    }
    let lo: f64 = rng.random_range(1.0..50.0);
    let hi = (lo * rng.random_range(1.0..1.5f64)).min(50.0);
    let cc = rng.random_range(1..=4u32);
    let function = FunctionSpec {
        name: None,
        work: [ms(lo), ms(hi)],
        container_concurrency: cc,
        target: f64::from(cc),
        window: GoDuration(Duration::from_secs(rng.random_range(6..=12))),
        annotations: Default::default(),
        load: None,
    };
    // Skewed demand: log-normal weights; some edges have no users, most cases a cloud origin.
    let mut origins = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let is_cloud = i < clouds;
        let users = if is_cloud {
            i == 0 && rng.random_bool(0.8) || rng.random_bool(0.3)
        } else {
            rng.random_bool(0.8)
        };
        if users {
            let scale: f64 = (rng.random_range(-1.2..1.2f64)).exp();
            origins.push((i, (scale * 100.0).round() / 100.0, n.name.clone()));
        }
    }
    if !origins.iter().any(|(i, ..)| *i >= clouds) {
        origins.push((clouds, 1.0, nodes[clouds].name.clone()));
    }
    // Level 1 puts LEVELS[0] of its site's throughput on the busiest edge origin.
    let work_s = (lo + hi) / 2e3;
    let busiest = origins
        .iter()
        .filter(|(i, ..)| *i >= clouds)
        .map(|(i, scale, _)| scale * work_s / f64::from(nodes[*i].capacity * cc))
        .fold(0.0, f64::max);
    let users: Vec<u32> = LEVELS.iter().map(|l| (l / LEVELS[0] * 10.0).round() as u32).collect();
    let mut rate_per_user = LEVELS[0] / busiest / 10.0;
    let total_scale: f64 = origins.iter().map(|(_, s, _)| s).sum();
    let top = f64::from(*users.last().expect("levels")) * rate_per_user * total_scale;
    if top > MAX_RATE {
        rate_per_user *= MAX_RATE / top;
    }
    Scenario {
        name: format!("sweep-{seed}-{index}"),
        description: format!("Sweep case {index} of seed {seed}: {clouds} cloud nodes, {edges} edge sites."),
        topology: Topology { nodes, links, default_rtt: GoDuration(Duration::from_millis(50)) },
        function: Some(function),
        functions: Vec::new(),
        load: LoadSpec {
            origins: origins.into_iter().map(|(_, scale, node)| Origin::Scaled { node, scale }).collect(),
            users,
            rate_per_user: (rate_per_user * 1e4).round().max(1.0) / 1e4,
            warmup: GoDuration(Duration::from_secs(10)),
            duration: GoDuration(Duration::from_secs(20)),
            timeout: GoDuration(Duration::from_secs(5)),
            phases: None,
        },
        policies: vec!["knative".into(), "ikukantai".into(), "ours".into()],
    }
}

/// One (level, origin) of a case: `ours` against the better baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// The case.
    pub case: usize,
    /// Level index.
    pub level: usize,
    /// Origin node.
    pub origin: String,
    /// `ours` p50 and p90 (ms).
    pub ours: (f64, f64),
    /// The better baseline's p50 and p90 (ms; each the lower of the two).
    pub best: (f64, f64),
    /// All-local ideal p90 (ms; [`crate::ideal`]), at the light level of a case whose every
    /// origin's demand fits its own site: the cells the light-load target judges.
    pub ideal_p90: Option<f64>,
    /// Within p50 + 1 ms and p90 + 2 ms of the better baseline.
    pub ok: bool,
    /// How much worse than the better baseline, at worst (p50 or p90, as a fraction).
    pub worse: f64,
}

/// A case's verdict over all its cells.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// The case.
    pub case: usize,
    /// Its cells.
    pub cells: Vec<Cell>,
    /// Mean response time (all levels, all origins) per set, in the order knative, ikukantai,
    /// ours.
    pub mean: [f64; 3],
    /// Completion rate per set.
    pub completion: [f64; 3],
    /// Whether its lightest level is light: every origin's demand fits its own site.
    pub light: bool,
}

/// Sets `ours` against the baselines in one case's runs (knative, ikukantai, ours), run with
/// `seeds` and pooled (`ikukantai_eval::run::pool`).
pub fn compare(index: usize, s: &Scenario, seeds: &[u64], runs: &[SetRun], model: &Model) -> CaseResult {
    let n = s.topology.nodes.len();
    let mut cells = Vec::new();
    // The light-load target applies only where the lightest level really is light.
    let light = crate::ideal::fits_locally(s, 0, model);
    let ideal =
        if light { crate::ideal::all_local_p90(s, 0, seeds, model).unwrap_or_default() } else { Vec::new() };
    for level in 0..s.load.users.len() {
        for o in &s.load.origins {
            let Some(i) = s.topology.index_of(o.node()) else { continue };
            let st: Vec<_> = runs.iter().map(|r| stats(&r.levels[level], n, |x| x == i)).collect();
            if st.iter().any(|x| x.completed == 0) {
                continue;
            }
            let ours = (st[2].p50, st[2].p90);
            let best = (st[0].p50.min(st[1].p50), st[0].p90.min(st[1].p90));
            let ok = ours.0 <= best.0 + 1.0 && ours.1 <= best.1 + 2.0;
            let worse = ((ours.0 - best.0) / best.0).max((ours.1 - best.1) / best.1);
            cells.push(Cell {
                case: index,
                level,
                origin: o.node().to_owned(),
                ours,
                best,
                ideal_p90: ideal.iter().find(|(o, _)| level == 0 && *o == i).map(|(_, p90)| *p90),
                ok,
                worse,
            });
        }
    }
    let overall = |r: &SetRun| {
        let (mut sum, mut done, mut sent) = (0.0, 0usize, 0usize);
        for l in &r.levels {
            sent += l.samples.len();
            for x in l.samples.iter().filter_map(|x| x.latency_ms) {
                sum += x;
                done += 1;
            }
        }
        (sum / done.max(1) as f64, done as f64 / sent.max(1) as f64)
    };
    let o: Vec<_> = runs.iter().map(overall).collect();
    CaseResult {
        case: index,
        cells,
        mean: [o[0].0, o[1].0, o[2].0],
        completion: [o[0].1, o[1].1, o[2].1],
        light,
    }
}

/// The sweep's verdict against its targets.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Cases run.
    pub cases: usize,
    /// (case, level, origin) cells compared.
    pub cells: usize,
    /// Share of cells where `ours` is within p50 + 1 ms and p90 + 2 ms of the better baseline.
    pub within: f64,
    /// Share of cells where `ours` is more than 10 % worse than the better baseline.
    pub worse_than_10_percent: f64,
    /// The worst cell's excess over the better baseline (fraction).
    pub worst: f64,
    /// Share of cases where `ours` has the lowest mean response time of the three.
    pub mean_best: f64,
    /// Share of cases where `ours` completes at least as many requests as either baseline.
    pub completion_best: f64,
    /// Share of light-level cells whose p90 is within 2 ms of the all-local ideal.
    pub light_local: f64,
    /// Light-level cells judged: those of the cases whose lightest level is light.
    pub light_cells: usize,
    /// Cases whose lightest level is light (every origin's demand fits its own site).
    pub light_cases: usize,
}

/// Sums up a sweep.
pub fn summarize(results: &[CaseResult]) -> Summary {
    let cells: Vec<&Cell> = results.iter().flat_map(|r| &r.cells).collect();
    let share = |k: usize, of: usize| if of == 0 { 0.0 } else { k as f64 / of as f64 };
    let light: Vec<&&Cell> = cells.iter().filter(|c| c.ideal_p90.is_some()).collect();
    let cases = results.len();
    Summary {
        cases,
        cells: cells.len(),
        within: share(cells.iter().filter(|c| c.ok).count(), cells.len()),
        worse_than_10_percent: share(cells.iter().filter(|c| c.worse > 0.1).count(), cells.len()),
        worst: cells.iter().map(|c| c.worse).fold(0.0, f64::max),
        mean_best: share(
            results.iter().filter(|r| r.mean[2] <= r.mean[0].min(r.mean[1]) + 1e-9).count(),
            cases,
        ),
        completion_best: share(
            results.iter().filter(|r| r.completion[2] + 1e-9 >= r.completion[0].max(r.completion[1])).count(),
            cases,
        ),
        light_local: share(
            light.iter().filter(|c| c.ours.1 <= c.ideal_p90.unwrap_or(f64::INFINITY) + 2.0).count(),
            light.len(),
        ),
        light_cells: light.len(),
        light_cases: results.iter().filter(|r| r.light).count(),
    }
}

/// The cases holding the `k` worst cells, worst first.
pub fn worst_cases(results: &[CaseResult], k: usize) -> Vec<usize> {
    let mut by_worst: Vec<(f64, usize)> = results
        .iter()
        .map(|r| (r.cells.iter().map(|c| c.worse).fold(f64::NEG_INFINITY, f64::max), r.case))
        .collect();
    by_worst.sort_by(|a, b| b.0.total_cmp(&a.0));
    by_worst.into_iter().take(k).map(|(_, c)| c).collect()
}

/// The sweep as Markdown: the targets, then the worst cells.
pub fn markdown(seed: u64, summary: &Summary, results: &[CaseResult]) -> String {
    let pct = |x: f64| format!("{:.1} %", x * 100.0);
    let mut out = format!(
        "# Sweep of {} cases (seed {seed})\n\n| target | result |\n|---|---|\n\
         | cells within p50 + 1 ms and p90 + 2 ms of the better baseline (≥ 98 %) | {} of {} cells |\n\
         | cells more than 10 % worse than the better baseline (none) | {} (worst {}) |\n\
         | cases where ours has the lowest mean response time (all) | {} |\n\
         | cases where ours completes at least as much as both (all) | {} |\n\
         | light-level cells with p90 within 2 ms of the all-local ideal (all) | {} of {} cells in {} light cases |\n\n\
         The all-local ideal of a light-level cell is the p90 its origin would see were every one of \
         its requests served FIFO by its own site's slots (capacity × containerConcurrency), with no \
         link crossed: the same requests, each costing what a local one costs in the model. A case's \
         lightest level is light when every origin's demand fits its own site.\n\n",
        summary.cases,
        pct(summary.within),
        summary.cells,
        pct(summary.worse_than_10_percent),
        pct(summary.worst),
        pct(summary.mean_best),
        pct(summary.completion_best),
        pct(summary.light_local),
        summary.light_cells,
        summary.light_cases,
    );
    let mut cells: Vec<&Cell> = results.iter().flat_map(|r| &r.cells).collect();
    cells.sort_by(|a, b| b.worse.total_cmp(&a.worse));
    out += "Worst cells:\n\n| case | level | origin | ours p50 / p90 ms | better baseline p50 / p90 ms | worse by |\n|---|---|---|---|---|---|\n";
    for c in cells.iter().take(20) {
        out += &format!(
            "| {} | {} | {} | {:.1} / {:.1} | {:.1} / {:.1} | {} |\n",
            c.case,
            c.level,
            c.origin,
            c.ours.0,
            c.ours.1,
            c.best.0,
            c.best.1,
            pct(c.worse)
        );
    }
    out
}

/// Runs `count` cases from `seed` on `threads` threads, each `runs` times (simulation seeds
/// `seed`, `seed + 1`, …; the cases stay those of `seed`), pooled; results in case order.
pub fn run(seed: u64, count: usize, runs: u32, threads: usize, model: &Model) -> Vec<CaseResult> {
    let seeds: Vec<u64> = ikukantai_eval::run::seeds(seed, runs.max(1)).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = parking_lot::Mutex::new(Vec::with_capacity(count));
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let s = case(seed, i);
                    let Ok(repeats) =
                        seeds.iter().map(|&r| crate::run(&s, r, model)).collect::<Result<Vec<_>, _>>()
                    else {
                        continue;
                    };
                    let result = compare(i, &s, &seeds, &ikukantai_eval::run::pool(repeats), model);
                    results.lock().push(result);
                }
            });
        }
    });
    let mut results = results.into_inner();
    results.sort_by_key(|r| r.case);
    results
}
