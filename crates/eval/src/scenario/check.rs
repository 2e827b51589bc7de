//! The rules a parsed scenario must keep, each problem as (field path, rule); all of them are
//! reported at once. The functions' Services are checked by the API's own rules, on the very
//! manifests `bench` applies and `sim` reads.

use std::path::Path;
use std::time::Duration;

use ikukantai_api::duration::format_duration;

use super::{FunctionSpec, Origin, Phase, PolicySet, Scenario};

type Problems = Vec<(String, String)>;

/// The name of the report's rows over every origin or function.
const ALL: &str = "all";

/// The longest span of time a scenario may give (warm-up, duration, timeout, a phase, work).
const MAX_SPAN: Duration = Duration::from_secs(7 * 24 * 3600);

/// The most requests a run may send (every level, every policy set).
const MAX_REQUESTS: f64 = 1e8;

/// The most load levels a scenario may have: with times of at most [`MAX_SPAN`] each, a set's
/// virtual time stays far within the simulator's 64-bit nanoseconds.
const MAX_LEVELS: usize = 1000;

/// The most instances a node may hold.
const MAX_CAPACITY: u32 = 10_000;

/// Every problem with `s`; fills `load.duration` from the phases when it was left out.
pub(super) fn check(s: &mut Scenario) -> Problems {
    let mut p = Problems::new();
    if let Err(errors) = s.topology.validate() {
        p.extend(errors.into_iter().map(|e| (format!("topology.{}", e.path), e.message)));
    }
    check_names(s, &mut p);
    check_room(s, &mut p);
    check_policies(&s.policies, &mut p);
    check_origins(s, "load.origins", &s.load.origins, &mut p);
    check_levels(s, &mut p);
    if let Some(phases) = &s.load.phases {
        let total = check_phases("load.phases", phases, &s.load.origins, &mut p);
        if s.load.duration.0.is_zero() {
            s.load.duration.0 = total;
        } else if s.load.duration.0 != total {
            p.push((
                "load.duration".into(),
                format!(
                    "is {} but load.phases last {}; leave it out or make them agree",
                    s.load.duration,
                    format_duration(total)
                ),
            ));
        }
    } else if s.load.duration.0.is_zero() {
        // Phases of a function's own then set the measured time; the others must agree.
        let own = s.functions().iter().find_map(|f| f.load.as_ref().and_then(|l| l.phases.as_ref()));
        match own.map(|phases| phases.iter().map(|ph| ph.duration.0).sum::<Duration>()) {
            Some(total) if !total.is_zero() => s.load.duration.0 = total,
            _ => p.push(("load.duration".into(), "must be more than 0 (or give `phases`)".into())),
        }
    }
    match (&s.function, s.functions.is_empty()) {
        (Some(_), false) => p.push((
            "functions".into(),
            "give either `function` (one) or `functions` (several), not both".into(),
        )),
        (None, true) => {
            p.push(("function".into(), "missing: a scenario needs `function` or `functions`".into()))
        }
        (Some(f), true) => check_function(s, "function", f, &mut p),
        (None, false) => {
            for (i, f) in s.functions.iter().enumerate() {
                let path = format!("functions[{i}]");
                match &f.name {
                    None => p.push((
                        format!("{path}.name"),
                        "required: each of several functions is a Service of its own".into(),
                    )),
                    Some(name) => {
                        if let Some(j) = s.functions[..i].iter().position(|g| g.name == f.name) {
                            p.push((format!("{path}.name"), format!("{name:?} is used by functions[{j}]")));
                        }
                    }
                }
                check_function(s, &path, f, &mut p);
            }
        }
    }
    check_times(s, &mut p);
    if p.is_empty() {
        check_volume(s, &mut p);
    }
    p
}

/// The report names the rows over every origin and every function `all`.
fn check_names(s: &Scenario, p: &mut Problems) {
    for (i, node) in s.topology.nodes.iter().enumerate() {
        if node.name == ALL {
            p.push((format!("topology.nodes[{i}].name"), reserved(ALL)));
        }
    }
    for (i, f) in s.functions().iter().enumerate() {
        if f.name.as_deref() == Some(ALL) {
            p.push((format!("{}.name", function_path(s, i)), reserved(ALL)));
        }
    }
}

/// Room for an instance somewhere, and no node of more than any run could start.
fn check_room(s: &Scenario, p: &mut Problems) {
    for (i, node) in s.topology.nodes.iter().enumerate() {
        if node.capacity > MAX_CAPACITY {
            p.push((
                format!("topology.nodes[{i}].capacity"),
                format!("is {}; a node holds at most {MAX_CAPACITY} instances", node.capacity),
            ));
        }
    }
    if !s.topology.nodes.is_empty() && s.topology.nodes.iter().all(|n| n.capacity == 0) {
        p.push(("topology.nodes".into(), "every node has capacity 0: no instance could run".into()));
    }
}

/// Where function `i` is in the file: the lone `function`, or `functions[i]`.
fn function_path(s: &Scenario, i: usize) -> String {
    if s.functions.is_empty() { "function".to_owned() } else { format!("functions[{i}]") }
}

/// The rule a reserved name breaks.
fn reserved(name: &str) -> String {
    format!("{name:?} is reserved: the report's rows over every origin and every function are named so")
}

fn check_policies(policies: &[String], p: &mut Problems) {
    if policies.is_empty() {
        p.push(("policies".into(), "needs at least one policy set (or leave it out for all three)".into()));
    }
    for (i, name) in policies.iter().enumerate() {
        if PolicySet::named(name).is_none() {
            p.push((
                format!("policies[{i}]"),
                format!("unknown policy set {name:?}; use knative, ikukantai or ours"),
            ));
        } else if let Some(j) = policies[..i].iter().position(|x| x == name) {
            p.push((format!("policies[{i}]"), format!("{name:?} is already policies[{j}]")));
        }
    }
}

/// Every span of time a scenario gives, within [`MAX_SPAN`]: virtual time counts nanoseconds in
/// 64 bits, and a level of years is a mistake, not a benchmark.
fn check_times(s: &Scenario, p: &mut Problems) {
    let mut spans = vec![
        ("load.warmup".to_owned(), s.load.warmup.0),
        ("load.duration".to_owned(), s.load.duration.0),
        ("load.timeout".to_owned(), s.load.timeout.0),
    ];
    for (i, f) in s.functions().iter().enumerate() {
        let path = function_path(s, i);
        spans.push((format!("{path}.work"), f.work[1].0));
        let phases = f.load.as_ref().and_then(|l| l.phases.as_deref()).unwrap_or_default();
        for (k, phase) in phases.iter().enumerate() {
            spans.push((format!("{path}.load.phases[{k}].duration"), phase.duration.0));
        }
    }
    for (k, phase) in s.load.phases.as_deref().unwrap_or_default().iter().enumerate() {
        spans.push((format!("load.phases[{k}].duration"), phase.duration.0));
    }
    for (path, span) in spans {
        if span > MAX_SPAN {
            p.push((
                path,
                format!("is {}; at most {} (7 days)", format_duration(span), format_duration(MAX_SPAN)),
            ));
        }
    }
}

/// The requests a run may send at most, over every level and policy set: each is kept until the
/// report (~60 bytes each in the simulator), and a rate no machine can send is a mistake.
fn check_volume(s: &Scenario, p: &mut Problems) {
    let level = (s.load.warmup.0 + s.load.duration.0).as_secs_f64();
    let per_level =
        |users: u32| -> f64 { s.streams(users).iter().map(|st| st.curve.expected(0.0, level)).sum() };
    let requests = s.load.users.iter().map(|&u| per_level(u)).sum::<f64>() * s.policies.len() as f64;
    if requests.is_nan() || requests > MAX_REQUESTS {
        p.push((
            "load".into(),
            format!(
                "the run sends about {requests:.3e} requests over its {} levels and {} policy sets; at most {MAX_REQUESTS:.0e} (fewer users, a lower rate, shorter or fewer levels)",
                s.load.users.len(),
                s.policies.len()
            ),
        ));
    }
}

fn check_levels(s: &Scenario, p: &mut Problems) {
    if s.load.users.is_empty() {
        p.push(("load.users".into(), "needs at least one level".into()));
    }
    if s.load.users.len() > MAX_LEVELS {
        p.push(("load.users".into(), format!("has {} levels; at most {MAX_LEVELS}", s.load.users.len())));
    }
    check_rate("load.rate_per_user", s.load.rate_per_user, p);
    if s.load.timeout.0.is_zero() {
        p.push(("load.timeout".into(), "must be more than 0".into()));
    }
}

fn check_rate(path: &str, rate: f64, p: &mut Problems) {
    if !(rate.is_finite() && rate > 0.0) {
        p.push((path.into(), format!("must be a number > 0 (requests per second per user), not {rate}")));
    }
}

fn check_origins(s: &Scenario, path: &str, origins: &[Origin], p: &mut Problems) {
    if origins.is_empty() {
        p.push((path.into(), "needs at least one origin node".into()));
    }
    for (i, o) in origins.iter().enumerate() {
        if s.topology.index_of(o.node()).is_none() {
            p.push((format!("{path}[{i}]"), format!("unknown node {:?}", o.node())));
        } else if let Some(j) = origins[..i].iter().position(|x| x.node() == o.node()) {
            p.push((
                format!("{path}[{i}]"),
                format!("{:?} is already {path}[{j}]; give it once, with a scale", o.node()),
            ));
        }
        if !(o.scale().is_finite() && o.scale() >= 0.0) {
            p.push((format!("{path}[{i}].scale"), "must be a number ≥ 0".into()));
        }
    }
}

/// Checks phases against the origins they may name; returns how long they last.
fn check_phases(path: &str, phases: &[Phase], origins: &[Origin], p: &mut Problems) -> Duration {
    if phases.is_empty() {
        p.push((path.into(), "needs at least one phase (or leave `phases` out)".into()));
    }
    let factor = |at: String, x: f64, p: &mut Problems| {
        if !(x.is_finite() && x >= 0.0) {
            p.push((at, format!("must be a number ≥ 0 (a multiple of the origin's load), not {x}")));
        }
    };
    for (i, phase) in phases.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if phase.duration.0.is_zero() {
            p.push((format!("{at}.duration"), "must be more than 0".into()));
        }
        factor(format!("{at}.scale"), phase.scale, p);
        if let Some(to) = phase.ramp_to {
            factor(format!("{at}.ramp_to"), to, p);
        }
        for (node, f) in &phase.origins {
            if !origins.iter().any(|o| o.node() == node) {
                let known: Vec<&str> = origins.iter().map(Origin::node).collect();
                p.push((
                    format!("{at}.origins.{node}"),
                    format!("{node:?} is not an origin of this load ({})", known.join(", ")),
                ));
            }
            factor(format!("{at}.origins.{node}.scale"), f.scale, p);
            if let Some(to) = f.ramp_to {
                factor(format!("{at}.origins.{node}.ramp_to"), to, p);
            }
        }
    }
    phases.iter().map(|ph| ph.duration.0).sum()
}

fn check_function(s: &Scenario, path: &str, f: &FunctionSpec, p: &mut Problems) {
    if f.work[0].0 > f.work[1].0 {
        p.push((format!("{path}.work"), "min is larger than max".into()));
    }
    for (key, field) in [("target", "target"), ("window", "window")] {
        let annotation = format!("autoscaling.knative.dev/{key}");
        if f.annotations.contains_key(&annotation) {
            p.push((format!("{path}.annotations[{annotation:?}]"), format!("set by `{field}`, not here")));
        }
    }
    if let Some(load) = &f.load {
        if let Some(origins) = &load.origins {
            check_origins(s, &format!("{path}.load.origins"), origins, p);
        }
        if let Some(rate) = load.rate_per_user {
            check_rate(&format!("{path}.load.rate_per_user"), rate, p);
        }
        if let Some(phases) = &load.phases {
            let origins = load.origins.as_deref().unwrap_or(&s.load.origins);
            let at = format!("{path}.load.phases");
            let total = check_phases(&at, phases, origins, p);
            if !phases.is_empty() && total != s.load.duration.0 && !s.load.duration.0.is_zero() {
                p.push((
                    at,
                    format!(
                        "last {} but the measured time is {}; every function's phases span it",
                        format_duration(total),
                        s.load.duration
                    ),
                ));
            }
        }
    }
    match ikukantai_api::validate::dns_label(f.service()) {
        Err(e) => p.push((format!("{path}.name"), e)),
        Ok(()) => check_service(path, f, p),
    }
}

/// The function's Service by the API's rules, each problem told at the scenario field it
/// comes from.
fn check_service(path: &str, f: &FunctionSpec, p: &mut Problems) {
    let set = PolicySet::named("ours").expect("a named set");
    let text = crate::run::manifest(f, &set, Path::new("ikukantai"));
    let Err(diagnostics) =
        ikukantai_api::parse::load(&[("scenario".into(), text)], &crate::run::fleet_config())
    else {
        return;
    };
    const ANNOTATIONS: &str = "spec.template.metadata.annotations";
    for d in diagnostics.0 {
        let (field, message) = (d.error.path, d.error.message);
        let own = |key: &str| f.annotations.contains_key(&format!("autoscaling.knative.dev/{key}"));
        let at = if field == format!("{ANNOTATIONS}[\"autoscaling.knative.dev/window\"]") && !own("window") {
            format!("{path}.window")
        } else if field == format!("{ANNOTATIONS}[\"autoscaling.knative.dev/target\"]") && !own("target") {
            format!("{path}.target")
        } else if let Some(rest) = field.strip_prefix(ANNOTATIONS) {
            format!("{path}.annotations{rest}")
        } else if field == "spec.template.spec.containerConcurrency" {
            format!("{path}.containerConcurrency")
        } else {
            p.push((path.into(), format!("its Service's {field}: {message}")));
            continue;
        };
        p.push((at, message));
    }
}
