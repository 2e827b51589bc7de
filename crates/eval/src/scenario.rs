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
//!                             # ({node: node1, scale: 3} puts 3 × `users` there)
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

/// Where users are: a node, with as many users as the level says (`edge-a`), or a multiple of
/// them (`{node: cloud, scale: 3}`), so origins can carry different loads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Origin {
    /// A node with the level's users.
    Node(String),
    /// A node with `scale ×` the level's users.
    Scaled {
        /// The node.
        node: String,
        /// Multiplies the level's users (≥ 0).
        scale: f64,
    },
}

impl Origin {
    /// The node's name.
    pub fn node(&self) -> &str {
        match self {
            Self::Node(n) | Self::Scaled { node: n, .. } => n,
        }
    }

    /// The multiple of the level's users here.
    pub fn scale(&self) -> f64 {
        match self {
            Self::Node(_) => 1.0,
            Self::Scaled { scale, .. } => *scale,
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Node(n) => f.write_str(n),
            Self::Scaled { node, scale } => write!(f, "{node} ×{scale}"),
        }
    }
}

/// The load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSpec {
    /// Origin nodes.
    pub origins: Vec<Origin>,
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
            if s.topology.index_of(o.node()).is_none() {
                return Err(err(format!("load.origins[{i}]"), format!("unknown node {:?}", o.node())));
            }
            if !(o.scale().is_finite() && o.scale() >= 0.0) {
                return Err(err(format!("load.origins[{i}].scale"), "must be a number ≥ 0".into()));
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

    /// The origins' node indices and request rates (per second) at a level of `users`.
    pub fn origin_rates(&self, users: u32) -> Vec<(usize, f64)> {
        self.load
            .origins
            .iter()
            .filter_map(|o| {
                let rate = f64::from(users) * self.load.rate_per_user * o.scale();
                Some((self.topology.index_of(o.node())?, rate))
            })
            .collect()
    }

    /// Total time one policy set takes.
    pub fn duration_per_set(&self) -> Duration {
        (self.load.warmup.0 + self.load.duration.0) * self.load.users.len() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "name: t\ntopology: {nodes: [{name: a}, {name: b}]}\n\
                        function: {work: [1ms, 2ms], target: 1, window: 6s}\n";

    fn load(origins: &str) -> Result<Scenario, ScenarioError> {
        let text = format!(
            "{BASE}load: {{origins: {origins}, users: [10], rate_per_user: 2, warmup: 1s, duration: 1s, timeout: 1s}}\n"
        );
        Scenario::parse("s.yaml", &text)
    }

    #[test]
    fn an_origin_may_carry_a_multiple_of_the_levels_users() {
        let s = load("[a, {node: b, scale: 2.5}]").unwrap();
        assert_eq!(s.origin_rates(10), [(0, 20.0), (1, 50.0)]);
        assert_eq!(s.load.origins[1].to_string(), "b ×2.5");
    }

    #[test]
    fn a_bad_origin_is_named_by_its_path() {
        let e = load("[a, {node: c, scale: 1}]").unwrap_err();
        assert_eq!((e.path.as_str(), e.message.as_str()), ("load.origins[1]", "unknown node \"c\""));
        let e = load("[a, {node: b, scale: -1}]").unwrap_err();
        assert_eq!(e.path, "load.origins[1].scale");
    }
}
