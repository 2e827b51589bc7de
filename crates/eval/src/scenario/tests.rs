use super::*;

const BASE: &str = "name: t\ntopology: {nodes: [{name: a}, {name: b}, {name: c}]}\n\
                    function: {work: [1ms, 2ms], target: 1, window: 6s}\n";

fn load(origins: &str) -> Result<Scenario, ScenarioErrors> {
    let text = format!(
        "{BASE}load: {{origins: {origins}, users: [10], rate_per_user: 2, warmup: 1s, duration: 1s, timeout: 1s}}\n"
    );
    Scenario::parse("s.yaml", &text)
}

/// A scenario with `phases` (YAML flow text) on origins a and b, warm-up 4 s.
fn phased(phases: &str, duration: &str) -> Result<Scenario, ScenarioErrors> {
    let text = format!(
        "{BASE}load:\n  origins: [a, {{node: b, scale: 2}}]\n  users: [10]\n  rate_per_user: 1\n  \
         warmup: 4s\n{duration}  timeout: 1s\n  phases: {phases}\n"
    );
    Scenario::parse("s.yaml", &text)
}

/// The (path, rule) of every problem.
fn problems(r: Result<Scenario, ScenarioErrors>) -> Vec<(String, String)> {
    let e = r.expect_err("invalid");
    assert!(e.0.iter().all(|x| x.file == "s.yaml"));
    e.0.into_iter().map(|x| (x.path, x.message)).collect()
}

fn rates(s: &Scenario, users: u32, t: f64) -> Vec<(usize, usize, f64)> {
    s.streams(users).iter().map(|x| (x.function, x.origin, x.curve.at(t))).collect()
}

#[test]
fn an_origin_may_carry_a_multiple_of_the_levels_users() {
    let s = load("[a, {node: b, scale: 2.5}]").unwrap();
    assert_eq!(rates(&s, 10, 0.0), [(0, 0, 20.0), (0, 1, 50.0)]);
    assert_eq!(rates(&s, 10, 1e6), [(0, 0, 20.0), (0, 1, 50.0)], "constant without phases");
    assert_eq!(s.load.origins[1].to_string(), "b ×2.5");
    assert_eq!(s.functions().len(), 1);
    assert_eq!(s.functions()[0].service(), DEFAULT_FUNCTION);
}

#[test]
fn a_bad_origin_is_named_by_its_path() {
    let p = problems(load("[a, {node: d, scale: 1}]"));
    assert_eq!(p, [("load.origins[1]".to_owned(), "unknown node \"d\"".to_owned())]);
    let p = problems(load("[a, {node: b, scale: -1}]"));
    assert_eq!(p[0].0, "load.origins[1].scale");
    let p = problems(load("[a, b, a]"));
    assert_eq!(
        p[0],
        ("load.origins[2]".into(), "\"a\" is already load.origins[0]; give it once, with a scale".into())
    );
}

#[test]
fn phases_make_the_rate_a_function_of_time() {
    // Warm-up 4 s at the first phase's start (idle), idle 6 s, a 3× burst for 5 s, a ramp from 1 to
    // 0 over 10 s, and a crowd at a (5×) while b ramps down from 2 to 0.
    let s = phased(
        "[{name: idle, duration: 6s, scale: 0}, {duration: 5s, scale: 3}, \
          {duration: 10s, scale: 1, ramp_to: 0}, \
          {name: crowd, duration: 4s, origins: {a: 5, b: {scale: 2, ramp_to: 0}}}]",
        "",
    )
    .unwrap();
    assert_eq!(s.load.duration.0, Duration::from_secs(25), "the phases' sum");
    // a's usual rate is 10/s, b's 20/s. Boundaries (since the level began): 4, 10, 15, 25, 29.
    assert_eq!(rates(&s, 10, 0.0), [(0, 0, 0.0), (0, 1, 0.0)]);
    assert_eq!(rates(&s, 10, 9.999), [(0, 0, 0.0), (0, 1, 0.0)]);
    assert_eq!(rates(&s, 10, 10.0), [(0, 0, 30.0), (0, 1, 60.0)], "the burst from its first instant");
    assert_eq!(rates(&s, 10, 15.0), [(0, 0, 10.0), (0, 1, 20.0)]);
    assert_eq!(rates(&s, 10, 20.0), [(0, 0, 5.0), (0, 1, 10.0)], "half way down the ramp");
    assert_eq!(rates(&s, 10, 25.0), [(0, 0, 50.0), (0, 1, 40.0)]);
    assert_eq!(rates(&s, 10, 27.0), [(0, 0, 50.0), (0, 1, 20.0)]);
    let labels = s.phase_spans();
    assert_eq!(labels[0], ("idle".to_owned(), 0.0, 6.0));
    assert_eq!(labels[1], ("phase 2".to_owned(), 6.0, 11.0));
    assert_eq!(labels[3], ("crowd".to_owned(), 21.0, 25.0));
    // The warm-up runs at the first phase's starting load.
    let s = phased("[{duration: 2s, scale: 1, ramp_to: 3}]", "  duration: 2s\n").unwrap();
    assert_eq!(rates(&s, 10, 1.0), [(0, 0, 10.0), (0, 1, 20.0)]);
    assert_eq!(rates(&s, 10, 5.0), [(0, 0, 20.0), (0, 1, 40.0)]);
}

#[test]
fn bad_phases_are_all_named_by_field_and_rule() {
    let p = problems(phased(
        "[{duration: 0s}, {duration: 1s, scale: -1, ramp_to: -3}, {duration: 1s, origins: {c: 2, a: {ramp_to: -2}}}]",
        "  duration: 3s\n",
    ));
    let want = [
        ("load.phases[0].duration", "must be more than 0"),
        ("load.phases[1].scale", "must be a number ≥ 0 (a multiple of the origin's load), not -1"),
        ("load.phases[1].ramp_to", "must be a number ≥ 0 (a multiple of the origin's load), not -3"),
        (
            "load.phases[2].origins.a.ramp_to",
            "must be a number ≥ 0 (a multiple of the origin's load), not -2",
        ),
        ("load.phases[2].origins.c", "\"c\" is not an origin of this load (a, b)"),
        ("load.duration", "is 3s but load.phases last 2s; leave it out or make them agree"),
    ];
    for (path, rule) in want {
        assert!(p.contains(&(path.to_owned(), rule.to_owned())), "missing {path}: {rule} in {p:?}");
    }
    assert_eq!(p.len(), want.len(), "{p:?}");
    assert_eq!(
        problems(phased("[]", "")),
        [("load.phases".into(), "needs at least one phase (or leave `phases` out)".into())]
    );
    let p = problems(phased("[{duration: 1s, origins: {a: [1]}}]", ""));
    assert_eq!(p[0].0, "load.phases[0].origins.a");
    assert!(
        p[0].1.starts_with("expected a number (a multiple of the origin's load) or {scale, ramp_to}"),
        "{p:?}"
    );
    let p = problems(phased("[{duration: 1s, scael: 2}]", ""));
    assert!(p[0].0.starts_with("load.phases[0]") && p[0].1.contains("unknown field `scael`"), "{p:?}");
}

const TWO: &str = "name: t\ntopology: {nodes: [{name: a}, {name: b}]}\n\
                   load: {origins: [a, b], users: [10], rate_per_user: 2, warmup: 1s, duration: 6s, timeout: 1s}\n";

#[test]
fn several_functions_each_with_its_settings_and_load() {
    let text = format!(
        "{TWO}functions:\n\
         - {{name: slow, work: [20ms, 30ms], containerConcurrency: 1, target: 1, window: 6s}}\n\
         - name: quick\n  work: [2ms, 3ms]\n  containerConcurrency: 4\n  target: 4\n  window: 8s\n  \
           annotations: {{ikukantai.dev/queue: fifo}}\n  \
           load: {{origins: [b], rate_per_user: 5, phases: [{{duration: 2s, scale: 0}}, {{duration: 4s}}]}}\n"
    );
    let s = Scenario::parse("s.yaml", &text).unwrap();
    let names: Vec<&str> = s.functions().iter().map(FunctionSpec::service).collect();
    assert_eq!(names, ["slow", "quick"]);
    // slow at a and b, 20/s throughout; quick only at b, idle until 3 s (warm-up 1 s + 2 s), then 50/s.
    assert_eq!(rates(&s, 10, 0.5), [(0, 0, 20.0), (0, 1, 20.0), (1, 1, 0.0)]);
    assert_eq!(rates(&s, 10, 3.0), [(0, 0, 20.0), (0, 1, 20.0), (1, 1, 50.0)]);
    assert_eq!(s.all_origins(), [("a".to_owned(), 0), ("b".to_owned(), 1)]);
    assert_eq!(s.phase_spans().len(), 2, "the first function with phases, without load.phases");
    let manifest =
        crate::run::manifest(&s.functions()[1], &PolicySet::named("knative").unwrap(), Path::new("x"));
    assert!(
        manifest.contains("name: \"quick\"") && manifest.contains("\"ikukantai.dev/queue\": \"fifo\""),
        "{manifest}"
    );
}

use std::path::Path;

#[test]
fn bad_functions_are_all_named_by_field_and_rule() {
    let text = format!(
        "{TWO}functions:\n\
         - {{work: [2ms, 1ms], target: 1, window: 6s}}\n\
         - {{name: Big_Name, work: [1ms, 1ms], target: 1, window: 6s}}\n\
         - {{name: x, work: [1ms, 1ms], containerConcurrency: 5000, target: 1, window: 1s, \
             annotations: {{ikukantai.dev/balancer: nope, autoscaling.knative.dev/target: '2'}}}}\n\
         - {{name: x, work: [1ms, 1ms], target: 1, window: 6s, load: {{origins: [c], rate_per_user: 0, \
             phases: [{{duration: 2s}}]}}}}\n"
    );
    let p = problems(Scenario::parse("s.yaml", &text));
    let has = |path: &str, start: &str| p.iter().any(|(a, b)| a == path && b.starts_with(start));
    for (path, start) in [
        ("functions[0].name", "required: each of several functions is a Service of its own"),
        ("functions[0].work", "min is larger than max"),
        ("functions[1].name", ""),
        ("functions[2].containerConcurrency", "5000 out of range"),
        ("functions[2].window", "\"1s\" out of range"),
        ("functions[2].annotations[\"ikukantai.dev/balancer\"]", "unknown balancer \"nope\""),
        ("functions[2].annotations[\"autoscaling.knative.dev/target\"]", "set by `target`, not here"),
        ("functions[3].name", "\"x\" is used by functions[2]"),
        ("functions[3].load.origins[0]", "unknown node \"c\""),
        ("functions[3].load.rate_per_user", "must be a number > 0"),
        ("functions[3].load.phases", "last 2s but the measured time is 6s"),
    ] {
        assert!(has(path, start), "missing {path}: {start}… in {p:#?}");
    }
}

#[test]
fn a_scenario_has_one_function_or_several_not_both_nor_none() {
    let f = "{work: [1ms, 1ms], target: 1, window: 6s}";
    let both =
        format!("{TWO}function: {f}\nfunctions: [{{name: a, work: [1ms, 1ms], target: 1, window: 6s}}]\n");
    assert_eq!(
        problems(Scenario::parse("s.yaml", &both)),
        [("functions".into(), "give either `function` (one) or `functions` (several), not both".into())]
    );
    assert_eq!(
        problems(Scenario::parse("s.yaml", TWO)),
        [("function".into(), "missing: a scenario needs `function` or `functions`".into())]
    );
}

#[test]
fn a_scenario_round_trips_through_yaml() {
    let s = phased(
        "[{name: idle, duration: 6s, scale: 0}, {duration: 4s, origins: {a: {scale: 1, ramp_to: 5}}}]",
        "",
    )
    .unwrap();
    let back = Scenario::parse("s.yaml", &serde_saphyr::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
}

/// A scenario of one function on `nodes`, with `load` and `extra` (YAML lines) as given.
fn custom(nodes: &str, load: &str, extra: &str) -> Result<Scenario, ScenarioErrors> {
    let text = format!(
        "name: t\ntopology: {{nodes: {nodes}}}\nfunction: {{work: [1ms, 2ms], target: 1, window: 6s}}\n\
         load: {load}\n{extra}"
    );
    Scenario::parse("s.yaml", &text)
}

const LOAD: &str = "{origins: [a], users: [10], rate_per_user: 2, warmup: 1s, duration: 1s, timeout: 1s}";

#[test]
fn all_is_no_name_for_a_node_or_function_and_a_policy_set_is_named_once() {
    let p = problems(custom("[{name: all}, {name: a}]", LOAD, ""));
    assert_eq!(p[0].0, "topology.nodes[0].name");
    assert!(p[0].1.contains("reserved"), "{p:?}");
    let text = format!(
        "name: t\ntopology: {{nodes: [{{name: a}}]}}\nload: {LOAD}\nfunctions:\n  \
         - {{name: all, work: [1ms, 2ms], target: 1, window: 6s}}\n"
    );
    assert_eq!(problems(Scenario::parse("s.yaml", &text))[0].0, "functions[0].name");
    let p = problems(custom("[{name: a}]", LOAD, "policies: []\n"));
    assert_eq!(p[0].0, "policies");
    let p = problems(custom("[{name: a}]", LOAD, "policies: [ours, knative, ours]\n"));
    assert_eq!(p, [("policies[2]".to_owned(), "\"ours\" is already policies[0]".to_owned())]);
}

#[test]
fn times_volumes_and_capacities_beyond_any_run_are_refused_by_field() {
    // 18 446 744 076 s is 2^64 ns and a little more: once, it wrapped to ~2 s of virtual time.
    let long =
        "{origins: [a], users: [1], rate_per_user: 1, warmup: 192h, duration: 18446744076s, timeout: 1s}";
    let p = problems(custom("[{name: a}]", long, ""));
    let paths: Vec<&str> = p.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(paths, ["load.warmup", "load.duration"], "{p:?}");
    assert!(p[0].1.contains("at most 168h"), "{p:?}");
    // 4 294 967 295 users at 0.05 a second over 2 s: 4.3e8 requests in the level.
    let many =
        "{origins: [a], users: [1, 4294967295], rate_per_user: 0.05, warmup: 1s, duration: 1s, timeout: 1s}";
    let p = problems(custom("[{name: a}]", many, ""));
    assert_eq!(p[0].0, "load");
    assert!(p[0].1.contains("2 levels and 3 policy sets"), "{p:?}");
    // Each level within bounds, the run not: 4e7 requests a level, two levels, three sets.
    let sets =
        "{origins: [a], users: [1000, 1000], rate_per_user: 1000, warmup: 1s, duration: 39s, timeout: 1s}";
    assert_eq!(problems(custom("[{name: a}]", sets, ""))[0].0, "load");
    custom("[{name: a}]", sets, "policies: [ours]\n").expect("8e7 requests");
    let levels = format!(
        "{{origins: [a], users: [{}1], rate_per_user: 1, warmup: 1s, duration: 1s, timeout: 1s}}",
        "1, ".repeat(1000)
    );
    assert_eq!(problems(custom("[{name: a}]", &levels, ""))[0].0, "load.users");
    let p = problems(custom("[{name: a, capacity: 4294967295}]", LOAD, ""));
    assert_eq!(p[0].0, "topology.nodes[0].capacity");
    let p = problems(custom("[{name: a, capacity: 0}, {name: b, capacity: 0}]", LOAD, ""));
    assert_eq!(p[0].0, "topology.nodes");
    custom("[{name: a, capacity: 0}, {name: b, capacity: 1}]", LOAD, "").expect("one node can run it");
    // At the bounds, accepted.
    let edge = "{origins: [a], users: [1000], rate_per_user: 1000, warmup: 1s, duration: 99s, timeout: 168h}";
    custom("[{name: a, capacity: 10000}]", edge, "policies: [ours]\n")
        .expect("1e8 requests, a 7-day timeout, 10 000 instances");
}

#[test]
fn a_missing_part_is_named_and_all_of_them_at_once() {
    let p = problems(Scenario::parse(
        "s.yaml",
        "description: x\nfunction: {work: [1ms, 2ms], target: 1, window: 6s}\n",
    ));
    let paths: Vec<&str> = p.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(paths, ["name", "topology", "load"], "{p:?}");
}
