//! Time series: per origin (and per function, with several), p50 and p90 of the requests sent
//! in each few seconds and the share served at the origin, over a policy set's whole run, with
//! the levels' measuring starts and the phases marked: a cold start, a ping-pong between sites
//! or a crowd moving shows as it happens. Below them, when the run recorded its instances, a strip
//! of instances per node over time with every start and stop marked and moves drawn from node to
//! node; each origin's panel marks the moves to or from its node.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{COLORS, err};
use crate::report::Report;
use crate::run::{Sample, SetRun};
use crate::trace::{self, InstanceEvent, MOVE_WINDOW, Move};

/// The requests sent in one time bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// The bucket's start, in seconds since the set's load began.
    pub from: f64,
    /// Requests sent in it.
    pub sent: usize,
    /// Of those, answered in time.
    pub completed: usize,
    /// p50 and p90 of their response times (ms), when any completed.
    pub p50: Option<f64>,
    /// p90.
    pub p90: Option<f64>,
    /// The share of the completed ones served at their origin.
    pub local: Option<f64>,
}

/// The samples `keep` selects, bucketed by send time: `width` seconds each, from 0 to `until`.
pub fn buckets<'a>(
    samples: impl Iterator<Item = &'a Sample>,
    width: f64,
    until: f64,
    keep: impl Fn(&Sample) -> bool,
) -> Vec<Bucket> {
    let n = (until / width).ceil().max(1.0) as usize;
    let mut latencies = vec![Vec::new(); n];
    let mut sent = vec![0usize; n];
    let mut local = vec![0usize; n];
    for s in samples.filter(|s| keep(s)) {
        let b = ((s.at / width).max(0.0) as usize).min(n - 1);
        sent[b] += 1;
        if let Some(ms) = s.latency_ms {
            latencies[b].push(ms);
            local[b] += usize::from(s.served == Some(s.origin));
        }
    }
    latencies
        .into_iter()
        .enumerate()
        .map(|(b, mut lat)| {
            lat.sort_by(f64::total_cmp);
            let q = |q: f64| lat.get(((lat.len() - 1) as f64 * q).round() as usize).copied();
            let done = lat.len();
            Bucket {
                from: b as f64 * width,
                sent: sent[b],
                completed: done,
                p50: if done > 0 { q(0.5) } else { None },
                p90: if done > 0 { q(0.9) } else { None },
                local: (done > 0).then(|| local[b] as f64 / done as f64),
            }
        })
        .collect()
}

/// A bucket width that gives about a hundred buckets, from 0.25 s up, rounded to 1-2-5 steps.
pub fn bucket_width(seconds: f64) -> f64 {
    let raw = (seconds / 100.0).max(0.25);
    let step = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * step).find(|w| *w >= raw - 1e-12).unwrap_or(10.0 * step)
}

/// One panel's rows: (title, origin, function) — every origin, and per function with several.
fn panels(report: &Report) -> Vec<(String, usize, Option<usize>)> {
    let s = &report.scenario;
    let origins = s.all_origins();
    if s.functions().len() < 2 {
        return origins.into_iter().map(|(name, i)| (format!("origin {name}"), i, None)).collect();
    }
    let mut out = Vec::new();
    for (name, i) in origins {
        for (f, spec) in s.functions().iter().enumerate() {
            if s.origins_of(f).iter().any(|o| o.node() == name) {
                out.push((format!("origin {name}, function {}", spec.service()), i, Some(f)));
            }
        }
    }
    out
}

/// Where the run's marks go: each level's measuring start (solid) and phase boundaries (dashed),
/// in seconds since the set's load began, with the phase names.
fn marks(report: &Report, run: &SetRun) -> (Vec<f64>, Vec<(f64, String)>) {
    let warmup = report.scenario.load.warmup.0.as_secs_f64();
    let spans = report.scenario.phase_spans();
    let mut starts = Vec::new();
    let mut phases = Vec::new();
    for level in &run.levels {
        let measure = level.began + warmup;
        starts.push(measure);
        phases.extend(spans.iter().map(|(label, from, _)| (measure + from, label.clone())));
    }
    (starts, phases)
}

/// The time series of one policy set.
pub(super) fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    report: &Report,
    run: &SetRun,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let title = format!(
        "{}, {}: p50 (solid) and p90 (dashed) per bucket, share served at the origin (green, right axis)",
        report.scenario.name, run.set.name
    );
    let root = root.titled(&title, ("sans-serif", 18)).map_err(err)?;
    let until = run
        .levels
        .iter()
        .map(|l| {
            l.began
                + report.scenario.load.warmup.0.as_secs_f64()
                + report.scenario.load.duration.0.as_secs_f64()
        })
        .fold(1.0, f64::max);
    let width = bucket_width(until);
    let rows = panels(report);
    let events = instance_events(run);
    let moves = trace::moves(&events, MOVE_WINDOW.as_secs_f64());
    let (root, strip) = if has_instances(report) {
        let (top, strip) = root.split_vertically(root.dim_in_pixel().1 - strip_height(report));
        (top, Some(strip))
    } else {
        (root, None)
    };
    let areas = root.split_evenly((rows.len().max(1), 1));
    let samples = || run.levels.iter().flat_map(|l| l.samples.iter());
    let series: Vec<Vec<Bucket>> = rows
        .iter()
        .map(|(_, origin, f)| {
            buckets(samples(), width, until, |s| s.origin == *origin && f.is_none_or(|f| s.function == f))
        })
        .collect();
    let (starts, phases) = marks(report, run);
    for (((label, origin, _), area), buckets) in rows.iter().zip(&areas).zip(&series) {
        // Each panel its own scale: one origin's seconds of queueing would flatten the others.
        let ymax = buckets.iter().filter_map(|b| b.p90).fold(1.0f64, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(label, ("sans-serif", 14))
            .margin(6)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .right_y_label_area_size(45)
            .build_cartesian_2d(0.0..until, 0.0..ymax)
            .map_err(err)?
            .set_secondary_coord(0.0..until, 0.0..1.0);
        chart.configure_mesh().x_desc("seconds").y_desc("ms").light_line_style(WHITE).draw().map_err(err)?;
        chart.configure_secondary_axes().y_desc("local").draw().map_err(err)?;
        let vertical = |x: f64| vec![(x, 0.0), (x, ymax)];
        for &x in &starts {
            chart.draw_series(std::iter::once(PathElement::new(vertical(x), BLACK.mix(0.5)))).map_err(err)?;
        }
        for (x, name) in &phases {
            chart
                .draw_series(DashedLineSeries::new(vertical(*x), 4, 4, BLACK.mix(0.35).into()))
                .map_err(err)?;
            let style = ("sans-serif", 11).into_font().color(&BLACK.mix(0.7));
            chart
                .draw_series(std::iter::once(Text::new(name.clone(), (*x, ymax * 0.97), style)))
                .map_err(err)?;
        }
        let blue = COLORS[1];
        for line in runs_of(buckets, width, |b| b.p50) {
            chart.draw_series(LineSeries::new(line, blue.stroke_width(2))).map_err(err)?;
        }
        for line in runs_of(buckets, width, |b| b.p90) {
            chart.draw_series(DashedLineSeries::new(line, 5, 3, blue.stroke_width(1))).map_err(err)?;
        }
        for line in runs_of(buckets, width, |b| b.local) {
            chart.draw_secondary_series(LineSeries::new(line, COLORS[2].stroke_width(1))).map_err(err)?;
        }
        // Requests not answered in time: a red tick at the top of their bucket.
        let lost = buckets
            .iter()
            .filter(|b| b.sent > b.completed)
            .map(|b| Cross::new((b.from + width / 2.0, ymax * 0.9), 3, COLORS[0]));
        chart.draw_series(lost).map_err(err)?;
        // Moves to or from this origin's node: a purple triangle at the bottom.
        let here = moves.iter().filter(|m| m.from == *origin || m.to == *origin);
        chart
            .draw_series(here.map(|m| TriangleMarker::new((m.at, ymax * 0.04), 5, COLORS[3].filled())))
            .map_err(err)?;
    }
    if let Some(strip) = strip {
        draw_instances(&strip, report, &events, &moves, until)?;
    }
    root.present().map_err(err)
}

/// Every level's instance events, in time order.
fn instance_events(run: &SetRun) -> Vec<InstanceEvent> {
    let mut events: Vec<InstanceEvent> =
        run.levels.iter().flat_map(|l| l.instances.iter().copied()).collect();
    events.sort_by(|a, b| a.at.total_cmp(&b.at));
    events
}

/// Whether any set of the report recorded its instances (then every set's plot has the strip).
fn has_instances(report: &Report) -> bool {
    report.runs.iter().any(|r| r.levels.iter().any(|l| !l.instances.is_empty()))
}

/// The instance strip's height: a row per node.
fn strip_height(report: &Report) -> u32 {
    if has_instances(report) { 90 + 18 * report.nodes.len() as u32 } else { 0 }
}

/// Instances per node over time: a row per node, its count as a step line (row height = the
/// most any node held), a start as a green triangle, a stop as a red cross, a move as a purple
/// line from the node it left to a dot at the one it went to.
fn draw_instances<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    report: &Report,
    events: &[InstanceEvent],
    moves: &[Move],
    until: f64,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let nodes = &report.nodes;
    let steps = trace::counts(events, nodes.len());
    let most = steps.iter().flatten().map(|(_, c)| *c).max().unwrap_or(1).max(1);
    let caption = format!(
        "instances per node (row height = {most}): green = start, red = stop, purple = a move (within {} s)",
        MOVE_WINDOW.as_secs_f64()
    );
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 14))
        .margin(6)
        .x_label_area_size(30)
        .y_label_area_size(90)
        .right_y_label_area_size(45)
        .build_cartesian_2d(0.0..until, -0.6..(nodes.len() as f64 - 0.4))
        .map_err(err)?;
    let label = |y: &f64| {
        let i = y.round();
        let on_row = (y - i).abs() < 1e-6 && i >= 0.0;
        if on_row { nodes.get(i as usize).cloned().unwrap_or_default() } else { String::new() }
    };
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_labels(nodes.len().max(1) * 2 + 1)
        .y_label_formatter(&label)
        .light_line_style(WHITE)
        .draw()
        .map_err(err)?;
    let row = |node: usize, count: u32| node as f64 - 0.4 + 0.8 * f64::from(count) / f64::from(most);
    for (node, steps) in steps.iter().enumerate() {
        let mut line = vec![(0.0, row(node, 0))];
        let mut before = 0;
        for &(at, count) in steps {
            line.push((at, row(node, before)));
            line.push((at, row(node, count)));
            before = count;
        }
        line.push((until, row(node, before)));
        chart.draw_series(std::iter::once(PathElement::new(line, COLORS[1].stroke_width(1)))).map_err(err)?;
        let mut before = 0;
        for &(at, count) in steps {
            let y = row(node, count);
            if count > before {
                let start = TriangleMarker::new((at, y), 4, COLORS[2].filled());
                chart.draw_series(std::iter::once(start)).map_err(err)?;
            } else {
                let stop = Cross::new((at, y), 3, COLORS[0].stroke_width(2));
                chart.draw_series(std::iter::once(stop)).map_err(err)?;
            }
            before = count;
        }
    }
    for m in moves {
        let path =
            PathElement::new(vec![(m.at, m.from as f64), (m.at, m.to as f64)], COLORS[3].stroke_width(2));
        chart.draw_series(std::iter::once(path)).map_err(err)?;
        chart
            .draw_series(std::iter::once(Circle::new((m.at, m.to as f64), 3, COLORS[3].filled())))
            .map_err(err)?;
    }
    Ok(())
}

/// The buckets' values as lines through their middles, broken where a bucket has none.
fn runs_of(buckets: &[Bucket], width: f64, value: impl Fn(&Bucket) -> Option<f64>) -> Vec<Vec<(f64, f64)>> {
    let mut lines = vec![Vec::new()];
    for b in buckets {
        match value(b) {
            Some(v) => lines.last_mut().expect("one at least").push((b.from + width / 2.0, v)),
            None if lines.last().is_some_and(|l| !l.is_empty()) => lines.push(Vec::new()),
            None => {}
        }
    }
    lines.retain(|l| !l.is_empty());
    lines
}

/// The file size for a report's time series: a panel per row, and the instance strip.
pub(super) fn size(report: &Report) -> (u32, u32) {
    (1400, 60 + 200 * panels(report).len().max(1) as u32 + strip_height(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: f64, latency: Option<f64>, served: usize) -> Sample {
        Sample { origin: 0, function: 0, latency_ms: latency, served: latency.map(|_| served), at }
    }

    #[test]
    fn buckets_hold_the_requests_sent_in_them() {
        let samples = [
            sample(0.1, Some(5.0), 0),
            sample(0.9, Some(7.0), 1),
            sample(1.0, None, 0),
            sample(2.5, Some(50.0), 1),
            Sample { origin: 1, ..sample(0.2, Some(1.0), 1) },
        ];
        let b = buckets(samples.iter(), 1.0, 3.0, |s| s.origin == 0);
        assert_eq!(b.len(), 3);
        assert_eq!(
            (b[0].sent, b[0].completed, b[0].p50, b[0].p90, b[0].local),
            (2, 2, Some(7.0), Some(7.0), Some(0.5))
        );
        assert_eq!((b[1].sent, b[1].completed, b[1].p50, b[1].local), (1, 0, None, None));
        assert_eq!((b[2].from, b[2].p50, b[2].local), (2.0, Some(50.0), Some(0.0)));
        let lines = runs_of(&b, 1.0, |b| b.p50);
        assert_eq!(lines, [vec![(0.5, 7.0)], vec![(2.5, 50.0)]], "broken where nothing completed");
    }

    #[test]
    fn buckets_are_about_a_hundredth_of_the_run() {
        assert_eq!(bucket_width(10.0), 0.25);
        assert_eq!(bucket_width(60.0), 1.0);
        assert_eq!(bucket_width(180.0), 2.0);
        assert_eq!(bucket_width(240.0), 2.5);
        assert_eq!(bucket_width(1000.0), 10.0);
    }
}
