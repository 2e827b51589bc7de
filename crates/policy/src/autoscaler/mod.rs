//! A faithful re-implementation of Knative's KPA (Knative Pod Autoscaler), as a pure state machine.
//!
//! Sources of the rules (Knative Serving, `pkg/autoscaler/...` and `pkg/reconciler/autoscaling/kpa/...`):
//! - metric aggregation in one-second buckets over a stable and a panic window (`bucketing.go`),
//!   see `buckets`;
//! - target resolution `target = max(0.01, total × utilization)` (`resources/target.go`),
//!   see [`ScalingSpec::resolve`];
//! - the decider's `Scale()` (`scaling/autoscaler.go`), see [`Autoscaler::tick`];
//! - bounds, initial scale and scale-to-zero (`kpa/scaler.go`), see [`Autoscaler::tick`].
//!
//! On top of Knative, the autoscaler keeps **demand per origin node**: the concurrency of requests
//! that *entered* the fleet at each node, which placement uses to put instances near their users.
//!
//! Deviation from Knative, on purpose: a revision whose stable window holds no data at all is
//! treated as having zero demand (Knative returns "no data" and makes no decision while it scrapes
//! pods). In ikukantai every instance and gateway *pushes* its stats each second, so a whole window
//! of silence means there was no traffic.

mod buckets;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::estimate::NodeIndex;
use buckets::WindowBuckets;

/// What the autoscaler scales on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalingMetric {
    /// In-flight requests per instance (the default).
    Concurrency,
    /// Requests per second per instance.
    Rps,
}

/// Knative's floor on a computed target (`TargetMin`).
pub const TARGET_MIN: f64 = 0.01;

/// Fleet-wide autoscaling defaults: the role of Knative's `config-autoscaler` ConfigMap.
/// Field defaults are Knative's.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscalerConfig {
    /// `container-concurrency-target-default`: per-instance capacity when containerConcurrency is 0.
    pub container_concurrency_target_default: f64,
    /// `container-concurrency-target-percentage`: target utilization in percent.
    pub container_concurrency_target_percentage: f64,
    /// `requests-per-second-target-default`.
    pub requests_per_second_target_default: f64,
    /// `target-burst-capacity`: 0 = buffer only at zero, −1 = always buffer.
    pub target_burst_capacity: f64,
    /// `stable-window`.
    pub stable_window: Duration,
    /// `panic-window-percentage` of the stable window.
    pub panic_window_percentage: f64,
    /// `panic-threshold-percentage`.
    pub panic_threshold_percentage: f64,
    /// `max-scale-up-rate`.
    pub max_scale_up_rate: f64,
    /// `max-scale-down-rate`.
    pub max_scale_down_rate: f64,
    /// `enable-scale-to-zero`.
    pub enable_scale_to_zero: bool,
    /// `scale-to-zero-grace-period`: upper bound on waiting for the buffering path before the last
    /// instance goes.
    pub scale_to_zero_grace_period: Duration,
    /// `scale-to-zero-pod-retention-period`: minimum time the last instance lingers.
    pub scale_to_zero_pod_retention_period: Duration,
    /// `scale-down-delay`.
    pub scale_down_delay: Duration,
    /// `initial-scale`.
    pub initial_scale: u32,
    /// `allow-zero-initial-scale`.
    pub allow_zero_initial_scale: bool,
    /// `min-scale`.
    pub min_scale: u32,
    /// `max-scale` (0 = unbounded).
    pub max_scale: u32,
    /// `max-scale-limit` (0 = any): operator cap on max-scale.
    pub max_scale_limit: u32,
    /// `activator-capacity`.
    pub activator_capacity: f64,
    /// How long an activation (scale from zero) may take before it is given up and the revision
    /// may go back to zero (Knative: progress deadline 600 s + 30 s).
    pub activation_timeout: Duration,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        Self {
            container_concurrency_target_default: 100.0,
            container_concurrency_target_percentage: 70.0,
            requests_per_second_target_default: 200.0,
            target_burst_capacity: 211.0,
            stable_window: Duration::from_secs(60),
            panic_window_percentage: 10.0,
            panic_threshold_percentage: 200.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            enable_scale_to_zero: true,
            scale_to_zero_grace_period: Duration::from_secs(30),
            scale_to_zero_pod_retention_period: Duration::ZERO,
            scale_down_delay: Duration::ZERO,
            initial_scale: 1,
            allow_zero_initial_scale: false,
            min_scale: 0,
            max_scale: 0,
            max_scale_limit: 0,
            activator_capacity: 100.0,
            activation_timeout: Duration::from_secs(630),
        }
    }
}

/// Per-revision settings given by `autoscaling.knative.dev/*` annotations; `None` = fleet default.
/// Parsing and range checks live in the API crate; this is the validated result.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ScalingOverrides {
    /// `metric`.
    pub metric: Option<ScalingMetric>,
    /// `target`.
    pub target: Option<f64>,
    /// `target-utilization-percentage`.
    pub target_utilization_percentage: Option<f64>,
    /// `window`.
    pub window: Option<Duration>,
    /// `panic-window-percentage`.
    pub panic_window_percentage: Option<f64>,
    /// `panic-threshold-percentage`.
    pub panic_threshold_percentage: Option<f64>,
    /// `min-scale`.
    pub min_scale: Option<u32>,
    /// `max-scale`.
    pub max_scale: Option<u32>,
    /// `initial-scale`.
    pub initial_scale: Option<u32>,
    /// `activation-scale`.
    pub activation_scale: Option<u32>,
    /// `scale-down-delay`.
    pub scale_down_delay: Option<Duration>,
    /// `scale-to-zero-pod-retention-period`.
    pub scale_to_zero_pod_retention_period: Option<Duration>,
    /// `target-burst-capacity`.
    pub target_burst_capacity: Option<f64>,
}

/// Everything the KPA needs for one revision, resolved from config + annotations.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingSpec {
    /// What is measured.
    pub metric: ScalingMetric,
    /// Desired value of the metric per instance (`TargetValue`).
    pub target: f64,
    /// What one instance can take at most (`TotalValue`), used for burst capacity.
    pub total: f64,
    /// Target burst capacity (−1 = always buffer, 0 = only at zero).
    pub target_burst_capacity: f64,
    /// Stable window.
    pub stable_window: Duration,
    /// Panic window (whole seconds, at least one).
    pub panic_window: Duration,
    /// Panic threshold as a factor (2.0 = 200 %).
    pub panic_threshold: f64,
    /// Max scale-up rate.
    pub max_scale_up_rate: f64,
    /// Max scale-down rate.
    pub max_scale_down_rate: f64,
    /// Scale-down delay.
    pub scale_down_delay: Duration,
    /// Lower bound on the scale.
    pub min_scale: u32,
    /// Upper bound on the scale (0 = unbounded).
    pub max_scale: u32,
    /// Scale when the revision is created.
    pub initial_scale: u32,
    /// Minimum non-zero scale (1 = no effect).
    pub activation_scale: u32,
    /// Whether the revision may go to zero.
    pub enable_scale_to_zero: bool,
    /// Scale-to-zero grace period.
    pub scale_to_zero_grace_period: Duration,
    /// Last-instance retention period.
    pub scale_to_zero_retention: Duration,
    /// Activation time-out.
    pub activation_timeout: Duration,
}

impl ScalingSpec {
    /// Resolves a revision's spec like Knative's `ResolveMetricTarget` and `MakeDecider`.
    ///
    /// `container_concurrency` is the revision's hard limit (0 = unlimited).
    pub fn resolve(
        config: &AutoscalerConfig,
        container_concurrency: u32,
        overrides: &ScalingOverrides,
    ) -> Self {
        let metric = overrides.metric.unwrap_or(ScalingMetric::Concurrency);
        // target.go: total is containerConcurrency if set, else the configured default; the target
        // annotation overrides total (capped by containerConcurrency for the concurrency metric).
        let mut total = match metric {
            ScalingMetric::Concurrency if container_concurrency > 0 => f64::from(container_concurrency),
            ScalingMetric::Concurrency => config.container_concurrency_target_default,
            ScalingMetric::Rps => config.requests_per_second_target_default,
        };
        if let Some(t) = overrides.target {
            total = match metric {
                ScalingMetric::Concurrency if container_concurrency > 0 => {
                    t.min(f64::from(container_concurrency))
                }
                _ => t,
            };
        }
        let utilization =
            overrides.target_utilization_percentage.unwrap_or(config.container_concurrency_target_percentage)
                / 100.0;
        let target = (total * utilization).max(TARGET_MIN);

        let stable_window = overrides.window.unwrap_or(config.stable_window);
        let panic_pct = overrides.panic_window_percentage.unwrap_or(config.panic_window_percentage);
        // metric.go MakeMetric: round to whole seconds, at least one bucket.
        let panic_secs = (stable_window.as_secs_f64() * panic_pct / 100.0).round().max(1.0);
        let threshold_pct = overrides.panic_threshold_percentage.unwrap_or(config.panic_threshold_percentage);
        Self {
            metric,
            target,
            total,
            target_burst_capacity: overrides.target_burst_capacity.unwrap_or(config.target_burst_capacity),
            stable_window,
            panic_window: Duration::from_secs_f64(panic_secs),
            panic_threshold: threshold_pct / 100.0,
            max_scale_up_rate: config.max_scale_up_rate,
            max_scale_down_rate: config.max_scale_down_rate,
            scale_down_delay: overrides.scale_down_delay.unwrap_or(config.scale_down_delay),
            min_scale: overrides.min_scale.unwrap_or(config.min_scale),
            max_scale: overrides.max_scale.unwrap_or(config.max_scale),
            initial_scale: overrides.initial_scale.unwrap_or(config.initial_scale),
            activation_scale: overrides.activation_scale.unwrap_or(1).max(1),
            enable_scale_to_zero: config.enable_scale_to_zero,
            scale_to_zero_grace_period: config.scale_to_zero_grace_period,
            scale_to_zero_retention: overrides
                .scale_to_zero_pod_retention_period
                .unwrap_or(config.scale_to_zero_pod_retention_period),
            activation_timeout: config.activation_timeout,
        }
    }

    /// Whether the revision starts with no instance (initial and minimum scale 0).
    pub fn starts_at_zero(&self) -> bool {
        self.bounded(self.min_scale, self.initial_scale) == 0
    }

    /// `applyBounds`: at least `min`, at most `max` when `max > 0`.
    fn bounded(&self, min: u32, value: u32) -> u32 {
        let v = value.max(min);
        if self.max_scale > 0 { v.min(self.max_scale) } else { v }
    }
}

/// One second's worth of load reported by a stats source (a queue proxy for one instance, or a
/// gateway for the requests it buffered), like Knative's `Stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stat {
    /// Time-weighted average number of in-flight requests over the period.
    pub concurrency: f64,
    /// The part of `concurrency` that arrived through the buffering (activator) path and is
    /// therefore also reported by the gateway.
    pub proxied_concurrency: f64,
    /// Requests per second.
    pub requests: f64,
    /// The part of `requests` that arrived through the buffering path.
    pub proxied_requests: f64,
}

/// Inputs of one autoscaler tick that come from the world rather than from stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickInputs {
    /// Instances ready to serve now.
    pub ready: u32,
    /// The revision receives traffic from a route (unreachable revisions may drop straight to 0).
    pub reachable: bool,
    /// Since when a buffering path (the gateway's activator) has been in front of the revision;
    /// `None` if requests would be lost at zero. Governs the scale-to-zero grace period.
    pub buffering_since: Option<Instant>,
}

/// The result of a tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Instances the revision should have now.
    pub desired: u32,
    /// Excess burst capacity (negative = the gateway should buffer; −1 with TBC −1).
    pub excess_burst_capacity: f64,
    /// True while in panic mode.
    pub panicking: bool,
    /// Stable-window average of the metric (whole revision).
    pub observed_stable: f64,
    /// Panic-window average of the metric (whole revision).
    pub observed_panic: f64,
    /// Stable-window average concurrency of requests by the node they entered at (index = node).
    pub demand_by_origin: Vec<f64>,
}

/// Max over a sliding time window (Knative's `max.TimeWindow`, used for scale-down delay).
#[derive(Debug, Clone)]
struct MaxWindow {
    window: Duration,
    entries: VecDeque<(Instant, u32)>,
}

impl MaxWindow {
    fn new(window: Duration) -> Self {
        Self { window, entries: VecDeque::new() }
    }

    fn record(&mut self, now: Instant, value: u32) -> u32 {
        while let Some(&(t, _)) = self.entries.front() {
            if now.saturating_duration_since(t) >= self.window {
                self.entries.pop_front();
            } else {
                break;
            }
        }
        while let Some(&(_, v)) = self.entries.back() {
            if v <= value {
                self.entries.pop_back();
            } else {
                break;
            }
        }
        self.entries.push_back((now, value));
        self.entries.front().map_or(value, |&(_, v)| v)
    }
}

/// The KPA for one revision: metric collection, decider and scaler state.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    spec: ScalingSpec,
    epoch: Instant,
    stable_concurrency: WindowBuckets,
    panic_concurrency: WindowBuckets,
    stable_rps: WindowBuckets,
    panic_rps: WindowBuckets,
    origin: Vec<WindowBuckets>,
    /// The second of the last poke, and the origins that poked in it.
    pokes: (u64, Vec<NodeIndex>),
    panic_since: Option<Instant>,
    max_panic_pods: u32,
    delay: Option<MaxWindow>,
    scale: u32,
    reached_initial_scale: bool,
    activating_since: Option<Instant>,
    active_since: Option<Instant>,
    inactive_since: Option<Instant>,
}

impl Autoscaler {
    /// A new autoscaler for a revision created (or re-adopted) at `now` with `ready` instances.
    ///
    /// Its scale starts at the initial scale (bounded). Rule (autoscaler.go `New`): a decider
    /// created while more than one instance is ready starts in panic mode holding that many, so a
    /// restart that lost the metric history does not scale down.
    pub fn new(spec: ScalingSpec, now: Instant, ready: u32) -> Self {
        let epoch = now;
        let initial = spec.bounded(spec.min_scale, spec.initial_scale).max(ready);
        let delay = (!spec.scale_down_delay.is_zero()).then(|| MaxWindow::new(spec.scale_down_delay));
        Self {
            stable_concurrency: WindowBuckets::new(epoch, spec.stable_window),
            panic_concurrency: WindowBuckets::new(epoch, spec.panic_window),
            stable_rps: WindowBuckets::new(epoch, spec.stable_window),
            panic_rps: WindowBuckets::new(epoch, spec.panic_window),
            origin: Vec::new(),
            pokes: (0, Vec::new()),
            panic_since: (ready > 1).then_some(now),
            max_panic_pods: if ready > 1 { ready } else { 0 },
            delay,
            scale: initial,
            reached_initial_scale: ready >= spec.initial_scale,
            activating_since: (initial > 0 && ready == 0).then_some(now),
            active_since: (ready > 0).then_some(now),
            inactive_since: None,
            spec,
            epoch,
        }
    }

    /// The resolved spec.
    pub fn spec(&self) -> &ScalingSpec {
        &self.spec
    }

    /// The scale decided last (the initial scale before the first tick).
    pub fn scale(&self) -> u32 {
        self.scale
    }

    /// Records one stats report. As in Knative's collector, the proxied part is subtracted, because
    /// the gateway reports that part itself: nothing is counted twice.
    pub fn record(&mut self, now: Instant, stat: &Stat) {
        let concurrency = (stat.concurrency - stat.proxied_concurrency).max(0.0);
        let rps = (stat.requests - stat.proxied_requests).max(0.0);
        self.stable_concurrency.record(now, concurrency);
        self.panic_concurrency.record(now, concurrency);
        self.stable_rps.record(now, rps);
        self.panic_rps.record(now, rps);
    }

    /// Nothing was reported for the revision since its last report until `now`, because nothing
    /// happened (no instance, no request, at any of `origins` nodes): its windows count those
    /// seconds as zeros, exactly as if every source had reported zero each second. A runtime that
    /// stops feeding an idle revision calls this before it feeds or pokes it again, so the
    /// decisions do not depend on whether it was fed while idle.
    pub fn record_idle_until(&mut self, now: Instant, origins: usize) {
        self.stable_concurrency.record_zeros_through(now);
        self.panic_concurrency.record_zeros_through(now);
        self.stable_rps.record_zeros_through(now);
        self.panic_rps.record_zeros_through(now);
        while self.origin.len() < origins {
            self.origin.push(WindowBuckets::new(self.epoch, self.spec.stable_window));
        }
        for o in &mut self.origin {
            o.record_zeros_through(now);
        }
    }

    /// Whether the revision is at rest: it decided zero last, outside panic mode, and every window
    /// averages zero at `now`. Ticking such a revision again without new stats decides zero again
    /// and changes nothing, so a runtime may leave it alone until something is recorded.
    pub fn is_at_rest(&self, now: Instant) -> bool {
        self.scale == 0
            && self.panic_since.is_none()
            && self.stable_concurrency.average(now) == 0.0
            && self.panic_concurrency.average(now) == 0.0
            && self.stable_rps.average(now) == 0.0
            && self.panic_rps.average(now) == 0.0
            && self.origin.iter().all(|o| o.average(now) == 0.0)
    }

    /// Records the concurrency of requests that entered the fleet at `origin` (for placement).
    pub fn record_origin(&mut self, now: Instant, origin: NodeIndex, concurrency: f64) {
        while self.origin.len() <= origin {
            self.origin.push(WindowBuckets::new(self.epoch, self.spec.stable_window));
        }
        self.origin[origin].record(now, concurrency);
    }

    /// A request arrived at `origin` for a revision with no instance: records a synthetic
    /// concurrency of 1 (Knative's activator "poke") and tells whether the caller should tick at
    /// once instead of waiting for the next period.
    ///
    /// A gateway pokes for every request it queues at zero; those are one waiting user each, not
    /// one more instance each. So a second counts at most one per origin that poked in it:
    /// summing every poke asked for as many instances as requests had queued, and a burst at zero
    /// started a dozen instances to drop most of them a window later.
    pub fn poke(&mut self, now: Instant, origin: NodeIndex) -> bool {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        if self.pokes.0 != second {
            self.pokes = (second, Vec::new());
        }
        if !self.pokes.1.contains(&origin) {
            self.pokes.1.push(origin);
            self.record(now, &Stat { concurrency: 1.0, requests: 1.0, ..Stat::default() });
            self.record_origin(now, origin, 1.0);
        }
        self.scale == 0
    }

    /// The mean time a request is counted for in the stable window, in milliseconds, by Little's
    /// law (its concurrency over its requests per second); `None` without either. Mostly the time
    /// at an instance, but a wait at a buffering gateway and a poke at zero (one for a second)
    /// count too, so it may exceed the processing time.
    pub fn mean_service_ms(&self, now: Instant) -> Option<f64> {
        let (concurrency, rps) = (self.stable_concurrency.average(now), self.stable_rps.average(now));
        (concurrency > 0.0 && rps > 0.0).then(|| concurrency / rps * 1000.0)
    }

    /// Stable-window average concurrency by origin node.
    pub fn demand_by_origin(&self, now: Instant) -> Vec<f64> {
        self.origin.iter().map(|b| b.average(now)).collect()
    }

    /// One decider tick (Knative runs it every 2 s, and at once after a poke at zero).
    pub fn tick(&mut self, now: Instant, inputs: TickInputs) -> Decision {
        let spec = &self.spec;
        let (observed_stable, observed_panic) = match spec.metric {
            ScalingMetric::Concurrency => {
                (self.stable_concurrency.average(now), self.panic_concurrency.average(now))
            }
            ScalingMetric::Rps => (self.stable_rps.average(now), self.panic_rps.average(now)),
        };
        let ready = f64::from(inputs.ready.max(1));

        // Rule 2: rate limits relative to the ready count; unreachable revisions may drop to 0.
        let max_up = (spec.max_scale_up_rate * ready).ceil();
        let max_down = if inputs.reachable { (ready / spec.max_scale_down_rate).floor() } else { 0.0 };
        // Rule 3-4: desired counts per window, clamped by the rates.
        let dspc = (observed_stable / spec.target).ceil();
        let dppc = (observed_panic / spec.target).ceil();
        let mut desired_stable = dspc.max(max_down).min(max_up) as u32;
        let mut desired_panic = dppc.max(max_down).min(max_up) as u32;
        // Rule 5: activation scale lifts any non-zero count.
        if spec.activation_scale > 1 {
            if desired_stable > 0 && desired_stable < spec.activation_scale {
                desired_stable = spec.activation_scale;
            }
            if desired_panic > 0 && desired_panic < spec.activation_scale {
                desired_panic = spec.activation_scale;
            }
        }
        // Rule 6-7: panic when the panic window needs ≥ threshold × ready; leave it only after a
        // full stable window below the threshold.
        let over_threshold = dppc / ready >= spec.panic_threshold;
        if over_threshold {
            self.panic_since = Some(now);
        } else if let Some(since) = self.panic_since
            && since + spec.stable_window < now
        {
            self.panic_since = None;
            self.max_panic_pods = 0;
        }
        // Rule 8: in panic take the larger count and never go down (ratchet).
        let mut desired = if self.panic_since.is_some() {
            let d = desired_stable.max(desired_panic);
            if d > self.max_panic_pods {
                self.max_panic_pods = d;
            }
            self.max_panic_pods
        } else {
            desired_stable
        };
        // Rule 9: scale-down delay = max over the delay window.
        if inputs.reachable
            && let Some(window) = self.delay.as_mut()
        {
            desired = window.record(now, desired);
        }
        // Rule 10: excess burst capacity, from the panic-window value.
        let tbc = spec.target_burst_capacity;
        let excess_burst_capacity = if tbc == 0.0 {
            0.0
        } else if tbc < 0.0 {
            -1.0
        } else {
            (f64::from(inputs.ready) * spec.total - tbc - observed_panic).floor()
        };

        let desired = self.apply_scaler(desired, now, inputs);
        Decision {
            desired,
            excess_burst_capacity,
            panicking: self.panic_since.is_some(),
            observed_stable,
            observed_panic,
            demand_by_origin: self.demand_by_origin(now),
        }
    }

    /// The PA reconciler's part (`kpa/scaler.go`): scale-to-zero gating, then bounds.
    fn apply_scaler(&mut self, raw: u32, now: Instant, inputs: TickInputs) -> u32 {
        if raw > 0 && self.inactive_since.take().is_some() {
            // Demand is back before the last instance left: re-activate.
            self.active_since = None;
        }
        if inputs.ready > 0 && self.active_since.is_none() && self.inactive_since.is_none() {
            self.active_since = Some(now);
            self.activating_since = None;
        }
        let desired = if raw == 0 { self.handle_scale_to_zero(now, inputs) } else { raw };

        let spec = &self.spec;
        // As in Knative, min-scale holds only while a route can send the revision traffic.
        let mut min = if inputs.reachable { spec.min_scale } else { 0 };
        // Initial scale acts as a minimum until the revision has reached it once.
        if spec.initial_scale > 1 && !self.reached_initial_scale && inputs.reachable {
            min = min.max(spec.initial_scale);
        }
        let desired = spec.bounded(min, desired);
        if inputs.ready >= spec.initial_scale {
            self.reached_initial_scale = true;
        }
        if desired > 0 && self.scale == 0 {
            self.activating_since = Some(now);
            self.active_since = None;
            self.inactive_since = None;
        }
        if desired == 0 {
            self.activating_since = None;
            self.active_since = None;
            self.inactive_since = None;
        }
        self.scale = desired;
        desired
    }

    fn handle_scale_to_zero(&mut self, now: Instant, inputs: TickInputs) -> u32 {
        let spec = &self.spec;
        if !spec.enable_scale_to_zero {
            return 1;
        }
        if self.scale == 0 {
            return 0;
        }
        let hold = self.scale;
        if self.inactive_since.is_none() {
            match (self.active_since, self.activating_since) {
                (Some(active), _) => {
                    if now.saturating_duration_since(active) < spec.stable_window {
                        // Active for less than a stable window: at most one instance stays.
                        return 1;
                    }
                    self.inactive_since = Some(now);
                }
                (None, Some(_)) if !inputs.reachable => {
                    // Nothing ready and no route to it (e.g. a revision that failed): nothing
                    // to wait for.
                    return 0;
                }
                (None, Some(activating)) => {
                    // Still activating: give up only after the activation time-out.
                    return if now.saturating_duration_since(activating) >= spec.activation_timeout {
                        0
                    } else {
                        hold
                    };
                }
                (None, None) => {
                    self.inactive_since = Some(now);
                }
            }
        }
        let inactive_for = self.inactive_since.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        if inactive_for >= spec.scale_to_zero_grace_period.max(spec.scale_to_zero_retention) {
            return 0;
        }
        if inactive_for < spec.scale_to_zero_retention {
            return hold;
        }
        // Fast path: the buffering path has been in place for the grace period already.
        match inputs.buffering_since {
            Some(since) if now.saturating_duration_since(since) >= spec.scale_to_zero_grace_period => 0,
            _ => hold,
        }
    }
}

#[cfg(test)]
mod tests;
