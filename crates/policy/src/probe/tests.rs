use std::collections::HashSet;

use proptest::prelude::*;

use super::*;

const SECOND: Duration = Duration::from_secs(1);

fn params(budget: usize, explore: usize) -> ProbeParams {
    ProbeParams { budget, explore, ..ProbeParams::default() }
}

/// `n` nodes, samples fresh for three intervals (the local fleet's setting).
fn matrix(n: usize) -> RttMatrix {
    RttMatrix::new(n, 1.0, 15 * SECOND)
}

fn all(n: usize) -> Vec<NodeIndex> {
    (0..n).collect()
}

fn count(plan: &[PlannedProbe], reason: ProbeReason) -> usize {
    plan.iter().filter(|p| p.reason == reason).count()
}

#[test]
fn new_routed_peers_go_at_once_and_the_rest_is_spread_over_the_interval() {
    let t0 = Instant::now();
    let mut planner = ProbePlanner::new(0, params(32, 4), 1);
    let needs = Needs { routed: &[3, 5], candidates: &[1, 2, 3] };
    let plan = planner.plan(t0, &needs, &all(100), &matrix(100));
    let urgent: Vec<_> = plan.iter().filter(|p| p.at < t0 + planner.params().urgent_window).collect();
    assert!(urgent.iter().any(|p| p.to == 3) && urgent.iter().any(|p| p.to == 5), "{plan:?}");
    assert_eq!(count(&plan, ProbeReason::New), 4, "routed 3, 5 and candidates 1, 2");
    assert_eq!(count(&plan, ProbeReason::Explore), 4);
    assert!(plan.iter().filter(|p| p.reason == ProbeReason::Explore).all(|p| ![1, 2, 3, 5].contains(&p.to)));
    // The six that are not urgent: one in each sixth of the interval, candidates first.
    let spread: Vec<_> = plan.iter().filter(|p| ![3, 5].contains(&p.to)).collect();
    assert_eq!(spread.len(), 6);
    for (k, p) in spread.iter().enumerate() {
        let slot = (p.at - t0).as_secs_f64() / 5.0 * 6.0;
        assert_eq!(slot.floor() as usize, k, "{plan:?}");
    }
    assert!(spread[0].to == 1 || spread[0].to == 2);
}

#[test]
fn a_needed_pair_is_measured_again_only_when_it_could_go_stale_before_the_next_round() {
    let t0 = Instant::now();
    let mut rtt = matrix(10);
    let now = t0 + 12 * SECOND;
    rtt.record(0, 1, 5.0, t0);
    rtt.record(0, 2, 5.0, now - 6 * SECOND);
    rtt.record(0, 3, 5.0, now - 4 * SECOND);
    let mut planner = ProbePlanner::new(0, params(32, 0), 1);
    let plan = planner.plan(now, &Needs { routed: &[1, 3], candidates: &[2] }, &all(10), &rtt);
    let reason = |to| plan.iter().find(|p| p.to == to).map(|p| p.reason);
    // Fresh for 15 s, rounds every 5 s: the next round's probe may go out 10 s from now, so a
    // sample 5 s old or more is measured now, a younger one waits.
    assert_eq!(reason(1), Some(ProbeReason::Stale));
    assert_eq!(reason(2), Some(ProbeReason::Stale));
    assert_eq!(reason(3), None);
    assert_eq!(plan.len(), 2);
    let at = |to| plan.iter().find(|p| p.to == to).unwrap().at;
    assert!(at(1) < now + planner.params().urgent_window, "a routed stale pair goes at once");
    // Measured every other round, a pair never goes stale.
    let mut rtt = matrix(10);
    let mut planner = ProbePlanner::new(0, params(32, 0), 2);
    for round in 0..12u32 {
        let start = t0 + 5 * SECOND * round;
        for p in planner.plan(start, &Needs { routed: &[], candidates: &[4] }, &all(10), &rtt) {
            assert!(round == 0 || rtt.is_fresh(0, 4, p.at), "round {round}");
            rtt.record(0, p.to, 1.0, p.at);
        }
        assert!(rtt.is_fresh(0, 4, start + 5 * SECOND), "round {round}");
    }
}

#[test]
fn more_needed_peers_than_budget_are_measured_in_turns() {
    let t0 = Instant::now();
    let mut rtt = matrix(200);
    let candidates: Vec<NodeIndex> = (1..101).collect();
    let mut planner = ProbePlanner::new(0, params(32, 4), 7);
    let mut measured = HashSet::new();
    for round in 0..4u32 {
        let now = t0 + 5 * SECOND * round;
        let plan = planner.plan(now, &Needs { routed: &[], candidates: &candidates }, &all(200), &rtt);
        // 28 needed and 4 drawn at random (fewer when a draw is a needed peer).
        assert!((28..=32).contains(&plan.len()), "{}", plan.len());
        assert_eq!(count(&plan, ProbeReason::Explore), 4, "coordinates keep being fed");
        for p in plan {
            rtt.record(0, p.to, 3.0, p.at);
            measured.insert(p.to);
        }
    }
    // 28 needed per round: 100 candidates in four rounds, none left out.
    assert!(candidates.iter().all(|c| measured.contains(c)));
}

#[test]
fn urgent_probes_come_from_what_the_round_has_left_and_are_not_repeated() {
    let t0 = Instant::now();
    let rtt = matrix(50);
    let mut planner = ProbePlanner::new(0, params(8, 2), 3);
    let peers = all(50);
    let plan = planner.plan(t0, &Needs { routed: &[], candidates: &[1, 2, 3, 4] }, &peers, &rtt);
    assert_eq!(plan.len(), 6);
    // Routes change: node 9 and four more now host instances; two probes are left this round.
    let routed = [9, 10, 11, 12, 13];
    let now = t0 + SECOND;
    let needs = Needs { routed: &routed, candidates: &[1, 2, 3, 4] };
    let urgent = planner.urgent(now, &needs, &peers, &rtt);
    assert_eq!(urgent.len(), 2, "{urgent:?}");
    assert!(urgent.iter().all(|p| p.at >= now && p.at < now + planner.params().urgent_window));
    assert!(urgent.iter().all(|p| p.reason == ProbeReason::New && routed.contains(&p.to)));
    assert!(planner.urgent(now, &needs, &peers, &rtt).is_empty(), "budget spent");
    // Next round: the budget is back; what was planned within the last interval waits for
    // the plan, the rest goes now.
    let later = t0 + 5 * SECOND;
    let again = planner.urgent(later, &needs, &peers, &rtt);
    assert_eq!(again.len(), 3, "{again:?}");
    assert!(again.iter().all(|p| !urgent.iter().any(|u| u.to == p.to)));
}

#[test]
fn a_node_that_joins_is_measured_and_one_that_leaves_is_not() {
    let t0 = Instant::now();
    let mut rtt = matrix(10);
    let mut planner = ProbePlanner::new(0, params(32, 4), 5);
    let peers: Vec<NodeIndex> = (0..10).collect();
    let plan = planner.plan(t0, &Needs { routed: &[4], candidates: &[] }, &peers, &rtt);
    for p in &plan {
        rtt.record(0, p.to, 2.0, p.at);
    }
    // Node 10 joins and gets an instance; node 4 leaves (gone from the peers and the matrix).
    rtt.grow(11, 1.0);
    rtt.forget(4);
    planner.forget(4);
    let peers: Vec<NodeIndex> = (0..11).filter(|&j| j != 4).collect();
    let now = t0 + 2 * SECOND;
    let needs = Needs { routed: &[4, 10], candidates: &[] };
    let urgent = planner.urgent(now, &needs, &peers, &rtt);
    assert_eq!(urgent.iter().map(|p| (p.to, p.reason)).collect::<Vec<_>>(), [(10, ProbeReason::New)]);
    let next = planner.plan(t0 + 5 * SECOND, &needs, &peers, &rtt);
    assert!(next.iter().all(|p| p.to != 4), "{next:?}");
}

#[test]
fn nearest_is_by_current_rtt_with_ties_to_the_lower_index() {
    let t0 = Instant::now();
    let mut rtt = matrix(6);
    rtt.set_prior(0, 4, 0.2);
    rtt.record(0, 5, 0.5, t0);
    assert_eq!(nearest(0, &all(6), 3, &rtt, t0), [4, 5, 1]);
    assert_eq!(nearest(0, &[0, 3, 2], 5, &rtt, t0), [2, 3]);
    assert!(nearest(0, &all(6), 0, &rtt, t0).is_empty());
}

proptest! {
    #[test]
    fn a_round_keeps_to_the_budget_and_the_interval(
        n in 1usize..60,
        me in 0usize..60,
        budget in 0usize..40,
        explore in 0usize..10,
        routed in prop::collection::vec(0usize..70, 0..50),
        candidates in prop::collection::vec(0usize..70, 0..50),
        sampled in prop::collection::vec((0usize..60, 0u32..30), 0..60),
        urgent_after in 0u32..8,
        seed: u64,
    ) {
        let me = me % n;
        let t0 = Instant::now();
        let now = t0 + 30 * SECOND;
        let mut rtt = matrix(n);
        for (to, ago) in sampled {
            rtt.record(me, to % n, 1.0, now - ago * SECOND);
        }
        // Every other node is a peer, so some needed nodes are not probe-able.
        let peers: Vec<NodeIndex> = (0..n).filter(|j| j % 2 == 0 || *j == me).collect();
        let mut planner = ProbePlanner::new(me, params(budget, explore), seed);
        let needs = Needs { routed: &routed, candidates: &candidates };
        let plan = planner.plan(now, &needs, &peers, &rtt);
        let later = now + SECOND * urgent_after;
        let urgent = planner.urgent(later, &needs, &peers, &rtt);
        let interval = planner.params().interval;
        let in_round = if later < now + interval { plan.len() + urgent.len() } else { urgent.len() };
        prop_assert!(in_round <= budget, "{} probes", in_round);
        let mut seen = HashSet::new();
        for p in &plan {
            prop_assert!(p.to != me && peers.contains(&p.to));
            prop_assert!(seen.insert(p.to), "{} twice", p.to);
            prop_assert!(p.at >= now && p.at < now + interval);
        }
        prop_assert!(plan.windows(2).all(|w| w[0].at <= w[1].at));
        for p in &urgent {
            prop_assert!(routed.contains(&p.to) && peers.contains(&p.to) && p.to != me);
            prop_assert!(matches!(p.reason, ProbeReason::New | ProbeReason::Stale));
        }
        // Routed peers that need a measurement are never left out while the budget has room.
        let needed: HashSet<NodeIndex> = routed.iter().chain(&candidates).copied()
            .filter(|j| *j != me && peers.contains(j)).collect();
        let urgent_routed = routed.iter().filter(|j| **j != me && peers.contains(j)
            && !rtt.is_fresh(me, **j, now + interval)).collect::<HashSet<_>>();
        if needed.len() + explore.min(budget / 2) <= budget {
            prop_assert!(urgent_routed.iter().all(|j| plan.iter().any(|p| p.to == **j)));
        }
    }
}
