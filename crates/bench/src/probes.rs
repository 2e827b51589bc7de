//! `probes`: where the error of RTT probing through emulated links comes from (issue #25).
//!
//! Starts `n` real gateways on loopback, one hub linked to the others at 11–69 ms and 2 ms
//! between the rest (the fleet), and probes them as a monitor does: `burst` fires every
//! ordered pair at once each interval (the monitor before #25), `spread` sends the same probes
//! evenly over the interval, `reuse` too over one kept connection per pair, and `planned` runs
//! every gateway's own monitor (since #25). While it runs, two canaries measure what a link crossing waits for
//! besides its delay: the link timer (how late a task sleeping with `sleep_until` runs after its
//! deadline) and the runtime (how long a task woken from a thread outside it, as the link timer
//! wakes them, waits for a worker). Each probe's connection set-up
//! (the link's handshake: one RTT) is timed apart from its request/response (the RTT it reports).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use ikukantai_api::topology::LinkProperties;
use ikukantai_dataplane::gateway::{Gateway, GatewayConfig, Links, NoEvents};
use ikukantai_dataplane::monitor::{self, Peer};
use ikukantai_link::link::Link;
use ikukantai_policy::estimate::RttMatrix;
use ikukantai_policy::probe::ProbeParams;
use tokio::net::TcpListener;

use crate::harness::{cpu_ticks, ticks_per_second};

/// How the probes of a round are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// Every ordered pair at once, every interval (the monitor before #25).
    Burst,
    /// The same probes, evenly over the interval.
    Spread,
    /// Spread, each pair probing over one kept-alive connection.
    Reuse,
    /// What the fleet runs since #25: every gateway's own monitor (`dataplane::monitor`),
    /// probing at most 32 peers per interval as its planner says, through its own links.
    Planned,
}

/// One probe's timings.
#[derive(Debug, Clone, Copy)]
struct Probed {
    configured_ms: f64,
    /// The link's handshake (configured: one RTT) plus TCP's.
    connect_ms: f64,
    /// Request to response: what the monitor reports.
    rtt_ms: f64,
}

fn configured(n: usize, a: usize, b: usize) -> f64 {
    if a == 0 || b == 0 {
        let edge = a.max(b);
        11.0 + 58.0 * (edge - 1) as f64 / (n.max(3) - 2) as f64
    } else {
        2.0
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>;

/// One probe through `link` to `admin`, as `ikukantai_link::connect::probe_rtt` does it, with
/// the connection set-up timed too; over `kept`'s connection when it has one, and kept there
/// after.
async fn probe(
    link: Link,
    admin: SocketAddr,
    configured_ms: f64,
    kept: Option<Arc<tokio::sync::Mutex<Option<Sender>>>>,
) -> Option<Probed> {
    let reused = match &kept {
        Some(k) => k.lock().await.take().filter(|s| s.is_ready()),
        None => None,
    };
    let (mut sender, connect_ms) = match reused {
        Some(s) => (s, configured_ms),
        None => {
            let t0 = Instant::now();
            let stream =
                tokio::time::timeout(Duration::from_secs(5), link.connect(admin)).await.ok()?.ok()?;
            let connect_ms = t0.elapsed().as_secs_f64() * 1e3;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
            tokio::spawn(conn);
            (sender, connect_ms)
        }
    };
    let req =
        http::Request::get("/healthz").header("host", "monitor").body(Empty::<bytes::Bytes>::new()).ok()?;
    let started = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req)).await.ok()?.ok()?;
    let _ = resp.into_body().collect().await;
    let rtt_ms = started.elapsed().as_secs_f64() * 1e3;
    if let Some(k) = kept {
        *k.lock().await = Some(sender);
    }
    Some(Probed { configured_ms, connect_ms, rtt_ms })
}

/// Samples of one canary, in milliseconds.
type Samples = Arc<Mutex<Vec<f64>>>;

/// Every 10 ms: how late the link timer wakes a task after a 5 ms deadline.
async fn timer_canary(out: Samples) {
    loop {
        let deadline = Instant::now() + Duration::from_millis(5);
        ikukantai_link::timer::sleep_until(deadline).await;
        let late = Instant::now().saturating_duration_since(deadline);
        out.lock().unwrap_or_else(|e| e.into_inner()).push(late.as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every 10 ms a thread outside the runtime wakes a task, as the link timer's thread does: how
/// long the woken task waits for a worker to run it.
async fn runtime_canary(out: Samples) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(10));
            if tx.send(Instant::now()).is_err() {
                break;
            }
        }
    });
    while let Some(sent) = rx.recv().await {
        let wait = Instant::now().saturating_duration_since(sent);
        out.lock().unwrap_or_else(|e| e.into_inner()).push(wait.as_secs_f64() * 1e3);
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn sorted(mut xs: Vec<f64>) -> Vec<f64> {
    xs.sort_by(f64::total_cmp);
    xs
}

/// The gateways of `n` nodes, each reaching the others through emulated links of the hub
/// topology made on first use.
async fn gateways(n: usize, probe: ProbeParams) -> anyhow::Result<Vec<Arc<Gateway>>> {
    let interval = probe.interval;
    let names: Vec<String> = (0..n).map(|i| format!("node{i}")).collect();
    let mut out = Vec::new();
    for i in 0..n {
        let links = Links::Emulated(Arc::new(move |j, salt| {
            let props = LinkProperties {
                rtt: Duration::from_secs_f64(configured(n, i, j) / 1e3),
                jitter: Duration::ZERO,
                bandwidth: None,
            };
            (i != j).then(|| Link::new(&props, (i * n + j) as u64 ^ salt))
        }));
        let config = GatewayConfig {
            nodes: names.clone(),
            node: i,
            links,
            rtt: RttMatrix::new(n, 1.0, interval * 3),
            probe,
            ..GatewayConfig::single(&names[i])
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let admin = TcpListener::bind("127.0.0.1:0").await?;
        out.push(Arc::new(Gateway::start(config, listener, admin, Arc::new(NoEvents))?));
    }
    Ok(out)
}

/// One round of the old monitor's probes, all pairs at once or spread; their results.
async fn all_pairs_round(pairs: &[Pair], mode: Mode, interval: Duration) -> Vec<Probed> {
    let start = Instant::now();
    let m = pairs.len();
    let tasks: Vec<_> = pairs
        .iter()
        .enumerate()
        .map(|(k, (link, admin, ms, kept))| {
            let (link, admin, ms, kept) = (link.clone(), *admin, *ms, kept.clone());
            let at = match mode {
                Mode::Burst => start,
                _ => start + interval.mul_f64(k as f64 / m as f64),
            };
            tokio::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                probe(link, admin, ms, kept).await
            })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        if let Ok(Some(p)) = t.await {
            got.push(p);
        }
    }
    tokio::time::sleep_until((start + interval).into()).await;
    got
}

type Pair = (Link, SocketAddr, f64, Option<Arc<tokio::sync::Mutex<Option<Sender>>>>);

/// Runs `rounds` rounds (after one not counted) on `n` nodes and prints one Markdown row.
pub(crate) fn probes(n: usize, mode: Mode, rounds: usize, probe_params: ProbeParams) -> anyhow::Result<()> {
    let interval = probe_params.interval;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let gateways = gateways(n, probe_params).await?;
        let admins: Vec<SocketAddr> = gateways.iter().map(|g| g.admin_addr()).collect();
        // The old monitor's links: one per ordered pair, made once.
        let mut pairs: Vec<Pair> = Vec::new();
        if mode != Mode::Planned {
            for a in 0..n {
                for b in (0..n).filter(|&b| b != a) {
                    let props = LinkProperties {
                        rtt: Duration::from_secs_f64(configured(n, a, b) / 1e3),
                        jitter: Duration::ZERO,
                        bandwidth: None,
                    };
                    let kept = (mode == Mode::Reuse).then(Arc::default);
                    pairs.push((Link::new(&props, (a * n + b) as u64), admins[b], configured(n, a, b), kept));
                }
            }
        }
        let planned: Arc<Mutex<Vec<Probed>>> = Arc::default();
        let mut monitors = Vec::new();
        if mode == Mode::Planned {
            let peers: Vec<Peer> = admins.iter().enumerate().map(|(node, &admin)| Peer { node, admin }).collect();
            for (i, g) in gateways.iter().enumerate() {
                let (peers, out) = (peers.clone(), planned.clone());
                monitors.push(tokio::spawn(monitor::run(g.clone(), move || peers.clone(), move |m| {
                    let p = Probed { configured_ms: configured(n, i, m.to), connect_ms: f64::NAN, rtt_ms: m.rtt_ms };
                    out.lock().unwrap_or_else(|e| e.into_inner()).push(p);
                })));
            }
        }
        let (timer, runtime): (Samples, Samples) = Default::default();
        let canaries = [tokio::spawn(timer_canary(timer.clone())), tokio::spawn(runtime_canary(runtime.clone()))];
        let mut results = Vec::new();
        let mut cpu = 0.0;
        for round in 0..=rounds {
            if round == 1 {
                timer.lock().unwrap_or_else(|e| e.into_inner()).clear();
                runtime.lock().unwrap_or_else(|e| e.into_inner()).clear();
                planned.lock().unwrap_or_else(|e| e.into_inner()).clear();
            }
            let start = Instant::now();
            let ticks = cpu_ticks(std::process::id())?;
            let got = if mode == Mode::Planned {
                tokio::time::sleep(interval).await;
                Vec::new()
            } else {
                all_pairs_round(&pairs, mode, interval).await
            };
            if round > 0 {
                let used = (cpu_ticks(std::process::id())? - ticks) as f64 / ticks_per_second();
                cpu += used / start.elapsed().as_secs_f64();
                results.extend(got);
            }
        }
        for c in canaries.into_iter().chain(monitors) {
            c.abort();
        }
        results.extend(std::mem::take(&mut *planned.lock().unwrap_or_else(|e| e.into_inner())));
        let per_round = if mode == Mode::Planned { results.len() / rounds.max(1) } else { pairs.len() };
        let ratio = sorted(results.iter().map(|p| p.rtt_ms / p.configured_ms).collect());
        let excess = sorted(results.iter().map(|p| p.rtt_ms - p.configured_ms).collect());
        let setup = sorted(results.iter().map(|p| p.connect_ms - p.configured_ms).filter(|x| !x.is_nan()).collect());
        let within = results
            .iter()
            .filter(|p| (p.rtt_ms - p.configured_ms).abs() <= (0.1 * p.configured_ms).max(1.0))
            .count();
        let timer = sorted(std::mem::take(&mut *timer.lock().unwrap_or_else(|e| e.into_inner())));
        let runtime = sorted(std::mem::take(&mut *runtime.lock().unwrap_or_else(|e| e.into_inner())));
        let cpu_per_probe_us = cpu / rounds as f64 * interval.as_secs_f64() / per_round.max(1) as f64 * 1e6;
        println!(
            "| {n} | {mode:?} | {per_round} | {:.2}× | {:.2}× | +{:.2} ms | +{:.1} ms | {:.0} % | +{:.2} / +{:.1} ms | {:.2} / {:.2} / {:.1} ms | {:.2} / {:.2} / {:.1} ms | {:.0} % | {cpu_per_probe_us:.0} µs |",
            quantile(&ratio, 0.5),
            quantile(&ratio, 0.9),
            quantile(&excess, 0.5),
            quantile(&excess, 1.0),
            100.0 * within as f64 / results.len().max(1) as f64,
            quantile(&setup, 0.5),
            quantile(&setup, 0.9),
            quantile(&timer, 0.5),
            quantile(&timer, 0.99),
            quantile(&timer, 1.0),
            quantile(&runtime, 0.5),
            quantile(&runtime, 0.99),
            quantile(&runtime, 1.0),
            100.0 * cpu / rounds as f64,
        );
        anyhow::Ok(())
    })
}

/// The table's header.
pub(crate) fn header() {
    println!(
        "| nodes | mode | probes per round | measured / configured, median | p90 | excess, median | worst | within max(1 ms, 10 %) | set-up excess, median / p90 | timer lateness, median / p99 / max | runtime wait, median / p99 / max | CPU (of one core) | CPU per probe |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
}
