//! Fleet-wide configuration, written as the Knative ConfigMaps users already know:
//! - `config-autoscaler` (Knative's keys and defaults) → [`AutoscalerConfig`];
//! - `config-ikukantai` (ours) → default policies and the route domain.

use std::collections::BTreeMap;
use std::time::Duration;

use ikukantai_policy::autoscaler::AutoscalerConfig;
use ikukantai_policy::registry::{DEFAULT_BALANCER, DEFAULT_PLACEMENT, DEFAULT_QUEUE};
use serde::{Deserialize, Serialize};

use crate::duration::parse_duration;
use crate::error::{FieldError, did_you_mean};
use crate::service::ObjectMeta;

/// Name of the ConfigMap holding Knative's autoscaler settings.
pub const CONFIG_AUTOSCALER: &str = "config-autoscaler";
/// Name of the ConfigMap holding ikukantai's settings.
pub const CONFIG_IKUKANTAI: &str = "config-ikukantai";

/// A Kubernetes ConfigMap (only `data` is read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMap {
    /// `v1`.
    pub api_version: String,
    /// `ConfigMap`.
    pub kind: String,
    /// Metadata; the name says which configuration it is.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Settings.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

/// Policies used when a revision's annotations do not choose one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDefaults {
    /// `default-balancer`.
    pub balancer: String,
    /// `default-placement`.
    pub placement: String,
    /// `default-queue`.
    pub queue: String,
}

impl Default for PolicyDefaults {
    fn default() -> Self {
        Self {
            balancer: DEFAULT_BALANCER.into(),
            placement: DEFAULT_PLACEMENT.into(),
            queue: DEFAULT_QUEUE.into(),
        }
    }
}

/// Everything fleet-wide.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FleetConfig {
    /// Knative's `config-autoscaler`.
    pub autoscaler: AutoscalerConfig,
    /// Default policies.
    pub policies: PolicyDefaults,
    /// Route domain: services answer at `NAME.NAMESPACE.DOMAIN` (default `example.com`).
    pub domain: String,
    /// Settings only the Kubernetes runtime reads.
    pub kubernetes: KubernetesDefaults,
}

/// `config-ikukantai` keys only the Kubernetes runtime reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesDefaults {
    /// `queue-proxy-image`: the image of the queue-proxy sidecar (this binary); unset, the
    /// controller's own image, so the one image reference (kustomize `images:`) covers both.
    pub queue_proxy_image: Option<String>,
    /// `node-capacity`: instances a node holds when its `ikukantai.dev/capacity` label is unset.
    pub node_capacity: u32,
    /// `probe-interval`: how often gateways measure the RTT to their peers.
    pub probe_interval: Duration,
    /// `progress-deadline` (Knative's, from `config-deployment`): how long a new revision may
    /// take to become ready before it is failed, unless its
    /// `serving.knative.dev/progress-deadline` annotation says otherwise.
    pub progress_deadline: Duration,
    /// The queue-proxy sidecar's resources (Knative's `queue-sidecar-*` keys).
    pub sidecar: SidecarResources,
}

/// The queue-proxy sidecar's CPU and memory, as Kubernetes quantities: a namespace's
/// LimitRange (a maximum, or a limit-to-request ratio) may refuse the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarResources {
    /// `queue-sidecar-cpu-request` (default `25m`).
    pub cpu_request: String,
    /// `queue-sidecar-cpu-limit` (default `1`: a throttled sidecar delays every request).
    pub cpu_limit: String,
    /// `queue-sidecar-memory-request` (default `16Mi`).
    pub memory_request: String,
    /// `queue-sidecar-memory-limit` (default `256Mi`).
    pub memory_limit: String,
}

impl Default for SidecarResources {
    fn default() -> Self {
        Self {
            cpu_request: "25m".into(),
            cpu_limit: "1".into(),
            memory_request: "16Mi".into(),
            memory_limit: "256Mi".into(),
        }
    }
}

/// Whether `v` is a Kubernetes quantity (`250m`, `1`, `0.5`, `128Mi`, `1G`, `1e3`).
fn is_quantity(v: &str) -> bool {
    let end = v.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(v.len());
    let (number, suffix) = v.split_at(end);
    let number_ok = !number.is_empty() && number != "." && number.matches('.').count() <= 1;
    let exponent = suffix.strip_prefix(['e', 'E']).is_some_and(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())
    });
    let suffixes = ["", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    number_ok && (suffixes.contains(&suffix) || exponent)
}

/// The domain services are reached under (`{name}.{namespace}.{domain}`) unless `config-ikukantai`
/// says otherwise: Knative's default.
pub const DEFAULT_DOMAIN: &str = "example.com";

/// How often gateways measure the RTT to their peers unless told otherwise, on both runtimes
/// (`probe-interval` in `config-ikukantai`, `ikukantai up --probe-interval`).
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(5);

impl Default for KubernetesDefaults {
    fn default() -> Self {
        Self {
            queue_proxy_image: None,
            node_capacity: 10,
            probe_interval: DEFAULT_PROBE_INTERVAL,
            progress_deadline: Duration::from_secs(600),
            sidecar: SidecarResources::default(),
        }
    }
}

impl FleetConfig {
    /// Defaults everywhere, domain `example.com`.
    pub fn new() -> Self {
        Self { domain: DEFAULT_DOMAIN.into(), ..Self::default() }
    }

    /// Applies a `config-autoscaler` or `config-ikukantai` ConfigMap. Errors name the key
    /// (`data.stable-window`). Keys starting with `_` (like Knative's `_example`) are ignored.
    pub fn apply(&mut self, cm: &ConfigMap) -> Result<(), Vec<FieldError>> {
        match cm.metadata.name() {
            CONFIG_AUTOSCALER => apply_autoscaler(&mut self.autoscaler, &cm.data),
            CONFIG_IKUKANTAI => apply_ikukantai(self, &cm.data),
            other => Err(vec![FieldError::new(
                "metadata.name",
                format!(
                    "ConfigMap {other:?} is not a configuration ikukantai reads; use {CONFIG_AUTOSCALER} or {CONFIG_IKUKANTAI}"
                ),
            )]),
        }
    }
}

/// Keys of `config-autoscaler`.
pub const AUTOSCALER_KEYS: &[&str] = &[
    "container-concurrency-target-default",
    "container-concurrency-target-percentage",
    "requests-per-second-target-default",
    "target-burst-capacity",
    "stable-window",
    "panic-window-percentage",
    "panic-threshold-percentage",
    "max-scale-up-rate",
    "max-scale-down-rate",
    "enable-scale-to-zero",
    "scale-to-zero-grace-period",
    "scale-to-zero-pod-retention-period",
    "scale-down-delay",
    "initial-scale",
    "allow-zero-initial-scale",
    "min-scale",
    "max-scale",
    "max-scale-limit",
    "activator-capacity",
    "pod-autoscaler-class",
];

/// Keys of `config-ikukantai`.
pub const IKUKANTAI_KEYS: &[&str] = &[
    "default-balancer",
    "default-placement",
    "default-queue",
    "domain",
    "queue-proxy-image",
    "node-capacity",
    "probe-interval",
    "progress-deadline",
    "queue-sidecar-cpu-request",
    "queue-sidecar-cpu-limit",
    "queue-sidecar-memory-request",
    "queue-sidecar-memory-limit",
];

struct Data<'a> {
    data: &'a BTreeMap<String, String>,
    errors: Vec<FieldError>,
}

impl Data<'_> {
    fn path(key: &str) -> String {
        format!("data.{key}")
    }

    fn fail(&mut self, key: &str, message: String) {
        self.errors.push(FieldError::new(Self::path(key), message));
    }

    fn float(&mut self, key: &str, ok: impl Fn(f64) -> bool, rule: &str) -> Option<f64> {
        let v = self.data.get(key)?;
        match v.trim().parse::<f64>() {
            Ok(x) if x.is_finite() && ok(x) => Some(x),
            Ok(_) => {
                self.fail(key, format!("{v:?} out of range: {rule}"));
                None
            }
            Err(_) => {
                self.fail(key, format!("{v:?} is not a number"));
                None
            }
        }
    }

    fn uint(&mut self, key: &str) -> Option<u32> {
        let v = self.data.get(key)?;
        match v.trim().parse::<u32>() {
            Ok(x) => Some(x),
            Err(_) => {
                self.fail(key, format!("{v:?} is not a whole number ≥ 0"));
                None
            }
        }
    }

    fn boolean(&mut self, key: &str) -> Option<bool> {
        let v = self.data.get(key)?;
        match v.trim().to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => {
                self.fail(key, format!("{v:?} is not true or false"));
                None
            }
        }
    }

    fn duration(&mut self, key: &str, min: Duration, max: Duration, whole_seconds: bool) -> Option<Duration> {
        let v = self.data.get(key)?;
        match parse_duration(v) {
            Err(e) => {
                self.fail(key, e);
                None
            }
            Ok(d) if d < min || d > max => {
                self.fail(
                    key,
                    format!(
                        "{v:?} out of range: must be between {} and {}",
                        crate::duration::format_duration(min),
                        crate::duration::format_duration(max)
                    ),
                );
                None
            }
            Ok(d) if whole_seconds && d.subsec_nanos() != 0 => {
                self.fail(key, format!("{v:?} must be specified with at most second precision"));
                None
            }
            Ok(d) => Some(d),
        }
    }

    fn unknown_keys(&mut self, known: &[&str]) {
        for key in self.data.keys().filter(|k| !k.starts_with('_') && !known.contains(&k.as_str())) {
            let hint = did_you_mean(key, known.iter().copied())
                .map(|s| format!(" (did you mean {s:?}?)"))
                .unwrap_or_default();
            self.errors.push(FieldError::new(Self::path(key), format!("unknown key{hint}")));
        }
    }

    fn finish(self) -> Result<(), Vec<FieldError>> {
        if self.errors.is_empty() { Ok(()) } else { Err(self.errors) }
    }
}

const HOUR: Duration = Duration::from_secs(3600);

fn apply_autoscaler(
    c: &mut AutoscalerConfig,
    data: &BTreeMap<String, String>,
) -> Result<(), Vec<FieldError>> {
    let mut d = Data { data, errors: Vec::new() };
    d.unknown_keys(AUTOSCALER_KEYS);
    let mut next = c.clone();
    if let Some(v) = d.float("container-concurrency-target-default", |x| x >= 0.01, "at least 0.01") {
        next.container_concurrency_target_default = v;
    }
    if let Some(v) =
        d.float("container-concurrency-target-percentage", |x| x > 0.0 && x <= 100.0, "in (0, 100]")
    {
        // Knative's legacy form: values up to 1.0 are fractions.
        next.container_concurrency_target_percentage = if v <= 1.0 { v * 100.0 } else { v };
    }
    if let Some(v) = d.float("requests-per-second-target-default", |x| x >= 0.01, "at least 0.01") {
        next.requests_per_second_target_default = v;
    }
    if let Some(v) = d.float("target-burst-capacity", |x| x >= 0.0 || x == -1.0, "≥ 0, or -1 for always") {
        next.target_burst_capacity = v;
    }
    if let Some(v) = d.duration("stable-window", Duration::from_secs(6), HOUR, true) {
        next.stable_window = v;
    }
    if let Some(v) = d.float("panic-window-percentage", |x| (1.0..=100.0).contains(&x), "in [1, 100]") {
        next.panic_window_percentage = v;
    }
    if let Some(v) =
        d.float("panic-threshold-percentage", |x| (110.0..=1000.0).contains(&x), "in [110, 1000]")
    {
        next.panic_threshold_percentage = v;
    }
    if let Some(v) = d.float("max-scale-up-rate", |x| x > 1.0, "greater than 1") {
        next.max_scale_up_rate = v;
    }
    if let Some(v) = d.float("max-scale-down-rate", |x| x > 1.0, "greater than 1") {
        next.max_scale_down_rate = v;
    }
    if let Some(v) = d.boolean("enable-scale-to-zero") {
        next.enable_scale_to_zero = v;
    }
    if let Some(v) = d.duration("scale-to-zero-grace-period", Duration::from_nanos(1), HOUR, false) {
        next.scale_to_zero_grace_period = v;
    }
    if let Some(v) = d.duration("scale-to-zero-pod-retention-period", Duration::ZERO, HOUR, false) {
        next.scale_to_zero_pod_retention_period = v;
    }
    if let Some(v) = d.duration("scale-down-delay", Duration::ZERO, HOUR, true) {
        next.scale_down_delay = v;
    }
    if let Some(v) = d.boolean("allow-zero-initial-scale") {
        next.allow_zero_initial_scale = v;
    }
    if let Some(v) = d.uint("initial-scale") {
        if v == 0 && !next.allow_zero_initial_scale {
            d.fail("initial-scale", "0 requires allow-zero-initial-scale: \"true\"".into());
        } else {
            next.initial_scale = v;
        }
    }
    if let Some(v) = d.uint("min-scale") {
        next.min_scale = v;
    }
    if let Some(v) = d.uint("max-scale") {
        next.max_scale = v;
    }
    if let Some(v) = d.uint("max-scale-limit") {
        next.max_scale_limit = v;
    }
    if next.max_scale > 0 && next.min_scale > next.max_scale {
        d.fail(
            "min-scale",
            format!("min-scale={} is greater than max-scale={}", next.min_scale, next.max_scale),
        );
    }
    if next.max_scale_limit > 0 && (next.max_scale == 0 || next.max_scale > next.max_scale_limit) {
        d.fail(
            "max-scale",
            format!(
                "max-scale={} must be between 1 and max-scale-limit={}",
                next.max_scale, next.max_scale_limit
            ),
        );
    }
    if let Some(v) = d.float("activator-capacity", |x| x >= 1.0, "at least 1") {
        next.activator_capacity = v;
    }
    if let Some(v) = data.get("pod-autoscaler-class")
        && v != "kpa.autoscaling.knative.dev"
    {
        d.fail(
            "pod-autoscaler-class",
            format!("{v:?}: ikukantai autoscales with the KPA only (kpa.autoscaling.knative.dev)"),
        );
    }
    let result = d.finish();
    if result.is_ok() {
        *c = next;
    }
    result
}

fn apply_ikukantai(c: &mut FleetConfig, data: &BTreeMap<String, String>) -> Result<(), Vec<FieldError>> {
    let mut d = Data { data, errors: Vec::new() };
    d.unknown_keys(IKUKANTAI_KEYS);
    let mut next = c.clone();
    use crate::annotations::{balancer_names, check_policy_name, placement_names, queue_names};
    let checks: [(&str, &str, Vec<&'static str>, &mut String); 3] = [
        ("default-balancer", "balancer", balancer_names(), &mut next.policies.balancer),
        ("default-placement", "placement", placement_names(), &mut next.policies.placement),
        ("default-queue", "queue", queue_names(), &mut next.policies.queue),
    ];
    for (key, kind, known, slot) in checks {
        if let Some(v) = data.get(key) {
            match check_policy_name(kind, v, &known) {
                Ok(()) => *slot = v.clone(),
                Err(message) => d.fail(key, message),
            }
        }
    }
    if let Some(v) = data.get("domain") {
        if crate::validate::dns_subdomain(v).is_ok() {
            next.domain = v.clone();
        } else {
            d.fail("domain", format!("{v:?} is not a DNS name (lowercase letters, digits, '-' and '.')"));
        }
    }
    if let Some(v) = data.get("queue-proxy-image") {
        if v.trim().is_empty() || v.contains(char::is_whitespace) {
            d.fail("queue-proxy-image", format!("{v:?} is not an image reference"));
        } else {
            next.kubernetes.queue_proxy_image = Some(v.clone());
        }
    }
    match d.uint("node-capacity") {
        Some(0) => d.fail("node-capacity", "must be at least 1".into()),
        Some(n) => next.kubernetes.node_capacity = n,
        None => {}
    }
    if let Some(v) = data.get("probe-interval") {
        match parse_duration(v) {
            Ok(x) if x >= Duration::from_millis(100) => next.kubernetes.probe_interval = x,
            Ok(_) => d.fail("probe-interval", format!("{v:?} out of range: at least 100ms")),
            Err(e) => d.fail("probe-interval", e),
        }
    }
    if let Some(v) = data.get("progress-deadline") {
        match crate::annotations::progress_deadline(v) {
            Ok(x) => next.kubernetes.progress_deadline = x,
            Err(e) => d.fail("progress-deadline", e),
        }
    }
    let sidecar = &mut next.kubernetes.sidecar;
    let resources = [
        ("queue-sidecar-cpu-request", &mut sidecar.cpu_request),
        ("queue-sidecar-cpu-limit", &mut sidecar.cpu_limit),
        ("queue-sidecar-memory-request", &mut sidecar.memory_request),
        ("queue-sidecar-memory-limit", &mut sidecar.memory_limit),
    ];
    for (key, slot) in resources {
        if let Some(v) = data.get(key) {
            if is_quantity(v.trim()) {
                *slot = v.trim().to_owned();
            } else {
                d.fail(key, format!("{v:?} is not a Kubernetes quantity (like 250m, 1, 128Mi)"));
            }
        }
    }
    let result = d.finish();
    if result.is_ok() {
        *c = next;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
            data: data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn autoscaler_keys_override_knative_defaults() {
        let mut f = FleetConfig::new();
        f.apply(&cm(
            CONFIG_AUTOSCALER,
            &[
                ("stable-window", "12s"),
                ("container-concurrency-target-percentage", "0.5"),
                ("_example", "ignored"),
            ],
        ))
        .unwrap();
        assert_eq!(f.autoscaler.stable_window, Duration::from_secs(12));
        assert_eq!(f.autoscaler.container_concurrency_target_percentage, 50.0);
        assert_eq!(f.autoscaler.max_scale_down_rate, 2.0, "untouched keys keep Knative's default");
    }

    #[test]
    fn bad_keys_name_the_key_and_rule_and_change_nothing() {
        let mut f = FleetConfig::new();
        let errors = f
            .apply(&cm(
                CONFIG_AUTOSCALER,
                &[
                    ("stable-window", "3s"),
                    ("max-scale-up-rate", "1"),
                    ("stable-windw", "60s"),
                    ("initial-scale", "0"),
                ],
            ))
            .unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(text.iter().any(|e| e.starts_with("data.stable-window: \"3s\" out of range")), "{text:?}");
        assert!(text.iter().any(|e| e.starts_with("data.max-scale-up-rate")), "{text:?}");
        assert!(
            text.contains(&"data.stable-windw: unknown key (did you mean \"stable-window\"?)".to_string())
        );
        assert!(text.iter().any(|e| e.contains("allow-zero-initial-scale")), "{text:?}");
        assert_eq!(f, FleetConfig::new(), "nothing applied");
    }

    #[test]
    fn ikukantai_keys_check_policy_names() {
        let mut f = FleetConfig::new();
        f.apply(&cm(CONFIG_IKUKANTAI, &[("default-balancer", "even"), ("domain", "fleet.local")])).unwrap();
        assert_eq!(f.policies.balancer, "even");
        assert_eq!(f.domain, "fleet.local");
        let e = f.apply(&cm(CONFIG_IKUKANTAI, &[("default-placement", "yukary")])).unwrap_err();
        assert_eq!(
            e[0].to_string(),
            "data.default-placement: unknown placement \"yukary\" (did you mean \"yukari\"?); registered: nearest, spread, yukari"
        );
        assert!(f.apply(&cm("config-other", &[])).is_err());
    }

    #[test]
    fn kubernetes_keys_are_checked_all_or_nothing() {
        let mut f = FleetConfig::new();
        f.apply(&cm(
            "config-ikukantai",
            &[
                ("queue-proxy-image", "registry.local/ikukantai:1"),
                ("node-capacity", "4"),
                ("probe-interval", "2s"),
                ("progress-deadline", "2m"),
                ("queue-sidecar-cpu-request", "250m"),
                ("queue-sidecar-memory-limit", "1Gi"),
            ],
        ))
        .unwrap();
        assert_eq!(
            (f.kubernetes.sidecar.cpu_request.as_str(), f.kubernetes.sidecar.cpu_limit.as_str()),
            ("250m", "1")
        );
        assert_eq!(f.kubernetes.sidecar.memory_limit, "1Gi");
        assert_eq!(f.kubernetes.progress_deadline, Duration::from_secs(120));
        assert_eq!(f.kubernetes.queue_proxy_image.as_deref(), Some("registry.local/ikukantai:1"));
        assert_eq!(f.kubernetes.node_capacity, 4);
        assert_eq!(f.kubernetes.probe_interval, Duration::from_secs(2));
        let before = f.clone();
        let errors = f
            .apply(&cm(
                "config-ikukantai",
                &[
                    ("node-capacity", "0"),
                    ("probe-interval", "10ms"),
                    ("domain", "x.dev"),
                    ("progress-deadline", "soon"),
                    ("queue-sidecar-cpu-limit", "1 core"),
                ],
            ))
            .unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.iter().filter(|e| e.starts_with("data.progress-deadline")).count(), 1, "{text:?}");
        assert!(text.iter().any(|e| e.starts_with("data.queue-sidecar-cpu-limit")), "{text:?}");
        assert!(text.iter().any(|e| e.starts_with("data.node-capacity")), "{text:?}");
        assert!(text.iter().any(|e| e.contains("data.probe-interval") && e.contains("100ms")), "{text:?}");
        assert_eq!(f, before, "nothing applied");
    }

    #[test]
    fn quantities_are_recognised() {
        for ok in ["25m", "1", "0.5", "128Mi", "1G", "1e3", "2Ki"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "1 core", "1.2.3", "12mi", "-1", "1e"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
