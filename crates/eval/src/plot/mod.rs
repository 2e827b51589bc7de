//! Plots (PNG and SVG): response-time CDFs (the paper's Fig. 9), where requests were served
//! (its Fig. 10), p50/p90 against load for every policy set, and per set the time series of
//! every origin (`timeline`).

pub mod timeline;

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::{Report, stats};

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn register_font() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let path = FONT_PATHS.iter().find(|p| Path::new(p).exists()).ok_or_else(|| {
            format!("plots need the DejaVu Sans font ({}): apt-get install fonts-dejavu-core", FONT_PATHS[0])
        })?;
        let bytes: &'static [u8] =
            Box::leak(std::fs::read(path).map_err(|e| format!("{path}: {e}"))?.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path} is not a usable font"))
    })
    .clone()
}

const COLORS: [RGBColor; 6] = [
    RGBColor(220, 80, 40),
    RGBColor(40, 110, 200),
    RGBColor(30, 150, 80),
    RGBColor(150, 60, 170),
    RGBColor(200, 160, 0),
    RGBColor(90, 90, 90),
];

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn cdf<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, report: &Report, level: usize) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let users = report.scenario.load.users[level];
    let mut series = Vec::new();
    let mut xmax: f64 = 1.0;
    for run in &report.runs {
        let mut lat: Vec<f64> = run.levels[level].samples.iter().filter_map(|s| s.latency_ms).collect();
        lat.sort_by(f64::total_cmp);
        if let Some(p) = lat.get(((lat.len() as f64) * 0.99) as usize).or(lat.last()) {
            xmax = xmax.max(*p);
        }
        let sent = run.levels[level].samples.len().max(1) as f64;
        let points: Vec<(f64, f64)> =
            lat.iter().enumerate().map(|(i, &x)| (x, (i + 1) as f64 / sent)).collect();
        series.push((run.set.name.clone(), points));
    }
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!("{}: response-time CDF, {users} users per origin", report.scenario.name),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..xmax * 1.05, 0.0..1.0)
        .map_err(err)?;
    chart.configure_mesh().x_desc("response time (ms)").y_desc("fraction of requests").draw().map_err(err)?;
    for (i, (name, points)) in series.into_iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

fn served<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    report: &Report,
    level: usize,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let users = report.scenario.load.users[level];
    let title = format!("{}: where requests were served, {users} users per origin", report.scenario.name);
    let root = root.titled(&title, ("sans-serif", 20)).map_err(err)?;
    let panels = root.split_evenly((1, report.runs.len().max(1)));
    let xmax = report
        .runs
        .iter()
        .flat_map(|r| r.levels[level].samples.iter().filter_map(|s| s.latency_ms))
        .fold(1.0f64, f64::max)
        .min(1000.0);
    let bins = 30usize;
    let width = xmax / bins as f64;
    for (panel, run) in panels.iter().zip(&report.runs) {
        let samples = &run.levels[level].samples;
        let total = samples.len().max(1) as f64;
        let mut counts = vec![vec![0f64; bins]; report.nodes.len()];
        for s in samples {
            if let (Some(ms), Some(n)) = (s.latency_ms, s.served) {
                let b = ((ms / width) as usize).min(bins - 1);
                counts[n][b] += 1.0 / total;
            }
        }
        let ymax = (0..bins).map(|b| counts.iter().map(|c| c[b]).sum::<f64>()).fold(0.01f64, f64::max);
        let mut chart = ChartBuilder::on(panel)
            .caption(&run.set.name, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(0.0..xmax, 0.0..ymax * 1.1)
            .map_err(err)?;
        chart.configure_mesh().x_desc("ms").y_desc("share").draw().map_err(err)?;
        let mut base = vec![0f64; bins];
        for (n, name) in report.nodes.iter().enumerate() {
            let c = COLORS[n % COLORS.len()];
            let rects: Vec<Rectangle<(f64, f64)>> = (0..bins)
                .filter(|&b| counts[n][b] > 0.0)
                .map(|b| {
                    let (x0, x1) = (b as f64 * width, (b + 1) as f64 * width);
                    Rectangle::new([(x0, base[b]), (x1, base[b] + counts[n][b])], c.filled())
                })
                .collect();
            for b in 0..bins {
                base[b] += counts[n][b];
            }
            chart
                .draw_series(rects)
                .map_err(err)?
                .label(format!("served on {name}"))
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)
}

fn versus_load<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, report: &Report) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let n = report.nodes.len();
    let users: Vec<f64> = report.scenario.load.users.iter().map(|&u| f64::from(u)).collect();
    let mut lines = Vec::new();
    let mut ymax: f64 = 1.0;
    for run in &report.runs {
        let p50: Vec<(f64, f64)> =
            run.levels.iter().map(|l| (f64::from(l.users), stats(l, n, |_| true).p50)).collect();
        let p90: Vec<(f64, f64)> =
            run.levels.iter().map(|l| (f64::from(l.users), stats(l, n, |_| true).p90)).collect();
        ymax = p90.iter().chain(&p50).map(|p| p.1).filter(|v| v.is_finite()).fold(ymax, f64::max);
        lines.push((run.set.name.clone(), p50, p90));
    }
    let xmin = users.iter().copied().fold(f64::INFINITY, f64::min);
    let xmax = users.iter().copied().fold(0.0, f64::max);
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!("{}: p50 (solid) and p90 (dashed) against load", report.scenario.name),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((xmin - 1.0)..(xmax + 1.0), 0.0..ymax * 1.1)
        .map_err(err)?;
    chart.configure_mesh().x_desc("users per origin").y_desc("response time (ms)").draw().map_err(err)?;
    for (i, (name, p50, p90)) in lines.into_iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(p50.clone(), c.stroke_width(2)).point_size(3))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(DashedLineSeries::new(p90, 6, 4, c.stroke_width(2))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// Writes every plot as PNG and SVG into `dir`; returns the file names.
pub fn write_all(report: &Report, dir: &Path) -> Result<Vec<String>, String> {
    register_font()?;
    let last = report.scenario.load.users.len() - 1;
    let mut files = Vec::new();
    type Job<'a> = (
        String,
        (u32, u32),
        Box<dyn Fn(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), String> + 'a>,
        Box<dyn Fn(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), String> + 'a>,
    );
    let mut jobs: Vec<Job<'_>> = vec![
        ("cdf-low".into(), (900, 560), Box::new(|a| cdf(a, report, 0)), Box::new(|a| cdf(a, report, 0))),
        (
            "cdf-high".into(),
            (900, 560),
            Box::new(|a| cdf(a, report, last)),
            Box::new(|a| cdf(a, report, last)),
        ),
        (
            "served-high".into(),
            (1400, 520),
            Box::new(|a| served(a, report, last)),
            Box::new(|a| served(a, report, last)),
        ),
        (
            "latency-vs-load".into(),
            (900, 560),
            Box::new(|a| versus_load(a, report)),
            Box::new(|a| versus_load(a, report)),
        ),
    ];
    for run in &report.runs {
        jobs.push((
            format!("timeline-{}", run.set.name),
            timeline::size(report),
            Box::new(move |a| timeline::draw(a, report, run)),
            Box::new(move |a| timeline::draw(a, report, run)),
        ));
    }
    for (name, size, png, svg) in jobs {
        let png_path = dir.join(format!("{name}.png"));
        png(&BitMapBackend::new(&png_path, size).into_drawing_area())?;
        let svg_path = dir.join(format!("{name}.svg"));
        svg(&SVGBackend::new(&svg_path, size).into_drawing_area())?;
        files.push(format!("{name}.png"));
        files.push(format!("{name}.svg"));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{LevelRun, Sample, SetRun};
    use crate::scenario::{PolicySet, Scenario};
    use crate::trace::{Change, InstanceEvent};

    #[test]
    fn every_set_gets_a_time_series_with_a_panel_per_origin() {
        let text = "name: t\ntopology: {nodes: [{name: a}, {name: b}]}\n\
                    function: {work: [1ms, 2ms], target: 1, window: 6s}\n\
                    load: {origins: [a, b], users: [1, 2], rate_per_user: 1, warmup: 1s, timeout: 1s,\n\
                           phases: [{name: calm, duration: 2s}, {name: crowd, duration: 2s, origins: {b: 3}}]}\n\
                    policies: [knative, ours]\n";
        let s = Scenario::parse("t.yaml", text).unwrap();
        let level = |users, began: f64| {
            let samples = (0..40)
                .map(|k| Sample {
                    origin: k % 2,
                    function: 0,
                    latency_ms: (k % 7 != 0).then_some(5.0 + k as f64),
                    served: Some(0),
                    at: began + 1.0 + k as f64 / 10.0,
                })
                .collect::<Vec<_>>();
            LevelRun { users, sent: samples.len(), samples, seconds: 4.0, began, instances: Vec::new() }
        };
        let mut runs = ["knative", "ours"].map(|n| SetRun {
            set: PolicySet::named(n).unwrap(),
            levels: vec![level(1, 0.0), level(2, 5.0)],
        });
        // `ours` moves its instance from a to b.
        let event = |at, node, change| InstanceEvent { at, function: 0, node, change };
        runs[1].levels[0].instances = vec![
            event(0.5, 0, Change::Started),
            event(3.0, 1, Change::Started),
            event(3.5, 0, Change::Stopped),
        ];
        let report = Report::new(s, runs.to_vec(), String::new());
        let dir = std::env::temp_dir().join(format!("ikukantai-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = write_all(&report, &dir).unwrap();
        let svg = std::fs::read_to_string(dir.join("timeline-ours.svg"));
        let strip = std::fs::read_to_string(dir.join("timeline-knative.svg"));
        let png = std::fs::metadata(dir.join("timeline-knative.png")).map(|m| m.len());
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            files.contains(&"timeline-ours.png".to_owned())
                && files.contains(&"timeline-knative.svg".to_owned())
        );
        let svg = svg.unwrap();
        for text in ["origin a", "origin b", "crowd", "t, ours: p50", "instances per node (row height = 1)"] {
            assert!(svg.contains(text), "no {text:?} in the SVG");
        }
        // The move: a purple vertical line from a's row (0) to b's (1), and a triangle in each
        // origin's panel; the set without events draws the strip empty.
        let purple = "#963CAA";
        assert!(svg.matches(purple).count() >= 4, "{} purple marks", svg.matches(purple).count());
        let strip = strip.unwrap();
        assert!(strip.contains("instances per node") && !strip.contains(purple));
        assert!(png.unwrap() > 1000);
    }
}
