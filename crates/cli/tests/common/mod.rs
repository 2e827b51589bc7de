//! The harness of the end-to-end tests: the real `ikukantai` binary runs a local fleet and is
//! driven through its CLI. Every wait is a bounded poll for a state, never an assertion on
//! elapsed time. Each test binary uses a part of it.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_ikukantai");

/// A running `ikukantai up`, stopped with SIGINT (Ctrl-C) when dropped.
pub(crate) struct Fleet {
    pub(crate) child: Option<Child>,
    pub(crate) api: String,
    pub(crate) dir: PathBuf,
    pub(crate) gateway_port: u16,
    pub(crate) admin_port: u16,
}

pub(crate) fn free_port_on_all() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.1.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let others = (2..=4).all(|i| TcpListener::bind(SocketAddr::from(([127, 0, 1, i], port))).is_ok());
        if others {
            return port;
        }
    }
}

pub(crate) const CONFIG: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-autoscaler\ndata:\n  scale-to-zero-grace-period: 1s\n";

impl Fleet {
    /// A fleet on free ports. A port found free can be taken by a parallel test before the fleet
    /// binds it; the fleet then exits at once ("address already in use") and gets fresh ports.
    pub(crate) fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// [`start`](Self::start) with more arguments for `up`.
    pub(crate) fn start_with(dir: &Path, extra: &[&str]) -> Self {
        for _ in 0..5 {
            let api = format!(
                "127.0.0.1:{}",
                TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
            );
            let mut fleet = Self::spawn(dir, api, free_port_on_all(), free_port_on_all(), extra);
            if fleet.answers() {
                return fleet;
            }
        }
        panic!("the fleet exited at start five times");
    }

    /// A fleet on the given ports (a restart on the ports of the fleet before it).
    pub(crate) fn start_at(dir: &Path, api: String, gateway_port: u16, admin_port: u16) -> Self {
        let mut fleet = Self::spawn(dir, api, gateway_port, admin_port, &[]);
        assert!(fleet.answers(), "the fleet exited at start");
        fleet
    }

    pub(crate) fn spawn(dir: &Path, api: String, gateway_port: u16, admin_port: u16, extra: &[&str]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("config.yaml");
        std::fs::write(&config, CONFIG).unwrap();
        let child = Command::new(BIN)
            .args(["up", "--api", &api, "--probe-interval", "1s"])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--config")
            .arg(&config)
            .args(["--gateway-port", &gateway_port.to_string(), "--admin-port", &admin_port.to_string()])
            .args(extra)
            .env_remove("IKUKANTAI_API")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self { child: Some(child), api, dir: dir.to_owned(), gateway_port, admin_port }
    }

    /// Whether the API answers; `false` if the process exited first.
    pub(crate) fn answers(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_some()) {
                // Reaped: nothing for `stop` to signal (its pid may already be another's).
                self.child = None;
                return false;
            }
            if self.cli(&["get", "nodes"]).status.success() {
                return true;
            }
            assert!(Instant::now() < deadline, "gave up waiting for the API to answer");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN).args(args).env("IKUKANTAI_API", &self.api).current_dir(&self.dir).output().unwrap()
    }

    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "ikukantai {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) fn json(&self, kind: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["get", kind, "-o", "json"])).unwrap()
    }

    pub(crate) fn wait_for(&self, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !f() {
            assert!(Instant::now() < deadline, "gave up waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub(crate) fn placement(&self) -> String {
        let p = self.json("placements");
        let p = &p[0];
        let join =
            |k: &str| p[k].as_array().unwrap().iter().map(|v| v.to_string()).collect::<Vec<_>>().join("-");
        format!("{}/{}", join("ready"), join("desired"))
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let _ = child.wait();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// examples/hello.yaml with a 6 s window (the shortest Knative allows) and extra annotations.
pub(crate) fn hello(extra_annotations: &str, target: &str) -> String {
    let base = std::fs::read_to_string(repo_root().join("examples/hello.yaml")).unwrap();
    base.replace(
        "autoscaling.knative.dev/window: \"12s\"",
        &format!("autoscaling.knative.dev/window: \"6s\"{extra_annotations}"),
    )
    .replace("value: \"Konnichiwa\"", &format!("value: \"{target}\""))
}

/// A test's scratch directory, removed when dropped (declare it before the fleet that uses it,
/// so that the fleet stops first).
pub(crate) struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn scratch(name: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("ikukantai-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    Scratch(d)
}

pub(crate) fn processes_of(dir: &Path) -> usize {
    // Instances run `ikukantai function hello` with their logs under this fleet's state dir.
    let out = Command::new("pgrep").args(["-f", "ikukantai function hello"]).output().unwrap();
    let pids = String::from_utf8_lossy(&out.stdout).into_owned();
    pids.lines()
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/fd/1")).is_ok_and(|p| p.starts_with(dir)))
        .count()
}

/// The repository's root, looked up when the test runs: `env!` would give the path the test was
/// compiled at, stale when one target dir serves several clones (as `.ci/run`'s does).
pub(crate) fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../..")
}
