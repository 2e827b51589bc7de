//! Running a scenario: for each policy set, a fresh fleet, the service, and open-loop load.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ikukantai_api::config::FleetConfig;
use ikukantai_dataplane::gateway::EdgePolicy;
use ikukantai_fleet::fleet::{Fleet, FleetOptions};
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Exp};
use serde::{Deserialize, Serialize};

use crate::scenario::{PolicySet, Scenario};

/// One request's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Origin node index.
    pub origin: usize,
    /// Response time in ms (to the end of the body), `None` when it did not complete in time.
    pub latency_ms: Option<f64>,
    /// Serving node index, when known.
    pub served: Option<usize>,
    /// When it was sent, in seconds since the policy set's load began (for time series).
    #[serde(default)]
    pub at: f64,
}

/// Everything measured for one policy set at one load level.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LevelRun {
    /// Users per origin.
    pub users: u32,
    /// Measured samples.
    pub samples: Vec<Sample>,
    /// Requests sent in the measuring phase.
    pub sent: usize,
    /// Seconds measured.
    pub seconds: f64,
}

/// All levels of one policy set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetRun {
    /// The set.
    pub set: PolicySet,
    /// Per level.
    pub levels: Vec<LevelRun>,
}

fn free_port_on(ips: &[std::net::IpAddr]) -> std::io::Result<u16> {
    loop {
        let port = std::net::TcpListener::bind((ips[0], 0))?.local_addr()?.port();
        if ips[1..].iter().all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok()) {
            return Ok(port);
        }
    }
}

/// The Service a scenario deploys for a policy set; `binary` serves it (`function hello`). The
/// simulator reads its revision from the same text.
pub fn manifest(s: &Scenario, set: &PolicySet, binary: &Path) -> String {
    format!(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: fn
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/window: "{window}"
        autoscaling.knative.dev/target: "{target}"
        autoscaling.knative.dev/initial-scale: "0"
        ikukantai.dev/balancer: {balancer}
        ikukantai.dev/placement: {placement}
    spec:
      containerConcurrency: {cc}
      containers:
        - image: ikukantai/hello
          command: [{binary:?}, function, hello]
"#,
        window = s.function.window,
        target = s.function.target,
        balancer = set.balancer,
        placement = set.placement,
        cc = s.function.container_concurrency,
        binary = binary.display().to_string(),
    )
}

/// The fleet configuration of every scenario: zero initial scale allowed, a short scale-to-zero
/// grace ([`SCALE_TO_ZERO_GRACE`]).
pub fn fleet_config() -> FleetConfig {
    let mut config = FleetConfig::new();
    config.autoscaler.allow_zero_initial_scale = true;
    config.autoscaler.scale_to_zero_grace_period = SCALE_TO_ZERO_GRACE;
    config
}

/// How long a scenario waits after deploying before the first level, so the monitor has measured.
pub const SETTLE: Duration = Duration::from_millis(1500);

/// Progress reporting.
pub trait Progress: Send + Sync {
    /// `set`, `level` (users), `phase` ("warm-up"/"measure"), `done`/`total` seconds.
    fn update(&self, set: &str, users: u32, phase: &str, done: f64, total: f64);
}

/// How often a scenario's nodes measure their RTTs: five times as often as by default, for runs
/// far shorter than a fleet's usual life.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// How long a revision stays at its last instance once idle (Knative's default is 30 s): short,
/// so that a run or a round starts again from zero instances soon after the last one.
pub const SCALE_TO_ZERO_GRACE: Duration = Duration::from_secs(1);

/// Why a policy set could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No port free on every node's address.
    #[error("no free port for the fleet")]
    Port(#[source] std::io::Error),
    /// The fleet did not start, or refused the scenario's service.
    #[error(transparent)]
    Fleet(#[from] ikukantai_fleet::fleet::FleetError),
    /// Stopped by Ctrl-C.
    #[error("interrupted")]
    Interrupted,
}

/// Runs one policy set over all levels; stops early (and cleans up) when `stop` turns true.
pub async fn run_set(
    s: &Scenario,
    set: &PolicySet,
    binary: &Path,
    work_dir: &Path,
    seed: u64,
    progress: &dyn Progress,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<SetRun, RunError> {
    let config = fleet_config();
    let n = s.topology.nodes.len();
    let ips: Vec<_> = (0..n).map(ikukantai_fleet::fleet::node_ip).collect();
    let state_dir = work_dir.join(&set.name);
    let _ = std::fs::remove_dir_all(&state_dir);
    let fleet = Fleet::start(FleetOptions {
        state_dir,
        topology: s.topology.clone(),
        config,
        gateway_port: free_port_on(&ips).map_err(RunError::Port)?,
        admin_port: free_port_on(&ips).map_err(RunError::Port)?,
        probe_interval: PROBE_INTERVAL,
        seed,
        // The scenarios' queues stay far shallower than where releasing starts.
        memory_release: None,
        // Reports count where each request was served, from the gateway's response headers.
        edge: EdgePolicy { internal_headers: true, ..EdgePolicy::default() },
        holder: format!("ikukantai bench, policy set {}", set.name),
    })
    .await?;
    fleet.apply(&[("scenario".into(), manifest(s, set, binary))])?;
    // Let the latency monitor measure once.
    tokio::time::sleep(SETTLE).await;
    let gateways: Vec<SocketAddr> = fleet.nodes().iter().map(|n| n.gateway).collect();
    let mut levels = Vec::new();
    let ctx = Level { s, set, gateways: &gateways, progress, stop, began: Instant::now() };
    for (li, &users) in s.load.users.iter().enumerate() {
        if *stop.borrow() {
            break;
        }
        levels.push(run_level(&ctx, users, seed ^ (li as u64 + 1)).await);
    }
    // Whatever happened, the fleet's processes go.
    fleet.shutdown().await;
    if *stop.borrow() {
        return Err(RunError::Interrupted);
    }
    Ok(SetRun { set: set.clone(), levels })
}

/// What every level of one policy set shares.
struct Level<'a> {
    s: &'a Scenario,
    set: &'a PolicySet,
    gateways: &'a [SocketAddr],
    progress: &'a dyn Progress,
    stop: &'a tokio::sync::watch::Receiver<bool>,
    /// When the set's first level began.
    began: Instant,
}

async fn run_level(ctx: &Level<'_>, users: u32, seed: u64) -> LevelRun {
    let Level { s, set, gateways, progress, stop, began } = *ctx;
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(4096).build(HttpConnector::new());
    let warmup = s.load.warmup.0;
    let duration = s.load.duration.0;
    let timeout = s.load.timeout.0;
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (lo, hi) = (s.function.work[0].0.as_secs_f64() * 1e3, s.function.work[1].0.as_secs_f64() * 1e3);
    let mut generators = Vec::new();
    for (k, (origin, rate)) in s.origin_rates(users).into_iter().enumerate().filter(|(_, (_, r))| *r > 0.0) {
        let client = client.clone();
        let samples = samples.clone();
        let sent = sent.clone();
        let gateway = gateways[origin];
        let nodes: Arc<Vec<String>> = Arc::new(s.topology.nodes.iter().map(|n| n.name.clone()).collect());
        generators.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed ^ (k as u64) << 8);
            let exp = Exp::new(rate.max(1e-9)).expect("positive rate");
            let mut next = Instant::now();
            let mut inflight = Vec::new();
            loop {
                next += Duration::from_secs_f64(exp.sample(&mut rng));
                if next >= end {
                    break;
                }
                tokio::time::sleep_until(next.into()).await;
                let work = if hi > lo { rng.random_range(lo..hi) } else { lo };
                let measured = next >= measure_from;
                if measured {
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let (client, samples, nodes) = (client.clone(), samples.clone(), nodes.clone());
                inflight.push(tokio::spawn(async move {
                    let req = Request::get(format!("http://{gateway}/sleep/{work:.3}"))
                        .header("host", "fn.default")
                        .body(Full::new(Bytes::new()))
                        .expect("request");
                    let t = Instant::now();
                    let at = t.duration_since(began).as_secs_f64();
                    let outcome = tokio::time::timeout(timeout, async {
                        let resp = client.request(req).await.ok()?;
                        let served = resp
                            .headers()
                            .get("x-ikukantai-node")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|n| nodes.iter().position(|x| x == n));
                        let ok = resp.status().is_success();
                        resp.into_body().collect().await.ok()?;
                        ok.then_some(served)
                    })
                    .await;
                    if measured {
                        let sample = match outcome {
                            Ok(Some(served)) => Sample {
                                origin,
                                latency_ms: Some(t.elapsed().as_secs_f64() * 1e3),
                                served,
                                at,
                            },
                            _ => Sample { origin, latency_ms: None, served: None, at },
                        };
                        samples.lock().push(sample);
                    }
                }));
            }
            for f in inflight {
                let _ = f.await;
            }
        }));
    }
    let total = (warmup + duration).as_secs_f64();
    loop {
        let done = start.elapsed().as_secs_f64().min(total);
        let phase = if Instant::now() < measure_from { "warm-up" } else { "measure" };
        progress.update(&set.name, users, phase, done, total);
        if generators.iter().all(|g| g.is_finished()) {
            break;
        }
        if *stop.borrow() {
            generators.iter().for_each(|g| g.abort());
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for g in generators {
        let _ = g.await;
    }
    let samples = std::mem::take(&mut *samples.lock());
    LevelRun {
        users,
        samples,
        sent: sent.load(std::sync::atomic::Ordering::Relaxed),
        seconds: duration.as_secs_f64(),
    }
}
