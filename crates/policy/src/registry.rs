//! Policies by name: what the `ikukantai.dev/balancer`, `/placement` and `/queue` annotations and
//! the fleet defaults refer to.
//!
//! Adding a policy: implement the trait, then add one entry to the table below.

use std::time::Duration;

use crate::balance::{Balancer, ErtBalancer, ErtParams, EvenBalancer, FaastBalancer};
use crate::placement::{NearestParams, NearestPlacement, Placement, SpreadPlacement, YukariPlacement};
use crate::queue::{Edf, Fifo, Priority, PriorityRule, QueueDiscipline};

/// The fleet's default balancer.
pub const DEFAULT_BALANCER: &str = "ert";
/// The fleet's default placement.
pub const DEFAULT_PLACEMENT: &str = "nearest";
/// The fleet's default queue discipline.
pub const DEFAULT_QUEUE: &str = "fifo";

/// Parameters policies are built with.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyParams {
    /// Seed of every random choice.
    pub seed: u64,
    /// `faast`: how often weights are recomputed.
    pub faast_period: Duration,
    /// `ert` tuning.
    pub ert: ErtParams,
    /// `nearest` tuning.
    pub nearest: NearestParams,
    /// `priority` rules.
    pub priority_rules: Vec<PriorityRule>,
}

impl Default for PolicyParams {
    fn default() -> Self {
        Self {
            seed: 0x1c0_ffee,
            faast_period: Duration::from_secs(2),
            ert: ErtParams::default(),
            nearest: NearestParams::default(),
            priority_rules: Vec::new(),
        }
    }
}

/// A registered policy.
#[derive(Debug, Clone, Copy)]
pub struct Entry<B> {
    /// The name users write.
    pub name: &'static str,
    /// One line on what it does.
    pub summary: &'static str,
    /// Builds an instance.
    pub build: B,
}

type BuildBalancer = fn(&PolicyParams) -> Box<dyn Balancer>;
type BuildPlacement = fn(&PolicyParams) -> Box<dyn Placement>;

/// Registered balancers.
pub const BALANCERS: &[Entry<BuildBalancer>] = &[
    Entry {
        name: "ert",
        summary: "expected response time: RTT + queueing + processing, local while local is fastest",
        build: |p| Box::new(ErtBalancer::new(p.ert)),
    },
    Entry {
        name: "even",
        summary: "Knative's activator: power of two choices, first available, or round-robin",
        build: |p| Box::new(EvenBalancer::new(p.seed)),
    },
    Entry {
        name: "faast",
        summary: "the FaaSt paper: node drawn by inverse response-time weights, round-robin inside",
        build: |p| Box::new(FaastBalancer::new(p.faast_period, p.seed)),
    },
];

/// Registered placements.
pub const PLACEMENTS: &[Entry<BuildPlacement>] = &[
    Entry {
        name: "nearest",
        summary: "demand-weighted and latency-aware, within capacity, with hysteresis",
        build: |p| Box::new(NearestPlacement::new(p.nearest)),
    },
    Entry {
        name: "spread",
        summary: "Kubernetes' default: even over the nodes with room",
        build: |_| Box::new(SpreadPlacement),
    },
    Entry {
        name: "yukari",
        summary: "the original ikukantai scheduler (bugs fixed): each unit to the origin's closest node",
        build: |_| Box::new(YukariPlacement::new()),
    },
];

/// Registered queue disciplines (name, summary).
pub const QUEUES: &[(&str, &str)] = &[
    ("fifo", "first in, first out"),
    ("priority", "by header, path and method rules; FIFO within a priority"),
    ("edf", "earliest deadline first"),
];

/// A name that is not registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {name:?}; registered: {}", known.join(", "))]
pub struct UnknownPolicy {
    /// balancer, placement or queue.
    pub kind: &'static str,
    /// The name asked for.
    pub name: String,
    /// The registered names.
    pub known: Vec<&'static str>,
}

fn find<B: Copy>(kind: &'static str, table: &[Entry<B>], name: &str) -> Result<B, UnknownPolicy> {
    table.iter().find(|e| e.name == name).map(|e| e.build).ok_or_else(|| UnknownPolicy {
        kind,
        name: name.to_owned(),
        known: table.iter().map(|e| e.name).collect(),
    })
}

/// Builds the balancer called `name`.
pub fn balancer(name: &str, params: &PolicyParams) -> Result<Box<dyn Balancer>, UnknownPolicy> {
    find("balancer", BALANCERS, name).map(|build| build(params))
}

/// Builds the placement called `name`.
pub fn placement(name: &str, params: &PolicyParams) -> Result<Box<dyn Placement>, UnknownPolicy> {
    find("placement", PLACEMENTS, name).map(|build| build(params))
}

/// Builds the queue discipline called `name`.
pub fn queue<T: Send + 'static>(
    name: &str,
    params: &PolicyParams,
) -> Result<Box<dyn QueueDiscipline<T>>, UnknownPolicy> {
    Ok(match name {
        "fifo" => Box::new(Fifo::default()),
        "priority" => Box::new(Priority::new(params.priority_rules.clone())),
        "edf" => Box::new(Edf::default()),
        _ => {
            return Err(UnknownPolicy {
                kind: "queue",
                name: name.to_owned(),
                known: QUEUES.iter().map(|(n, _)| *n).collect(),
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_name_builds_and_reports_its_name() {
        let p = PolicyParams::default();
        for e in BALANCERS {
            assert_eq!(balancer(e.name, &p).unwrap().name(), e.name);
        }
        for e in PLACEMENTS {
            assert_eq!(placement(e.name, &p).unwrap().name(), e.name);
        }
        for (name, _) in QUEUES {
            assert_eq!(queue::<()>(name, &p).unwrap().name(), *name);
        }
        assert!(BALANCERS.iter().any(|e| e.name == DEFAULT_BALANCER));
        assert!(PLACEMENTS.iter().any(|e| e.name == DEFAULT_PLACEMENT));
        assert!(QUEUES.iter().any(|(n, _)| *n == DEFAULT_QUEUE));
    }

    #[test]
    fn unknown_names_list_the_registered_ones() {
        let e = balancer("fastest", &PolicyParams::default()).unwrap_err();
        assert_eq!(e.to_string(), "unknown balancer \"fastest\"; registered: ert, even, faast");
        assert!(queue::<()>("lifo", &PolicyParams::default()).is_err());
    }
}
