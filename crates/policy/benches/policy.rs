//! Criterion benchmarks of the policy hot paths.
//!
//! `cargo bench -p ikukantai-policy --bench policy`
//! - `pick/<balancer>/<instances>`: one balancer decision over 10/100/1000 instances spread over 10
//!   nodes, containerConcurrency 10, in-flight counts between 0 and 9;
//! - `place/<placement>/<nodes>`: one cold placement (nothing running) on 10/100/1000 nodes of
//!   capacity 4, demand at every node, desired = 2 instances per node with demand (so some spill).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use ikukantai_policy::balance::{Candidate, PickContext};
use ikukantai_policy::estimate::RttMatrix;
use ikukantai_policy::placement::PlacementInput;
use ikukantai_policy::registry::{BALANCERS, PLACEMENTS, PolicyParams};

fn rtt_matrix(n: usize) -> RttMatrix {
    let mut m = RttMatrix::new(n, 0.5, Duration::from_secs(30));
    for i in 0..n {
        for j in 0..n {
            if i != j {
                // A deterministic spread of RTTs between 0.5 and 100 ms.
                m.set_prior(i, j, 0.5 + ((i * 31 + j * 17) % 200) as f64 / 2.0);
            }
        }
    }
    m
}

fn bench_pick(c: &mut Criterion) {
    let rtt = rtt_matrix(10);
    let now = Instant::now();
    let mut group = c.benchmark_group("pick");
    for entry in BALANCERS {
        for n in [10usize, 100, 1000] {
            let candidates: Vec<Candidate> = (0..n)
                .map(|i| Candidate {
                    id: i as u64,
                    node: i % 10,
                    in_flight: (i * 7 % 10) as u32,
                    own: (i * 7 % 10) as u32,
                    capacity: 10,
                    slots: 10,
                    load: (i * 7 % 10) as f64,
                    service_time_ms: Some(3.0 + (i % 3) as f64),
                    held_ms: Some(4.0 + (i % 3) as f64),
                    rtt_ms: None,
                })
                .collect();
            let mut balancer = (entry.build)(&PolicyParams::default());
            let ctx =
                PickContext { origin: 3, rtt: &rtt, now, target_concurrency: 7.0, queued: 0, fresh: true };
            group.bench_with_input(BenchmarkId::new(entry.name, n), &candidates, |b, cs| {
                b.iter(|| black_box(balancer.pick(black_box(&ctx), black_box(cs))))
            });
        }
    }
    group.finish();
}

fn bench_place(c: &mut Criterion) {
    let now = Instant::now();
    let mut group = c.benchmark_group("place");
    for entry in PLACEMENTS {
        for n in [10usize, 100, 1000] {
            let rtt = rtt_matrix(n);
            let capacity = vec![4u32; n];
            let current = vec![0u32; n];
            let processing = vec![Some(4.0); n];
            let demand: Vec<f64> = (0..n).map(|i| ((i * 13) % 7) as f64).collect();
            let with_demand = demand.iter().filter(|&&d| d > 0.0).count() as u32;
            let input = PlacementInput {
                desired: 2 * with_demand,
                demand: &demand,
                capacity: &capacity,
                free: &capacity,
                current: &current,
                processing_ms: &processing,
                rtt: &rtt,
                now,
                per_instance: 1.0,
            };
            group.bench_with_input(BenchmarkId::new(entry.name, n), &input, |b, input| {
                b.iter_batched(
                    || (entry.build)(&PolicyParams::default()),
                    |mut policy| black_box(policy.place(black_box(input))),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_pick, bench_place);
criterion_main!(benches);
