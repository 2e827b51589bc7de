use super::*;
use crate::estimate::RttMatrix;
use crate::registry::{self, PolicyParams};

#[test]
fn a_distant_instance_holds_more_requests_than_its_slots() {
    let now = Instant::now();
    let mut i = InstanceLoad::new(1, 1);
    assert_eq!(i.candidate(2, 40.0, now).capacity, 2 + 80, "1 ms assumed before any estimate");
    i.learn(now, 10.0, 10.0, None);
    assert_eq!(i.candidate(2, 40.0, now).capacity, 2 + 8);
    assert_eq!(i.candidate(2, 0.0, now).capacity, 2);
    assert_eq!(i.candidate(0, 40.0, now).capacity, 0, "unlimited stays unlimited");
}

#[test]
fn a_pick_counts_the_request_and_feedback_teaches_the_estimates() {
    let now = Instant::now();
    let rtt = RttMatrix::new(2, 30.0, Duration::from_secs(30));
    let mut balancer = registry::balancer("ert", &PolicyParams::default()).expect("registered");
    let mut instances = vec![InstanceLoad::new(1, 0), InstanceLoad::new(2, 1)];
    let (mut shortlist, mut scratch) = (Shortlist::default(), PickScratch::default());
    let ctx = PickContext { origin: 0, rtt: &rtt, now, target_concurrency: 1.0, queued: 0, fresh: true };
    let first = pick(balancer.as_mut(), &ctx, 1, &mut instances, &mut shortlist, &mut scratch);
    assert_eq!(first, Some(0), "the local instance");
    assert_eq!(instances[0].in_flight, 1);
    let response = Response {
        latency: Duration::from_millis(12),
        service_ms: Some(10.0),
        from_queue_proxy: true,
        reported_in_flight: Some(1),
        success: true,
        rtt_ms: Some(0.0),
    };
    feed_back(balancer.as_mut(), Some(&mut instances[0]), (1, 0, 0), &response, now);
    assert_eq!(instances[0].service_ms(), Some(10.0));
    assert_eq!(instances[0].candidate(1, 0.0, now).held_ms, Some(12.0));
    // The queue proxy counted two requests of other gateways: for two processing times they
    // count here too, then they are forgotten.
    let busy = Response { reported_in_flight: Some(3), ..response };
    feed_back(balancer.as_mut(), Some(&mut instances[0]), (1, 0, 0), &busy, now);
    instances[0].in_flight -= 1;
    assert_eq!(instances[0].candidate(1, 0.0, now + Duration::from_millis(20)).in_flight, 2);
    assert_eq!(instances[0].candidate(1, 0.0, now + Duration::from_millis(21)).in_flight, 0);
    // A failure teaches the estimates nothing.
    let failed = Response { success: false, latency: Duration::from_secs(1), ..response };
    feed_back(balancer.as_mut(), Some(&mut instances[1]), (2, 1, 0), &failed, now);
    assert_eq!(instances[1].service_ms(), None);
}

#[test]
fn an_instance_not_heard_from_lately_keeps_the_load_others_put_on_it() {
    let t0 = Instant::now();
    let mut balancer = registry::balancer("ert", &PolicyParams::default()).expect("registered");
    // An instance one 20 ms trip away; this gateway sent it a request now and then, and it
    // was busy with another gateway's request every other time it answered.
    let mut i = InstanceLoad::new(1, 1);
    for k in 0..40u32 {
        let now = t0 + Duration::from_millis(250 * u64::from(k));
        i.in_flight = 1;
        let response = Response {
            latency: Duration::from_millis(30),
            service_ms: Some(10.0),
            from_queue_proxy: true,
            reported_in_flight: Some(1 + k % 2),
            success: true,
            rtt_ms: Some(20.0),
        };
        feed_back(balancer.as_mut(), Some(&mut i), (1, 1, 0), &response, now);
        i.in_flight = 0;
    }
    let last = t0 + Duration::from_millis(250 * 39);
    // Fresh: here, the last report (another gateway's request there); 20 ms away, two
    // processing times, drawn most of the way to the average.
    assert_eq!(i.candidate(1, 0.0, last).load, 1.0);
    let fresh = i.candidate(1, 20.0, last);
    assert!((0.5..0.55).contains(&fresh.load), "{fresh:?}");
    assert_eq!(fresh.in_flight, 1, "room is counted from the report as it is");
    // A second later: about half a request of others', on average.
    let later = i.candidate(1, 20.0, last + Duration::from_secs(1));
    assert!((0.35..0.65).contains(&later.load), "{later:?}");
    assert_eq!(later.in_flight, 0, "room is counted from fresh reports only");
    // This gateway's own requests count by the share of their time they are there.
    i.in_flight = 3;
    let own = i.candidate(1, 20.0, last + Duration::from_secs(1)).load - later.load;
    assert!((own - 1.0).abs() < 1e-9, "3 × 10 / (10 + 20): {own}");
}

#[test]
fn a_fresh_report_from_across_a_link_counts_toward_the_others_average_by_the_trip() {
    let t0 = Instant::now();
    let mut balancer = registry::balancer("ert", &PolicyParams::default()).expect("registered");
    // Other gateways' requests at the instance: 4, reported all along, then 1 in the last
    // answer. Processing takes 10 ms.
    let mut i = InstanceLoad::new(1, 1);
    let answer = |others: u32| Response {
        latency: Duration::from_millis(10),
        service_ms: Some(10.0),
        from_queue_proxy: true,
        reported_in_flight: Some(others + 1),
        success: true,
        rtt_ms: Some(0.0),
    };
    for k in 0..50u64 {
        i.in_flight = 1;
        let report = if k == 49 { answer(1) } else { answer(4) };
        feed_back(balancer.as_mut(), Some(&mut i), (1, 1, 0), &report, t0 + Duration::from_millis(100 * k));
        i.in_flight = 0;
    }
    let last = t0 + Duration::from_millis(100 * 49);
    let mean = i.others_mean;
    assert!(mean > 3.0 && mean < 4.0, "mostly 4: {mean}");
    let load = |rtt_ms: f64| i.candidate(4, rtt_ms, last).load;
    assert_eq!(load(0.0), 1.0, "at this node, as reported");
    let a_trip = load(10.0);
    let expected = mean + (1.0 - mean) * (-1.0f64).exp();
    assert!(a_trip > 1.0 && a_trip < mean, "between the report and the average: {a_trip}");
    assert!((a_trip - expected).abs() < 1e-9, "one processing time away: {a_trip} vs {expected}");
    assert!((load(100.0) - mean).abs() < 1e-3, "ten away: the average, {}", load(100.0));
}

#[test]
fn requests_on_the_link_are_not_counted_as_the_instance_load() {
    let now = Instant::now();
    let mut balancer = registry::balancer("ert", &PolicyParams::default()).expect("registered");
    // An instance 80 ms away (processing 40 ms): nine of this gateway's requests in flight,
    // each taking 200 ms from send to response — 60 % of it at the instance, queue included.
    let mut i = InstanceLoad::new(1, 1);
    i.in_flight = 9;
    let response = Response {
        latency: Duration::from_millis(200),
        service_ms: Some(40.0),
        from_queue_proxy: true,
        reported_in_flight: Some(8),
        success: true,
        rtt_ms: Some(80.0),
    };
    feed_back(balancer.as_mut(), Some(&mut i), (1, 1, 0), &response, now);
    // The report's 8: this response's request and 60 % of the other eight of ours (4.8), so
    // about 2 of other gateways — not 8 − 9 = none.
    let seen = i.candidate(3, 80.0, now);
    assert_eq!(seen.in_flight, 9 + 2);
    // Expected at the instance: 60 % of ours (as measured: 200 ms, 80 on the link), and theirs.
    assert!((seen.load - (9.0 * 0.6 + 2.0)).abs() < 1e-9, "{seen:?}");
    // Without an RTT every request of ours counts as there, as before.
    let mut j = InstanceLoad::new(2, 1);
    j.in_flight = 9;
    feed_back(balancer.as_mut(), Some(&mut j), (2, 1, 0), &Response { rtt_ms: None, ..response }, now);
    assert_eq!(j.candidate(3, 80.0, now).in_flight, 9);
    // An RTT far above the truth (a prior) leaves at least the processing's share (40 of
    // 200 ms): 1 + 8 × 0.2 of ours, not 1 and seven phantom others.
    let mut k = InstanceLoad::new(3, 1);
    k.in_flight = 9;
    feed_back(balancer.as_mut(), Some(&mut k), (3, 1, 0), &Response { rtt_ms: Some(500.0), ..response }, now);
    assert_eq!(k.candidate(3, 500.0, now).in_flight, 9 + 5, "8 − 2.6, rounded");
}

/// 100 instances, one per node, node `j` at `j` ms from the origin (node 0).
fn a_hundred() -> (RttMatrix, Vec<InstanceLoad>) {
    let mut rtt = RttMatrix::new(100, 1.0, Duration::from_secs(30));
    for j in 1..100 {
        rtt.set_prior_symmetric(0, j, j as f64);
    }
    (rtt, (0..100).map(|j| InstanceLoad::new(j as u64, j)).collect())
}

#[test]
fn a_large_revision_is_weighed_by_its_nearest_and_a_few_at_random() {
    let now = Instant::now();
    let (rtt, instances) = a_hundred();
    let ctx = PickContext { origin: 0, rtt: &rtt, now, target_concurrency: 1.0, queued: 0, fresh: true };
    let (mut shortlist, mut scratch) = (Shortlist::new(7), PickScratch::default());
    let mut far_seen = std::collections::BTreeSet::<usize>::new();
    for _ in 0..50 {
        shortlist.fill(&mut scratch, &ctx, 1, &instances);
        assert_eq!(scratch.candidates.len(), SHORTLIST_ALL);
        let chosen: Vec<usize> = scratch.chosen.iter().map(|&(k, _)| k).collect();
        assert!(chosen.windows(2).all(|w| w[0] < w[1]), "in instance order, no repeats");
        assert!((0..SHORTLIST_NEAR).all(|k| chosen.contains(&k)), "the nearest, always");
        // Instance k is on node k, k ms away.
        assert!(scratch.candidates.iter().all(|c| c.rtt_ms == Some(c.node as f64)));
        far_seen.extend(chosen.into_iter().filter(|&k| k >= SHORTLIST_NEAR));
    }
    assert!(far_seen.len() > 50, "the far ones change from pick to pick: {}", far_seen.len());
    // Up to SHORTLIST_ALL instances, every one is weighed.
    shortlist.fill(&mut scratch, &ctx, 1, &instances[..SHORTLIST_ALL]);
    let chosen: Vec<usize> = scratch.chosen.iter().map(|&(k, _)| k).collect();
    assert_eq!(chosen, (0..SHORTLIST_ALL).collect::<Vec<_>>());
}

#[test]
fn the_nearest_are_the_lowest_rtts_ties_to_the_lower_index() {
    let now = Instant::now();
    let (mut rtt, instances) = a_hundred();
    // Thirteen distinct RTTs over a hundred nodes, out of order: many ties.
    for j in 1..100 {
        rtt.set_prior_symmetric(0, j, ((j * 7) % 13) as f64);
    }
    let ctx = PickContext { origin: 0, rtt: &rtt, now, target_concurrency: 1.0, queued: 0, fresh: true };
    let (mut shortlist, mut scratch) = (Shortlist::new(7), PickScratch::default());
    shortlist.fill(&mut scratch, &ctx, 1, &instances);
    let mut by_rtt: Vec<(f64, usize)> = (0..100).map(|k| (rtt.get(0, k, now), k)).collect();
    by_rtt.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut expected: Vec<usize> = by_rtt[..SHORTLIST_NEAR].iter().map(|&(_, k)| k).collect();
    expected.sort_unstable();
    let near: Vec<usize> = shortlist.near.iter().map(|&(k, _)| k).collect();
    assert_eq!(near, expected);
}

#[test]
fn a_large_revision_weighs_the_rtts_its_order_was_taken_from() {
    let now = Instant::now();
    let (mut rtt, instances) = a_hundred();
    let (mut shortlist, mut scratch) = (Shortlist::new(7), PickScratch::default());
    let rtt_to_node_1 =
        |scratch: &PickScratch| scratch.candidates.iter().find(|c| c.node == 1).and_then(|c| c.rtt_ms);
    shortlist.fill(
        &mut scratch,
        &PickContext { origin: 0, rtt: &rtt, now, target_concurrency: 1.0, queued: 0, fresh: true },
        1,
        &instances,
    );
    assert_eq!(rtt_to_node_1(&scratch), Some(1.0));
    rtt.record(0, 1, 9.0, now);
    let later = now + SHORTLIST_RESORT - Duration::from_millis(1);
    let ctx =
        PickContext { origin: 0, rtt: &rtt, now: later, target_concurrency: 1.0, queued: 0, fresh: true };
    shortlist.fill(&mut scratch, &ctx, 1, &instances);
    assert_eq!(rtt_to_node_1(&scratch), Some(1.0), "no lookup between sorts");
    let ctx = PickContext { now: now + SHORTLIST_RESORT, ..ctx };
    shortlist.fill(&mut scratch, &ctx, 1, &instances);
    assert_eq!(rtt_to_node_1(&scratch), Some(9.0), "taken again with the order");
}

#[test]
fn a_far_instance_with_room_is_found_when_the_nearest_are_full() {
    let now = Instant::now();
    let (rtt, mut instances) = a_hundred();
    // Full, the link's allowance included.
    for i in instances.iter_mut().filter(|i| i.node != 80) {
        i.in_flight = 1_000;
    }
    let ctx = PickContext { origin: 0, rtt: &rtt, now, target_concurrency: 1.0, queued: 0, fresh: true };
    let mut balancer = registry::balancer("even", &PolicyParams::default()).expect("registered");
    let (mut shortlist, mut scratch) = (Shortlist::new(7), PickScratch::default());
    let found =
        (0..100).find_map(|_| pick(balancer.as_mut(), &ctx, 1, &mut instances, &mut shortlist, &mut scratch));
    assert_eq!(found, Some(80));
    assert_eq!(instances[80].in_flight, 1);
}

#[test]
fn new_routes_are_sorted_again() {
    let now = Instant::now();
    let (rtt, mut instances) = a_hundred();
    let ctx = PickContext { origin: 0, rtt: &rtt, now, target_concurrency: 1.0, queued: 0, fresh: true };
    let (mut shortlist, mut scratch) = (Shortlist::new(7), PickScratch::default());
    shortlist.fill(&mut scratch, &ctx, 1, &instances);
    // The nearest instance moves far away: same count, so only `routes_changed` tells.
    instances[0].node = 99;
    instances[99].node = 0;
    shortlist.routes_changed();
    shortlist.fill(&mut scratch, &ctx, 1, &instances);
    assert!(scratch.chosen.iter().any(|&(k, rtt)| k == 99 && rtt == 0.0));
    assert_eq!(scratch.candidates.iter().find(|c| c.node == 0).map(|c| c.id), Some(99));
}

#[test]
fn a_queue_reported_once_fades_until_the_instance_is_heard_from_again() {
    let now = Instant::now();
    let mut balancer = registry::balancer("ert", &PolicyParams::default()).expect("registered");
    let mut instance = InstanceLoad::new(1, 0);
    // One answer, at a cold start, with five requests of others queued there.
    let response = Response {
        latency: Duration::from_millis(50),
        service_ms: Some(10.0),
        from_queue_proxy: true,
        reported_in_flight: Some(5),
        success: true,
        rtt_ms: None,
    };
    feed_back(balancer.as_mut(), Some(&mut instance), (1, 0, 0), &response, now);
    let load = |after: Duration| instance.candidate(1, 0.0, now + after).load;
    assert_eq!(load(Duration::ZERO), 5.0, "fresh: as reported");
    let stale = load(Duration::from_secs(1));
    assert!(stale < 5.0 && stale > 4.0, "the average, fading a little: {stale}");
    assert!(load(ESTIMATE_DECAY * 4) < 0.1, "faded: {}", load(ESTIMATE_DECAY * 4));
}

proptest::proptest! {
    #[test]
    fn the_nearest_are_the_first_of_the_rtts_sorted(
        rtts in proptest::collection::vec(proptest::prop_oneof![0.0..5.0f64, proptest::strategy::Just(1.0), proptest::strategy::Just(f64::NAN)], 0..60),
        keep in 0usize..30,
    ) {
        let mut sorted: Vec<(f64, usize)> = rtts.iter().enumerate().map(|(k, &r)| (r, k)).collect();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        sorted.truncate(keep);
        let mut out = Vec::new();
        nearest(&rtts, keep, &mut out);
        let bits = |v: &[(f64, usize)]| v.iter().map(|&(r, k)| (r.to_bits(), k)).collect::<Vec<_>>();
        proptest::prop_assert_eq!(bits(&out), bits(&sorted));
    }
}
