//! ikukantai's simulator: `ikukantai sim SCENARIO.yaml --out DIR`.
//!
//! A deterministic discrete-event model of a local fleet running a scenario of `ikukantai bench`,
//! in virtual time. Every decision is made by the code the fleet runs: the KPA and placement
//! (`policy::scaler`), the balancers and queue disciplines through the registry, the gateway's
//! view of instances, its pick and its feedback (`policy::gateway`), the stats the autoscaler is
//! fed (`policy::stats`), rooms and surplus (`policy::occupancy`), and the fleet's own periods.
//! What it models instead of running — links, the proxies' costs, processing, cold starts,
//! probes — is in [`model`]. Same seed, same run.
//!
//! - [`model`]: the modelled costs and the links;
//! - `world`: the books and the gateway's part of a request; `instance`: the queue proxy;
//!   `control`: the control plane and the monitor; `load`: the load generators;
//!   `events`: virtual time; `trace`: the instances' starts, readiness and stops;
//! - [`ideal`]: the all-local yardstick the sweep judges light load against.

mod control;
mod events;
pub mod ideal;
mod instance;
mod load;
pub mod model;
pub mod sweep;
mod trace;
mod world;

use std::path::Path;

use ikukantai_api::annotations::revision_settings;
use ikukantai_api::parse::{Document, parse_str};
use ikukantai_api::revision::next_revision;
use ikukantai_eval::run::{LevelRun, PROBE_INTERVAL, SETTLE, Sample, SetRun, fleet_config, manifest};
use ikukantai_eval::scenario::{PolicySet, Scenario};
use ikukantai_policy::autoscaler::ScalingSpec;
use ikukantai_policy::registry::{self, PolicyParams};
use ikukantai_policy::scaler::RevisionScaler;
use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::events::{Event, Time, span};
use crate::load::Generator;
use crate::model::{Links, Model};
use crate::world::{Revision, World};

/// A scenario the simulator cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scenario's Service does not resolve (a policy name, an annotation).
    #[error("policy set {set}: {message}")]
    Revision {
        /// The set.
        set: String,
        /// What is wrong.
        message: String,
    },
}

/// Runs one policy set over all the scenario's levels, as `ikukantai bench` would.
pub fn run_set(s: &Scenario, set: &PolicySet, seed: u64, model: &Model) -> Result<SetRun, SimError> {
    let revisions =
        (0..s.functions().len()).map(|f| revision(s, f, set, seed)).collect::<Result<Vec<_>, _>>()?;
    let rtt = s.topology.rtt_matrix(PROBE_INTERVAL * 3);
    let mut world = World::new(
        model.clone(),
        Links::new(&s.topology),
        s.topology.capacities(),
        rtt,
        revisions,
        seed,
        span(s.load.timeout.0),
        SmallRng::seed_from_u64(seed ^ 0x5133_0001),
    );
    world.start_control(span(PROBE_INTERVAL));
    run_until(&mut world, span(SETTLE));
    let mut levels = Vec::new();
    let began = world.events.now();
    for (li, &users) in s.load.users.iter().enumerate() {
        let start = world.events.now();
        let measure_from = start + span(s.load.warmup.0);
        let end = measure_from + span(s.load.duration.0);
        for stream in s.streams(users) {
            let (origin, rev) = (stream.origin as u32, stream.function as u32);
            let work = s.functions()[stream.function].work_ms();
            world.start_generator(Generator::new(
                seed,
                origin,
                rev,
                li as u32,
                stream.curve,
                work,
                start,
                measure_from,
                end,
            ));
        }
        run_until(&mut world, end);
        // Like the bench's generators, the level ends once every request of it is answered or
        // given up on.
        while world.outstanding.get(li).is_some_and(|&o| o > 0) {
            if !step(&mut world, Time::MAX) {
                break;
            }
        }
        let seen = std::mem::take(&mut world.seen);
        let samples: Vec<Sample> = seen
            .iter()
            .map(|x| Sample {
                origin: x.origin as usize,
                function: x.rev as usize,
                latency_ms: x.latency_ms,
                served: x.served.map(|s| s as usize),
                at: (x.arrival - began) as f64 / 1e9,
            })
            .collect();
        levels.push(LevelRun {
            users,
            sent: std::mem::take(&mut world.sent),
            samples,
            seconds: s.load.duration.0.as_secs_f64(),
            began: (start - began) as f64 / 1e9,
            instances: world.trace.take(began),
        });
    }
    Ok(SetRun { set: set.clone(), levels })
}

/// Runs every policy set of the scenario.
pub fn run(s: &Scenario, seed: u64, model: &Model) -> Result<Vec<SetRun>, SimError> {
    s.policies
        .iter()
        .map(|name| {
            let set = PolicySet::named(name).ok_or_else(|| SimError::Revision {
                set: name.clone(),
                message: "unknown policy set".into(),
            })?;
            run_set(s, &set, seed, model)
        })
        .collect()
}

/// Function `f`'s revision under a policy set, read from the very manifest the bench applies.
fn revision(s: &Scenario, f: usize, set: &PolicySet, seed: u64) -> Result<Revision, SimError> {
    let function = s.functions()[f].service();
    let err = |message: String| SimError::Revision {
        set: set.name.clone(),
        message: format!("function {function}: {message}"),
    };
    let config = fleet_config();
    let text = manifest(&s.functions()[f], set, Path::new("ikukantai"));
    let loaded = parse_str("scenario", &text).map_err(|d| err(d.to_string()))?;
    let Some(Document::Service(service)) = loaded.into_iter().next().map(|l| l.document) else {
        return Err(err("the scenario's manifest is not a Service".into()));
    };
    let revision = next_revision(&service, &[]).ok_or_else(|| err("no revision".into()))?;
    let settings =
        revision_settings(&revision.metadata.annotations, &config, "spec.template.metadata.annotations")
            .map_err(|e| err(e.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")))?;
    let cc = revision.spec.container_concurrency();
    let spec = ScalingSpec::resolve(&config.autoscaler, cc, &settings.scaling);
    let params = PolicyParams { seed, ..PolicyParams::default() };
    let placement_name = settings.placement.clone().unwrap_or_else(|| config.policies.placement.clone());
    let balancer = settings.balancer.clone().unwrap_or_else(|| config.policies.balancer.clone());
    let queue = settings.queue.unwrap_or_else(|| config.policies.queue.clone());
    registry::balancer(&balancer, &params).map_err(|e| err(e.to_string()))?;
    registry::queue::<u32>(&queue, &params).map_err(|e| err(e.to_string()))?;
    let placement = registry::placement(&placement_name, &params).map_err(|e| err(e.to_string()))?;
    let target = spec.target;
    let start = events::zero();
    Ok(Revision {
        scaler: RevisionScaler::new(spec, placement, start, 0),
        cc,
        target,
        balancer,
        queue,
        routed: Vec::new(),
        version: 0,
    })
}

/// Processes events up to `until`.
fn run_until(world: &mut World, until: Time) {
    while step(world, until) {}
}

/// Processes the next event due by `until`; false when there is none.
fn step(world: &mut World, until: Time) -> bool {
    let Some(event) = world.events.next(until) else { return false };
    match event {
        Event::Arrive { generator } => world.arrive(generator),
        Event::AtInstance { req } => world.at_instance(req),
        Event::Processed { req } => world.processed(req),
        Event::AtGateway { req } => world.at_gateway(req),
        Event::ClientTimeout { req } => world.client_timeout(req),
        Event::Recheck { node, rev } => world.recheck(node, rev),
        Event::Control => world.control_tick(),
        Event::Poke { origin, rev } => world.poke(origin, rev),
        Event::Poked => world.poked(),
        Event::Ready { instance } => world.ready(instance),
        Event::Drain { instance } => world.drain(instance),
        Event::Probe => world.probe(),
    }
    true
}
