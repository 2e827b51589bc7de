//! One revision's scaling loop: the KPA decides how many instances, the placement decides where.
//!
//! Shared by the local fleet and the Kubernetes controller so both scale the same way.

use std::time::Instant;

use crate::autoscaler::{Autoscaler, Decision, ScalingMetric, ScalingSpec, TickInputs};
use crate::estimate::RttMatrix;
use crate::placement::{Placement, PlacementInput};

/// What the world looks like to one revision at a tick.
#[derive(Debug, Clone, Copy)]
pub struct ScaleInputs<'a> {
    /// Autoscaler inputs (ready instances, reachable, buffering).
    pub tick: TickInputs,
    /// Instances of this revision on each node now (running or starting).
    pub current: &'a [u32],
    /// Instances of this revision each node can still hold, other revisions' headroom counted
    /// as room (it yields).
    pub room: &'a [u32],
    /// Of that, what no other revision's instance holds (what headroom may take).
    pub free: &'a [u32],
    /// Node-to-node RTTs.
    pub rtt: &'a RttMatrix,
}

/// The autoscaler and placement of one revision.
#[derive(Debug)]
pub struct RevisionScaler {
    /// The KPA (stats are recorded into it directly).
    pub autoscaler: Autoscaler,
    placement: Box<dyn Placement>,
}

impl RevisionScaler {
    /// A scaler from a resolved spec and a placement policy; `ready` instances exist already.
    pub fn new(spec: ScalingSpec, placement: Box<dyn Placement>, now: Instant, ready: u32) -> Self {
        Self { autoscaler: Autoscaler::new(spec, now, ready), placement }
    }

    /// The placement policy's name.
    pub fn placement_name(&self) -> &'static str {
        self.placement.name()
    }

    /// Of the instances last decided on each node, how many are headroom that yields to other
    /// revisions ([`Placement::headroom`]; empty when none).
    pub fn headroom(&self) -> &[u32] {
        self.placement.headroom()
    }

    /// One tick: the KPA's count, raised to what the placement needs to cover distant sites with
    /// demand (never beyond max-scale), spread over the nodes. Returns the decision and the
    /// desired instances per node (`inputs.room.len()` entries).
    pub fn decide(&mut self, now: Instant, inputs: ScaleInputs<'_>) -> (Decision, Vec<u32>) {
        let n = inputs.room.len();
        let decision = self.autoscaler.tick(now, inputs.tick);
        let mut demand = decision.demand_by_origin.clone();
        demand.resize(n, 0.0);
        // Demand is concurrency: an instance's share of it is its concurrency target.
        let spec = self.autoscaler.spec();
        let per_instance =
            if spec.metric == ScalingMetric::Concurrency { spec.target } else { f64::INFINITY };
        // Per node it is not kept: every node gets the revision's mean time in its window, which
        // orders no node before another (up to rounding) and prices what a trip adds to a request.
        let processing = vec![self.autoscaler.mean_service_ms(now); n];
        let input = PlacementInput {
            desired: decision.desired,
            demand: &demand,
            capacity: inputs.room,
            free: inputs.free,
            current: inputs.current,
            processing_ms: &processing,
            rtt: inputs.rtt,
            now,
            per_instance,
        };
        let desired = self.placement.place_at_least_minimum(&input, self.autoscaler.spec().max_scale);
        (decision, desired)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::autoscaler::{AutoscalerConfig, ScalingOverrides, Stat};
    use crate::registry::{self, PolicyParams};

    fn scaler(placement: &str, max_scale: Option<u32>) -> (RevisionScaler, Instant) {
        let now = Instant::now();
        let overrides = ScalingOverrides { max_scale, initial_scale: Some(0), ..ScalingOverrides::default() };
        let config = AutoscalerConfig { allow_zero_initial_scale: true, ..AutoscalerConfig::default() };
        let spec = ScalingSpec::resolve(&config, 1, &overrides);
        let placement = registry::placement(placement, &PolicyParams::default()).expect("registered");
        (RevisionScaler::new(spec, placement, now, 0), now)
    }

    #[test]
    fn places_the_kpa_count_where_demand_enters() {
        let (mut s, now) = scaler("nearest", None);
        let rtt = RttMatrix::new(3, 50.0, Duration::from_secs(30));
        // Five requests in flight at node 2, for one second, with cc = 1.
        let t = now + Duration::from_secs(1);
        s.autoscaler.record(t, &Stat { concurrency: 5.0, requests: 5.0, ..Stat::default() });
        s.autoscaler.record_origin(t, 2, 5.0);
        let (decision, desired) = s.decide(
            t,
            ScaleInputs {
                tick: TickInputs { ready: 0, reachable: true, buffering_since: Some(now) },
                current: &[0, 0, 0],
                room: &[10, 10, 10],
                free: &[10, 10, 10],
                rtt: &rtt,
            },
        );
        assert!(decision.desired >= 1, "{decision:?}");
        // The site's headroom may add to the KPA's count, never take from it; it is said as such.
        let total = desired.iter().sum::<u32>();
        assert!(total > decision.desired, "{desired:?} for {decision:?}");
        assert_eq!(desired[2], total, "all near the demand: {desired:?}");
        assert_eq!(s.headroom()[2], total - decision.desired);
    }

    #[test]
    fn never_beyond_max_scale_or_room() {
        let (mut s, now) = scaler("nearest", Some(2));
        let rtt = RttMatrix::new(3, 50.0, Duration::from_secs(30));
        let t = now + Duration::from_secs(1);
        s.autoscaler.record(t, &Stat { concurrency: 40.0, requests: 40.0, ..Stat::default() });
        for node in 0..3 {
            s.autoscaler.record_origin(t, node, 10.0);
        }
        let (_, desired) = s.decide(
            t,
            ScaleInputs {
                tick: TickInputs { ready: 0, reachable: true, buffering_since: Some(now) },
                current: &[0, 0, 0],
                room: &[0, 5, 5],
                free: &[0, 5, 5],
                rtt: &rtt,
            },
        );
        assert!(desired.iter().sum::<u32>() <= 2, "{desired:?}");
        assert_eq!(desired[0], 0, "node 0 has no room: {desired:?}");
    }
}
