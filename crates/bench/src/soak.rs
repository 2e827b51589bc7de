//! `soak`: a gateway under abuse while a normal client keeps sending (docs/security.md).
//!
//! On loopback, bounded in count and time: idle connections that never send a byte, slowloris
//! clients trickling a head a byte at a time, clients that send half an HTTP/2 preface and wait,
//! h2c clients that send the preface and nothing more, and a stream of clients that send a request
//! and hang up at once. Meanwhile one client sends requests one after another. Its success rate
//! and latency, and the gateway's CPU time, open files and memory, are measured first without the
//! abuse, then with it.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::harness::{HOST, Procs, cpu_ticks, free_port, me, rss_kib, ticks_per_second, wait_for};

/// How many abusive clients of each kind, and for how long each phase runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Abuse {
    pub(crate) idle: usize,
    pub(crate) slow: usize,
    pub(crate) partial_preface: usize,
    pub(crate) h2_silent: usize,
    /// Request-then-hang-up clients per second.
    pub(crate) hangups_per_second: u32,
    pub(crate) seconds: u64,
}

/// What the normal client and the gateway showed in one phase.
struct Phase {
    sent: usize,
    ok: usize,
    p50_ms: f64,
    p99_ms: f64,
    cpu_percent: f64,
    fds: usize,
    rss_mib: f64,
}

pub(crate) fn soak(abuse: Abuse) -> anyhow::Result<()> {
    let (backend, listen, admin) = (free_port()?, free_port()?, free_port()?);
    let mut procs = Procs(Vec::new());
    procs.0.push(
        Command::new(me()?)
            .args(["backend", "--listen", &backend.to_string()])
            .stdout(Stdio::null())
            .spawn()?,
    );
    let gateway = Command::new(me()?)
        .args(["gateway", "--listen", &listen.to_string(), "--admin", &admin.to_string()])
        .args(["--backend", &backend.to_string(), "--threads", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = gateway.id();
    procs.0.push(gateway);
    wait_for(listen)?;
    wait_for(backend)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let quiet = rt.block_on(phase(listen, pid, abuse.seconds))?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let abusers = rt.spawn(abuse_gateway(listen, abuse, stopped));
    // Let the abusive connections pile up before measuring.
    std::thread::sleep(Duration::from_secs(3));
    let loaded = rt.block_on(phase(listen, pid, abuse.seconds))?;
    let _ = stop.send(true);
    let opened = rt.block_on(abusers)?;
    println!(
        "Abuse: {} idle, {} slowloris, {} half h2 prefaces, {} silent h2c connections, {} request-and-hang-up \
         clients per second ({} opened in all); {} s per phase; one normal client sending one request after another.",
        abuse.idle,
        abuse.slow,
        abuse.partial_preface,
        abuse.h2_silent,
        abuse.hangups_per_second,
        opened,
        abuse.seconds
    );
    println!();
    println!(
        "| phase | requests | succeeded | p50 (ms) | p99 (ms) | gateway CPU | gateway open files | gateway RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, p) in [("quiet", &quiet), ("under abuse", &loaded)] {
        println!(
            "| {name} | {} | {:.2} % | {:.3} | {:.3} | {:.1} % of a core | {} | {:.1} MiB |",
            p.sent,
            p.ok as f64 * 100.0 / p.sent.max(1) as f64,
            p.p50_ms,
            p.p99_ms,
            p.cpu_percent,
            p.fds,
            p.rss_mib
        );
    }
    Ok(())
}

/// The normal client for `seconds`: one request after another on a kept connection (reconnecting
/// if the gateway closed it), and the gateway's figures over the same time.
async fn phase(listen: SocketAddr, pid: u32, seconds: u64) -> anyhow::Result<Phase> {
    let (cpu0, t0) = (cpu_ticks(pid)?, Instant::now());
    let mut latencies = Vec::new();
    let (mut sent, mut ok) = (0, 0);
    let mut sender = None;
    while t0.elapsed() < Duration::from_secs(seconds) {
        sent += 1;
        let started = Instant::now();
        if sender.is_none() {
            sender = connect(listen).await.ok();
        }
        let Some(s) = sender.as_mut() else { continue };
        // The connection takes the next request once the last response has ended.
        if s.ready().await.is_err() {
            sender = None;
            sent -= 1;
            continue;
        }
        let req =
            http::Request::get("/").header("host", HOST).body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let answered = tokio::time::timeout(Duration::from_secs(5), s.send_request(req)).await;
        match answered {
            Ok(Ok(resp)) if resp.status().is_success() => {
                let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                ok += 1;
                latencies.push(started.elapsed());
            }
            _ => sender = None,
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(pid)? - cpu0) as f64 / ticks_per_second() / elapsed * 100.0;
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * q) as usize)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    };
    Ok(Phase {
        sent,
        ok,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        cpu_percent: cpu,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count),
        rss_mib: rss_kib(pid)? as f64 / 1024.0,
    })
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>;

async fn connect(listen: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(listen).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Opens the abusive connections and keeps them (and the hang-up stream) going until `stop`;
/// returns how many connections it opened.
async fn abuse_gateway(
    listen: SocketAddr,
    abuse: Abuse,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> usize {
    let mut held = Vec::new();
    let mut opened = 0;
    let kinds: [(usize, &[u8]); 4] = [
        (abuse.idle, b""),
        (abuse.slow, b"G"),
        (abuse.partial_preface, b"PRI * HTTP/2.0\r\n"),
        (abuse.h2_silent, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ];
    for (count, first) in kinds {
        for _ in 0..count {
            if let Ok(mut s) = TcpStream::connect(listen).await {
                opened += 1;
                let _ = s.write_all(first).await;
                held.push((s, first == b"G"));
            }
        }
    }
    let mut trickle = tokio::time::interval(Duration::from_secs(1));
    let mut hangup = tokio::time::interval(Duration::from_secs(1) / abuse.hangups_per_second.max(1));
    let request = format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n\r\n");
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = trickle.tick() => {
                // Slowloris: one more byte of a head that never ends, every second.
                for (s, slow) in &mut held {
                    if *slow {
                        let _ = s.write_all(b"x").await;
                    }
                }
            }
            _ = hangup.tick(), if abuse.hangups_per_second > 0 => {
                if let Ok(mut s) = TcpStream::connect(listen).await {
                    opened += 1;
                    let _ = s.write_all(request.as_bytes()).await;
                    drop(s);
                }
            }
        }
    }
    opened
}
