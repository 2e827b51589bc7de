//! The fuzz targets' checks (`crates/http/fuzz`) on their seed corpus and on inputs derived from
//! it, in every `cargo test`: the targets keep compiling and their seeds keep passing on the
//! stable toolchain, where coverage-guided fuzzing itself needs `cargo fuzz` (see its README).

use std::path::Path;

use ikukantai_http::fuzzing;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 3] = [
    ("request_head", fuzzing::request_head),
    ("chunked_body", fuzzing::chunked_body),
    ("response_head", fuzzing::response_head),
];

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(target);
    let mut seeds: Vec<Vec<u8>> =
        std::fs::read_dir(&dir).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
    seeds.sort();
    assert!(seeds.len() >= 10, "{}: {} seeds", dir.display(), seeds.len());
    seeds
}

#[test]
fn every_seed_passes_its_target() {
    for (name, target) in TARGETS {
        for seed in seeds(name) {
            target(&seed);
        }
    }
}

/// Seeds with a few bytes changed, inserted or removed, and pieces of various sizes.
#[test]
fn mutated_seeds_pass_their_targets() {
    let mut runner = TestRunner::deterministic();
    for (name, target) in TARGETS {
        let seeds = seeds(name);
        let edits = prop::collection::vec(
            (any::<prop::sample::Index>(), 0u8..3, prop::sample::select(b"\r\n ;:=\"0aF\t\x00\xff".to_vec())),
            1..4,
        );
        let strategy = (prop::sample::select(seeds), any::<u8>(), edits);
        for _ in 0..1500 {
            let (mut input, step, edits) = strategy.new_tree(&mut runner).unwrap().current();
            input[0] = step;
            for (at, how, byte) in edits {
                let i = 1 + at.index(input.len() - 1).min(input.len() - 2);
                match how {
                    0 if input.len() > 2 => {
                        input.remove(i);
                    }
                    1 => input.insert(i, byte),
                    _ => input[i] = byte,
                }
            }
            target(&input);
        }
    }
}
