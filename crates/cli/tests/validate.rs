//! `ikukantai validate` end to end: the real binary on real files.

use std::path::PathBuf;
use std::process::{Command, Output};

fn ikukantai(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ikukantai"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run ikukantai")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn valid_examples_pass_with_exit_code_0() {
    let out = ikukantai(&["validate", "-f", "examples/knative-hello.yaml", "-f", "examples/topology.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("ok: examples/knative-hello.yaml: document 1 (Service default/hello)"),
        "{stdout}"
    );
    assert!(stdout.contains("2 document(s) valid"), "{stdout}");
}

#[test]
fn broken_manifest_lists_every_problem_and_exits_1() {
    let out = ikukantai(&["validate", "-f", "crates/cli/tests/fixtures/broken-service.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let file = "crates/cli/tests/fixtures/broken-service.yaml";
    for expected in [
        format!(
            "{file}: document 1 (Service default/hello): spec.template.metadata.annotations[\"autoscaling.knative.dev/window\"]: \"3s\" out of range"
        ),
        format!(
            "{file}: document 1 (Service default/hello): spec.template.metadata.annotations[\"ikukantai.dev/balancer\"]: unknown balancer \"nearest-first\""
        ),
        format!(
            "{file}: document 1 (Service default/hello): spec.template.spec.containers[0].image: required"
        ),
        format!(
            "{file}: document 1 (Service default/hello): spec.template.spec.containerConcurrency: 5000 out of range"
        ),
        format!(
            "{file}: document 1 (Service default/hello): spec.traffic: traffic percentages sum to 90, want 100"
        ),
        format!(
            "{file}: document 2 (Service default/typo): spec.template.spec.containers[0].comand: unknown field (did you mean `command`?)"
        ),
    ] {
        assert!(stderr.contains(&expected), "missing {expected:?} in\n{stderr}");
    }
}

#[test]
fn broken_topology_exits_1() {
    let out = ikukantai(&["validate", "-f", "crates/cli/tests/fixtures/broken-topology.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("nodes[1].name: \"edge\" is used by another node"), "{stderr}");
    assert!(stderr.contains("links[0].between[1]: unknown node \"cloud\""), "{stderr}");
}

#[test]
fn missing_file_is_named() {
    let out = ikukantai(&["validate", "-f", "does-not-exist.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read does-not-exist.yaml"));
}

/// The repository's root, looked up when the test runs: `env!` would give the path the test was
/// compiled at, stale when one target dir serves several clones (as `.ci/run`'s does).
fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../..")
}
