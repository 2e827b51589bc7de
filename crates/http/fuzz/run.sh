#!/usr/bin/env bash
# Runs each fuzz target for $1 seconds (default 20) from a copy of its seed corpus, on the stable
# toolchain (RUSTC_BOOTSTRAP lets cargo-fuzz pass its -Z flags). Needs `cargo install cargo-fuzz`.
# A finding is written to fuzz/artifacts/<target>/ and fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
for target in request_head chunked_body response_head; do
    corpus="$(mktemp -d)"
    cp fuzz/seeds/"$target"/* "$corpus"/
    echo "== fuzz $target (${seconds}s)"
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "$corpus" -- -max_total_time="$seconds"
    rm -rf "$corpus"
done
