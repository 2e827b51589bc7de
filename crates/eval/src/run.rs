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
use rand_distr::{Distribution, Exp1};
use serde::{Deserialize, Serialize};

use crate::scenario::{FunctionSpec, PolicySet, RateCurve, Scenario};
use crate::trace::{InstanceEvent, Listed, POLL_PERIOD, Tracker};

/// One request's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Origin node index.
    pub origin: usize,
    /// The function's index in the scenario (`Scenario::functions`).
    #[serde(default)]
    pub function: usize,
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
    /// When the level's load began (its warm-up), in seconds since the set's load began: the
    /// samples' `at` is on the same clock.
    #[serde(default)]
    pub began: f64,
    /// Instances started, ready and stopped from the level's start until the next level's (the
    /// first level's from the set's deployment), on the samples' clock.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceEvent>,
}

/// All levels of one policy set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetRun {
    /// The set.
    pub set: PolicySet,
    /// Per level.
    pub levels: Vec<LevelRun>,
}

/// The seeds of `runs` repeated runs from `seed`: `seed`, `seed + 1`, … (wrapping at the top).
pub fn seeds(seed: u64, runs: u32) -> impl Iterator<Item = u64> {
    (0..u64::from(runs)).map(move |r| seed.wrapping_add(r))
}

/// Repeated runs of the same policy sets as one: each set's levels with every run's samples,
/// requests sent and seconds measured. Every run's clock starts at its own set's start; a sample
/// keeps its time within its level, so the phases and the time series line up. Instance events
/// stay the first run's: counts and moves summed over runs would describe no run.
pub fn pool(repeats: Vec<Vec<SetRun>>) -> Vec<SetRun> {
    let mut repeats = repeats.into_iter();
    let mut pooled = repeats.next().unwrap_or_default();
    for runs in repeats {
        for (into, run) in pooled.iter_mut().zip(runs) {
            for (level, more) in into.levels.iter_mut().zip(run.levels) {
                let shift = level.began - more.began;
                level.samples.extend(more.samples.into_iter().map(|x| Sample { at: x.at + shift, ..x }));
                level.sent += more.sent;
                level.seconds += more.seconds;
            }
        }
    }
    pooled
}

fn free_port_on(ips: &[std::net::IpAddr]) -> std::io::Result<u16> {
    loop {
        let port = std::net::TcpListener::bind((ips[0], 0))?.local_addr()?.port();
        if ips[1..].iter().all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok()) {
            return Ok(port);
        }
    }
}

/// The Service a scenario deploys for one of its functions under a policy set; `binary` serves
/// it (`function hello`). The simulator reads its revision from the same text. The function's
/// own annotations come last, so one it sets wins over the set's.
pub fn manifest(f: &FunctionSpec, set: &PolicySet, binary: &Path) -> String {
    let mut annotations = std::collections::BTreeMap::from([
        ("autoscaling.knative.dev/window".to_owned(), f.window.to_string()),
        ("autoscaling.knative.dev/target".to_owned(), f.target.to_string()),
        ("autoscaling.knative.dev/initial-scale".to_owned(), "0".to_owned()),
        ("ikukantai.dev/balancer".to_owned(), set.balancer.clone()),
        ("ikukantai.dev/placement".to_owned(), set.placement.clone()),
    ]);
    annotations.extend(f.annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
    let annotations: String = annotations.iter().map(|(k, v)| format!("        {k:?}: {v:?}\n")).collect();
    format!(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name:?}
spec:
  template:
    metadata:
      annotations:
{annotations}    spec:
      containerConcurrency: {cc}
      containers:
        - image: ikukantai/hello
          command: [{binary:?}, function, hello]
"#,
        name = f.service(),
        cc = f.container_concurrency,
        binary = binary.display().to_string(),
    )
}

/// Every function's Service, as (label, manifest) sources for `Fleet::apply`.
pub fn manifests(s: &Scenario, set: &PolicySet, binary: &Path) -> Vec<(String, String)> {
    s.functions().iter().map(|f| (format!("function {}", f.service()), manifest(f, set, binary))).collect()
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
    fleet.apply(&manifests(s, set, binary))?;
    // Let the latency monitor measure once.
    tokio::time::sleep(SETTLE).await;
    let gateways: Vec<SocketAddr> = fleet.nodes().iter().map(|n| n.gateway).collect();
    let mut levels = Vec::new();
    let began = Instant::now();
    let watch = Arc::new(Watch::new(fleet.clone(), s, began));
    let watching = tokio::spawn(watch_instances(watch.clone()));
    let ctx = Level { s, set, gateways: &gateways, progress, stop, began, watch: &watch };
    for (li, &users) in s.load.users.iter().enumerate() {
        if *stop.borrow() {
            break;
        }
        levels.push(run_level(&ctx, users, seed ^ (li as u64 + 1)).await);
    }
    watching.abort();
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
    /// The fleet's instances, read as the levels run.
    watch: &'a Watch,
}

async fn run_level(ctx: &Level<'_>, users: u32, seed: u64) -> LevelRun {
    let Level { s, gateways, began, .. } = *ctx;
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(4096).build(HttpConnector::new());
    let start = Instant::now();
    let clock = Clock {
        start,
        measure_from: start + s.load.warmup.0,
        end: start + s.load.warmup.0 + s.load.duration.0,
        began,
        timeout: s.load.timeout.0,
    };
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let nodes: Arc<Vec<String>> = Arc::new(s.topology.nodes.iter().map(|n| n.name.clone()).collect());
    let generators: Vec<_> = s
        .streams(users)
        .into_iter()
        .enumerate()
        .map(|(k, stream)| {
            let f = &s.functions()[stream.function];
            let target = Target {
                gateway: gateways[stream.origin],
                host: format!("{}.default", f.service()),
                work_ms: f.work_ms(),
                origin: stream.origin,
                function: stream.function,
            };
            let sink = Sink {
                client: client.clone(),
                samples: samples.clone(),
                sent: sent.clone(),
                nodes: nodes.clone(),
            };
            // One generator per stream, seeded by its place in the list (the first function's
            // streams are the origins in order, as before functions could be several).
            tokio::spawn(generate(stream.curve, target, clock, sink, seed ^ (k as u64) << 8))
        })
        .collect();
    watch_level(ctx, users, &clock, &generators).await;
    for g in generators {
        let _ = g.await;
    }
    let samples = std::mem::take(&mut *samples.lock());
    LevelRun {
        users,
        samples,
        sent: sent.load(std::sync::atomic::Ordering::Relaxed),
        seconds: s.load.duration.0.as_secs_f64(),
        began: start.duration_since(began).as_secs_f64(),
        instances: ctx.watch.take(),
    }
}

/// The fleet's instances, read every [`POLL_PERIOD`] into instance events: what `ikukantai get
/// instances` lists, from the fleet in this process.
struct Watch {
    fleet: Arc<Fleet>,
    /// Each function's Service name, in scenario order.
    services: Vec<String>,
    nodes: Vec<String>,
    began: Instant,
    seen: Mutex<(Tracker, Vec<InstanceEvent>)>,
}

impl Watch {
    fn new(fleet: Arc<Fleet>, s: &Scenario, began: Instant) -> Self {
        Self {
            fleet,
            services: s.functions().iter().map(|f| f.service().to_owned()).collect(),
            nodes: s.topology.nodes.iter().map(|n| n.name.clone()).collect(),
            began,
            seen: Mutex::new((Tracker::default(), Vec::new())),
        }
    }

    /// Reads the instances once; what changed since the last read becomes events.
    fn poll(&self) {
        let listed: Vec<Listed> = self
            .fleet
            .instances()
            .into_iter()
            .filter_map(|v| {
                Some(Listed {
                    function: self.services.iter().position(|f| *f == v.service)?,
                    node: self.nodes.iter().position(|n| *n == v.node)?,
                    ready: v.state == "Ready",
                    stopping: matches!(v.state.as_str(), "Terminating" | "Stopped"),
                    name: v.name,
                })
            })
            .collect();
        let at = self.began.elapsed().as_secs_f64();
        let (tracker, events) = &mut *self.seen.lock();
        events.extend(tracker.observe(at, &listed));
    }

    /// The events since the last time, read up to now.
    fn take(&self) -> Vec<InstanceEvent> {
        self.poll();
        std::mem::take(&mut self.seen.lock().1)
    }
}

/// Polls `watch` until aborted; a read that comes late is skipped rather than caught up.
async fn watch_instances(watch: Arc<Watch>) {
    let mut every = tokio::time::interval(POLL_PERIOD);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        watch.poll();
    }
}

/// A level's times.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// When the level (its warm-up) began.
    start: Instant,
    measure_from: Instant,
    end: Instant,
    /// When the set's load began: samples' `at` counts from it.
    began: Instant,
    timeout: Duration,
}

/// Where one stream's requests go.
struct Target {
    gateway: SocketAddr,
    host: String,
    work_ms: (f64, f64),
    origin: usize,
    function: usize,
}

/// Where a level's outcomes go.
#[derive(Clone)]
struct Sink {
    client: Client<HttpConnector, Full<Bytes>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    sent: Arc<std::sync::atomic::AtomicUsize>,
    nodes: Arc<Vec<String>>,
}

/// One stream's open-loop generator: arrivals of a Poisson process following `curve` (each
/// request sent on time, whatever the earlier ones are doing), until the level ends and every
/// request it sent is answered or given up on.
async fn generate(curve: RateCurve, target: Target, clock: Clock, sink: Sink, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let (lo, hi) = target.work_ms;
    let target = Arc::new(target);
    let mut next = Instant::now();
    let mut inflight = Vec::new();
    loop {
        let e: f64 = Exp1.sample(&mut rng);
        let Some(gap) = curve.gap(next.saturating_duration_since(clock.start).as_secs_f64(), e) else {
            break;
        };
        next += Duration::from_secs_f64(gap);
        if next >= clock.end {
            break;
        }
        tokio::time::sleep_until(next.into()).await;
        let work = if hi > lo { rng.random_range(lo..hi) } else { lo };
        let measured = next >= clock.measure_from;
        if measured {
            sink.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        inflight.push(tokio::spawn(send(target.clone(), work, measured, clock, sink.clone())));
    }
    for f in inflight {
        let _ = f.await;
    }
}

/// Sends one request and records its outcome if it is measured.
async fn send(target: Arc<Target>, work: f64, measured: bool, clock: Clock, sink: Sink) {
    let req = Request::get(format!("http://{}/sleep/{work:.3}", target.gateway))
        .header("host", &target.host)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let t = Instant::now();
    let at = t.duration_since(clock.began).as_secs_f64();
    let outcome = tokio::time::timeout(clock.timeout, async {
        let resp = sink.client.request(req).await.ok()?;
        let served = resp
            .headers()
            .get("x-ikukantai-node")
            .and_then(|v| v.to_str().ok())
            .and_then(|n| sink.nodes.iter().position(|x| x == n));
        let ok = resp.status().is_success();
        resp.into_body().collect().await.ok()?;
        ok.then_some(served)
    })
    .await;
    if measured {
        let (latency_ms, served) = match outcome {
            Ok(Some(served)) => (Some(t.elapsed().as_secs_f64() * 1e3), served),
            _ => (None, None),
        };
        let (origin, function) = (target.origin, target.function);
        sink.samples.lock().push(Sample { origin, function, latency_ms, served, at });
    }
}

/// Reports progress until every generator is done, or aborts them on Ctrl-C.
async fn watch_level(ctx: &Level<'_>, users: u32, clock: &Clock, generators: &[tokio::task::JoinHandle<()>]) {
    let total = (clock.end - clock.start).as_secs_f64();
    loop {
        let done = clock.start.elapsed().as_secs_f64().min(total);
        let phase = if Instant::now() < clock.measure_from { "warm-up" } else { "measure" };
        ctx.progress.update(&ctx.set.name, users, phase, done, total);
        if generators.iter().all(|g| g.is_finished()) {
            break;
        }
        if *ctx.stop.borrow() {
            generators.iter().for_each(|g| g.abort());
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn repeated_runs_take_consecutive_seeds_wrapping_at_the_top() {
        assert_eq!(super::seeds(7, 3).collect::<Vec<_>>(), [7, 8, 9]);
        assert_eq!(super::seeds(u64::MAX, 2).collect::<Vec<_>>(), [u64::MAX, 0]);
    }
}
