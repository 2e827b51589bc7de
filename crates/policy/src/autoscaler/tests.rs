//! Each test reproduces one documented KPA behaviour and names the rule (Knative file and rule).

use super::*;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn spec_with(cc: u32, o: ScalingOverrides) -> ScalingSpec {
    ScalingSpec::resolve(&AutoscalerConfig::default(), cc, &o)
}

/// A spec with target 10 concurrent requests per instance (utilization 100 %), window 60 s.
fn spec10() -> ScalingSpec {
    spec_with(
        0,
        ScalingOverrides {
            target: Some(10.0),
            target_utilization_percentage: Some(100.0),
            ..ScalingOverrides::default()
        },
    )
}

fn feed(a: &mut Autoscaler, t0: Instant, seconds: std::ops::Range<u64>, concurrency: f64) {
    for s in seconds {
        a.record(t0 + secs(s), &Stat { concurrency, requests: concurrency, ..Stat::default() });
    }
}

fn ready(n: u32, t0: Instant) -> TickInputs {
    TickInputs { ready: n, reachable: true, buffering_since: Some(t0) }
}

#[test]
fn target_resolution_matches_knative_defaults() {
    // target.go ResolveMetricTarget: cc=0 → total 100, target 70; cc=10 → 10 / 7; RPS → 200 / 140.
    let s = spec_with(0, ScalingOverrides::default());
    assert_eq!((s.total, s.target), (100.0, 70.0));
    let s = spec_with(10, ScalingOverrides::default());
    assert_eq!((s.total, s.target), (10.0, 7.0));
    let s = spec_with(0, ScalingOverrides { metric: Some(ScalingMetric::Rps), ..Default::default() });
    assert_eq!((s.total, s.target), (200.0, 140.0));
    // The target annotation overrides total, capped by containerConcurrency.
    let s = spec_with(10, ScalingOverrides { target: Some(50.0), ..Default::default() });
    assert_eq!((s.total, s.target), (10.0, 7.0));
    let s = spec_with(0, ScalingOverrides { target: Some(10.0), ..Default::default() });
    assert!((s.target - 7.0).abs() < 1e-9);
    // TargetMin floors tiny targets at 0.01.
    let s = spec_with(
        0,
        ScalingOverrides {
            target: Some(0.01),
            target_utilization_percentage: Some(1.0),
            ..Default::default()
        },
    );
    assert_eq!(s.target, TARGET_MIN);
}

#[test]
fn panic_window_is_rounded_whole_seconds_at_least_one() {
    // metric.go MakeMetric: panic window = round(stable × pct / 100), min one bucket.
    assert_eq!(spec_with(0, ScalingOverrides::default()).panic_window, secs(6));
    let s = spec_with(0, ScalingOverrides { window: Some(secs(12)), ..Default::default() });
    assert_eq!(s.panic_window, secs(1));
    let s = spec_with(
        0,
        ScalingOverrides { window: Some(secs(6)), panic_window_percentage: Some(1.0), ..Default::default() },
    );
    assert_eq!(s.panic_window, secs(1));
    let s = spec_with(
        0,
        ScalingOverrides {
            window: Some(secs(100)),
            panic_window_percentage: Some(25.0),
            ..Default::default()
        },
    );
    assert_eq!(s.panic_window, secs(25));
    assert_eq!(s.panic_threshold, 2.0);
}

#[test]
fn stable_mode_desires_ceil_of_observed_over_target() {
    // autoscaler.go Scale step 3: dspc = ceil(observedStable / target).
    let t0 = Instant::now();
    let mut a = Autoscaler::new(spec10(), t0, 0);
    a.record_origin(t0, 0, 0.0);
    feed(&mut a, t0, 0..60, 25.0);
    let d = a.tick(t0 + secs(59), ready(3, t0));
    assert_eq!(d.observed_stable, 25.0);
    assert_eq!(d.desired, 3);
    assert!(!d.panicking);
}

#[test]
fn scale_up_is_limited_by_max_scale_up_rate() {
    // Step 2: maxScaleUp = ceil(MaxScaleUpRate × readyF).
    let t0 = Instant::now();
    let config = AutoscalerConfig { max_scale_up_rate: 2.0, ..AutoscalerConfig::default() };
    let spec = ScalingSpec::resolve(
        &config,
        0,
        &ScalingOverrides {
            target: Some(1.0),
            target_utilization_percentage: Some(100.0),
            ..Default::default()
        },
    );
    let mut a = Autoscaler::new(spec, t0, 1);
    feed(&mut a, t0, 0..10, 100.0);
    let d = a.tick(t0 + secs(9), ready(1, t0));
    assert_eq!(d.desired, 2, "ceil(2.0 × 1 ready)");
    let d = a.tick(t0 + secs(9), ready(2, t0));
    assert_eq!(d.desired, 4, "ceil(2.0 × 2 ready)");
}

#[test]
fn scale_down_is_limited_by_max_scale_down_rate_when_reachable() {
    // Step 2: maxScaleDown = floor(readyF / MaxScaleDownRate) if reachable, else 0.
    let t0 = Instant::now();
    let mut a = Autoscaler::new(spec10(), t0, 0);
    feed(&mut a, t0, 0..60, 0.0);
    let d = a.tick(t0 + secs(59), ready(10, t0));
    assert_eq!(d.desired, 5, "floor(10 / 2)");
    let mut b = Autoscaler::new(spec10(), t0, 0);
    feed(&mut b, t0, 0..60, 15.0);
    let unreachable = TickInputs { reachable: false, ..ready(10, t0) };
    assert_eq!(b.tick(t0 + secs(59), unreachable).desired, 2, "no floor when unreachable");
}

#[test]
fn panic_mode_enters_at_threshold_ratchets_and_exits_after_a_stable_window() {
    // Steps 6-8: over threshold when dppc / ready ≥ 2.0; in panic desired = max(stable, panic)
    // and never decreases; exit only a full stable window after the last over-threshold tick.
    let t0 = Instant::now();
    let mut a = Autoscaler::new(spec10(), t0, 0);
    feed(&mut a, t0, 0..54, 10.0);
    // A burst in the last 6 s (the panic window): 60 concurrent → dppc = 6 ≥ 2 × 2 ready.
    feed(&mut a, t0, 54..60, 60.0);
    let d = a.tick(t0 + secs(59), ready(2, t0));
    assert!(d.panicking);
    assert_eq!(d.desired, 6, "max(stable ceil(15/10)=2, panic 6)");
    // The burst stops; the panic value falls but the ratchet holds 6.
    feed(&mut a, t0, 60..70, 10.0);
    let d = a.tick(t0 + secs(69), ready(6, t0));
    assert!(d.panicking);
    assert_eq!(d.desired, 6);
    // A full stable window (60 s) after the last over-threshold tick (t=59): panic ends.
    feed(&mut a, t0, 70..121, 10.0);
    let d = a.tick(t0 + secs(120), ready(6, t0));
    assert!(!d.panicking);
    assert_eq!(d.desired, 3, "stable again: ceil(10/10)=1, floored by max scale down 6/2");
}

#[test]
fn new_decider_with_several_ready_instances_starts_in_panic() {
    // autoscaler.go New: starts in panic with maxPanicPods = ready when ready > 1.
    let t0 = Instant::now();
    let mut a = Autoscaler::new(spec10(), t0, 5);
    feed(&mut a, t0, 0..10, 0.0);
    let d = a.tick(t0 + secs(9), ready(5, t0));
    assert!(d.panicking);
    assert_eq!(d.desired, 5, "held while the history is rebuilt");
}

#[test]
fn activation_scale_lifts_non_zero_counts() {
    // Step 5: any non-zero desired count below activation-scale is raised to it.
    let t0 = Instant::now();
    let spec = spec_with(
        0,
        ScalingOverrides {
            target: Some(10.0),
            target_utilization_percentage: Some(100.0),
            activation_scale: Some(3),
            ..Default::default()
        },
    );
    let mut a = Autoscaler::new(spec, t0, 0);
    feed(&mut a, t0, 0..10, 1.0);
    assert_eq!(a.tick(t0 + secs(9), ready(1, t0)).desired, 3);
}

#[test]
fn min_and_max_scale_bound_the_result() {
    // scaler.go applyBounds: at least min-scale, at most max-scale (0 = unbounded).
    let t0 = Instant::now();
    let o = ScalingOverrides {
        target: Some(10.0),
        target_utilization_percentage: Some(100.0),
        min_scale: Some(2),
        max_scale: Some(4),
        ..Default::default()
    };
    let mut a = Autoscaler::new(spec_with(0, o), t0, 0);
    feed(&mut a, t0, 0..60, 1000.0);
    assert_eq!(a.tick(t0 + secs(59), ready(4, t0)).desired, 4);
    let mut b =
        Autoscaler::new(spec_with(0, ScalingOverrides { min_scale: Some(2), ..spec10_overrides() }), t0, 0);
    feed(&mut b, t0, 0..60, 0.0);
    assert_eq!(b.tick(t0 + secs(59), ready(2, t0)).desired, 2);
}

fn spec10_overrides() -> ScalingOverrides {
    ScalingOverrides { target: Some(10.0), target_utilization_percentage: Some(100.0), ..Default::default() }
}

#[test]
fn initial_scale_is_the_starting_scale_and_a_floor_until_reached() {
    // scaler.go: initialScale > 1 acts as min-scale until the scale target has reached it once.
    let t0 = Instant::now();
    let mut a = Autoscaler::new(
        spec_with(0, ScalingOverrides { initial_scale: Some(3), ..spec10_overrides() }),
        t0,
        0,
    );
    assert_eq!(a.scale(), 3);
    feed(&mut a, t0, 0..5, 0.0);
    assert_eq!(a.tick(t0 + secs(4), ready(1, t0)).desired, 3, "not reached yet: floor holds");
    assert_eq!(a.tick(t0 + secs(4), ready(3, t0)).desired, 3);
    // Reached once: the floor is gone, the usual rate limit applies (floor(3/2) = 1).
    assert_eq!(a.tick(t0 + secs(5), ready(3, t0)).desired, 1);
}

#[test]
fn scale_down_delay_holds_the_max_over_the_delay() {
    // Step 9: with scale-down-delay, desired = max of the undelayed decisions over the delay.
    let t0 = Instant::now();
    let delayed = ScalingOverrides { scale_down_delay: Some(secs(10)), ..spec10_overrides() };
    let mut a = Autoscaler::new(spec_with(0, delayed), t0, 0);
    let mut plain = Autoscaler::new(spec10(), t0, 0);
    let mut history = Vec::new();
    for s in 0..200u64 {
        let load = if s < 60 { 80.0 } else { 5.0 };
        for x in [&mut a, &mut plain] {
            x.record(t0 + secs(s), &Stat { concurrency: load, ..Stat::default() });
        }
        if s % 2 == 1 {
            let now = t0 + secs(s);
            let undelayed = plain.tick(now, ready(8, t0)).desired;
            history.push((s, undelayed));
            let expected = history.iter().filter(|(at, _)| s - at < 10).map(|(_, d)| *d).max().unwrap();
            assert_eq!(a.tick(now, ready(8, t0)).desired, expected, "t={s}");
        }
    }
    assert!(history.iter().any(|(_, d)| *d < 8), "the scenario does scale down");
}

#[test]
fn excess_burst_capacity_uses_the_panic_value() {
    // Step 10: EBC = floor(ready × total − TBC − observedPanic); 0 with TBC 0; −1 with TBC −1.
    let t0 = Instant::now();
    let mut a = Autoscaler::new(spec_with(0, ScalingOverrides::default()), t0, 0);
    feed(&mut a, t0, 0..6, 50.0);
    assert_eq!(a.tick(t0 + secs(5), ready(3, t0)).excess_burst_capacity, 300.0 - 211.0 - 50.0);
    for (tbc, expected) in [(0.0, 0.0), (-1.0, -1.0)] {
        let mut b = Autoscaler::new(
            spec_with(0, ScalingOverrides { target_burst_capacity: Some(tbc), ..Default::default() }),
            t0,
            0,
        );
        feed(&mut b, t0, 0..6, 50.0);
        assert_eq!(b.tick(t0 + secs(5), ready(3, t0)).excess_burst_capacity, expected);
    }
}

#[test]
fn proxied_traffic_is_not_counted_twice() {
    // collector.go record: concurrency − proxied concurrency, requests − proxied requests.
    let t0 = Instant::now();
    let mut a = Autoscaler::new(spec10(), t0, 0);
    for s in 0..6 {
        let t = t0 + secs(s);
        // The gateway reports what it forwarded...
        a.record(t, &Stat { concurrency: 20.0, requests: 20.0, ..Stat::default() });
        // ...and the instance reports the same traffic marked as proxied.
        a.record(
            t,
            &Stat { concurrency: 20.0, proxied_concurrency: 20.0, requests: 20.0, proxied_requests: 20.0 },
        );
    }
    assert_eq!(a.tick(t0 + secs(5), ready(2, t0)).observed_stable, 20.0);
}

#[test]
fn rps_metric_scales_on_request_rate() {
    let t0 = Instant::now();
    let o = ScalingOverrides { metric: Some(ScalingMetric::Rps), ..spec10_overrides() };
    let mut a = Autoscaler::new(spec_with(0, o), t0, 0);
    for s in 0..60 {
        a.record(t0 + secs(s), &Stat { concurrency: 1.0, requests: 45.0, ..Stat::default() });
    }
    assert_eq!(a.tick(t0 + secs(59), ready(5, t0)).desired, 5, "ceil(45 rps / 10)");
}

#[test]
fn idle_instance_holds_one_for_a_stable_window_then_goes_to_zero() {
    // scaler.go handleScaleToZero, Active branch: hold at 1 until active ≥ stable window, then
    // mark inactive; Inactive branch fast path: buffering path in place ≥ grace → 0.
    let t0 = Instant::now();
    let o = ScalingOverrides { window: Some(secs(12)), ..spec10_overrides() };
    let mut a = Autoscaler::new(spec_with(0, o), t0, 0);
    assert_eq!(a.scale(), 1, "initial scale 1");
    // The instance becomes ready at t=1 and serves nothing.
    feed(&mut a, t0, 1..13, 0.0);
    let buffering = TickInputs { buffering_since: Some(t0), ..ready(1, t0) };
    assert_eq!(a.tick(t0 + secs(2), buffering).desired, 1);
    assert_eq!(a.tick(t0 + secs(12), buffering).desired, 1, "active 11 s < 12 s window");
    // Active for a whole window; inactive now; the gateway has buffered for 13 s < 30 s grace.
    assert_eq!(a.tick(t0 + secs(13), buffering).desired, 1);
    // Grace period since the buffering path came up: fast path to zero.
    assert_eq!(a.tick(t0 + secs(30), buffering).desired, 0);
    assert_eq!(a.scale(), 0);
}

#[test]
fn without_a_buffering_path_zero_waits_for_the_grace_period() {
    // Inactive branch: 0 once inactive ≥ max(grace, retention).
    let t0 = Instant::now();
    let o = ScalingOverrides { window: Some(secs(6)), ..spec10_overrides() };
    let mut a = Autoscaler::new(spec_with(0, o), t0, 1);
    let inputs = TickInputs { ready: 1, reachable: true, buffering_since: None };
    feed(&mut a, t0, 0..8, 0.0);
    assert_eq!(a.tick(t0 + secs(7), inputs).desired, 1, "marked inactive at t=7");
    assert_eq!(a.tick(t0 + secs(36), inputs).desired, 1);
    assert_eq!(a.tick(t0 + secs(37), inputs).desired, 0, "30 s grace after t=7");
}

#[test]
fn retention_period_keeps_the_last_instance() {
    // Inactive branch: while inactive < retention, hold even when the fast path applies.
    let t0 = Instant::now();
    let o = ScalingOverrides {
        window: Some(secs(6)),
        scale_to_zero_pod_retention_period: Some(secs(50)),
        ..spec10_overrides()
    };
    let mut a = Autoscaler::new(spec_with(0, o), t0, 1);
    feed(&mut a, t0, 0..8, 0.0);
    assert_eq!(a.tick(t0 + secs(7), ready(1, t0)).desired, 1);
    assert_eq!(a.tick(t0 + secs(56), ready(1, t0)).desired, 1);
    assert_eq!(a.tick(t0 + secs(57), ready(1, t0)).desired, 0, "50 s retention after t=7");
}

#[test]
fn scale_to_zero_disabled_keeps_one() {
    // enable-scale-to-zero=false: desired 0 becomes 1.
    let t0 = Instant::now();
    let config = AutoscalerConfig { enable_scale_to_zero: false, ..AutoscalerConfig::default() };
    let mut a = Autoscaler::new(ScalingSpec::resolve(&config, 0, &spec10_overrides()), t0, 1);
    feed(&mut a, t0, 0..200, 0.0);
    assert_eq!(a.tick(t0 + secs(199), ready(1, t0)).desired, 1);
}

#[test]
fn poke_at_zero_asks_for_an_immediate_tick_and_scales_up() {
    // activator concurrency_reporter: the first request at zero sends a stat at once; multiscaler
    // Poke ticks immediately when the last desired scale was 0.
    let t0 = Instant::now();
    let o = ScalingOverrides { initial_scale: Some(0), ..spec10_overrides() };
    let mut a = Autoscaler::new(spec_with(0, o), t0, 0);
    assert_eq!(a.scale(), 0);
    assert!(a.poke(t0 + secs(3), 2));
    let d = a.tick(t0 + secs(3), ready(0, t0));
    assert_eq!(d.desired, 1);
    assert_eq!(d.demand_by_origin, vec![0.0, 0.0, 1.0], "the demand entered at node 2");
    assert!(!a.poke(t0 + secs(3), 2), "already scaling: no extra tick needed");
}

#[test]
fn a_burst_of_pokes_counts_once_per_origin_and_second() {
    let t0 = Instant::now();
    let o = ScalingOverrides { initial_scale: Some(0), ..spec10_overrides() };
    let mut a = Autoscaler::new(spec_with(0, o), t0, 0);
    // Forty requests queue at zero within the same second, at two origins.
    for k in 0..40u64 {
        a.poke(t0 + secs(3) + std::time::Duration::from_millis(k), (k % 2) as usize);
    }
    let d = a.tick(t0 + secs(3) + std::time::Duration::from_millis(40), ready(0, t0));
    // Two waiting users at a target of 10: one instance (forty pokes summed asked for four).
    assert_eq!(d.desired, 1);
    assert_eq!((d.observed_stable, d.demand_by_origin), (2.0, vec![1.0, 1.0]));
    // The next second counts again.
    a.poke(t0 + secs(4), 0);
    a.poke(t0 + secs(4), 0);
    let d = a.tick(t0 + secs(4), ready(0, t0));
    assert_eq!(d.observed_stable, 1.5, "(2 + 1) / 2 seconds");
}

#[test]
fn failed_activation_is_given_up_after_the_timeout() {
    // scaler.go Activating branch: past the progress deadline (+30 s) zero is allowed.
    let t0 = Instant::now();
    let mut a = Autoscaler::new(spec10(), t0, 0);
    let inputs = ready(0, t0);
    feed(&mut a, t0, 0..2, 0.0);
    assert_eq!(a.tick(t0 + secs(100), inputs).desired, 1);
    assert_eq!(a.tick(t0 + secs(630), inputs).desired, 0);
}

#[test]
fn an_unreachable_revision_with_nothing_ready_drops_to_zero_and_ignores_min_scale() {
    // A revision that never became ready (it failed) and that no route sends traffic to: the
    // activation hold and min-scale (kpa.go applies min only while reachable) keep nothing.
    let t0 = Instant::now();
    let spec = spec_with(0, ScalingOverrides { min_scale: Some(2), ..ScalingOverrides::default() });
    let mut a = Autoscaler::new(spec, t0, 0);
    assert_eq!(a.tick(t0 + secs(2), ready(0, t0)).desired, 2, "reachable: min-scale holds");
    let unreachable = TickInputs { reachable: false, ..ready(0, t0) };
    assert_eq!(a.tick(t0 + secs(4), unreachable).desired, 0);
    // Initial scale 1, activating (nothing ready yet): held while reachable, dropped when not.
    let mut b = Autoscaler::new(spec_with(0, ScalingOverrides::default()), t0, 0);
    assert_eq!(b.tick(t0 + secs(2), ready(0, t0)).desired, 1);
    assert_eq!(b.tick(t0 + secs(4), unreachable).desired, 0);
    assert!(ScalingSpec { initial_scale: 0, ..spec_with(0, ScalingOverrides::default()) }.starts_at_zero());
    assert!(!spec_with(0, ScalingOverrides::default()).starts_at_zero());
}

#[test]
fn demand_returning_before_zero_reactivates() {
    let t0 = Instant::now();
    let o = ScalingOverrides { window: Some(secs(6)), ..spec10_overrides() };
    let mut a = Autoscaler::new(spec_with(0, o), t0, 1);
    let no_buffer = TickInputs { ready: 1, reachable: true, buffering_since: None };
    feed(&mut a, t0, 0..8, 0.0);
    assert_eq!(a.tick(t0 + secs(7), no_buffer).desired, 1, "inactive, waiting for grace");
    feed(&mut a, t0, 8..10, 5.0);
    assert_eq!(a.tick(t0 + secs(9), no_buffer).desired, 1);
    // Demand gone again: a fresh stable window of activity must pass before zero.
    feed(&mut a, t0, 10..30, 0.0);
    assert_eq!(a.tick(t0 + secs(14), no_buffer).desired, 1);
    assert_eq!(a.tick(t0 + secs(29), no_buffer).desired, 1);
}

#[test]
fn demand_is_kept_per_origin_node() {
    let t0 = Instant::now();
    let mut a = Autoscaler::new(spec10(), t0, 0);
    for s in 0..10 {
        a.record_origin(t0 + secs(s), 2, 6.0);
        a.record_origin(t0 + secs(s), 0, 2.0);
    }
    assert_eq!(a.demand_by_origin(t0 + secs(9)), vec![2.0, 0.0, 6.0]);
}

#[test]
fn the_mean_time_at_an_instance_is_its_concurrency_over_its_rate() {
    let t0 = Instant::now();
    let mut a = Autoscaler::new(spec10(), t0, 0);
    assert_eq!(a.mean_service_ms(t0), None, "nothing recorded");
    for s in 0..10 {
        // 0.5 in flight at 100 requests a second: each held 5 ms (Little's law).
        a.record(t0 + secs(s), &Stat { concurrency: 0.5, requests: 100.0, ..Stat::default() });
    }
    let ms = a.mean_service_ms(t0 + secs(9)).expect("known");
    assert!((ms - 5.0).abs() < 1e-9, "{ms}");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn desired_scale_stays_within_bounds(
            min in 0u32..4,
            extra in 0u32..8,
            unbounded in any::<bool>(),
            activation in 1u32..5,
            initial in 0u32..6,
            loads in prop::collection::vec(0.0f64..300.0, 1..120),
            readies in prop::collection::vec(0u32..12, 1..120),
        ) {
            let max = if unbounded { 0 } else { min + extra.max(1) };
            let o = ScalingOverrides {
                min_scale: Some(min),
                max_scale: Some(max),
                activation_scale: Some(activation),
                initial_scale: Some(initial),
                window: Some(secs(10)),
                ..spec10_overrides()
            };
            let t0 = Instant::now();
            let mut a = Autoscaler::new(spec_with(0, o), t0, 0);
            if max > 0 {
                prop_assert!(a.scale() <= max);
            }
            for (s, load) in loads.iter().enumerate() {
                let now = t0 + secs(s as u64);
                a.record(now, &Stat { concurrency: *load, ..Stat::default() });
                let r = readies[s % readies.len()];
                let d = a.tick(now, ready(r, t0)).desired;
                prop_assert!(d >= min, "desired {} < min {}", d, min);
                if max > 0 {
                    prop_assert!(d <= max, "desired {} > max {}", d, max);
                }
                prop_assert!(d <= 1000 * r.max(1) + min.max(initial), "bounded by the scale-up rate");
            }
        }
    }
}

#[test]
fn an_idle_revision_left_alone_decides_as_one_fed_zeros_every_second() {
    // A runtime may stop feeding a revision at rest; `record_idle_until` makes the quiet seconds
    // the zeros its sources would have reported, so what follows is decided the same either way.
    let t0 = Instant::now();
    let o = ScalingOverrides { initial_scale: Some(0), target: Some(1.0), ..spec10_overrides() };
    let (mut fed, mut left) =
        (Autoscaler::new(spec_with(1, o), t0, 0), Autoscaler::new(spec_with(1, o), t0, 0));
    let origins = 3;
    for s in 0..500 {
        let t = t0 + secs(s) + Duration::from_millis(250);
        fed.record(t, &Stat::default());
        for node in 0..origins {
            fed.record_origin(t, node, 0.0);
        }
        if s % 2 == 0 {
            fed.tick(t, ready(0, t0));
        }
    }
    assert!(fed.is_at_rest(t0 + secs(500)) && left.is_at_rest(t0 + secs(500)));
    // A burst at zero: a poke from node 2, then the gateway's queue, 30 waiting for 3 s.
    let wake = t0 + secs(500) + Duration::from_millis(600);
    left.record_idle_until(wake, origins);
    for a in [&mut fed, &mut left] {
        a.poke(wake, 2);
        for s in 0..3 {
            let t = wake + secs(s);
            a.record(t, &Stat { concurrency: 30.0, requests: 30.0, ..Stat::default() });
            a.record_origin(t, 2, 30.0);
        }
    }
    for s in [2, 4, 8, 30, 70] {
        let t = wake + secs(s);
        assert_eq!(fed.tick(t, ready(0, t0)), left.tick(t, ready(0, t0)), "{s} s after the burst began");
    }
}

#[test]
fn a_revision_is_at_rest_only_at_zero_with_empty_windows() {
    let t0 = Instant::now();
    let o = ScalingOverrides { initial_scale: Some(0), window: Some(secs(6)), ..spec10_overrides() };
    let mut a = Autoscaler::new(spec_with(0, o), t0, 0);
    assert!(a.is_at_rest(t0), "starts at zero with nothing recorded");
    a.poke(t0 + secs(1), 0);
    assert!(!a.is_at_rest(t0 + secs(1)), "demand in the window");
    assert_eq!(a.tick(t0 + secs(1), ready(0, t0)).desired, 1);
    // The demand slides out of the window, but the last decision was one instance.
    assert!(!a.is_at_rest(t0 + secs(20)));
    let b = Autoscaler::new(spec10(), t0, 0);
    assert!(!b.is_at_rest(t0), "initial scale 1");
}
