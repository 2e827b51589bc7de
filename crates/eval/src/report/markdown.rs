//! The report as Markdown: what was run, then the rows, the rows per phase, the spread over
//! repeated runs, and the instances' starts, stops and moves.

use super::{Report, Row};
use crate::scenario::{FunctionSpec, Phase, Scenario};
use crate::trace::{self, Change, MOVE_WINDOW};

impl Report {
    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let s = &self.scenario;
        let mut out = format!(
            "# Scenario `{}`\n\n{}\n\n{}\n\nMachine: {}\n\n",
            s.name,
            s.description,
            describe(s),
            self.machine
        );
        let several = s.functions().len() > 1;
        out += &table_head(several, false);
        for r in &self.rows {
            out += &self.table_row(r, several);
        }
        if !self.phase_rows.is_empty() {
            out += "\n## Per phase\n\nThe same cells over each phase of the measured time (requests sent in it).\n\n";
            out += &table_head(several, true);
            for r in &self.phase_rows {
                out += &self.table_row(r, several);
            }
        }
        if !self.spread.is_empty() {
            let runs = self.spread[0].p50.len();
            let function = if several { "function | " } else { "" };
            out += &format!(
                "\n## Spread over {runs} runs\n\nThe rows above pool every run; here each run's value, in run order.\n\n\
                 | set | users/origin | {function}origin | p50 ms per run | p90 ms per run | local per run |\n|---|---|{}---|---|---|---|\n",
                if several { "---|" } else { "" }
            );
            let list = |v: &[f64], scale: f64| {
                v.iter().map(|x| one_decimal(x * scale)).collect::<Vec<_>>().join(" / ")
            };
            for r in &self.spread {
                let function = if several { format!("{} | ", r.function) } else { String::new() };
                out += &format!(
                    "| {} | {} | {function}{} | {} | {} | {} |\n",
                    r.set,
                    r.users,
                    r.origin,
                    list(&r.p50, 1.0),
                    list(&r.p90, 1.0),
                    list(&r.local, 100.0)
                );
            }
        }
        out += &self.instances();
        out
    }

    /// Per set and level, instances started and stopped and the moves among them, with the
    /// first few moves named; empty when no run recorded its instances.
    fn instances(&self) -> String {
        if self.runs.iter().all(|r| r.levels.iter().all(|l| l.instances.is_empty())) {
            return String::new();
        }
        let repeated = if self.spread.is_empty() { "" } else { " (the first run's)" };
        let mut out = format!(
            "\n## Instances\n\nInstances started and stopped per level{repeated}, and moves: a stop at one node \
             with a start of the same function at another within {} s. The time series marks each.\n\n\
             | set | users/origin | started | stopped | moves | first moves (s: from → to) |\n|---|---|---|---|---|---|\n",
            MOVE_WINDOW.as_secs_f64()
        );
        for run in &self.runs {
            for level in &run.levels {
                let count = |c: Change| level.instances.iter().filter(|e| e.change == c).count();
                let moves = trace::moves(&level.instances, MOVE_WINDOW.as_secs_f64());
                let mut named: Vec<String> = moves
                    .iter()
                    .take(5)
                    .map(|m| format!("{:.1}: {} → {}", m.at, self.nodes[m.from], self.nodes[m.to]))
                    .collect();
                if moves.len() > 5 {
                    named.push("…".into());
                }
                out += &format!(
                    "| {} | {} | {} | {} | {} | {} |\n",
                    run.set.name,
                    level.users,
                    count(Change::Started),
                    count(Change::Stopped),
                    moves.len(),
                    named.join(", ")
                );
            }
        }
        out
    }

    fn table_row(&self, r: &Row, several: bool) -> String {
        let st = &r.stats;
        let per_node: Vec<String> =
            st.served_share.iter().zip(&self.nodes).map(|(x, n)| format!("{n} {:.0}%", x * 100.0)).collect();
        let mut lead = format!("| {} | {} | ", r.set, r.users);
        if let Some(phase) = &r.phase {
            lead += &format!("{phase} | ");
        }
        if several {
            lead += &format!("{} | ", r.function);
        }
        format!(
            "{lead}{} | {} | {} | {} | {} | {:.1}% | {:.1} | {:.0}% | {} |\n",
            r.origin,
            one_decimal(st.p50),
            one_decimal(st.p90),
            one_decimal(st.p99),
            one_decimal(st.mean),
            st.completion_rate * 100.0,
            st.throughput,
            st.local_share * 100.0,
            per_node.join(", ")
        )
    }
}

/// A time or share to one decimal; a dash for NaN, a time no answered request gave (report.json
/// says `null`).
fn one_decimal(x: f64) -> String {
    if x.is_nan() { "–".into() } else { format!("{x:.1}") }
}

fn table_head(several: bool, phases: bool) -> String {
    let mut head = "| set | users/origin | ".to_owned();
    let mut rule = "|---|---|".to_owned();
    if phases {
        head += "phase | ";
        rule += "---|";
    }
    if several {
        head += "function | ";
        rule += "---|";
    }
    format!(
        "{head}origin | p50 ms | p90 ms | p99 ms | mean ms | completed | req/s | local | served per node |\n\
         {rule}---|---|---|---|---|---|---|---|---|\n"
    )
}

/// What was run: the load, its phases, the functions.
fn describe(s: &Scenario) -> String {
    let list = |items: Vec<String>| items.join(", ");
    let mut out = format!(
        "Load: {} users per origin on {} at {} req/s each (Poisson), warm-up {}, measured {}, timeout {}.",
        s.load.users.iter().map(ToString::to_string).collect::<Vec<_>>().join(" / "),
        list(s.load.origins.iter().map(ToString::to_string).collect()),
        s.load.rate_per_user,
        s.load.warmup,
        s.load.duration,
        s.load.timeout,
    );
    if let Some(phases) = &s.load.phases {
        out += &format!(" Phases: {}.", phase_list(phases));
    }
    match s.functions() {
        [f] if f.name.is_none() && f.annotations.is_empty() && f.load.is_none() => {
            out += &format!(" Function: {}.", settings(f));
        }
        functions => {
            for (i, f) in functions.iter().enumerate() {
                out += &format!("\n\nFunction `{}`: {}", f.service(), settings(f));
                if !f.annotations.is_empty() {
                    let a: Vec<String> = f.annotations.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                    out += &format!(", annotations {}", list(a));
                }
                if f.load.is_some() {
                    let origins: Vec<String> = s.origins_of(i).iter().map(ToString::to_string).collect();
                    out += &format!(
                        "; its load: on {} at {} req/s per user",
                        list(origins),
                        s.rate_per_user_of(i)
                    );
                    if let Some(phases) = f.load.as_ref().and_then(|l| l.phases.as_deref()) {
                        out += &format!(", phases {}", phase_list(phases));
                    }
                }
                out += ".";
            }
        }
    }
    out
}

fn settings(f: &FunctionSpec) -> String {
    format!(
        "{}–{} per request, containerConcurrency {}, target {}, window {}",
        f.work[0], f.work[1], f.container_concurrency, f.target, f.window
    )
}

fn phase_list(phases: &[Phase]) -> String {
    let items: Vec<String> = phases
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let everywhere = match p.ramp_to {
                None => format!("×{}", p.scale),
                Some(to) => format!("×{} → ×{to}", p.scale),
            };
            let own: Vec<String> = p.origins.iter().map(|(n, f)| format!("{n} {f}")).collect();
            let own = if own.is_empty() { String::new() } else { format!(" ({})", own.join(", ")) };
            format!("{} {} {everywhere}{own}", p.label(i), p.duration)
        })
        .collect();
    items.join("; ")
}
