//! The node agent's work: running one instance as an OS process with its queue proxy.
//!
//! The process gets `PORT`, `K_SERVICE`, `K_CONFIGURATION`, `K_REVISION`, `NODENAME` and `PODNAME`
//! plus the template's env, runs in its own process group, and logs to its own file. When it exits
//! unasked it is restarted with exponential backoff (1 s doubling to 30 s, reset after 10 s of
//! running), shown as `CrashLoopBackOff`. Stopping drains the queue proxy (refuse new work, finish
//! what is in flight), then sends SIGTERM to the process group and SIGKILL after the grace period.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ikukantai_dataplane::queue_proxy::{QueueProxyConfig, QueueProxyHandle};
use ikukantai_policy::autoscaler::Stat;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};

/// Where an instance is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Process started, not answering yet.
    Starting,
    /// Answering; receives traffic.
    Ready,
    /// Crashed; waiting to restart.
    CrashLoopBackOff(String),
    /// Cannot run at all.
    Failed(String),
    /// Being stopped.
    Terminating,
    /// Gone.
    Stopped,
}

impl Phase {
    /// The state's name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Starting => "Starting",
            Self::Ready => "Ready",
            Self::CrashLoopBackOff(_) => "CrashLoopBackOff",
            Self::Failed(_) => "Failed",
            Self::Terminating => "Terminating",
            Self::Stopped => "Stopped",
        }
    }

    /// Why, for the states that have a reason.
    pub fn message(&self) -> Option<String> {
        match self {
            Self::CrashLoopBackOff(m) | Self::Failed(m) => Some(m.clone()),
            _ => None,
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// Instance name.
    pub name: String,
    /// Node name.
    pub node: String,
    /// Command and arguments (`ikukantai` as the first word means this very binary).
    pub command: Vec<String>,
    /// Working directory.
    pub working_dir: Option<String>,
    /// Environment (the template's plus the platform's).
    pub env: Vec<(String, String)>,
    /// Where the log goes.
    pub log: PathBuf,
    /// Grace period between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// The queue proxy's settings (its `app` is filled in here).
    pub queue_proxy: QueueProxyConfig,
}

#[derive(Debug)]
struct Shared {
    phase: watch::Sender<Phase>,
    restarts: Mutex<u32>,
    pid: Mutex<Option<u32>>,
}

/// A running instance.
#[derive(Debug)]
pub struct Instance {
    /// Name.
    pub name: String,
    /// Queue proxy address (traffic goes here).
    pub queue_proxy: SocketAddr,
    /// The process's own address.
    pub address: SocketAddr,
    shared: Arc<Shared>,
    qp: Arc<Mutex<Option<QueueProxyHandle>>>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The instance could not even be set up.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Ports or listeners.
    #[error("cannot set up instance")]
    Io(#[from] std::io::Error),
    /// Queue proxy configuration.
    #[error(transparent)]
    QueueProxy(#[from] ikukantai_dataplane::queue_proxy::QueueProxyError),
}

fn log_line(path: &PathBuf, line: &str) {
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "[ikukantai] {line}");
    }
}

/// The lowest port handed to an instance's process.
const APP_PORTS_FROM: u16 = 20_000;

/// A port for an instance's process to listen on (its `PORT`), free when this returns.
///
/// Not one the kernel picks (binding port 0): the port is free only until the process binds it,
/// and meanwhile the kernel may hand the same port to any socket bound to port 0 or connecting
/// out — a queue proxy's admin listener took one this way, the instance's probe connected to it and
/// requests were forwarded there (`crates/cli/tests/fleet.rs`, 2026-12-01). So the port comes from
/// below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), which nothing here binds
/// or connects from, taken in turn from an offset that differs between processes (several fleets
/// on one machine). Falls back to a kernel-picked port if that range is too low to leave room.
fn app_port() -> std::io::Result<SocketAddr> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(ephemeral_from().saturating_sub(APP_PORTS_FROM));
    if span >= 1_000 {
        let offset = std::process::id().wrapping_mul(7_919);
        for _ in 0..span {
            let port =
                APP_PORTS_FROM + ((offset.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))) % span) as u16;
            if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                return l.local_addr();
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_from() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768)
}

impl Instance {
    /// Starts the queue proxy and the process; returns at once (the process starts in the
    /// background; watch [`Instance::phase`]).
    pub async fn start(mut spec: InstanceSpec) -> Result<Self, AgentError> {
        // A free port for the process; the queue proxy forwards there.
        let address = app_port()?;
        spec.queue_proxy.app = address;
        let qp = QueueProxyHandle::start(
            spec.queue_proxy.clone(),
            TcpListener::bind("127.0.0.1:0").await?,
            TcpListener::bind("127.0.0.1:0").await?,
        )?;
        let queue_proxy = qp.addr();
        let ready = qp.ready();
        let (phase, _) = watch::channel(Phase::Starting);
        let shared = Arc::new(Shared { phase, restarts: Mutex::new(0), pid: Mutex::new(None) });
        let (stop_tx, stop_rx) = oneshot::channel();
        let qp = Arc::new(Mutex::new(Some(qp)));
        let task = tokio::spawn(supervise(spec.clone(), address, shared.clone(), ready, qp.clone(), stop_rx));
        Ok(Self {
            name: spec.name,
            queue_proxy,
            address,
            shared,
            qp,
            stop: Mutex::new(Some(stop_tx)),
            task: Mutex::new(Some(task)),
        })
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.shared.phase.borrow().clone()
    }

    /// Follows the phase.
    pub fn watch(&self) -> watch::Receiver<Phase> {
        self.shared.phase.subscribe()
    }

    /// Restarts after crashes.
    pub fn restarts(&self) -> u32 {
        *self.shared.restarts.lock()
    }

    /// Process id while running.
    pub fn pid(&self) -> Option<u32> {
        *self.shared.pid.lock()
    }

    /// Cuts the queue proxy's stats for the last period (`None` once stopped).
    pub fn report(&self) -> Option<Stat> {
        self.qp.lock().as_ref().map(QueueProxyHandle::report)
    }

    /// Stops the instance: drain, SIGTERM, SIGKILL after the grace period. Returns when it is gone.
    pub async fn stop(&self) {
        let _ = self.shared.phase.send(Phase::Terminating);
        let stop = self.stop.lock().take();
        if let Some(s) = stop {
            let _ = s.send(());
        }
        let task = self.task.lock().take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

fn resolve(command: &[String]) -> Result<(std::ffi::OsString, Vec<String>), String> {
    let Some(first) = command.first() else {
        return Err("the container has no command: the local fleet runs processes, so set spec.template.spec.containers[0].command".into());
    };
    let program = if first == "ikukantai" {
        std::env::current_exe()
            .map_err(|e| format!("cannot find the ikukantai binary: {e}"))?
            .into_os_string()
    } else {
        first.into()
    };
    Ok((program, command[1..].to_vec()))
}

fn spawn(spec: &InstanceSpec, address: SocketAddr) -> Result<Child, String> {
    let (program, args) = resolve(&spec.command)?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(|e| format!("cannot open log {}: {e}", spec.log.display()))?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&program);
    cmd.args(&args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env("PORT", address.port().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .process_group(0)
        .kill_on_drop(true);
    crate::lifetime::die_with_parent(&mut cmd);
    if let Some(dir) = &spec.working_dir {
        cmd.current_dir(dir);
    }
    cmd.spawn().map_err(|e| format!("cannot start {}: {e}", program.to_string_lossy()))
}

fn signal_group(pid: u32, signal: Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = killpg(Pid::from_raw(raw), signal);
    }
}

async fn supervise(
    spec: InstanceSpec,
    address: SocketAddr,
    shared: Arc<Shared>,
    mut ready: watch::Receiver<bool>,
    qp: Arc<Mutex<Option<QueueProxyHandle>>>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let mut child = match spawn(&spec, address) {
            Ok(c) => c,
            Err(message) => {
                log_line(&spec.log, &message);
                let _ = shared.phase.send(Phase::Failed(message));
                let _ = (&mut stop).await;
                break;
            }
        };
        let pid = child.id();
        *shared.pid.lock() = pid;
        log_line(&spec.log, &format!("started {} (pid {})", spec.command.join(" "), pid.unwrap_or(0)));
        let started = Instant::now();
        if !matches!(*shared.phase.borrow(), Phase::Terminating) {
            let _ = shared.phase.send(if *ready.borrow() { Phase::Ready } else { Phase::Starting });
        }
        let exited = loop {
            tokio::select! {
                status = child.wait() => break Some(status),
                changed = ready.changed() => {
                    if changed.is_err() { continue; }
                    let is_ready = *ready.borrow();
                    if !matches!(*shared.phase.borrow(), Phase::Terminating) {
                        let _ = shared.phase.send(if is_ready { Phase::Ready } else { Phase::Starting });
                    }
                }
                _ = &mut stop => break None,
            }
        };
        *shared.pid.lock() = None;
        match exited {
            None => {
                // Asked to stop: drain first, then signal the process group.
                let _ = shared.phase.send(Phase::Terminating);
                drain_queue_proxy(&qp).await;
                if let Some(pid) = pid {
                    signal_group(pid, Signal::SIGTERM);
                    if tokio::time::timeout(spec.grace, child.wait()).await.is_err() {
                        log_line(&spec.log, "still running after the grace period: SIGKILL");
                        signal_group(pid, Signal::SIGKILL);
                        let _ = child.wait().await;
                    }
                }
                log_line(&spec.log, "stopped");
                let _ = shared.phase.send(Phase::Stopped);
                return;
            }
            Some(status) => {
                let how = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                };
                // The process is gone; anything it started in its group goes too.
                if let Some(pid) = pid {
                    signal_group(pid, Signal::SIGKILL);
                }
                if started.elapsed() > Duration::from_secs(10) {
                    backoff = Duration::from_secs(1);
                }
                *shared.restarts.lock() += 1;
                let message = format!("exited ({how}); restarting in {}s", backoff.as_secs());
                log_line(&spec.log, &message);
                let message = match last_output(&spec.log) {
                    Some(line) => format!("{message} — last output: {line:?}"),
                    None => message,
                };
                let _ = shared.phase.send(Phase::CrashLoopBackOff(message));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = &mut stop => {
                        drain_queue_proxy(&qp).await;
                        let _ = shared.phase.send(Phase::Stopped);
                        return;
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    drain_queue_proxy(&qp).await;
    let _ = shared.phase.send(Phase::Stopped);
}

/// The last line the process wrote to its log (not the agent's own lines), cut to 200
/// characters: usually what it said as it failed.
fn last_output(log: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(log).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty() && !l.starts_with("[ikukantai]"))?;
    Some(line.chars().take(200).collect())
}

/// Drains and stops the queue proxy, once (later calls find it gone).
async fn drain_queue_proxy(qp: &Mutex<Option<QueueProxyHandle>>) {
    let handle = qp.lock().take();
    if let Some(h) = handle {
        h.drain().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_output_is_the_process_own_last_line() {
        let log = std::env::temp_dir().join(format!("ikukantai-agent-log-{}.log", std::process::id()));
        std::fs::write(&log, "[ikukantai] started x (pid 1)\nfirst\nError: no config\n\n[ikukantai] exited (exit status: 1); restarting in 1s\n").unwrap();
        assert_eq!(last_output(&log).as_deref(), Some("Error: no config"));
        std::fs::write(&log, "[ikukantai] started x (pid 1)\n").unwrap();
        assert_eq!(last_output(&log), None);
        let _ = std::fs::remove_file(&log);
    }

    #[test]
    fn app_ports_come_from_below_the_ephemeral_range_in_turn_skipping_taken_ones() {
        let below = ephemeral_from();
        let first = app_port().unwrap().port();
        assert!((APP_PORTS_FROM..below).contains(&first), "{first} not in {APP_PORTS_FROM}..{below}");
        // The next in turn is taken: it is skipped.
        let taken = std::net::TcpListener::bind(("127.0.0.1", first + 1));
        let second = app_port().unwrap().port();
        assert!((APP_PORTS_FROM..below).contains(&second));
        assert_ne!(second, first);
        if taken.is_ok() {
            assert_ne!(second, first + 1, "the taken port is skipped");
        }
        // What it returns is free to bind.
        drop(std::net::TcpListener::bind(("127.0.0.1", second)).unwrap());
    }
}
