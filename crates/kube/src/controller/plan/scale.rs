//! How many instances of one revision on which node: its instances and each node's room for it,
//! as the Pods and nodes say, then the revision's scaler (the KPA and its placement policy).

use std::collections::HashMap;

use ikukantai_api::annotations::revision_settings;
use ikukantai_api::revision::Revision;
use ikukantai_policy::autoscaler::{ScalingSpec, Stat, TickInputs};
use ikukantai_policy::occupancy::room_per_node;
use ikukantai_policy::registry::{self, PolicyParams};
use ikukantai_policy::scaler::{RevisionScaler, ScaleInputs};

use super::{Now, Observed, Scaled, Under};
use crate::controller::nodes::tolerates;
use crate::controller::pods::{Phase, phase, pod_node, unschedulable};
use crate::controller::state::{ControlState, FULL_NODE_HOLD};
use crate::pod::pod_ready;

/// One revision's scaling decision.
pub(super) struct Decided {
    /// Desired instances by node index (the controller's indices, every node it knows).
    pub(super) per_node: Vec<u32>,
    /// The revision's queue discipline.
    pub(super) queue: String,
    pub(super) scaled: Scaled,
}

/// Instances of a revision by node index, and the room each node has for it.
struct Occupancy {
    current: Vec<u32>,
    room: Vec<u32>,
    /// Ready instances, over every node.
    ready: u32,
}

/// Decides how many instances of `revision` run on which node. `reachable`: traffic goes to it,
/// or it must start to prove itself ready. `idx` are the observed nodes' indices. `None` when its
/// settings are no longer valid or its placement is unknown: it is left as it is.
pub(super) fn decide(
    observed: &Observed,
    revision: &Revision,
    reachable: bool,
    idx: &[usize],
    state: &mut ControlState,
    under: Under<'_>,
    now: Now,
) -> Option<Decided> {
    let config = under.config;
    let rev = revision.name().to_owned();
    let settings =
        match revision_settings(&revision.metadata.annotations, config, "spec.template.metadata.annotations")
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(revision = %rev, errors = ?e, "revision settings no longer valid; left as is");
                return None;
            }
        };
    let occupancy = occupancy(observed, revision, idx, state, now);
    let queue = settings.queue.clone().unwrap_or_else(|| config.policies.queue.clone());
    let key = (observed.namespace().to_owned(), rev.clone());
    if !state.scalers.contains_key(&key) {
        let spec = ScalingSpec::resolve(
            &config.autoscaler,
            revision.spec.container_concurrency(),
            &settings.scaling,
        );
        let placement_name = settings.placement.unwrap_or_else(|| config.policies.placement.clone());
        let params = PolicyParams { seed: under.seed, ..PolicyParams::default() };
        let Ok(policy) = registry::placement(&placement_name, &params) else {
            tracing::warn!(revision = %rev, placement = %placement_name, "unknown placement");
            return None;
        };
        let mut scaler = RevisionScaler::new(spec, policy, now.at, occupancy.current.iter().sum());
        for (at, origin) in state.pokes.remove(&key).unwrap_or_default() {
            scaler.autoscaler.poke(at, origin);
        }
        state.scalers.insert(key.clone(), scaler);
    }
    state.decided.insert(key.clone(), now.at);
    // Fields borrowed apart: the RTT matrix is read in place while the scaler changes.
    let state = &mut *state;
    let scaler = state.scalers.get_mut(&key).expect("inserted above");
    // Idle instances and gateways push nothing: a zero now makes the seconds since the last push
    // count as zeros (not dropped from the windows), as if they had pushed them.
    scaler.autoscaler.record(now.at, &Stat::default());
    for &i in idx {
        scaler.autoscaler.record_origin(now.at, i, 0.0);
    }
    let Occupancy { current, room, ready } = occupancy;
    let (decision, per_node) = scaler.decide(
        now.at,
        ScaleInputs {
            tick: TickInputs { ready, reachable, buffering_since: Some(under.started) },
            current: &current,
            room: &room,
            // The scheduler fits Pods first come, first served: headroom is taken only where
            // nothing else is, and does not yield.
            free: &room,
            rtt: &state.rtt,
        },
    );
    tracing::debug!(revision = %rev, desired = decision.desired, ready, ?per_node, "autoscaler decision");
    let scaled = Scaled {
        desired: per_node.iter().sum(),
        ready,
        observed_stable: decision.observed_stable,
        panicking: decision.panicking,
    };
    Some(Decided { per_node, queue, scaled })
}

/// The revision's live instances by node index, and each node's room for it. A Pod the scheduler
/// cannot fit on its node is no instance: it is replaced on another node, and that node takes
/// none of the revision's for a while (remembered in `state`).
fn occupancy(
    observed: &Observed,
    revision: &Revision,
    idx: &[usize],
    state: &mut ControlState,
    now: Now,
) -> Occupancy {
    let ns = observed.namespace().to_owned();
    let rev = revision.name().to_owned();
    let n = state.nodes.len();
    let mut current = vec![0u32; n];
    let mut room = vec![0u32; n];
    let mut ready = 0;
    for p in observed.live_of(&rev) {
        let Some(node) = pod_node(p) else { continue };
        if unschedulable(p).is_some() {
            state.full.insert((ns.clone(), rev.clone(), node), now.at + FULL_NODE_HOLD);
            continue;
        }
        if let Some(i) = state.index_of(&node) {
            current[i] += 1;
        }
        ready += u32::from(pod_ready(p));
    }
    // Other revisions' instances use a node, and so does every Pod still draining there; Failed
    // ones do not. Counted once over the Pods (policy::occupancy), not once per node.
    let index: HashMap<&str, usize> =
        observed.nodes.iter().zip(idx).map(|(info, &i)| (info.name.as_str(), i)).collect();
    let mut capacity = vec![0u32; n];
    for (info, &i) in observed.nodes.iter().zip(idx) {
        capacity[i] = info.capacity;
    }
    let using: Vec<(bool, usize)> = observed
        .pods
        .iter()
        .filter_map(|p| {
            let node = *index.get(pod_node(p)?.as_str())?;
            match phase(p) {
                Phase::Live => Some((observed.is_of(p, &rev), node)),
                Phase::Going => Some((false, node)),
                Phase::Done => None,
            }
        })
        .collect();
    let free = room_per_node(&using, &true, &capacity);
    for (info, &i) in observed.nodes.iter().zip(idx) {
        if !info.ready {
            // A node that lost readiness keeps its instances until they would be evicted (a
            // short partition heals), then takes nothing: they are replaced.
            let holds = info.holds_instances(revision.spec.tolerations.as_ref(), now.wall);
            room[i] = if holds { current[i] } else { 0 };
            continue;
        }
        // A cordoned node, one whose taints the revision does not tolerate, one its node selector
        // or required affinity rules out, or one the scheduler just found full, keeps what it has
        // and gets nothing new.
        let full = state.full.get(&(ns.clone(), rev.clone(), info.name.clone())).is_some_and(|&t| t > now.at);
        let closed = info.cordoned
            || !tolerates(revision.spec.tolerations.as_ref(), &info.taints)
            || !info.admits(&revision.spec)
            || full;
        room[i] = if closed { free[i].min(current[i]) } else { free[i] };
    }
    Occupancy { current, room, ready }
}
