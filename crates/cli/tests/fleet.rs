//! End to end: the real `ikukantai` binary runs a local fleet and is driven through its CLI,
//! exactly as the README's quick start does (with short autoscaling windows).

mod common;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn quick_start_cold_start_at_the_edge_then_scale_to_zero() {
    let dir = scratch("quick");
    let fleet = Fleet::start(&dir);
    let manifest = write(&dir, "hello.yaml", &hello("", "Konnichiwa"));
    assert_eq!(fleet.ok(&["apply", "-f", &manifest]).trim(), "service/hello created");
    assert_eq!(fleet.placement(), "0-0-0/0-0-0", "initial scale 0: nothing runs before the first request");
    // Ready at zero, as in Knative: the revision serves (its first request starts it).
    let status = &fleet.json("services")[0]["status"];
    assert_eq!(status["latestReadyRevisionName"], "hello-00001", "{status}");
    assert!(status["conditions"].as_array().unwrap().iter().all(|c| c["status"] == "True"), "{status}");

    // `-n` is the namespace, as everywhere in kubectl.
    let out = fleet.ok(&["invoke", "hello", "-n", "default", "--from", "node3"]);
    assert!(out.starts_with("Konnichiwa from hello-node3-") && out.contains(" in node3"), "{out}");
    assert!(out.contains("served by hello-node3-"), "{out}");
    assert_eq!(fleet.placement(), "0-0-1/0-0-1");
    let services = fleet.ok(&["get", "services"]);
    assert!(
        services.contains("http://hello.default.example.com") && services.contains("hello-00001"),
        "{services}"
    );

    // Requests from the cloud reach the edge instance across the 50 ms link.
    let out = fleet.ok(&["invoke", "hello", "--from", "node1"]);
    assert!(out.contains("on node3"), "{out}");

    // The latency monitor measured the links.
    let latency = fleet.json("nodes");
    assert_eq!(latency.as_array().unwrap().len(), 3);
    fleet.wait_for("latency measurements", || {
        let out = fleet.ok(&["latency", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["measured"][2][0].as_f64().is_some_and(|ms| ms >= 50.0) && v["source"][2][0] == "measured"
    });
    // Per pair: what decisions use, from which source, beside the measured, estimated and
    // configured RTTs.
    fleet.wait_for("a measured row from node1 to node3", || {
        let table = fleet.ok(&["latency", "--from", "node1"]);
        assert!(!table.lines().any(|l| l.starts_with("node2")), "only pairs from node1: {table}");
        let row = table.lines().find(|l| l.starts_with("node1") && l.contains("node3")).unwrap_or_default();
        row.contains("measured") && row.ends_with("50.00")
    });

    // No traffic for the window: back to zero, and the process is gone.
    fleet.wait_for("scale to zero", || {
        fleet.placement() == "0-0-0/0-0-0" && fleet.json("instances").as_array().unwrap().is_empty()
    });
    fleet.wait_for("the process to exit", || processes_of(&dir) == 0);
}

#[test]
fn a_bad_manifest_is_rejected_and_nothing_stored_changes() {
    let dir = scratch("bad");
    let fleet = Fleet::start(&dir);
    let good = write(&dir, "hello.yaml", &hello("", "Konnichiwa"));
    fleet.ok(&["apply", "-f", &good]);
    let before = fleet.json("services");
    let bad = write(
        &dir,
        "bad.yaml",
        &hello(
            "\n        autoscaling.knative.dev/max-scale: \"-2\"\n        autoscaling.knative.dev/target: \"0\"",
            "Changed",
        )
        .replace("        autoscaling.knative.dev/target: \"10\"\n", ""),
    );
    let out = fleet.cli(&["apply", "-f", &bad]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/bad.yaml: document 1 (Service default/hello): spec.template.metadata.annotations[\"autoscaling.knative.dev/max-scale\"]: \"-2\" is not a whole number"), "{err}");
    assert!(
        err.lines().count() >= 2 && err.lines().all(|l| l.starts_with("error: ")),
        "each problem marked: {err}"
    );
    // Nothing to apply is said, not done quietly.
    let mut empty = Command::new(BIN)
        .args(["apply", "-f", "-"])
        .env("IKUKANTAI_API", &fleet.api)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(empty.stdin.take());
    let out = empty.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: standard input: no documents found; nothing applied"
    );
    assert_eq!(fleet.json("services"), before, "nothing changed");
    assert_eq!(fleet.json("revisions").as_array().unwrap().len(), 1);
}

#[test]
fn state_survives_a_restart_and_nothing_is_orphaned() {
    let dir = scratch("restart");
    let mut fleet = Fleet::start(&dir);
    let manifest = write(&dir, "hello.yaml", &hello("", "Konnichiwa"));
    fleet.ok(&["apply", "-f", &manifest]);
    fleet.ok(&["invoke", "hello", "--from", "node2"]);
    assert_eq!(processes_of(&dir), 1);
    let (api, gw, admin) = (fleet.api.clone(), fleet.gateway_port, fleet.admin_port);
    fleet.stop();
    assert_eq!(processes_of(&dir), 0, "Ctrl-C stopped every instance");
    let fleet = Fleet::start_at(&dir, api, gw, admin);
    let services = fleet.ok(&["get", "services"]);
    assert!(services.contains("hello"), "{services}");
    let out = fleet.ok(&["invoke", "hello", "--from", "node2"]);
    assert!(out.contains("in node2"), "{out}");
    // A file that is not ours is reported, not dropped or overwritten.
    std::fs::write(dir.join("state/services/foreign.json"), "{\"hello\": 1}").unwrap();
    drop(fleet);
    let fleet = Fleet::start(&dir);
    assert!(fleet.ok(&["get", "services"]).contains("hello"));
    assert_eq!(std::fs::read_to_string(dir.join("state/services/foreign.json")).unwrap(), "{\"hello\": 1}");
}

#[test]
fn a_crashed_instance_is_restarted() {
    let dir = scratch("crash");
    let fleet = Fleet::start(&dir);
    let manifest =
        write(&dir, "hello.yaml", &hello("\n        autoscaling.knative.dev/min-scale: \"1\"", "Konnichiwa"));
    fleet.ok(&["apply", "-f", &manifest]);
    fleet.wait_for("a ready instance", || fleet.json("instances")[0]["state"] == "Ready");
    let pid = fleet.json("instances")[0]["pid"].as_i64().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    fleet.wait_for("the restart", || {
        let i = &fleet.json("instances")[0];
        i["restarts"].as_u64() == Some(1) && i["state"] == "Ready"
    });
    let name = fleet.json("instances")[0]["name"].as_str().unwrap().to_owned();
    let log = fleet.ok(&["logs", &name]);
    assert!(log.contains("exited (signal: 9 (SIGKILL)); restarting in 1s"), "{log}");
    assert!(fleet.ok(&["invoke", "hello", "--from", "node1"]).starts_with("Konnichiwa"));
}

#[test]
fn traffic_splits_between_two_revisions() {
    let dir = scratch("split");
    let fleet = Fleet::start(&dir);
    fleet.ok(&["apply", "-f", &write(&dir, "v1.yaml", &hello("", "Hello-v1"))]);
    let v2 = hello("", "Hello-v2")
        + "  traffic:\n    - revisionName: hello-00001\n      percent: 50\n    - latestRevision: true\n      percent: 50\n";
    assert_eq!(fleet.ok(&["apply", "-f", &write(&dir, "v2.yaml", &v2)]).trim(), "service/hello configured");
    let out = fleet.ok(&["invoke", "hello", "--from", "node1", "-c", "40"]);
    let v1 = out.lines().filter(|l| l.starts_with("Hello-v1")).count();
    let v2 = out.lines().filter(|l| l.starts_with("Hello-v2")).count();
    assert_eq!(v1 + v2, 40, "{out}");
    assert!(v1 >= 8 && v2 >= 8, "both revisions serve: v1 {v1}, v2 {v2}");
    let revisions = fleet.ok(&["get", "revisions"]);
    assert!(
        revisions.contains("hello-00001") && revisions.contains("hello-00002") && revisions.contains("50%"),
        "{revisions}"
    );
}

#[test]
fn scales_up_under_load_and_back_down() {
    let dir = scratch("load");
    let fleet = Fleet::start(&dir);
    // One request per instance: concurrent slow requests need several instances.
    let manifest = hello("", "Konnichiwa")
        .replace("autoscaling.knative.dev/target: \"10\"", "autoscaling.knative.dev/target: \"1\"");
    fleet.ok(&["apply", "-f", &write(&dir, "hello.yaml", &manifest)]);
    let load: Vec<_> = (0..8)
        .map(|_| {
            let api = fleet.api.clone();
            std::thread::spawn(move || {
                Command::new(BIN)
                    .args(["invoke", "hello", "--from", "node1", "--path", "/sleep/400", "-c", "15"])
                    .env("IKUKANTAI_API", api)
                    .output()
                    .unwrap()
            })
        })
        .collect();
    fleet.wait_for("more than one instance", || fleet.json("instances").as_array().unwrap().len() > 1);
    for l in load {
        let out = l.join().unwrap();
        assert!(
            out.status.success(),
            "invoke under load failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fleet.wait_for("scale back to zero", || fleet.json("instances").as_array().unwrap().is_empty());
}

#[test]
fn an_instance_in_its_stop_grace_period_is_still_stopped_with_the_fleet() {
    let dir = scratch("grace");
    std::fs::create_dir_all(&dir).unwrap();
    // An instance no longer wanted serves on for the longest RTT + 100 ms: a slow link makes that
    // long enough to stop the fleet meanwhile.
    let topology = write(
        &dir,
        "topology.yaml",
        "nodes: [{name: cloud, capacity: 4}, {name: edge, capacity: 2}]\nlinks: [{between: [cloud, edge], rtt: 5s}]\n",
    );
    let mut fleet = Fleet::start_with(&dir, &["--topology", &topology]);
    fleet.ok(&["apply", "-f", &write(&dir, "hello.yaml", &hello("", "Konnichiwa"))]);
    assert!(fleet.ok(&["invoke", "hello", "--from", "cloud"]).starts_with("Konnichiwa"));
    let instance = &fleet.json("instances")[0];
    let (name, address) = (instance["name"].as_str().unwrap(), instance["address"].as_str().unwrap());
    fleet.ok(&["delete", "service", "hello"]);
    // Reconciled a few times over (every 250 ms), well within the 5.1 s grace period.
    std::thread::sleep(Duration::from_secs(1));
    // The gateways let go of it first: the service is out of their routes while its instance
    // still serves out its grace period.
    let gone = fleet.cli(&["invoke", "hello", "--from", "cloud"]);
    let said = String::from_utf8_lossy(&gone.stdout);
    assert!(!gone.status.success() && said.contains("404"), "still routed after its deletion: {said}");
    assert!(std::net::TcpStream::connect(address).is_ok(), "stopped before its grace period ended");
    fleet.stop();
    assert!(std::net::TcpStream::connect(address).is_err(), "the instance at {address} outlived the fleet");
    // Stopped the graceful way (drain, SIGTERM), not killed as the fleet's runtime went away.
    let log = std::fs::read_to_string(dir.join("state/logs").join(format!("{name}.log"))).unwrap();
    assert!(log.trim_end().ends_with("[ikukantai] stopped"), "{log}");
}

#[test]
fn the_api_can_require_a_bearer_token() {
    let dir = scratch("token");
    std::fs::create_dir_all(&dir).unwrap();
    let api = format!("127.0.0.1:{}", TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    let mut child = Command::new(BIN)
        .args(["up", "--api", &api, "--token", "s3cret"])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args([
            "--gateway-port",
            &free_port_on_all().to_string(),
            "--admin-port",
            &free_port_on_all().to_string(),
        ])
        .env_remove("IKUKANTAI_TOKEN")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let cli = |token: Option<&str>| {
        let mut c = Command::new(BIN);
        c.args(["get", "nodes"]).env("IKUKANTAI_API", &api).env_remove("IKUKANTAI_TOKEN");
        if let Some(t) = token {
            c.env("IKUKANTAI_TOKEN", t);
        }
        c.output().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cli(Some("s3cret")).status.success() {
        assert!(Instant::now() < deadline, "fleet did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let denied = cli(None);
    assert_eq!(denied.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("missing or wrong bearer token"));
    assert!(!cli(Some("wrong")).status.success());
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = child.wait();
}

#[test]
fn no_fleet_gives_a_clear_error() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = Command::new(BIN)
        .args(["get", "services"])
        .env("IKUKANTAI_API", format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("no fleet at 127.0.0.1:{port} — start one with `ikukantai up`")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bench_runs_a_scenario_and_writes_report_and_plots() {
    let dir = scratch("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let scenario = write(
        &dir,
        "tiny.yaml",
        "name: tiny\ntopology:\n  nodes: [{name: cloud, capacity: 4}, {name: edge, capacity: 2}]\n  links: [{between: [cloud, edge], rtt: 20ms}]\n\
         function: {work: [1ms, 2ms], containerConcurrency: 2, target: 2, window: 6s}\n\
         load: {origins: [cloud, edge], users: [2], rate_per_user: 5, warmup: 1s, duration: 2s, timeout: 2s}\n\
         policies: [knative, ours]\n",
    );
    let out = dir.join("out");
    let run = Command::new(BIN).args(["bench", &scenario, "--out"]).arg(&out).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    // Two sets × one level × (all + two origins).
    assert_eq!(rows.len(), 6);
    for r in rows {
        assert!(r["stats"]["requests"].as_u64().unwrap() > 0, "{r}");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| knative | 2 | all |") && md.contains("| ours | 2 | edge |"), "{md}");
    // The fleet's instances were read as the load ran: each set started instances from zero and
    // saw them ready, each at a node where one had started.
    for run in report["runs"].as_array().unwrap() {
        let events = run["levels"][0]["instances"].as_array().unwrap();
        let of = |change: &str| {
            let at_nodes = events.iter().filter(|e| e["change"] == change).map(|e| e["node"].as_u64());
            at_nodes.collect::<Option<Vec<_>>>().unwrap()
        };
        let (started, ready) = (of("started"), of("ready"));
        assert!(!ready.is_empty() && ready.iter().all(|n| started.contains(n)), "{events:?}");
    }
    assert!(md.contains("## Instances"), "{md}");
    if std::path::Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists() {
        for f in ["cdf-low.png", "cdf-high.svg", "served-high.png", "latency-vs-load.svg"] {
            assert!(out.join(f).metadata().unwrap().len() > 1000, "{f}");
        }
    }
    assert_eq!(processes_of(&out), 0);
}

#[test]
fn bench_runs_two_functions_and_phases_and_writes_their_rows_and_time_series() {
    let dir = scratch("bench-functions");
    std::fs::create_dir_all(&dir).unwrap();
    // `late` has no users for the first second of measuring, then some at the edge only.
    let scenario = write(
        &dir,
        "two.yaml",
        "name: two\ntopology:\n  nodes: [{name: cloud, capacity: 4}, {name: edge, capacity: 2}]\n  links: [{between: [cloud, edge], rtt: 20ms}]\n\
         functions:\n\
         - {name: early, work: [1ms, 2ms], containerConcurrency: 2, target: 2, window: 6s}\n\
         - {name: late, work: [1ms, 2ms], containerConcurrency: 2, target: 2, window: 6s,\n   \
            load: {origins: [edge], phases: [{name: none, duration: 1s, scale: 0}, {name: some, duration: 1s, scale: 2}]}}\n\
         load: {origins: [cloud, edge], users: [2], rate_per_user: 5, warmup: 1s, duration: 2s, timeout: 2s}\n\
         policies: [ours]\n",
    );
    let out = dir.join("out");
    let run = Command::new(BIN).args(["bench", &scenario, "--out"]).arg(&out).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let rows: Vec<(String, String, u64)> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_owned();
            (s("function"), s("origin"), r["stats"]["requests"].as_u64().unwrap())
        })
        .collect();
    let keys: Vec<(&str, &str)> = rows.iter().map(|(f, o, _)| (f.as_str(), o.as_str())).collect();
    assert_eq!(
        keys,
        [
            ("all", "all"),
            ("all", "cloud"),
            ("all", "edge"),
            ("early", "all"),
            ("early", "cloud"),
            ("early", "edge"),
            ("late", "all"),
            ("late", "edge")
        ]
    );
    assert!(rows.iter().all(|(.., n)| *n > 0), "{rows:?}");
    assert_eq!(rows[0].2, rows[3].2 + rows[6].2, "the totals are both functions'");
    // Every request of `late` was sent after its idle phase: its send times are on the load's clock.
    let level = &report["runs"][0]["levels"][0];
    let measure = level["began"].as_f64().unwrap() + 1.0;
    let late: Vec<f64> = level["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["function"] == 1)
        .map(|s| s["at"].as_f64().unwrap())
        .collect();
    assert!(!late.is_empty() && late.iter().all(|&at| at >= measure + 1.0 - 1e-6), "{late:?} vs {measure}");
    if std::path::Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists() {
        assert!(out.join("timeline-ours.png").metadata().unwrap().len() > 1000);
    }
    assert_eq!(processes_of(&out), 0);
}
