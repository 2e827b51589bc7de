//! The all-local ideal: what an origin's users would see if every one of their requests were
//! served at their own site, by that site's own slots (capacity × containerConcurrency), first
//! come first served, with no link crossed — a local-only M/G/c queue fed the very requests the
//! runs were fed. The sweep judges `ours` against it at light load.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use ikukantai_eval::report::percentile;
use ikukantai_eval::scenario::Scenario;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::events::span;
use crate::load::{Generator, Offered, replay};
use crate::model::Model;

/// One request offered to the local queue (ms): when it arrives, how long it holds a slot, and
/// whether it counts towards the percentile (warm-up requests queue but are not measured).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Job {
    /// Arrival (ms).
    pub arrival_ms: f64,
    /// Time it holds a slot (ms).
    pub service_ms: f64,
    /// Measured.
    pub measured: bool,
}

/// The p90 response time of `jobs` (in arrival order) served FIFO by `slots` slots, each response
/// costing `fixed_ms` beyond its wait and service; `None` when nothing is measured.
pub fn fifo_p90(jobs: &[Job], slots: usize, fixed_ms: f64) -> Option<f64> {
    p90(fifo_times(jobs, slots, fixed_ms))
}

/// The p90 of `times`; `None` for none.
fn p90(mut times: Vec<f64>) -> Option<f64> {
    times.sort_by(f64::total_cmp);
    (!times.is_empty()).then(|| percentile(&times, 0.9))
}

/// The measured jobs' response times, as [`fifo_p90`] takes them.
fn fifo_times(jobs: &[Job], slots: usize, fixed_ms: f64) -> Vec<f64> {
    // When each slot frees, earliest first: as the bits of a non-negative f64, which order as
    // the values do.
    let mut free: BinaryHeap<Reverse<u64>> = (0..slots.max(1)).map(|_| Reverse(0f64.to_bits())).collect();
    let mut times = Vec::new();
    for job in jobs {
        let Reverse(slot_free) = free.pop().expect("at least one slot");
        let start = job.arrival_ms.max(f64::from_bits(slot_free));
        let finish = start + job.service_ms.max(0.0);
        free.push(Reverse(finish.to_bits()));
        if job.measured {
            times.push(finish - job.arrival_ms + fixed_ms);
        }
    }
    times
}

/// Whether every origin's demand at level `level` fits its own site: the load it offers over the
/// measured time keeps fewer instances busy than the site holds (each function's requests over
/// its containerConcurrency, each holding a slot for its mean work and timer lateness).
pub fn fits_locally(s: &Scenario, level: usize, model: &Model) -> bool {
    let (warmup, duration) = (s.load.warmup.0.as_secs_f64(), s.load.duration.0.as_secs_f64());
    let mut busy = vec![0.0; s.topology.nodes.len()];
    for stream in s.streams(s.load.users[level]) {
        let f = &s.functions()[stream.function];
        let (lo, hi) = f.work_ms();
        let hold_s = ((lo + hi) / 2.0 + model.timer_ms / 2.0) / 1e3;
        let rate = stream.curve.expected(warmup, warmup + duration) / duration.max(1e-9);
        busy[stream.origin] += rate * hold_s / f64::from(f.container_concurrency.max(1));
    }
    busy.iter().zip(&s.topology.nodes).all(|(b, n)| *b < f64::from(n.capacity))
}

/// The all-local ideal p90 of each origin at level `level` of a one-function scenario, as
/// (origin node index, p90 ms): that origin's requests exactly as the simulation drew them for
/// each of `seeds` (pooled, as the runs' are), each holding a slot for its work plus a timer
/// lateness drawn as the model draws it, each response costing a local request's hops and client
/// time. `None` with several functions (they would share a site's slots in ways a per-function
/// queue does not capture).
pub fn all_local_p90(s: &Scenario, level: usize, seeds: &[u64], model: &Model) -> Option<Vec<(usize, f64)>> {
    let [f] = s.functions() else { return None };
    let slots = |origin: usize| (s.topology.nodes[origin].capacity * f.container_concurrency.max(1)) as usize;
    let fixed_ms = 2.0 * model.hop_ms + model.client_ms;
    let measure_from = span(s.load.warmup.0);
    let end = measure_from + span(s.load.duration.0);
    let mut out = Vec::new();
    for stream in s.streams(s.load.users[level]) {
        let jobs = |seed: u64| -> Vec<Job> {
            let g = Generator::new(
                seed,
                stream.origin as u32,
                stream.function as u32,
                level as u32,
                stream.curve.clone(),
                f.work_ms(),
                0,
                measure_from,
                end,
            );
            let mut late = SmallRng::seed_from_u64(seed ^ 0x1dea_0000 ^ stream.origin as u64);
            replay(g)
                .into_iter()
                .map(|Offered { arrival, work_ms, measured }| Job {
                    arrival_ms: arrival as f64 / 1e6,
                    service_ms: work_ms + lateness(&mut late, model),
                    measured,
                })
                .collect()
        };
        let times = seeds.iter().flat_map(|&seed| fifo_times(&jobs(seed), slots(stream.origin), fixed_ms));
        if let Some(p90) = p90(times.collect()) {
            out.push((stream.origin, p90));
        }
    }
    Some(out)
}

/// How late the function's millisecond timer wakes it, as the queue proxy's model draws it.
fn lateness(rng: &mut SmallRng, model: &Model) -> f64 {
    if model.timer_ms > 0.0 { rng.random_range(0.0..model.timer_ms) } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use ikukantai_eval::scenario::PolicySet;

    use super::*;

    /// Two sites holding one instance each (containerConcurrency 1, 10 ms of work): `users`
    /// per origin at 2 req/s each.
    fn two_sites(users: u32) -> Scenario {
        let text = format!(
            "name: t\ntopology: {{nodes: [{{name: a, capacity: 1}}, {{name: b, capacity: 1}}], \
             links: [{{between: [a, b], rtt: 20ms}}]}}\n\
             function: {{work: [10ms, 10ms], containerConcurrency: 1, target: 1, window: 6s}}\n\
             load: {{origins: [a, b], users: [{users}], rate_per_user: 2, warmup: 2s, duration: 5s, timeout: 1s}}\n"
        );
        Scenario::parse("t.yaml", &text).expect("valid")
    }

    #[test]
    fn light_means_every_origin_fits_its_own_site() {
        // 2 req/s per user × 10.5 ms: 47 users keep 0.99 of the instance busy, 48 users 1.01.
        let model = Model::default();
        assert!(fits_locally(&two_sites(47), 0, &model));
        assert!(!fits_locally(&two_sites(48), 0, &model));
    }

    #[test]
    fn the_ideal_sees_the_very_arrivals_the_simulation_drew() {
        let s = two_sites(5);
        let run = crate::run_set(&s, &PolicySet::named("ours").unwrap(), 3, &Model::default()).unwrap();
        let level = &run.levels[0];
        for stream in s.streams(5) {
            let g = Generator::new(
                3,
                stream.origin as u32,
                0,
                0,
                stream.curve,
                s.functions()[0].work_ms(),
                0,
                span(s.load.warmup.0),
                span(s.load.warmup.0 + s.load.duration.0),
            );
            let want: Vec<f64> = replay(g)
                .iter()
                .filter(|r| r.measured)
                .map(|r| level.began + r.arrival as f64 / 1e9)
                .collect();
            let mut got: Vec<f64> =
                level.samples.iter().filter(|x| x.origin == stream.origin).map(|x| x.at).collect();
            got.sort_by(f64::total_cmp);
            assert!(!want.is_empty());
            assert_eq!(got.len(), want.len(), "origin {}", stream.origin);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-6, "origin {}: sent at {g}, replayed {w}", stream.origin);
            }
        }
        // One slot per site, 10 ms of work at 10 req/s: the ideal's p90 is at least the work and
        // a local request's fixed costs, and well short of the 20 ms trip to the other site.
        let model = Model::default();
        for (origin, p90) in all_local_p90(&s, 0, &[3], &model).unwrap() {
            let floor = 10.0 + 2.0 * model.hop_ms + model.client_ms;
            assert!(p90 >= floor && p90 < floor + model.timer_ms + 10.0, "origin {origin}: {p90}");
        }
    }

    fn jobs(arrivals: &[f64], service: f64) -> Vec<Job> {
        arrivals.iter().map(|&a| Job { arrival_ms: a, service_ms: service, measured: true }).collect()
    }

    #[test]
    fn with_slots_to_spare_nobody_waits() {
        // Ten requests at once, 5 ms each, ten slots: every one takes its own service and the
        // fixed cost, whatever the spacing.
        let j: Vec<Job> =
            (0..10).map(|k| Job { arrival_ms: 0.0, service_ms: 1.0 + k as f64, measured: true }).collect();
        let want = percentile(&(1..=10).map(|k| k as f64 + 0.5).collect::<Vec<_>>(), 0.9);
        assert_eq!(fifo_p90(&j, 10, 0.5), Some(want));
        assert_eq!(fifo_p90(&j, 1000, 0.5), Some(want));
    }

    #[test]
    fn one_slot_and_back_to_back_arrivals_queue() {
        // Ten requests 1 ms apart, 5 ms each, one slot: the k-th finishes at 5 (k + 1) and waits
        // 4k ms; the p90 (rank round(9 × 0.9) = 8 of 0..=9) waited 32 ms.
        let j = jobs(&(0..10).map(f64::from).collect::<Vec<_>>(), 5.0);
        assert_eq!(fifo_p90(&j, 1, 0.0), Some(5.0 + 4.0 * 8.0));
        // Two slots: pairs finish at 5, 6, 10, 11, …, 25, 26, so the responses are 5, 5, 8, 8,
        // …, 17, 17.
        assert_eq!(fifo_p90(&j, 2, 0.0), Some(17.0));
    }

    #[test]
    fn unmeasured_requests_queue_but_do_not_count() {
        let mut j = jobs(&[0.0, 0.0, 0.0], 10.0);
        j[0].measured = false;
        j[1].measured = false;
        // The third waits for the first two on one slot.
        assert_eq!(fifo_p90(&j, 1, 1.0), Some(31.0));
        j[2].measured = false;
        assert_eq!(fifo_p90(&j, 1, 1.0), None);
    }
}
