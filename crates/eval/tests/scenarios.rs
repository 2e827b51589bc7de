//! Every scenario shipped in `bench/` parses, and the documented ones are there.

use std::path::PathBuf;

use ikukantai_eval::scenario::Scenario;

#[test]
fn shipped_scenarios_parse() {
    let dir = repo_root().join("bench");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let s = Scenario::parse(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"));
            names.push(s.name.clone());
        }
    }
    names.sort();
    for expected in ["flash-crowd", "multi-edge", "overload", "paper", "paper-100ms", "two-functions"] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
}

/// The repository's root, looked up when the test runs: `env!` would give the path the test was
/// compiled at, stale when one target dir serves several clones (as `.ci/run`'s does).
fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../..")
}
