//! End to end, what goes wrong: revisions that cannot start, a fleet killed outright, a second
//! fleet on the same state directory, an instance killed under load.

mod common;

use std::process::{Command, Stdio};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// examples/hello.yaml (6 s window) running `command` instead of the demo function.
fn broken(command: &str, initial_scale: u32, target: &str) -> String {
    hello("", target)
        .replace(r#"command: ["ikukantai", "function", "hello"]"#, &format!("command: {command}"))
        .replace(
            "autoscaling.knative.dev/initial-scale: \"0\"",
            &format!("autoscaling.knative.dev/initial-scale: \"{initial_scale}\""),
        )
        // Were requests to wait for the request timeout, the test would fail in 60 s, not 300.
        .replace("    spec:\n      containers:", "    spec:\n      timeoutSeconds: 60\n      containers:")
}

fn condition(fleet: &Fleet, type_: &str) -> serde_json::Value {
    let services = fleet.json("services");
    let conditions = services[0]["status"]["conditions"].as_array().unwrap().clone();
    conditions.into_iter().find(|c| c["type"] == type_).unwrap()
}

fn revision(fleet: &Fleet, name: &str) -> serde_json::Value {
    let revisions = fleet.json("revisions");
    revisions.as_array().unwrap().iter().find(|r| r["name"] == name).cloned().unwrap()
}

fn instances_of(fleet: &Fleet, revision: &str) -> usize {
    fleet.json("instances").as_array().unwrap().iter().filter(|i| i["revision"] == revision).count()
}

#[test]
fn a_revision_that_cannot_start_never_takes_the_traffic_of_a_ready_one() {
    let dir = scratch("failnew");
    let fleet = Fleet::start(&dir);
    fleet.ok(&["apply", "-f", &write(&dir, "v1.yaml", &hello("", "Hello-v1"))]);
    assert!(fleet.ok(&["invoke", "hello", "--from", "node1"]).starts_with("Hello-v1"));

    // v2: a binary that does not exist, starting at once (Knative's default initial scale).
    let v2 = broken(r#"["/nonexistent/ikukantai-e2e-binary"]"#, 1, "Hello-v2");
    fleet.ok(&["apply", "-f", &write(&dir, "v2.yaml", &v2)]);
    let out = fleet.ok(&["invoke", "hello", "--from", "node1", "-c", "5"]);
    assert_eq!(out.lines().filter(|l| l.starts_with("Hello-v1")).count(), 5, "{out}");
    fleet.wait_for("v2 to fail", || condition(&fleet, "Ready")["status"] == "False");
    let ready = condition(&fleet, "Ready");
    assert_eq!(ready["reason"], "RevisionFailed", "{ready}");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.starts_with("revision hello-00002 failed: cannot start /nonexistent/ikukantai-e2e-binary"),
        "{message}"
    );
    let status = &fleet.json("services")[0]["status"];
    assert_eq!(status["latestReadyRevisionName"], "hello-00001", "{status}");
    assert_eq!(status["latestCreatedRevisionName"], "hello-00002", "{status}");
    let out = fleet.ok(&["invoke", "hello", "--from", "node3", "-c", "3"]);
    assert!(out.lines().all(|l| l.starts_with("Hello-v1")), "{out}");
    // Failed and without traffic: scaled to zero, and not tried again.
    fleet.wait_for("v2 to be let go", || {
        revision(&fleet, "hello-00002")["desired"] == 0 && instances_of(&fleet, "hello-00002") == 0
    });

    // v3 exits at once: what it said is the failure.
    let v3 = broken(r#"["sh", "-c", "echo 'v3: no database configured' >&2; exit 3"]"#, 1, "Hello-v3");
    fleet.ok(&["apply", "-f", &write(&dir, "v3.yaml", &v3)]);
    fleet.wait_for("v3 to fail", || {
        condition(&fleet, "Ready")["message"]
            .as_str()
            .is_some_and(|m| m.contains("v3: no database configured"))
    });
    assert!(fleet.ok(&["invoke", "hello", "--from", "node2"]).starts_with("Hello-v1"));

    // A good v4 takes over, and the Service is healthy again.
    fleet.ok(&["apply", "-f", &write(&dir, "v4.yaml", &hello("", "Hello-v4"))]);
    assert!(fleet.ok(&["invoke", "hello", "--from", "node2"]).starts_with("Hello-v4"));
    let status = &fleet.json("services")[0]["status"];
    assert!(status["conditions"].as_array().unwrap().iter().all(|c| c["status"] == "True"), "{status}");
    fleet.wait_for("the failed revisions to hold nothing", || {
        ["hello-00002", "hello-00003"]
            .iter()
            .all(|r| revision(&fleet, r)["desired"] == 0 && instances_of(&fleet, r) == 0)
    });
}

#[test]
fn requests_for_a_revision_that_cannot_start_fail_at_once_with_its_error() {
    let dir = scratch("failfast");
    let fleet = Fleet::start(&dir);
    let manifest = broken(r#"["sh", "-c", "echo 'boom: missing config' >&2; exit 3"]"#, 0, "Hello");
    fleet.ok(&["apply", "-f", &write(&dir, "hello.yaml", &manifest)]);
    let out = fleet.cli(&["invoke", "hello", "--from", "node3"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        said.contains("revision hello-00001 cannot start: exited (exit status: 3)")
            && said.contains("boom: missing config")
            && said.contains("503 Service Unavailable"),
        "{said}"
    );
    // Every later request too, at once.
    let out = fleet.cli(&["invoke", "hello", "--from", "node1"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("cannot start"), "{out:?}");
}

#[test]
fn a_killed_fleet_leaves_no_process_and_a_restart_runs_exactly_what_it_wants() {
    let dir = scratch("kill9");
    let mut fleet = Fleet::start(&dir);
    let manifest = hello("\n        autoscaling.knative.dev/min-scale: \"1\"", "Konnichiwa");
    fleet.ok(&["apply", "-f", &write(&dir, "hello.yaml", &manifest)]);
    fleet.wait_for("a ready instance", || fleet.json("instances")[0]["state"] == "Ready");
    assert_eq!(processes_of(&dir), 1);
    let (api, gw, admin) = (fleet.api.clone(), fleet.gateway_port, fleet.admin_port);
    let mut up = fleet.child.take().unwrap();
    kill(Pid::from_raw(up.id() as i32), Signal::SIGKILL).unwrap();
    up.wait().unwrap();
    fleet.wait_for("its instances to die with it", || processes_of(&dir) == 0);

    // What escaped the signal (a process an instance started) is reaped by the next fleet.
    let state = dir.join("state").canonicalize().unwrap();
    let mut stray = Command::new("sleep").arg("120").env("IKUKANTAI_FLEET_STATE", &state).spawn().unwrap();
    let fleet = Fleet::start_at(&dir, api, gw, admin);
    fleet.wait_for("the stray process to be reaped", || stray.try_wait().unwrap().is_some());
    fleet.wait_for("exactly the instance it wants", || {
        let instances = fleet.json("instances");
        instances.as_array().unwrap().len() == 1 && instances[0]["state"] == "Ready"
    });
    assert_eq!(processes_of(&dir), 1);
}

#[test]
fn a_second_fleet_on_the_same_state_dir_is_refused_with_the_holder_named() {
    let dir = scratch("twice");
    let fleet = Fleet::start(&dir);
    let other_api = format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    );
    let out = Command::new(BIN)
        .args(["up", "--api", &other_api, "--state-dir"])
        .arg(dir.join("state"))
        .args(["--gateway-port", &free_port_on_all().to_string()])
        .args(["--admin-port", &free_port_on_all().to_string()])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let pid = fleet.child.as_ref().unwrap().id();
    assert!(
        err.contains(&format!("is in use by another fleet (pid {pid}, API http://{})", fleet.api)),
        "{err}"
    );
    assert!(fleet.cli(&["get", "nodes"]).status.success(), "the first fleet runs on");
}

#[test]
fn an_instance_killed_under_load_fails_no_request() {
    let dir = scratch("killload");
    let fleet = Fleet::start(&dir);
    let manifest = hello("\n        autoscaling.knative.dev/min-scale: \"1\"", "Konnichiwa");
    fleet.ok(&["apply", "-f", &write(&dir, "hello.yaml", &manifest)]);
    fleet.wait_for("a ready instance", || fleet.json("instances")[0]["state"] == "Ready");
    let killed = fleet.json("instances")[0].clone();
    let pid = killed["pid"].as_i64().unwrap();
    // Four clients, each 100 GETs of 10 ms one after another: well over a second of load.
    let load: Vec<_> = (0..4)
        .map(|_| {
            let api = fleet.api.clone();
            std::thread::spawn(move || {
                Command::new(BIN)
                    .args(["invoke", "hello", "--from", "node1", "--path", "/sleep/10", "-c", "100"])
                    .env("IKUKANTAI_API", api)
                    .output()
                    .unwrap()
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(load.iter().all(|l| !l.is_finished()), "the load ended before the kill");
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    // Requests the dead process never got wait for its restart; the ones it had are sent again
    // (GETs without a body). None fails.
    for l in load {
        let out = l.join().unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{said}\n{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(said.lines().filter(|l| l.contains("[200 OK")).count(), 100, "{said}");
    }
    // The same instance, restarted (the load may have brought another, listed before it).
    let instances = fleet.json("instances");
    let same = instances.as_array().unwrap().iter().find(|i| i["name"] == killed["name"]);
    assert!(same.is_some_and(|i| i["restarts"].as_u64() >= Some(1)), "{instances}");
}
