//! A scenario's load: where users are (origins), how many per level, and how their load changes
//! over a level (phases: steps and ramps, per origin if need be).

use std::collections::BTreeMap;

use ikukantai_api::duration::GoDuration;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::rate::RateCurve;

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

fn one() -> f64 {
    1.0
}

/// How much of an origin's usual load a phase puts on it: `scale` throughout, or a linear ramp
/// from `scale` to `ramp_to` over the phase. Written as a number (`6`) or `{scale: 1, ramp_to: 6}`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Factor {
    /// At the phase's start (and throughout, without a ramp).
    pub scale: f64,
    /// At the phase's end, when it ramps.
    pub ramp_to: Option<f64>,
}

impl Factor {
    /// The factor at the phase's end.
    pub fn end(&self) -> f64 {
        self.ramp_to.unwrap_or(self.scale)
    }
}

impl std::fmt::Display for Factor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ramp_to {
            None => write!(f, "×{}", self.scale),
            Some(to) => write!(f, "×{} → ×{to}", self.scale),
        }
    }
}

impl<'de> Deserialize<'de> for Factor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Ramp {
            #[serde(default = "one")]
            scale: f64,
            ramp_to: Option<f64>,
        }
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(n) => Ok(Self { scale: n.as_f64().unwrap_or(f64::NAN), ramp_to: None }),
            v @ serde_json::Value::Object(_) => {
                let r = Ramp::deserialize(v).map_err(D::Error::custom)?;
                Ok(Self { scale: r.scale, ramp_to: r.ramp_to })
            }
            other => Err(D::Error::custom(format!(
                "expected a number (a multiple of the origin's load) or {{scale, ramp_to}} (a ramp), not {other}"
            ))),
        }
    }
}

impl Serialize for Factor {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Ramp {
            scale: f64,
            ramp_to: f64,
        }
        match self.ramp_to {
            None => s.serialize_f64(self.scale),
            Some(ramp_to) => Ramp { scale: self.scale, ramp_to }.serialize(s),
        }
    }
}

/// A stretch of a level's measured time with its own load: every origin's usual load times
/// `scale` (ramping to `ramp_to` by the phase's end, if given), except the origins named in
/// `origins`, which take their own factor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// What it is, for reports and plots (`idle`, `crowd at edge-a`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// How long it lasts.
    pub duration: GoDuration,
    /// Multiplies every origin's load (at the phase's start, with a ramp).
    #[serde(default = "one")]
    pub scale: f64,
    /// Ramp linearly to this multiple by the phase's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp_to: Option<f64>,
    /// Origins with a factor of their own in this phase (by node name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub origins: BTreeMap<String, Factor>,
}

impl Phase {
    /// The factor this phase puts on `origin`'s usual load.
    pub fn factor(&self, origin: &str) -> Factor {
        self.origins.get(origin).copied().unwrap_or(Factor { scale: self.scale, ramp_to: self.ramp_to })
    }

    /// The phase's name, or its number (from 1) when it has none.
    pub fn label(&self, index: usize) -> String {
        if self.name.is_empty() { format!("phase {}", index + 1) } else { self.name.clone() }
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
    /// Warm-up before measuring, per level (at the first phase's starting load).
    pub warmup: GoDuration,
    /// Measuring time per level; with phases, their sum (may be left out).
    #[serde(default)]
    pub duration: GoDuration,
    /// Request timeout (answers later count as not completed).
    pub timeout: GoDuration,
    /// How the load changes over the measured time, one phase after another; without them it
    /// stays at the level's users throughout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases: Option<Vec<Phase>>,
}

/// A function's own load, where it differs from the scenario's `load`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionLoad {
    /// Where its users are (default: `load.origins`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origins: Option<Vec<Origin>>,
    /// Requests per second per user (default: `load.rate_per_user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_user: Option<f64>,
    /// Its phases (default: `load.phases`); they must last as long as the scenario's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases: Option<Vec<Phase>>,
}

/// One origin's requests for one function during a level: the rate over the level's time
/// (seconds since the level began, warm-up included).
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    /// The function's index (`Scenario::functions`).
    pub function: usize,
    /// The origin's node index.
    pub origin: usize,
    /// Requests per second over time.
    pub curve: RateCurve,
}

/// The rate curve of an origin whose usual rate is `base`: the warm-up at the first phase's
/// starting load, then each phase; without phases, `base` throughout.
pub(crate) fn curve(base: f64, warmup: f64, phases: Option<&[Phase]>, origin: &str) -> RateCurve {
    let Some(phases) = phases.filter(|p| !p.is_empty()) else { return RateCurve::constant(base) };
    let first = phases[0].factor(origin).scale * base;
    let warm = std::iter::once((warmup, first, first));
    RateCurve::stretches(warm.chain(phases.iter().map(|p| {
        let f = p.factor(origin);
        (p.duration.0.as_secs_f64(), f.scale * base, f.end() * base)
    })))
}
