//! Evaluation scenarios (`bench/*.yaml`).
//!
//! ```yaml
//! name: paper
//! topology: { nodes: [...], links: [...] }   # the fleet, as in a topology file
//! function:
//!   work: [3ms, 5ms]          # processing time per request, uniform in this range
//!   containerConcurrency: 1
//!   target: 1                 # autoscaling.knative.dev/target
//!   window: 6s                # autoscaling.knative.dev/window
//! load:
//!   origins: [node1, node3]   # where users are; each level puts `users` on every origin
//!   users: [5, 20, 35, 50]
//!   rate_per_user: 2          # requests per second per user (Poisson arrivals)
//!   warmup: 5s
//!   duration: 10s
//!   timeout: 2s
//! policies: [knative, ikukantai, ours]
//! ```

use std::time::Duration;

use ikukantai_api::duration::GoDuration;
use ikukantai_api::topology::Topology;
use serde::{Deserialize, Serialize};

/// A policy set: a balancer and a placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySet {
    /// Name in reports.
    pub name: String,
    /// Balancer.
    pub balancer: String,
    /// Placement.
    pub placement: String,
}

impl PolicySet {
    /// The three named sets: `knative` (even + spread), `ikukantai` (faast + yukari), `ours`
    /// (the defaults).
    pub fn named(name: &str) -> Option<Self> {
        let (balancer, placement) = match name {
            "knative" => ("even", "spread"),
            "ikukantai" => ("faast", "yukari"),
            "ours" => {
                (ikukantai_policy::registry::DEFAULT_BALANCER, ikukantai_policy::registry::DEFAULT_PLACEMENT)
            }
            _ => return None,
        };
        Some(Self { name: name.into(), balancer: balancer.into(), placement: placement.into() })
    }
}

/// The function under test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FunctionSpec {
    /// Processing time range `[min, max]`.
    pub work: [GoDuration; 2],
    /// containerConcurrency.
    #[serde(default)]
    pub container_concurrency: u32,
    /// Autoscaling target per instance.
    pub target: f64,
    /// Autoscaling window.
    pub window: GoDuration,
}

/// The load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSpec {
    /// Origin nodes.
    pub origins: Vec<String>,
    /// Users per origin, one entry per load level.
    pub users: Vec<u32>,
    /// Requests per second per user.
    pub rate_per_user: f64,
    /// Warm-up before measuring, per level.
    pub warmup: GoDuration,
    /// Measuring time per level.
    pub duration: GoDuration,
    /// Request timeout (answers later count as not completed).
    pub timeout: GoDuration,
}

/// A scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name.
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// The fleet.
    pub topology: Topology,
    /// The function.
    pub function: FunctionSpec,
    /// The load.
    pub load: LoadSpec,
    /// Policy sets, in order (default: knative, ikukantai, ours).
    #[serde(default = "default_policies")]
    pub policies: Vec<String>,
}

fn default_policies() -> Vec<String> {
    vec!["knative".into(), "ikukantai".into(), "ours".into()]
}

/// A scenario that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {path}: {message}")]
pub struct ScenarioError {
    /// File.
    pub file: String,
    /// Field path.
    pub path: String,
    /// Rule.
    pub message: String,
}

impl Scenario {
    /// Parses and checks a scenario file.
    pub fn parse(file: &str, text: &str) -> Result<Self, ScenarioError> {
        let err = |path: String, message: String| ScenarioError { file: file.into(), path, message };
        let value: serde_json::Value =
            serde_saphyr::from_str(text).map_err(|e| err(String::new(), format!("invalid YAML: {e}")))?;
        let s: Self = serde_path_to_error::deserialize(value)
            .map_err(|e| err(e.path().to_string(), e.inner().to_string()))?;
        s.topology.validate().map_err(|e| err(format!("topology.{}", e[0].path), e[0].message.clone()))?;
        for (i, o) in s.load.origins.iter().enumerate() {
            if s.topology.index_of(o).is_none() {
                return Err(err(format!("load.origins[{i}]"), format!("unknown node {o:?}")));
            }
        }
        for (i, p) in s.policies.iter().enumerate() {
            if PolicySet::named(p).is_none() {
                return Err(err(
                    format!("policies[{i}]"),
                    format!("unknown policy set {p:?}; use knative, ikukantai or ours"),
                ));
            }
        }
        if s.load.users.is_empty() || s.load.rate_per_user <= 0.0 || s.load.duration.0.is_zero() {
            return Err(err(
                "load".into(),
                "needs at least one level, a positive rate and a duration".into(),
            ));
        }
        if s.function.work[0].0 > s.function.work[1].0 {
            return Err(err("function.work".into(), "min is larger than max".into()));
        }
        Ok(s)
    }

    /// Total time one policy set takes.
    pub fn duration_per_set(&self) -> Duration {
        (self.load.warmup.0 + self.load.duration.0) * self.load.users.len() as u32
    }
}
