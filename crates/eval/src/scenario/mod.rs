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
//!
//! The load may change over a level's measured time, phase after phase (the duration is then
//! their sum; the warm-up runs at the first phase's starting load):
//!
//! ```yaml
//!   phases:
//!     - {name: idle, duration: 20s, scale: 0}           # nobody
//!     - {name: burst, duration: 10s, scale: 3}          # 3 × every origin's load
//!     - {name: evening, duration: 30s, scale: 1, ramp_to: 0.2}
//!     - {name: crowd at edge-a, duration: 10s, origins: {edge-a: 6}}   # the others at ×1
//! ```
//!
//! And a scenario may run several functions side by side (`functions:` instead of `function:`),
//! each a Service of its own with its own settings, annotations and, if it differs, load:
//!
//! ```yaml
//! functions:
//!   - {name: thumbs, work: [20ms, 30ms], containerConcurrency: 1, target: 1, window: 6s}
//!   - name: auth
//!     work: [2ms, 3ms]
//!     containerConcurrency: 4
//!     target: 4
//!     window: 6s
//!     annotations: {ikukantai.dev/queue: fifo}
//!     load: {origins: [edge-a], rate_per_user: 4}     # or its own `phases`
//! ```

mod check;
mod load;
mod rate;

use std::collections::BTreeMap;
use std::time::Duration;

use ikukantai_api::duration::GoDuration;
use ikukantai_api::topology::Topology;
pub use load::{Factor, FunctionLoad, LoadSpec, Origin, Phase, Stream};
pub use rate::RateCurve;
use serde::{Deserialize, Serialize};

/// The Service name of a scenario's `function:` (one function, unnamed).
pub const DEFAULT_FUNCTION: &str = "fn";

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

/// A function under test: a Service of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FunctionSpec {
    /// The Service's name (required in `functions:`; `fn` for a lone `function:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Processing time range `[min, max]`.
    pub work: [GoDuration; 2],
    /// containerConcurrency.
    #[serde(default)]
    pub container_concurrency: u32,
    /// Autoscaling target per instance.
    pub target: f64,
    /// Autoscaling window.
    pub window: GoDuration,
    /// More revision annotations (a queue discipline, a balancer of its own, …); one the policy
    /// set also sets is the function's, so it runs the same under every set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Its own load, where it differs from the scenario's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<FunctionLoad>,
}

impl FunctionSpec {
    /// The Service's name.
    pub fn service(&self) -> &str {
        self.name.as_deref().unwrap_or(DEFAULT_FUNCTION)
    }

    /// The processing time range in milliseconds.
    pub fn work_ms(&self) -> (f64, f64) {
        (self.work[0].0.as_secs_f64() * 1e3, self.work[1].0.as_secs_f64() * 1e3)
    }
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
    /// The function, when there is one (else `functions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionSpec>,
    /// The functions, when there are several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<FunctionSpec>,
    /// The load.
    pub load: LoadSpec,
    /// Policy sets, in order (default: knative, ikukantai, ours).
    #[serde(default = "default_policies")]
    pub policies: Vec<String>,
}

fn default_policies() -> Vec<String> {
    vec!["knative".into(), "ikukantai".into(), "ours".into()]
}

/// One problem with a scenario.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}: {path}: {message}")]
pub struct ScenarioError {
    /// File.
    pub file: String,
    /// Field path.
    pub path: String,
    /// Rule.
    pub message: String,
}

/// Every problem found with a scenario (at least one).
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioErrors(pub Vec<ScenarioError>);

impl std::fmt::Display for ScenarioErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

impl std::error::Error for ScenarioErrors {}

impl Scenario {
    /// Parses and checks a scenario file; every problem found is reported, each naming the
    /// file, the field and the rule (a file that is not even the right shape, its first).
    pub fn parse(file: &str, text: &str) -> Result<Self, ScenarioErrors> {
        let err = |path: String, message: String| {
            ScenarioErrors(vec![ScenarioError { file: file.into(), path, message }])
        };
        let value: serde_json::Value =
            serde_saphyr::from_str(text).map_err(|e| err(String::new(), format!("invalid YAML: {e}")))?;
        // Every missing part at once, each by its name (serde names only the first, at ".").
        let missing: Vec<ScenarioError> = ["name", "topology", "load"]
            .into_iter()
            .filter(|key| value.is_object() && value.get(key).is_none())
            .map(|key| ScenarioError {
                file: file.into(),
                path: key.into(),
                message: "missing: every scenario has `name`, `topology` and `load`".into(),
            })
            .collect();
        if !missing.is_empty() {
            return Err(ScenarioErrors(missing));
        }
        let mut s: Self = serde_path_to_error::deserialize(value)
            .map_err(|e| err(e.path().to_string(), e.inner().to_string()))?;
        let problems = check::check(&mut s);
        if problems.is_empty() {
            return Ok(s);
        }
        Err(ScenarioErrors(
            problems
                .into_iter()
                .map(|(path, message)| ScenarioError { file: file.into(), path, message })
                .collect(),
        ))
    }

    /// The functions, in order: the lone `function`, or `functions`.
    pub fn functions(&self) -> &[FunctionSpec] {
        if self.functions.is_empty() { self.function.as_slice() } else { &self.functions }
    }

    /// Where function `f`'s users are.
    pub fn origins_of(&self, f: usize) -> &[Origin] {
        self.functions()[f].load.as_ref().and_then(|l| l.origins.as_deref()).unwrap_or(&self.load.origins)
    }

    /// Function `f`'s phases, if its load changes over time.
    pub fn phases_of(&self, f: usize) -> Option<&[Phase]> {
        self.functions()[f].load.as_ref().and_then(|l| l.phases.as_deref()).or(self.load.phases.as_deref())
    }

    /// Function `f`'s requests per second per user.
    pub fn rate_per_user_of(&self, f: usize) -> f64 {
        self.functions()[f].load.as_ref().and_then(|l| l.rate_per_user).unwrap_or(self.load.rate_per_user)
    }

    /// Every (function, origin) that sends requests at a level of `users`, with its rate over
    /// the level's time: what the emulator's generators and the simulator's both follow.
    pub fn streams(&self, users: u32) -> Vec<Stream> {
        let warmup = self.load.warmup.0.as_secs_f64();
        let mut streams = Vec::new();
        for f in 0..self.functions().len() {
            for o in self.origins_of(f) {
                let Some(origin) = self.topology.index_of(o.node()) else { continue };
                let base = f64::from(users) * self.rate_per_user_of(f) * o.scale();
                let curve = load::curve(base, warmup, self.phases_of(f), o.node());
                if !curve.is_zero() {
                    streams.push(Stream { function: f, origin, curve });
                }
            }
        }
        streams
    }

    /// Every origin of any function, in order of first appearance: (node name, node index).
    pub fn all_origins(&self) -> Vec<(String, usize)> {
        let mut all: Vec<(String, usize)> = Vec::new();
        for f in 0..self.functions().len() {
            for o in self.origins_of(f) {
                if let Some(i) = self.topology.index_of(o.node())
                    && !all.iter().any(|(_, j)| *j == i)
                {
                    all.push((o.node().to_owned(), i));
                }
            }
        }
        all
    }

    /// The measured time's phases as (label, from, to) in seconds after measuring began: the
    /// scenario's `load.phases`, else the first function's own; empty without phases.
    pub fn phase_spans(&self) -> Vec<(String, f64, f64)> {
        let phases = self
            .load
            .phases
            .as_deref()
            .or_else(|| (0..self.functions().len()).find_map(|f| self.phases_of(f)))
            .unwrap_or_default();
        let mut t = 0.0;
        phases
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let from = t;
                t += p.duration.0.as_secs_f64();
                (p.label(i), from, t)
            })
            .collect()
    }

    /// Total time one policy set takes.
    pub fn duration_per_set(&self) -> Duration {
        (self.load.warmup.0 + self.load.duration.0) * self.load.users.len() as u32
    }
}

#[cfg(test)]
mod tests;
