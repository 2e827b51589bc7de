//! Revision annotations: Knative's `autoscaling.knative.dev/*` (with Knative's ranges) and
//! ikukantai's `ikukantai.dev/*` policy choices.

use std::collections::BTreeMap;
use std::time::Duration;

use ikukantai_policy::autoscaler::{ScalingMetric, ScalingOverrides};
use ikukantai_policy::queue::PriorityRule;
use ikukantai_policy::registry;

use crate::config::FleetConfig;
use crate::duration::{format_duration, parse_duration};
use crate::error::{FieldError, did_you_mean};

/// Prefix of Knative's autoscaling annotations.
pub const AUTOSCALING_PREFIX: &str = "autoscaling.knative.dev/";
/// Prefix of ikukantai's annotations.
pub const IKUKANTAI_PREFIX: &str = "ikukantai.dev/";

/// `ikukantai.dev/balancer`: the load balancer for the revision.
pub const BALANCER_ANNOTATION: &str = "ikukantai.dev/balancer";
/// `ikukantai.dev/placement`: the placement policy for the revision.
pub const PLACEMENT_ANNOTATION: &str = "ikukantai.dev/placement";
/// `ikukantai.dev/queue`: the queue discipline for the revision.
pub const QUEUE_ANNOTATION: &str = "ikukantai.dev/queue";
/// `ikukantai.dev/queue-priority-rules`: rules of the `priority` discipline.
pub const PRIORITY_RULES_ANNOTATION: &str = "ikukantai.dev/queue-priority-rules";

/// `serving.knative.dev/progress-deadline`: how long the revision may take to become ready
/// before it is failed (Knative's; the fleet's `progress-deadline` when unset).
pub const PROGRESS_DEADLINE_ANNOTATION: &str = "serving.knative.dev/progress-deadline";

/// A progress deadline (the annotation's or the `progress-deadline` key's value): a positive
/// duration in whole seconds, as a Deployment's `progressDeadlineSeconds` takes it.
pub fn progress_deadline(v: &str) -> Result<Duration, String> {
    match parse_duration(v)? {
        d if d.is_zero() => Err(format!("{v:?} out of range: must be greater than 0s")),
        d if d.subsec_nanos() != 0 => Err(format!("{v:?} must be specified with at most second precision")),
        d => Ok(d),
    }
}

/// Knative's autoscaling annotation names (after the prefix), with their legacy camelCase aliases.
const AUTOSCALING_KEYS: &[(&str, Option<&str>)] = &[
    ("class", None),
    ("metric", None),
    ("target", None),
    ("target-utilization-percentage", Some("targetUtilizationPercentage")),
    ("window", None),
    ("panic-window-percentage", Some("panicWindowPercentage")),
    ("panic-threshold-percentage", Some("panicThresholdPercentage")),
    ("min-scale", Some("minScale")),
    ("max-scale", Some("maxScale")),
    ("initial-scale", Some("initialScale")),
    ("activation-scale", None),
    ("scale-down-delay", None),
    ("scale-to-zero-pod-retention-period", None),
    ("target-burst-capacity", Some("targetBurstCapacity")),
    ("metric-aggregation-algorithm", None),
];

const IKUKANTAI_KEYS: &[&str] = &["balancer", "placement", "queue", "queue-priority-rules"];

/// What a revision's annotations select.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RevisionSettings {
    /// Autoscaling overrides.
    pub scaling: ScalingOverrides,
    /// Balancer name, `None` = fleet default.
    pub balancer: Option<String>,
    /// Placement name, `None` = fleet default.
    pub placement: Option<String>,
    /// Queue discipline name, `None` = fleet default.
    pub queue: Option<String>,
    /// Rules for the `priority` discipline.
    pub priority_rules: Vec<PriorityRule>,
    /// `serving.knative.dev/progress-deadline`, `None` = fleet default.
    pub progress_deadline: Option<Duration>,
}

/// Names of the registered balancers.
pub fn balancer_names() -> Vec<&'static str> {
    registry::BALANCERS.iter().map(|e| e.name).collect()
}

/// Names of the registered placements.
pub fn placement_names() -> Vec<&'static str> {
    registry::PLACEMENTS.iter().map(|e| e.name).collect()
}

/// Names of the registered queue disciplines.
pub fn queue_names() -> Vec<&'static str> {
    registry::QUEUES.iter().map(|(n, _)| *n).collect()
}

/// Checks that `name` is a registered policy of `kind`, with a suggestion when it is not.
pub fn check_policy_name(kind: &str, name: &str, known: &[&'static str]) -> Result<(), String> {
    if known.contains(&name) {
        return Ok(());
    }
    let hint = did_you_mean(name, known.iter().copied())
        .map(|s| format!(" (did you mean {s:?}?)"))
        .unwrap_or_default();
    Err(format!("unknown {kind} {name:?}{hint}; registered: {}", known.join(", ")))
}

struct Reader<'a> {
    annotations: &'a BTreeMap<String, String>,
    base: &'a str,
    errors: Vec<FieldError>,
}

impl Reader<'_> {
    fn path(&self, key: &str) -> String {
        format!("{}[{key:?}]", self.base)
    }

    fn fail(&mut self, key: &str, message: impl Into<String>) {
        let path = self.path(key);
        self.errors.push(FieldError::new(path, message));
    }

    /// The value of an autoscaling annotation by its name or legacy alias; both set is an error.
    fn get(&mut self, name: &str) -> Option<(String, String)> {
        let (_, alias) = AUTOSCALING_KEYS.iter().find(|(n, _)| *n == name)?;
        let key = format!("{AUTOSCALING_PREFIX}{name}");
        let primary = self.annotations.get(&key).map(|v| (key.clone(), v.clone()));
        let legacy = alias.and_then(|a| {
            let k = format!("{AUTOSCALING_PREFIX}{a}");
            self.annotations.get(&k).map(|v| (k, v.clone()))
        });
        match (primary, legacy) {
            (Some(p), Some(l)) => {
                self.fail(&l.0, format!("set twice: remove this legacy key or {:?}", p.0));
                Some(p)
            }
            (p, l) => p.or(l),
        }
    }

    fn float(&mut self, name: &str, ok: impl Fn(f64) -> bool, rule: &str) -> Option<f64> {
        let (key, v) = self.get(name)?;
        match v.trim().parse::<f64>() {
            Ok(x) if x.is_finite() && ok(x) => Some(x),
            Ok(_) => {
                self.fail(&key, format!("{v:?} out of range: {rule}"));
                None
            }
            Err(_) => {
                self.fail(&key, format!("{v:?} is not a number"));
                None
            }
        }
    }

    fn uint(&mut self, name: &str) -> Option<(String, u32)> {
        let (key, v) = self.get(name)?;
        match v.trim().parse::<u32>() {
            Ok(x) if x <= i32::MAX as u32 => Some((key, x)),
            _ => {
                self.fail(&key, format!("{v:?} is not a whole number ≥ 0"));
                None
            }
        }
    }

    fn duration(
        &mut self,
        name: &str,
        min: Duration,
        max: Duration,
        whole_seconds: bool,
    ) -> Option<Duration> {
        let (key, v) = self.get(name)?;
        match parse_duration(&v) {
            Err(e) => {
                self.fail(&key, e);
                None
            }
            Ok(d) if d < min || d > max => {
                let rule = format!("must be between {} and {}", format_duration(min), format_duration(max));
                self.fail(&key, format!("{v:?} out of range: {rule}"));
                None
            }
            Ok(d) if whole_seconds && d.subsec_nanos() != 0 => {
                self.fail(&key, format!("{v:?} must be specified with at most second precision"));
                None
            }
            Ok(d) => Some(d),
        }
    }
}

const HOUR: Duration = Duration::from_secs(3600);

/// Reads and checks a revision template's annotations. `base` is the annotations' field path
/// (errors say e.g. `spec.template.metadata.annotations["autoscaling.knative.dev/window"]`).
pub fn revision_settings(
    annotations: &BTreeMap<String, String>,
    fleet: &FleetConfig,
    base: &str,
) -> Result<RevisionSettings, Vec<FieldError>> {
    let mut r = Reader { annotations, base, errors: Vec::new() };
    let mut s = RevisionSettings::default();

    for key in annotations.keys() {
        if let Some(name) = key.strip_prefix(AUTOSCALING_PREFIX) {
            let known = AUTOSCALING_KEYS.iter().any(|(n, a)| *n == name || *a == Some(name));
            if !known {
                let names = AUTOSCALING_KEYS.iter().map(|(n, _)| *n);
                let hint =
                    did_you_mean(name, names).map(|n| format!(" (did you mean {AUTOSCALING_PREFIX}{n}?)"));
                r.fail(key, format!("unknown autoscaling annotation{}", hint.unwrap_or_default()));
            }
        } else if let Some(name) = key.strip_prefix(IKUKANTAI_PREFIX)
            && !IKUKANTAI_KEYS.contains(&name)
        {
            let hint = did_you_mean(name, IKUKANTAI_KEYS.iter().copied())
                .map(|n| format!(" (did you mean {IKUKANTAI_PREFIX}{n}?)"));
            r.fail(key, format!("unknown ikukantai annotation{}", hint.unwrap_or_default()));
        }
    }

    if let Some((key, class)) = r.get("class")
        && class != "kpa.autoscaling.knative.dev"
    {
        r.fail(
            &key,
            format!("{class:?}: ikukantai autoscales with the KPA only (kpa.autoscaling.knative.dev)"),
        );
    }
    if let Some((key, metric)) = r.get("metric") {
        s.scaling.metric = match metric.as_str() {
            "concurrency" => Some(ScalingMetric::Concurrency),
            "rps" => Some(ScalingMetric::Rps),
            "cpu" | "memory" => {
                r.fail(
                    &key,
                    format!(
                        "{metric:?} needs the HPA class, which ikukantai does not run; use concurrency or rps"
                    ),
                );
                None
            }
            _ => {
                r.fail(&key, format!("{metric:?} is not a KPA metric; use concurrency or rps"));
                None
            }
        };
    }
    if let Some((key, algorithm)) = r.get("metric-aggregation-algorithm") {
        match algorithm.as_str() {
            "linear" => {}
            "weighted-exponential" | "weightedExponential" => {
                r.fail(&key, "weighted-exponential aggregation is not implemented by ikukantai; use linear");
            }
            _ => r.fail(&key, format!("{algorithm:?} is not an aggregation algorithm; use linear")),
        }
    }
    s.scaling.target = r.float("target", |x| x >= 0.01, "at least 0.01");
    s.scaling.target_utilization_percentage =
        r.float("target-utilization-percentage", |x| (1.0..=100.0).contains(&x), "in [1, 100]");
    s.scaling.window = r.duration("window", Duration::from_secs(6), HOUR, true);
    s.scaling.panic_window_percentage =
        r.float("panic-window-percentage", |x| (1.0..=100.0).contains(&x), "in [1, 100]");
    s.scaling.panic_threshold_percentage =
        r.float("panic-threshold-percentage", |x| (110.0..=1000.0).contains(&x), "in [110, 1000]");
    s.scaling.target_burst_capacity =
        r.float("target-burst-capacity", |x| x >= 0.0 || x == -1.0, "≥ 0, or -1 for always");
    s.scaling.scale_down_delay = r.duration("scale-down-delay", Duration::ZERO, HOUR, true);
    s.scaling.scale_to_zero_pod_retention_period =
        r.duration("scale-to-zero-pod-retention-period", Duration::ZERO, HOUR, false);

    let min = r.uint("min-scale");
    let max = r.uint("max-scale");
    let min_value = min.as_ref().map_or(0, |m| m.1);
    if let Some((key, max_value)) = &max {
        if *max_value != 0 && *max_value < min_value {
            r.fail(key, format!("max-scale={max_value} is less than min-scale={min_value}"));
        }
        let limit = fleet.autoscaler.max_scale_limit;
        if limit > 0 && (*max_value == 0 || *max_value > limit) {
            r.fail(
                key,
                format!("max-scale={max_value} must be between 1 and the fleet's max-scale-limit={limit}"),
            );
        }
    }
    if let Some((key, activation)) = r.uint("activation-scale") {
        let max_value = max.as_ref().map_or(0, |m| m.1);
        if activation < 2 {
            r.fail(&key, format!("activation-scale={activation} must be greater than 1"));
        } else if min_value > activation {
            r.fail(&key, format!("min-scale={min_value} is greater than activation-scale={activation}"));
        } else if max_value != 0 && max_value < activation {
            r.fail(&key, format!("max-scale={max_value} is less than activation-scale={activation}"));
        } else {
            s.scaling.activation_scale = Some(activation);
        }
    }
    if let Some((key, initial)) = r.uint("initial-scale") {
        if initial == 0 && !fleet.autoscaler.allow_zero_initial_scale {
            r.fail(&key, "initial-scale=0 is not allowed by the fleet (allow-zero-initial-scale is false)");
        } else {
            s.scaling.initial_scale = Some(initial);
        }
    }
    s.scaling.min_scale = min.map(|m| m.1);
    s.scaling.max_scale = max.map(|m| m.1);

    for (annotation, kind, known, slot) in [
        (BALANCER_ANNOTATION, "balancer", balancer_names(), &mut s.balancer),
        (PLACEMENT_ANNOTATION, "placement", placement_names(), &mut s.placement),
        (QUEUE_ANNOTATION, "queue", queue_names(), &mut s.queue),
    ] {
        if let Some(v) = annotations.get(annotation) {
            match check_policy_name(kind, v, &known) {
                Ok(()) => *slot = Some(v.clone()),
                Err(message) => r.fail(annotation, message),
            }
        }
    }
    if let Some(v) = annotations.get(PRIORITY_RULES_ANNOTATION) {
        match PriorityRule::parse_list(v) {
            Ok(rules) => s.priority_rules = rules,
            Err(e) => r.fail(PRIORITY_RULES_ANNOTATION, e.to_string()),
        }
        let queue = s.queue.as_deref().unwrap_or(&fleet.policies.queue);
        if queue != "priority" {
            r.fail(PRIORITY_RULES_ANNOTATION, format!("only used by the priority queue, but the queue is {queue:?}; set {QUEUE_ANNOTATION}: priority"));
        }
    }
    if let Some(v) = annotations.get(PROGRESS_DEADLINE_ANNOTATION) {
        match progress_deadline(v) {
            Ok(d) => s.progress_deadline = Some(d),
            Err(e) => r.fail(PROGRESS_DEADLINE_ANNOTATION, e),
        }
    }
    if r.errors.is_empty() { Ok(s) } else { Err(r.errors) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_deadline_is_a_positive_whole_number_of_seconds() {
        let ok = revision_settings(&anns(&[(PROGRESS_DEADLINE_ANNOTATION, "90s")]), &FleetConfig::new(), "a");
        assert_eq!(ok.unwrap().progress_deadline, Some(Duration::from_secs(90)));
        for bad in ["0s", "1.5s", "soon"] {
            let e = errors(&[(PROGRESS_DEADLINE_ANNOTATION, bad)]);
            assert!(e[0].contains("serving.knative.dev/progress-deadline"), "{e:?}");
        }
    }

    fn anns(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn errors(pairs: &[(&str, &str)]) -> Vec<String> {
        revision_settings(&anns(pairs), &FleetConfig::new(), "a")
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn reads_the_original_demo_annotations() {
        let s = revision_settings(
            &anns(&[
                ("autoscaling.knative.dev/window", "12s"),
                ("autoscaling.knative.dev/scale-to-zero-pod-retention-period", "0s"),
                ("autoscaling.knative.dev/target-burst-capacity", "-1"),
                ("autoscaling.knative.dev/target", "10"),
                ("ikukantai.dev/balancer", "faast"),
                ("ikukantai.dev/queue", "priority"),
                ("ikukantai.dev/queue-priority-rules", "path:/urgent:10"),
                ("unrelated.example.com/x", "kept"),
            ]),
            &FleetConfig::new(),
            "a",
        )
        .unwrap();
        assert_eq!(s.scaling.window, Some(Duration::from_secs(12)));
        assert_eq!(s.scaling.target, Some(10.0));
        assert_eq!(s.scaling.target_burst_capacity, Some(-1.0));
        assert_eq!(s.scaling.scale_to_zero_pod_retention_period, Some(Duration::ZERO));
        assert_eq!(s.balancer.as_deref(), Some("faast"));
        assert_eq!(s.priority_rules.len(), 1);
    }

    #[test]
    fn legacy_aliases_work_and_duplicates_are_errors() {
        let s =
            revision_settings(&anns(&[("autoscaling.knative.dev/minScale", "2")]), &FleetConfig::new(), "a")
                .unwrap();
        assert_eq!(s.scaling.min_scale, Some(2));
        let e =
            errors(&[("autoscaling.knative.dev/minScale", "2"), ("autoscaling.knative.dev/min-scale", "1")]);
        assert_eq!(
            e,
            [
                "a[\"autoscaling.knative.dev/minScale\"]: set twice: remove this legacy key or \"autoscaling.knative.dev/min-scale\""
            ]
        );
    }

    #[test]
    fn knative_ranges_are_enforced() {
        let cases: &[(&str, &str, &str)] = &[
            ("window", "5s", "out of range: must be between 6s and 1h0m0s"),
            ("window", "2h", "out of range"),
            ("window", "6500ms", "at most second precision"),
            ("window", "12", "missing a unit"),
            ("panic-window-percentage", "0.5", "in [1, 100]"),
            ("panic-threshold-percentage", "100", "in [110, 1000]"),
            ("target", "0.001", "at least 0.01"),
            ("target", "ten", "not a number"),
            ("target-utilization-percentage", "101", "in [1, 100]"),
            ("target-burst-capacity", "-2", "-1 for always"),
            ("min-scale", "-1", "whole number"),
            ("scale-down-delay", "1.5s", "second precision"),
            ("scale-to-zero-pod-retention-period", "61m", "out of range"),
            ("activation-scale", "1", "must be greater than 1"),
            ("initial-scale", "0", "allow-zero-initial-scale"),
            ("class", "hpa.autoscaling.knative.dev", "KPA only"),
            ("metric", "cpu", "HPA class"),
            ("metric", "latency", "not a KPA metric"),
            ("metric-aggregation-algorithm", "weighted-exponential", "not implemented"),
        ];
        for (name, value, rule) in cases {
            let key = format!("{AUTOSCALING_PREFIX}{name}");
            let e = errors(&[(key.as_str(), value)]);
            assert_eq!(e.len(), 1, "{name}={value}: {e:?}");
            assert!(e[0].starts_with(&format!("a[{key:?}]: ")), "{e:?}");
            assert!(e[0].contains(rule), "{name}={value}: {e:?}");
        }
    }

    #[test]
    fn scale_bounds_are_checked_together() {
        let e =
            errors(&[("autoscaling.knative.dev/min-scale", "3"), ("autoscaling.knative.dev/max-scale", "2")]);
        assert!(e[0].contains("max-scale=2 is less than min-scale=3"), "{e:?}");
        let e = errors(&[
            ("autoscaling.knative.dev/max-scale", "2"),
            ("autoscaling.knative.dev/activation-scale", "3"),
        ]);
        assert!(e[0].contains("max-scale=2 is less than activation-scale=3"), "{e:?}");
        let mut fleet = FleetConfig::new();
        fleet.autoscaler.max_scale_limit = 10;
        let e =
            revision_settings(&anns(&[("autoscaling.knative.dev/max-scale", "0")]), &fleet, "a").unwrap_err();
        assert!(e[0].message.contains("max-scale-limit=10"), "{e:?}");
    }

    #[test]
    fn unknown_annotations_in_our_prefixes_get_suggestions() {
        let e = errors(&[("autoscaling.knative.dev/windw", "12s"), ("ikukantai.dev/balancr", "ert")]);
        assert_eq!(
            e,
            [
                "a[\"autoscaling.knative.dev/windw\"]: unknown autoscaling annotation (did you mean autoscaling.knative.dev/window?)",
                "a[\"ikukantai.dev/balancr\"]: unknown ikukantai annotation (did you mean ikukantai.dev/balancer?)",
            ]
        );
        let e = errors(&[("ikukantai.dev/balancer", "fasst")]);
        assert_eq!(
            e,
            [
                "a[\"ikukantai.dev/balancer\"]: unknown balancer \"fasst\" (did you mean \"faast\"?); registered: ert, even, faast"
            ]
        );
        let e = errors(&[("ikukantai.dev/queue-priority-rules", "path:/x:1")]);
        assert!(e[0].contains("set ikukantai.dev/queue: priority"), "{e:?}");
    }
}
