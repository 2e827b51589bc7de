//! The Kubernetes subcommands of the real binary, where they can run without a cluster: the CRDs
//! they print, and the clear errors they give when their environment is missing.

use std::path::PathBuf;
use std::process::{Command, Output};

fn ikukantai(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ikukantai"));
    cmd.args(args).current_dir(repo_root());
    for var in [
        "KUBECONFIG",
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
        "NODE_NAME",
        "HOME",
        "POD_NAME",
        "HOSTNAME",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run ikukantai")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn crds_prints_the_committed_crds() {
    let out = ikukantai(&["crds"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let committed = std::fs::read_to_string(repo_root().join("deploy/crds.yaml")).unwrap();
    assert_eq!(text(&out.stdout), committed);
}

#[test]
fn controller_without_a_cluster_says_so() {
    let out = ikukantai(
        &["controller", "--listen", "127.0.0.1:0"],
        &[("KUBECONFIG", "/nonexistent/kubeconfig"), ("POD_NAME", "ikukantai-controller-0")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("error: kubernetes client:"), "{err}");
}

#[test]
fn controller_needs_a_replica_identity_for_the_election() {
    let out = ikukantai(&["controller"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("no replica identity: set --identity or POD_NAME"), "{err}");
}

#[test]
fn gateway_needs_its_node_name() {
    let out = ikukantai(&["gateway"], &[]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("--node <NODE>"), "{err}");
}

#[test]
fn queue_proxy_names_the_missing_variable() {
    let out = ikukantai(&["queue-proxy"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("environment variable SERVING_NAMESPACE is required"), "{err}");
}

/// The repository's root, looked up when the test runs: `env!` would give the path the test was
/// compiled at, stale when one target dir serves several clones (as `.ci/run`'s does).
fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../..")
}
