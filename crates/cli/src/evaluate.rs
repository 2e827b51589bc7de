//! `ikukantai bench` (the emulator) and `ikukantai sim` (the simulator): the same scenarios, the
//! same report.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use ikukantai_eval::plot;
use ikukantai_eval::report::Report;
use ikukantai_eval::run::{self, SetRun};
use ikukantai_eval::scenario::{PolicySet, Scenario};

use crate::commands::init_logs;
use crate::out::outln;

struct Bar;

impl ikukantai_eval::run::Progress for Bar {
    fn update(&self, set: &str, users: u32, phase: &str, done: f64, total: f64) {
        let width = 30;
        let filled = ((done / total.max(1e-9)) * width as f64).round() as usize;
        eprint!(
            "\r[{set:<9}] {users:>4} users/origin  {phase:<7} [{}{}] {done:>4.0}/{total:.0} s ",
            "#".repeat(filled.min(width)),
            "-".repeat(width - filled.min(width))
        );
        if done >= total {
            eprintln!();
        }
    }
}

/// Reads and checks a scenario file.
fn scenario(path: &Path) -> anyhow::Result<Scenario> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {file}"))?;
    Ok(Scenario::parse(&file, &text)?)
}

/// The machine a report was made on, and the command that made it.
fn machine(command: &str) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpus} CPUs ({cpu}), command `{command}`")
}

/// Writes report.json, report.md and the plots, and prints the Markdown.
fn write_report(s: Scenario, repeats: Vec<Vec<SetRun>>, machine: String, out: &Path) -> anyhow::Result<()> {
    let report = Report::repeated(s, repeats, machine);
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    let mut md = report.markdown();
    match plot::write_all(&report, out) {
        Ok(files) => {
            md += "\n## Plots\n\n";
            for f in files.iter().filter(|f| f.ends_with(".png")) {
                md += &format!("![{f}]({f})\n");
            }
        }
        Err(e) => eprintln!("warning: no plots: {e}"),
    }
    std::fs::write(out.join("report.md"), &md)?;
    outln!("{md}");
    outln!("written: {}/report.json, report.md and plots", out.display());
    Ok(())
}

/// `ikukantai bench`: a fresh emulated fleet per policy set.
pub(crate) async fn bench(path: &Path, out: &Path, seed: u64, runs: u32) -> anyhow::Result<ExitCode> {
    init_logs("warn");
    let s = scenario(path)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let binary = std::env::current_exe()?;
    let work = out.join("fleet-state");
    eprintln!(
        "scenario {}: {runs} × {} policy sets × {} levels × {:.0} s each",
        s.name,
        s.policies.len(),
        s.load.users.len(),
        (s.load.warmup.0 + s.load.duration.0).as_secs_f64()
    );
    // Ctrl-C stops the run and every instance it started.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ninterrupted: stopping the fleet…");
            let _ = stop_tx.send(true);
        }
    });
    let mut repeats = Vec::new();
    for run_seed in run::seeds(seed, runs) {
        let mut sets = Vec::new();
        for name in &s.policies {
            let set = PolicySet::named(name).context("policy set")?;
            sets.push(
                run::run_set(&s, &set, &binary, &work, run_seed, &Bar, &stop)
                    .await
                    .with_context(|| format!("policy set {name}"))?,
            );
        }
        repeats.push(sets);
    }
    let _ = std::fs::remove_dir_all(&work);
    let command =
        format!("ikukantai bench {} --out {} --seed {seed} --runs {runs}", path.display(), out.display());
    write_report(s, repeats, machine(&command), out)?;
    Ok(ExitCode::SUCCESS)
}

/// `ikukantai sim`: the same scenario in virtual time.
pub(crate) fn sim(path: &Path, out: &Path, seed: u64, runs: u32) -> anyhow::Result<ExitCode> {
    let s = scenario(path)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let started = std::time::Instant::now();
    let model = ikukantai_sim::model::Model::default();
    let repeats = run::seeds(seed, runs)
        .map(|run_seed| ikukantai_sim::run(&s, run_seed, &model))
        .collect::<Result<Vec<_>, _>>()?;
    eprintln!(
        "simulated {runs} × {} policy sets in {:.2} s",
        s.policies.len(),
        started.elapsed().as_secs_f64()
    );
    let command =
        format!("ikukantai sim {} --out {} --seed {seed} --runs {runs}", path.display(), out.display());
    write_report(s, repeats, machine(&command), out)?;
    Ok(ExitCode::SUCCESS)
}

/// `ikukantai sim --case K`: cases of a sweep as scenario files, to rerun one by one.
pub(crate) fn write_cases(cases: &[usize], out: &Path, seed: u64) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for &case in cases {
        let file = out.join(format!("case-{case}.yaml"));
        write_case(seed, case, &file)?;
        outln!("{}", file.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn write_case(seed: u64, case: usize, file: &Path) -> anyhow::Result<()> {
    let text = serde_saphyr::to_string(&ikukantai_sim::sweep::case(seed, case))
        .with_context(|| format!("cannot write case {case} as YAML"))?;
    std::fs::write(file, text).with_context(|| format!("cannot write {}", file.display()))
}

/// `ikukantai sim --sweep N`: random cases, `ours` against the better baseline, the worst cases
/// written out as scenarios for `bench` and `sim`.
pub(crate) fn sweep(count: usize, out: &Path, seed: u64, runs: u32) -> anyhow::Result<ExitCode> {
    use ikukantai_sim::sweep;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let model = ikukantai_sim::model::Model::default();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = std::time::Instant::now();
    let results = sweep::run(seed, count, runs, threads, &model);
    let elapsed = started.elapsed().as_secs_f64();
    let summary = sweep::summarize(&results);
    let mut md = sweep::markdown(seed, &summary, &results);
    md += &format!(
        "\n{count} cases in {elapsed:.0} s on {}.\n\nWorst cases, as scenarios:\n\n",
        machine(&format!(
            "ikukantai sim --sweep {count} --seed {seed} --runs {runs} --out {}",
            out.display()
        ))
    );
    for (rank, case) in sweep::worst_cases(&results, 5).into_iter().enumerate() {
        let file = out.join(format!("worst-{}.yaml", rank + 1));
        write_case(seed, case, &file)?;
        md += &format!("- `{}`: case {case}\n", file.display());
    }
    std::fs::write(out.join("sweep.json"), serde_json::to_vec_pretty(&(&summary, &results))?)?;
    std::fs::write(out.join("sweep.md"), &md)?;
    outln!("{md}");
    Ok(ExitCode::SUCCESS)
}
