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
    // Valid, but not runnable on the local fleet: said, without failing.
    assert!(
        text(&out.stderr).contains("warning: examples/knative-hello.yaml: document 1 (Service default/hello): spec.template.spec.containers[0].command: not set: the local fleet runs the command as a process"),
        "{}",
        text(&out.stderr)
    );
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

#[test]
fn every_example_validates_as_the_readme_shows() {
    // Judged against the local fleet's defaults, as `up` judges them (examples/hello.yaml starts
    // at zero, which plain Knative's defaults refuse).
    let mut args = vec!["validate"];
    let examples: Vec<String> = std::fs::read_dir(repo_root().join("examples"))
        .unwrap()
        .map(|e| format!("examples/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|f| f.ends_with(".yaml"))
        .collect();
    assert!(examples.len() >= 3, "{examples:?}");
    for f in &examples {
        args.extend(["-f", f.as_str()]);
    }
    let out = ikukantai(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok: examples/hello.yaml: document 1 (Service default/hello)"));
}

#[test]
fn empty_input_is_no_documents_not_success() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ikukantai"))
        .args(["validate", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr).trim(), "standard input: no documents found");
}

#[test]
fn version_names_the_binary() {
    let out = ikukantai(&["--version"]);
    assert_eq!(text(&out.stdout).trim(), format!("ikukantai {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn a_reader_that_goes_away_ends_output_quietly() {
    // `ikukantai crds | head -1`: the reader closes its end before the output is written.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_ikukantai"))
        .arg("crds")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn scenarios_validate_and_a_bad_one_is_named_by_its_field() {
    let mut args = vec!["validate"];
    let mut files = Vec::new();
    for dir in ["bench", "bench/sweep"] {
        for e in std::fs::read_dir(repo_root().join(dir)).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if name.ends_with(".yaml") {
                files.push(format!("{dir}/{name}"));
            }
        }
    }
    assert!(files.len() >= 6, "{files:?}");
    for f in &files {
        args.extend(["-f", f.as_str()]);
    }
    let out = ikukantai(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok: bench/uneven-edges.yaml: scenario uneven-edges"));
    let dir = std::env::temp_dir().join(format!("ikukantai-scenario-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    let text_in = std::fs::read_to_string(repo_root().join("bench/smoke.yaml")).unwrap();
    std::fs::write(&bad, text_in.replace("origins: [node1, node3]", "origins: [node1, nowhere]")).unwrap();
    // A scenario missing a part is still read as one, and told which part.
    let partial = dir.join("partial.yaml");
    std::fs::write(&partial, text_in.replace("function:", "fucntion:")).unwrap();
    let out = ikukantai(&["validate", "-f", bad.to_str().unwrap()]);
    let partial_out = ikukantai(&["validate", "-f", partial.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("load.origins[1]: unknown node \"nowhere\""), "{}", text(&out.stderr));
    assert!(!partial_out.status.success());
    assert!(text(&partial_out.stderr).contains("fucntion: unknown field"), "{}", text(&partial_out.stderr));
}

#[test]
fn a_scenario_with_bad_phases_and_functions_lists_every_problem() {
    let dir = std::env::temp_dir().join(format!("ikukantai-scenario-phases-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    let text_in = std::fs::read_to_string(repo_root().join("bench/two-functions.yaml")).unwrap();
    let text_out = text_in
        .replace("- {name: steady, duration: 10s}", "- {name: steady, duration: 10s, origins: {cloud: 2}}")
        .replace("target: 4\n", "target: 4\n    annotations: {ikukantai.dev/queue: lifo}\n");
    assert_ne!(text_in, text_out);
    std::fs::write(&bad, text_out).unwrap();
    let out = ikukantai(&["validate", "-f", bad.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let file = bad.display();
    for expected in [
        format!(
            "{file}: functions[1].load.phases[1].origins.cloud: \"cloud\" is not an origin of this load (edge-a, edge-b)"
        ),
        format!("{file}: functions[1].annotations[\"ikukantai.dev/queue\"]: unknown queue \"lifo\""),
        "2 problem(s) found".to_owned(),
    ] {
        assert!(stderr.contains(&expected), "missing {expected:?} in\n{stderr}");
    }
}

#[test]
fn a_sweep_case_is_written_as_a_scenario_that_validates() {
    let dir = std::env::temp_dir().join(format!("ikukantai-case-{}", std::process::id()));
    let out =
        ikukantai(&["sim", "--case", "4", "--case", "7", "--seed", "3", "--out", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let files = ["case-4.yaml", "case-7.yaml"].map(|f| dir.join(f));
    let checked =
        ikukantai(&["validate", "-f", files[0].to_str().unwrap(), "-f", files[1].to_str().unwrap()]);
    let written = std::fs::read_to_string(&files[0]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    assert!(written.unwrap().contains("name: sweep-3-4"), "named after its seed and index");
    let out = ikukantai(&["sim", "bench/smoke.yaml", "--case", "1", "--out", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(2), "a scenario and a case are one too many");
}
