use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::registry::{self, PolicyParams};

pub(crate) fn cand(id: u64, node: usize, in_flight: u32, capacity: u32) -> Candidate {
    Candidate {
        id,
        node,
        in_flight,
        own: in_flight,
        capacity,
        slots: capacity,
        load: f64::from(in_flight),
        service_time_ms: None,
        held_ms: None,
        rtt_ms: None,
    }
}

/// node0, node1 (cloud, 0.5 ms apart) and node2 (edge, 50 ms from both).
pub(crate) fn edge_cloud() -> RttMatrix {
    let mut m = RttMatrix::new(3, 0.5, Duration::from_secs(30));
    m.set_prior_symmetric(0, 2, 50.0);
    m.set_prior_symmetric(1, 2, 50.0);
    m
}

/// node0 and node1 `ms` apart (each 0 from itself).
fn two_nodes(ms: f64) -> RttMatrix {
    let mut rtt = RttMatrix::new(2, ms, Duration::from_secs(30));
    rtt.set_prior(0, 0, 0.0);
    rtt.set_prior(1, 1, 0.0);
    rtt
}

/// `c` with its processing time and, if given, how long this gateway's requests hold a slot.
fn timed(mut c: Candidate, service_ms: f64, held_ms: Option<f64>) -> Candidate {
    c.service_time_ms = Some(service_ms);
    c.held_ms = held_ms;
    c
}

/// `ert` with a wait in its own queue counted at its mean (the arithmetic of most tests here).
fn ert_at_mean() -> ErtBalancer {
    ErtBalancer::new(ErtParams { waiting_weight: 1.0, ..ErtParams::default() })
}

fn ctx(rtt: &RttMatrix, origin: usize, now: Instant) -> PickContext<'_> {
    PickContext { origin, rtt, now, target_concurrency: 10.0, queued: 0, fresh: true }
}

#[test]
fn even_unlimited_concurrency_prefers_fewer_in_flight_of_two() {
    let rtt = edge_cloud();
    let mut b = EvenBalancer::new(1);
    let cs = [cand(1, 0, 5, 0), cand(2, 1, 1, 0)];
    for _ in 0..50 {
        assert_eq!(b.pick(&ctx(&rtt, 2, Instant::now()), &cs), Some(1));
    }
    // With many candidates every one gets picked sometimes (random pairs), never the busiest.
    let cs: Vec<_> = (0..6).map(|i| cand(i, 0, if i == 5 { 100 } else { 0 }, 0)).collect();
    let mut seen = [0u32; 6];
    for _ in 0..600 {
        seen[b.pick(&ctx(&rtt, 0, Instant::now()), &cs).unwrap()] += 1;
    }
    assert!(seen[..5].iter().all(|&n| n > 50), "{seen:?}");
    assert_eq!(seen[5], 0);
}

#[test]
fn even_small_concurrency_takes_the_first_available() {
    let rtt = edge_cloud();
    let mut b = EvenBalancer::new(1);
    let cs = [cand(1, 0, 2, 2), cand(2, 1, 1, 2), cand(3, 2, 0, 2)];
    assert_eq!(b.pick(&ctx(&rtt, 2, Instant::now()), &cs), Some(1), "edge origin still gets node1");
    let full = [cand(1, 0, 2, 2), cand(2, 1, 2, 2)];
    assert_eq!(b.pick(&ctx(&rtt, 2, Instant::now()), &full), None);
}

#[test]
fn even_large_concurrency_round_robins_skipping_full() {
    let rtt = edge_cloud();
    let mut b = EvenBalancer::new(1);
    let cs = [cand(1, 0, 0, 10), cand(2, 1, 10, 10), cand(3, 2, 3, 10)];
    let picks: Vec<_> = (0..4).map(|_| b.pick(&ctx(&rtt, 0, Instant::now()), &cs).unwrap()).collect();
    assert_eq!(picks, [0, 2, 0, 2]);
}

#[test]
fn faast_weights_are_inverse_response_times_and_sum_to_one() {
    let rtt = edge_cloud();
    let t0 = Instant::now();
    let mut b = FaastBalancer::new(Duration::from_secs(2), 7);
    let cs = [cand(1, 0, 0, 0), cand(2, 1, 0, 0), cand(3, 2, 0, 0)];
    b.pick(&ctx(&rtt, 2, t0), &cs);
    let w = b.weights(2).to_vec();
    // r = (50, 50, 0.1 for the zero diagonal): weights ∝ (0.02, 0.02, 10).
    let expected = [0.02 / 10.04, 0.02 / 10.04, 10.0 / 10.04];
    for (a, e) in w.iter().zip(expected) {
        assert!((a - e).abs() < 1e-12, "{w:?}");
    }
    for origin in 0..3 {
        assert!((b.weights(origin).iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
}

#[test]
fn faast_recomputes_only_every_period_with_mean_processing_time() {
    let rtt = edge_cloud();
    let t0 = Instant::now();
    let mut b = FaastBalancer::new(Duration::from_secs(2), 7);
    let cs = [cand(1, 0, 0, 0), cand(3, 2, 0, 0)];
    b.pick(&ctx(&rtt, 2, t0), &cs);
    let before = b.weights(2).to_vec();
    // The edge node turns slow: 100 ms per request.
    for _ in 0..10 {
        b.observe(&Completion {
            id: 3,
            node: 2,
            origin: 2,
            latency: Duration::from_millis(100),
            service_time: Some(Duration::from_millis(100)),
            reported_in_flight: None,
            success: true,
            now: t0,
        });
    }
    b.pick(&ctx(&rtt, 2, t0 + Duration::from_millis(1999)), &cs);
    assert_eq!(b.weights(2), &before[..], "stale until the period ends");
    b.pick(&ctx(&rtt, 2, t0 + Duration::from_secs(2)), &cs);
    let after = b.weights(2);
    // r = (50 + 0, –, 0 + 100): node0 now gets 2/3.
    assert!((after[0] - 2.0 / 3.0).abs() < 1e-9, "{after:?}");
    assert_eq!(after[1], 0.0, "no instance on node1: masked");
}

#[test]
fn faast_draws_nodes_by_weight_and_round_robins_inside() {
    let mut rtt = RttMatrix::new(2, 10.0, Duration::from_secs(30));
    rtt.set_prior(0, 0, 10.0);
    let t0 = Instant::now();
    let mut b = FaastBalancer::new(Duration::from_secs(2), 11);
    // Both nodes at r = 10 ms: 50/50. Node 1 has two instances used alternately.
    let cs = [cand(1, 0, 0, 0), cand(2, 1, 0, 0), cand(3, 1, 0, 0)];
    let mut counts = [0u32; 3];
    let mut on_node1 = Vec::new();
    for _ in 0..2000 {
        let i = b.pick(&ctx(&rtt, 0, t0), &cs).unwrap();
        counts[i] += 1;
        if i > 0 {
            on_node1.push(i);
        }
    }
    assert!((900..1100).contains(&counts[0]), "{counts:?}");
    assert!(on_node1.windows(2).all(|w| w[0] != w[1]), "round-robin inside node 1");
}

#[test]
fn faast_without_instances_keeps_traffic_local_and_falls_back_when_full() {
    let rtt = edge_cloud();
    let t0 = Instant::now();
    let mut b = FaastBalancer::new(Duration::from_secs(2), 3);
    assert_eq!(b.pick(&ctx(&rtt, 2, t0), &[]), None);
    assert_eq!(b.weights(2), &[0.0, 0.0, 1.0]);
    // Instances appear only on node 0 within the stale period: the fallback still finds them.
    let cs = [cand(1, 0, 0, 5)];
    assert_eq!(b.pick(&ctx(&rtt, 2, t0 + Duration::from_millis(10)), &cs), Some(0));
}

#[test]
fn ert_stays_local_at_low_load() {
    let rtt = edge_cloud();
    let mut b = ErtBalancer::new(ErtParams::default());
    let cs = [cand(1, 0, 0, 0), cand(2, 1, 0, 0), cand(3, 2, 4, 0), cand(4, 2, 3, 0)];
    for _ in 0..10 {
        let i = b.pick(&ctx(&rtt, 2, Instant::now()), &cs).unwrap();
        assert_eq!(cs[i].node, 2);
    }
    assert_eq!(b.pick(&ctx(&rtt, 2, Instant::now()), &cs), Some(3), "fewer in flight wins a tie");
}

#[test]
fn ert_rotates_between_equal_instances() {
    let rtt = edge_cloud();
    let mut b = ErtBalancer::new(ErtParams::default());
    let cs = [cand(1, 2, 0, 0), cand(2, 2, 0, 0), cand(3, 2, 0, 0)];
    let picks: Vec<_> = (0..6).map(|_| b.pick(&ctx(&rtt, 2, Instant::now()), &cs).unwrap()).collect();
    assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
}

#[test]
fn ert_waits_for_a_local_slot_while_the_queue_is_short_and_spills_when_it_is_long() {
    let rtt = edge_cloud();
    let t0 = Instant::now();
    let mut b = ert_at_mean();
    // Local instance full (cc 10), processing 4 ms; a cloud instance with room 50 ms away.
    let mut local = cand(1, 2, 10, 10);
    local.service_time_ms = Some(4.0);
    let mut cloud = cand(2, 0, 0, 10);
    cloud.service_time_ms = Some(4.0);
    let cs = [local, cloud];
    let mut c = ctx(&rtt, 2, t0);
    c.queued = 5;
    assert_eq!(b.pick(&c, &cs), None, "10 answered per 4 ms: a 5.5 × 0.4 ms wait beats 50 ms");
    c.queued = 200;
    assert_eq!(b.pick(&c, &cs), Some(1), "200.5 × 0.4 ms = 80 ms wait: go to the cloud");
}

#[test]
fn ert_counts_the_wait_in_how_long_slots_are_really_held() {
    let rtt = edge_cloud();
    let mut b = ert_at_mean();
    // One local slot (cc 1), processing 4 ms; a cloud instance with room.
    let mut local = cand(1, 2, 1, 1);
    local.service_time_ms = Some(4.0);
    let mut cloud = cand(2, 0, 0, 10);
    cloud.service_time_ms = Some(4.0);
    let mut c = ctx(&rtt, 2, Instant::now());
    c.queued = 7;
    assert_eq!(b.pick(&c, &[local, cloud]), None, "7.5 × 4 ms = 30 ms + 4 beats 54 ms");
    // A busy machine: the gateway sees each local request hold its slot for 9 ms.
    local.held_ms = Some(9.0);
    assert_eq!(b.pick(&c, &[local, cloud]), Some(1), "7.5 × 9 ms = 67.5 ms: the trip is cheaper");
}

/// An edge's instance (node 2, one slot, 10 ms) busy with one of this gateway's requests, and an
/// idle one at the cloud (node 0, one slot, 10 ms), 50 ms away.
fn busy_edge_idle_cloud() -> (Candidate, Candidate) {
    let local = timed(cand(1, 2, 1, 1), 10.0, Some(10.0));
    let mut cloud = timed(cand(2, 0, 0, 3), 10.0, None);
    cloud.slots = 1;
    (local, cloud)
}

#[test]
fn an_overloaded_edge_keeps_serving_its_own_users_up_to_the_point_where_waiting_exceeds_the_trip() {
    let rtt = edge_cloud();
    let mut b = ert_at_mean();
    // The edge's only slot is busy with one of its own users (10 ms); the cloud, 50 ms away, is idle.
    let (local, mut cloud) = busy_edge_idle_cloud();
    let mut c = ctx(&rtt, 2, Instant::now());
    // Waiting behind q others costs (q + ½) × 10 ms, the trip 50 ms: wait while q ≤ 4.
    for queued in 0..=4 {
        c.queued = queued;
        assert_eq!(b.pick(&c, &[local, cloud]), None, "{queued} queued: wait at home");
    }
    c.queued = 5;
    assert_eq!(b.pick(&c, &[local, cloud]), Some(1), "55 ms of waiting: the trip is cheaper");
    // The cloud's instance has a queue of its own (2 beyond its slot, as it reported): half a
    // processing time for the one it serves and one for each queued, 25 ms more there, so the
    // edge keeps two more at home.
    cloud.in_flight = 3;
    cloud.load = 3.0;
    cloud.capacity = 4;
    for queued in 5..=6 {
        c.queued = queued;
        assert_eq!(b.pick(&c, &[local, cloud]), None, "{queued} queued: the cloud queues too");
    }
}

#[test]
fn by_default_each_request_queued_ahead_counts_five_times_against_the_trip() {
    let rtt = edge_cloud();
    assert_eq!(ErtParams::default().waiting_weight, 5.0);
    let mut b = ErtBalancer::new(ErtParams::default());
    let (local, cloud) = busy_edge_idle_cloud();
    let mut c = ctx(&rtt, 2, Instant::now());
    // Waiting behind q others: (5q + ½) × 10 ms, then 10 ms of processing; the cloud 60 ms.
    c.queued = 0;
    assert_eq!(b.pick(&c, &[local, cloud]), None, "the next answer, at its mean: wait at home");
    c.queued = 1;
    assert_eq!(b.pick(&c, &[local, cloud]), Some(1), "15 ms of waiting, counted as 55: the trip");
}

#[test]
fn requests_queued_at_an_instance_count_as_those_queued_at_home_its_busy_slots_at_their_mean() {
    // node0 (the origin), node1 10 ms away, node2 30 ms away.
    let mut rtt = RttMatrix::new(3, 30.0, Duration::from_secs(30));
    rtt.set_prior_symmetric(0, 1, 10.0);
    let c = ctx(&rtt, 0, Instant::now());
    // node1's one slot (10 ms) is busy with another gateway's request; the link leaves this
    // gateway room to send. node2's is idle: 40 ms.
    let mut near = timed(cand(1, 1, 0, 3), 10.0, None);
    (near.slots, near.load) = (1, 1.0);
    let far = timed(cand(2, 2, 0, 1), 10.0, None);
    let (mut weighted, mut at_mean) = (ErtBalancer::new(ErtParams::default()), ert_at_mean());
    // The busy slot at its mean: 10 + ½ × 10 + 10 = 25 ms (weighted too, it would be 45).
    assert_eq!(weighted.pick(&c, &[near, far]), Some(0), "25 < 40");
    // One more request queued there: 10 + (½ + 1) × 10 + 10 = 35 ms at its mean, but a queue read
    // from a report a trip old, that other gateways read too, counts as a queue at home does.
    near.load = 2.0;
    assert_eq!(at_mean.pick(&c, &[near, far]), Some(0), "35 < 40");
    assert_eq!(weighted.pick(&c, &[near, far]), Some(1), "10 + (½ + 5) × 10 + 10 = 75 > 40");
}

#[test]
fn only_full_instances_worth_waiting_for_set_how_fast_a_wait_ends() {
    let rtt = edge_cloud();
    let mut b = ert_at_mean();
    // At home one busy slot answers every 10 ms. At the cloud, 50 ms away: one instance full of
    // this gateway's requests (30 in flight, a queue of 2 beyond its 10 slots: 62 ms), answering
    // one every 2 ms, and an idle one (60 ms).
    let (local, _) = busy_edge_idle_cloud();
    let mut busy = timed(cand(2, 0, 30, 30), 10.0, Some(60.0));
    busy.slots = 10;
    busy.load = 12.0;
    let mut idle = timed(cand(3, 1, 0, 3), 10.0, None);
    idle.slots = 1;
    let mut c = ctx(&rtt, 2, Instant::now());
    // A slot freeing at the busy cloud instance is one a waiting request would not take (the idle
    // one is cheaper): the wait is (q + ½) × 10 ms at home, not (q + ½) / 0.6.
    c.queued = 4;
    assert_eq!(b.pick(&c, &[local, busy, idle]), None, "45 + 10 ms beats 60");
    c.queued = 5;
    assert_eq!(b.pick(&c, &[local, busy, idle]), Some(2), "55 + 10 ms: the idle cloud instance");
}

#[test]
fn waiting_costs_the_full_instances_by_the_rate_each_frees_slots_at() {
    // node0 (the origin), node1 10 ms away, node2 50 ms away.
    let mut rtt = RttMatrix::new(3, 50.0, Duration::from_secs(30));
    rtt.set_prior_symmetric(0, 1, 10.0);
    let mut b = ert_at_mean();
    // Full: home (10 ms once a slot frees, one answer every 10 ms) and node1 (20 ms, one every
    // 30 ms); idle: node2 (60 ms).
    let home = timed(cand(1, 0, 1, 1), 10.0, Some(10.0));
    let near = timed(cand(2, 1, 1, 1), 10.0, Some(30.0));
    let far = timed(cand(3, 2, 0, 1), 10.0, None);
    let mut c = ctx(&rtt, 0, Instant::now());
    // Slots free at 2/15 a ms, three in four at home: waiting costs 12.5 ms on average, plus
    // (q + ½) × 7.5 ms.
    c.queued = 5;
    assert_eq!(b.pick(&c, &[home, near, far]), None, "12.5 + 41.25 < 60");
    c.queued = 6;
    assert_eq!(b.pick(&c, &[home, near, far]), Some(2), "12.5 + 48.75 > 60 (home's 10 would not be)");
}

#[test]
fn in_sustained_overload_the_home_queue_is_held_to_one_request_a_slot() {
    let rtt = edge_cloud();
    let mut b = ert_at_mean();
    // The edge's one slot answers this gateway's requests every 10 ms.
    let (local, cloud) = busy_edge_idle_cloud();
    let t0 = Instant::now();
    let at = |ms: u64, queued: u32| PickContext { queued, ..ctx(&rtt, 2, t0 + Duration::from_millis(ms)) };
    // New requests every 12 ms, slower than it answers: one that finds three ahead waits while
    // that beats the trip ((3 + ½) × 10 + 10 = 45 < 60 ms).
    for k in 0..200 {
        assert_eq!(b.pick(&at(k * 12, 3), &[local, cloud]), None, "request {k}");
    }
    // Every 8 ms, faster than it answers: a new request that finds one ahead takes the trip,
    // though waiting would be shorter for it; one that finds none waits.
    for k in 0..200 {
        let _ = b.pick(&at(2_400 + k * 8, 0), &[local, cloud]);
    }
    assert_eq!(b.pick(&at(4_000, 1), &[local, cloud]), Some(1), "(1 + ½) × 10 ms would beat 60 ms");
    assert_eq!(b.pick(&at(4_008, 0), &[local, cloud]), None);
    // A request already waiting is weighed as before.
    let head = PickContext { fresh: false, ..at(4_010, 3) };
    assert_eq!(b.pick(&head, &[local, cloud]), None);
    // After a lull, a new request that finds the queue long waits.
    assert_eq!(b.pick(&at(10_000, 3), &[local, cloud]), None);
}

#[test]
fn two_sites_one_trip_apart_wait_for_their_own_busy_instance_rather_than_cross() {
    // node0 and node1 are 15 ms apart, each with one instance (10 ms, containerConcurrency 1)
    // busy half the time with its own users. node0's instance is busy now.
    let rtt = two_nodes(15.0);
    let mut b = ert_at_mean();
    let mut home = cand(1, 0, 1, 1);
    home.service_time_ms = Some(10.0);
    home.held_ms = Some(10.0);
    // Seen from node0: room by the link's allowance, and the other site's users there half the
    // time on average.
    let mut other = cand(2, 1, 0, 3);
    other.slots = 1;
    other.load = 0.5;
    other.service_time_ms = Some(10.0);
    let mut c = ctx(&rtt, 0, Instant::now());
    // Home: 5 ms for the slot + 10; across: 15 + 2.5 ms (busy half the time, half a
    // processing time left) + 10.
    for queued in 0..=1 {
        c.queued = queued;
        assert_eq!(b.pick(&c, &[home, other]), None, "{queued} queued: wait at home");
    }
    c.queued = 2;
    assert_eq!(b.pick(&c, &[home, other]), Some(1), "25 ms of waiting: cross");
    // Had node0 not counted the other site's own users, it would cross with one queued.
    other.load = 0.0;
    c.queued = 1;
    assert_eq!(b.pick(&c, &[home, other]), Some(1));
}

/// node0 and node1 2.5 ms apart; instances of 50 ms. At node0 two instances of two slots, one of
/// this gateway's requests in each; at node1 one idle instance.
fn two_home_instances_half_busy_and_a_neighbour() -> (RttMatrix, [Candidate; 3]) {
    let rtt = two_nodes(2.5);
    let home = |id| Candidate { slots: 2, ..timed(cand(id, 0, 1, 2), 50.0, Some(50.0)) };
    let neighbour = Candidate { slots: 2, ..timed(cand(3, 1, 0, 3), 50.0, None) };
    (rtt, [home(1), home(2), neighbour])
}

#[test]
fn a_home_slot_left_free_by_the_requests_counted_there_is_free() {
    let (rtt, cs) = two_home_instances_half_busy_and_a_neighbour();
    let mut b = ErtBalancer::new(ErtParams::default());
    // Home: 50 ms, a slot free for sure. Guessing a busy slot at home from one request in two
    // (¼ × ½ × 25 ms) made it 53.1 ms, and the neighbour's 52.5 took the site's users.
    for _ in 0..4 {
        assert_ne!(b.pick(&ctx(&rtt, 0, Instant::now()), &cs), Some(2));
    }
}

#[test]
fn at_a_home_instance_a_neighbours_steady_overflow_counts_and_a_trickle_barely() {
    let (rtt, [mut home, _, neighbour]) = two_home_instances_half_busy_and_a_neighbour();
    let mut b = ErtBalancer::new(ErtParams::default());
    let c = ctx(&rtt, 0, Instant::now());
    // Other gateways' requests hold the free slot 60 % of the time, on their recent average:
    // 50 + 0.6² × ½ × 25 = 54.5 ms against the neighbour's 52.5.
    home.load = 1.6;
    assert_eq!(b.pick(&c, &[home, neighbour]), Some(1));
    // A trickle (10 %): 50.1 ms, home.
    home.load = 1.1;
    assert_eq!(b.pick(&c, &[home, neighbour]), Some(0));
}

/// node0 and node1 3.8 ms apart, an instance of one 50 ms slot at each: node0's holding
/// `own` of node0's requests, node1's idle.
fn one_slot_home_and_an_idle_neighbour(own: u32) -> (RttMatrix, [Candidate; 2]) {
    let rtt = two_nodes(3.8);
    let home = timed(cand(1, 0, own, 1), 50.0, Some(50.0));
    let neighbour = Candidate { slots: 1, ..timed(cand(2, 1, 0, 2), 50.0, None) };
    (rtt, [home, neighbour])
}

#[test]
fn a_busy_home_slot_is_waited_for_when_its_request_is_nearly_done() {
    let mut b = ErtBalancer::new(ErtParams::default());
    let t0 = Instant::now();
    let (rtt, idle) = one_slot_home_and_an_idle_neighbour(0);
    assert_eq!(b.pick(&ctx(&rtt, 0, t0), &idle), Some(0), "the idle home slot, taken at t0");
    let (_, busy) = one_slot_home_and_an_idle_neighbour(1);
    let at = |ms| ctx(&rtt, 0, t0 + Duration::from_millis(ms));
    // 48 ms into 50: free in 2 ms, 52 ms in all, against the neighbour's 53.8.
    assert_eq!(b.pick(&at(48), &busy), None);
    // 10 ms in: 40 ms to wait; cross.
    assert_eq!(b.pick(&at(10), &busy), Some(1));
    // Its answer came at 40 ms and a second request of this gateway holds the slot since: 8 ms in.
    let done = Completion {
        id: 1,
        node: 0,
        origin: 0,
        latency: Duration::from_millis(40),
        service_time: Some(Duration::from_millis(40)),
        reported_in_flight: Some(2),
        success: true,
        now: t0 + Duration::from_millis(40),
    };
    b.observe(&done);
    assert_eq!(b.pick(&at(48), &busy), Some(1));
}

#[test]
fn a_busy_home_slot_whose_start_is_unknown_is_waited_for_at_half_a_processing_time() {
    // Never picked here (the balancer does not know when the request holding it started): 25 ms
    // of wait on average, 75 ms in all; cross at any moment.
    let mut b = ErtBalancer::new(ErtParams::default());
    let (rtt, busy) = one_slot_home_and_an_idle_neighbour(1);
    assert_eq!(b.pick(&ctx(&rtt, 0, Instant::now()), &busy), Some(1));
}

#[test]
fn ert_spills_when_unlimited_instances_are_overloaded() {
    let rtt = edge_cloud();
    let mut b = ErtBalancer::new(ErtParams::default());
    let mut local = cand(1, 2, 9, 0);
    local.service_time_ms = Some(5.0);
    let mut cloud = cand(2, 0, 0, 0);
    cloud.service_time_ms = Some(5.0);
    // target 10: 9 in flight → 5 ms; local wins.
    assert_eq!(b.pick(&ctx(&rtt, 2, Instant::now()), &[local, cloud]), Some(0));
    // 150 in flight: 5 × 151/10 = 75.5 ms > 55 ms in the cloud.
    local.in_flight = 150;
    assert_eq!(b.pick(&ctx(&rtt, 2, Instant::now()), &[local, cloud]), Some(1));
}

#[test]
fn ert_learns_node_processing_times_from_feedback() {
    let rtt = RttMatrix::new(2, 10.0, Duration::from_secs(30));
    let t0 = Instant::now();
    let mut b = ErtBalancer::new(ErtParams::default());
    let cs = [cand(1, 0, 0, 0), cand(2, 1, 0, 0)];
    // Origin 0 is local to node 0 (rtt 0), but node 0 takes 40 ms per request; node 1 takes 1 ms.
    for (node, ms) in [(0, 40), (1, 1)] {
        b.observe(&Completion {
            id: node as u64 + 1,
            node,
            origin: 0,
            latency: Duration::from_millis(ms),
            service_time: None,
            reported_in_flight: None,
            success: true,
            now: t0,
        });
    }
    assert_eq!(b.pick(&ctx(&rtt, 0, t0), &cs), Some(1), "10 + 1 ms beats 0 + 40 ms");
}

fn arb_candidates() -> impl Strategy<Value = (Vec<Candidate>, usize, u32)> {
    (prop::sample::select(vec![0u32, 1, 2, 3, 4, 10]), 1usize..24, 0usize..3, 0u32..50).prop_flat_map(
        |(capacity, n, origin, queued)| {
            let one = (0usize..3, 0u32..14, prop::option::of(0.5f64..80.0)).prop_map(
                move |(node, in_flight, st)| {
                    let in_flight = if capacity > 0 { in_flight.min(capacity) } else { in_flight };
                    Candidate {
                        id: 0,
                        node,
                        in_flight,
                        own: in_flight,
                        capacity,
                        slots: capacity,
                        load: f64::from(in_flight),
                        service_time_ms: st,
                        held_ms: None,
                        rtt_ms: None,
                    }
                },
            );
            (prop::collection::vec(one, n), Just(origin), Just(queued))
        },
    )
}

proptest! {
    #[test]
    fn no_balancer_chooses_a_full_instance((mut cs, origin, queued) in arb_candidates(), seed in 0u64..1000, steps in 1usize..5) {
        for (i, c) in cs.iter_mut().enumerate() {
            c.id = i as u64 * 3 + 1;
        }
        let rtt = edge_cloud();
        let t0 = Instant::now();
        let params = PolicyParams { seed, ..PolicyParams::default() };
        for entry in registry::BALANCERS {
            let mut b = (entry.build)(&params);
            for step in 0..steps {
                let c = PickContext { origin, rtt: &rtt, now: t0 + Duration::from_secs(step as u64), target_concurrency: 7.0, queued, fresh: true };
                let pick = b.pick(&c, &cs);
                if let Some(i) = pick {
                    prop_assert!(cs[i].has_room(), "{} chose full instance {:?}", entry.name, cs[i]);
                }
                let any_room = cs.iter().any(Candidate::has_room);
                let all_room = cs.iter().all(Candidate::has_room);
                if entry.name == "ert" {
                    // ert may choose to wait for a full instance, but never when none is full.
                    prop_assert!(!all_room || pick.is_some());
                } else {
                    prop_assert_eq!(any_room, pick.is_some(), "{}", entry.name);
                }
                if let Some(i) = pick {
                    cs[i].in_flight += 1;
                }
            }
        }
    }

    #[test]
    fn faast_rows_always_sum_to_one(rtts in prop::collection::vec(0.0f64..200.0, 9), nodes_with in prop::collection::vec(0usize..3, 0..6)) {
        let mut rtt = RttMatrix::new(3, 1.0, Duration::from_secs(30));
        for i in 0..3 { for j in 0..3 { rtt.set_prior(i, j, rtts[i * 3 + j]); } }
        let cs: Vec<_> = nodes_with.iter().enumerate().map(|(i, &n)| cand(i as u64, n, 0, 0)).collect();
        let mut b = FaastBalancer::new(Duration::from_secs(2), 1);
        b.pick(&ctx(&rtt, 0, Instant::now()), &cs);
        for origin in 0..3 {
            let sum: f64 = b.weights(origin).iter().sum();
            prop_assert!((sum - 1.0).abs() < 1e-9, "row {} sums to {}", origin, sum);
            prop_assert!(b.weights(origin).iter().all(|w| (0.0..=1.0).contains(w)));
        }
    }
}
