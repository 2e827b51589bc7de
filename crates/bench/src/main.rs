//! `ikukantai-bench`: measures the gateway against real peers, on loopback.
//!
//! - `proxy`: one hop through our gateway, nginx and HAProxy (each a reverse proxy with the same
//!   number of worker threads in front of the same trivial backend), and through the least proxy
//!   that can be built on hyper (`hyper-floor`), driven by wrk at 1, 10 and 100 connections; prints
//!   added p50/p99 latency over the direct path, throughput and CPU time per request, and each
//!   proxy paired with nginx round by round (`paired`), as Markdown;
//! - `rss`: the gateway's resident memory idle and with 10 000 requests buffered in its activator
//!   queue;
//! - `soak`: a gateway under abusive clients while a normal one keeps sending (docs/security.md);
//! - `backend`, `gateway`, `hyper-floor`: the processes the two above start;
//! - `queue-proxy`: a queue proxy alone in front of a backend, to profile it (docs/benchmarks.md);
//! - `raw-floor`: the least HTTP/1.1 proxy tokio and httparse allow, a yardstick for a request
//!   path without hyper (docs/benchmarks.md).

mod paired;
mod soak;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ikukantai_dataplane::gateway::{
    Gateway, GatewayConfig, InstanceRoute, MemoryRelease, NoEvents, RevisionRoute, RouteTarget, Routes,
    ServiceRoute,
};
use ikukantai_dataplane::queue_proxy::{QueueProxyConfig, QueueProxyHandle, Readiness};
// The allocator: ikukantai_alloc, the same as the `ikukantai` binary's, so the gateway measured
// here is the one shipped.

const HOST: &str = "hello.default.example.com";

/// The proxies `proxy` can measure, in table order.
const PROXIES: [&str; 4] = ["ikukantai", "nginx", "haproxy", "hyper-floor"];

#[derive(Debug, Parser)]
#[command(about = "ikukantai benchmark harness")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// A trivial HTTP/1.1 backend answering "ok" (one thread).
    Backend {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Our gateway in front of one backend (or of nothing, to buffer).
    Gateway {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        admin: SocketAddr,
        /// The backend; omitted = the revision has no instance and requests wait.
        #[arg(long)]
        backend: Option<SocketAddr>,
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// A queue proxy in front of `backend` (unlimited containerConcurrency unless given), alone,
    /// to profile it.
    QueueProxy {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        admin: SocketAddr,
        #[arg(long)]
        backend: SocketAddr,
        #[arg(long, default_value_t = 0)]
        container_concurrency: u32,
    },
    /// The least HTTP/1.1 reverse proxy tokio and httparse allow: each client connection paired
    /// with its own upstream connection, request heads passed through as read, responses read to
    /// their Content-Length and passed back. Only what the benchmark sends: requests without a
    /// body, responses with a Content-Length. Not a product, a yardstick for a path without hyper.
    RawFloor {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        backend: SocketAddr,
    },
    /// The least a reverse proxy on hyper 1 can do, to tell hyper's cost from ours: every client
    /// connection gets its own upstream connection and requests pass through untouched (no
    /// routing, pool, header rewriting or metrics). Not a product, a yardstick.
    HyperFloor {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        backend: SocketAddr,
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Gateway vs nginx vs HAProxy (and the hyper floor), one hop, with wrk.
    Proxy {
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Rounds (results are the median over rounds; targets interleave within a round).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Worker threads of every proxy.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Connection counts.
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 10, 100])]
        connections: Vec<usize>,
        /// Proxies to measure (the direct path always is): any of ikukantai, nginx, haproxy,
        /// hyper-floor. Fewer paths give more rounds in the same time.
        #[arg(long, value_delimiter = ',', default_values_t = PROXIES.map(str::to_owned))]
        paths: Vec<String>,
        /// A run during which the hypervisor took more than this percentage of the machine's CPU
        /// time (steal, `/proc/stat`) is measured again, up to 5 attempts; 100 keeps every run.
        #[arg(long, default_value_t = 2.0)]
        max_steal: f64,
    },
    /// Cold start: request at zero to first byte through a local fleet, against the function's own
    /// start time. Needs the `ikukantai` binary next to this one (build both).
    Coldstart {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// The gateway's memory, idle and with requests buffered.
    /// A gateway under abuse (idle, slowloris, half-open h2c and hang-up clients, bounded, on
    /// loopback) while one normal client keeps sending: its success and latency, the gateway's
    /// CPU, open files and memory, without and with the abuse.
    Soak {
        #[arg(long, default_value_t = 2000)]
        idle: usize,
        #[arg(long, default_value_t = 500)]
        slow: usize,
        #[arg(long, default_value_t = 300)]
        partial_preface: usize,
        #[arg(long, default_value_t = 300)]
        h2_silent: usize,
        #[arg(long, default_value_t = 200)]
        hangups_per_second: u32,
        /// Seconds of each phase (quiet, then under abuse).
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    Rss {
        /// Requests to buffer (default: a revision's whole activator queue).
        #[arg(long, default_value_t = ikukantai_dataplane::defaults::GATEWAY_QUEUE_DEPTH)]
        buffered: usize,
        /// Send the requests as h2c streams over this many connections (default: HTTP/1.1, one
        /// connection per request).
        #[arg(long)]
        h2_connections: Option<usize>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Backend { listen } => {
            tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(backend(listen))
        }
        Cmd::Gateway { listen, admin, backend, threads } => {
            runtime(threads)?.block_on(gateway(listen, admin, backend))
        }
        Cmd::QueueProxy { listen, admin, backend, container_concurrency } => {
            runtime(1)?.block_on(queue_proxy(listen, admin, backend, container_concurrency))
        }
        Cmd::RawFloor { listen, backend } => runtime(1)?.block_on(raw_floor(listen, backend)),
        Cmd::HyperFloor { listen, backend, threads } => {
            runtime(threads)?.block_on(hyper_floor(listen, backend))
        }
        Cmd::Proxy { duration, rounds, threads, connections, paths, max_steal } => {
            proxy(duration, rounds, threads, &connections, &paths, max_steal)
        }
        Cmd::Rss { buffered, h2_connections } => rss(buffered, h2_connections),
        Cmd::Soak { idle, slow, partial_preface, h2_silent, hangups_per_second, seconds } => {
            soak::soak(soak::Abuse { idle, slow, partial_preface, h2_silent, hangups_per_second, seconds })
        }
        Cmd::Coldstart { rounds } => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(coldstart(rounds))
        }
    }
}

/// One thread: a single-threaded runtime, like one nginx worker; more: work-stealing.
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
}

/// Accepts on `listen` for ever, each connection (with Nagle off) in a task of its own.
async fn serve_each<F, Fut>(listen: SocketAddr, per_connection: F) -> anyhow::Result<()>
where
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(per_connection(stream));
    }
}

async fn hyper_floor(listen: SocketAddr, backend: SocketAddr) -> anyhow::Result<()> {
    serve_each(listen, move |stream| async move {
        let Ok(upstream) = tokio::net::TcpStream::connect(backend).await else { return };
        let _ = upstream.set_nodelay(true);
        let Ok((sender, conn)) =
            hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(upstream)).await
        else {
            return;
        };
        tokio::spawn(conn);
        // HTTP/1.1 serves one request at a time per connection: the lock is never contended.
        let sender = Arc::new(tokio::sync::Mutex::new(sender));
        let svc = service_fn(move |req: Request<Incoming>| {
            let sender = sender.clone();
            async move {
                let mut sender = sender.lock().await;
                sender.ready().await?;
                sender.send_request(req).await
            }
        });
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
    })
    .await
}

async fn raw_floor(listen: SocketAddr, backend: SocketAddr) -> anyhow::Result<()> {
    serve_each(listen, move |client| async move {
        // Clients that leave (wrk at the end of a run) reset their connections: not news.
        if let Err(e) = raw_pair(client, backend).await
            && e.kind() == std::io::ErrorKind::InvalidData
        {
            eprintln!("{e}");
        }
    })
    .await
}

/// Reads from `stream` into `buf`; false at end of stream.
async fn read_more(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    use tokio::io::AsyncReadExt;
    buf.reserve(8192);
    Ok(stream.read_buf(buf).await? > 0)
}

fn unsupported(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("raw floor: {what}"))
}

/// One client connection and its upstream connection, request by request.
async fn raw_pair(mut client: tokio::net::TcpStream, backend: SocketAddr) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut upstream = tokio::net::TcpStream::connect(backend).await?;
    upstream.set_nodelay(true)?;
    let (mut request, mut response) = (Vec::new(), Vec::new());
    loop {
        let head = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            if let httparse::Status::Complete(n) =
                req.parse(&request).map_err(|e| unsupported(&e.to_string()))?
            {
                let has_body = req.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("transfer-encoding")
                        || (h.name.eq_ignore_ascii_case("content-length") && h.value != b"0")
                });
                if has_body {
                    return Err(unsupported("request bodies"));
                }
                break n;
            }
            if !read_more(&mut client, &mut request).await? {
                return Ok(());
            }
        };
        upstream.write_all(&request[..head]).await?;
        request.drain(..head);
        let whole = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) =
                resp.parse(&response).map_err(|e| unsupported(&e.to_string()))?
            {
                let length = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                    .ok_or_else(|| unsupported("responses without a Content-Length"))?;
                break n + length;
            }
            if !read_more(&mut upstream, &mut response).await? {
                return Err(unsupported("the backend closed mid-response"));
            }
        };
        while response.len() < whole {
            if !read_more(&mut upstream, &mut response).await? {
                return Err(unsupported("the backend closed mid-body"));
            }
        }
        client.write_all(&response[..whole]).await?;
        response.drain(..whole);
    }
}

async fn backend(listen: SocketAddr) -> anyhow::Result<()> {
    serve_each(listen, |stream| async move {
        let svc = service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
    })
    .await
}

async fn gateway(listen: SocketAddr, admin: SocketAddr, backend: Option<SocketAddr>) -> anyhow::Result<()> {
    let mut config = GatewayConfig::single("node1");
    config.queue_depth = 100_000;
    // The memory benchmark holds 10 000 client connections: more than the default cap allows
    // under this machine's open-files limit.
    config.max_connections = 1_000_000;
    config.memory_release = Some(MemoryRelease::new(ikukantai_alloc::release_freed));
    let gw = Gateway::start(
        config,
        tokio::net::TcpListener::bind(listen).await?,
        tokio::net::TcpListener::bind(admin).await?,
        Arc::new(NoEvents),
    )?;
    let instances =
        backend.map(|addr| InstanceRoute { name: "backend".into(), node: 0, addr }).into_iter().collect();
    gw.set_routes(&Routes {
        services: vec![ServiceRoute {
            namespace: "default".into(),
            name: "hello".into(),
            traffic: vec![RouteTarget { revision: "hello-00001".into(), percent: 100, tag: None }],
        }],
        revisions: vec![RevisionRoute {
            namespace: "default".into(),
            service: "hello".into(),
            revision: "hello-00001".into(),
            container_concurrency: 0,
            target_concurrency: 100.0,
            timeout: Duration::from_secs(600),
            balancer: ikukantai_policy::registry::DEFAULT_BALANCER.into(),
            queue: "fifo".into(),
            priority_rules: Vec::new(),
            instances,
            failure: None,
        }],
    })?;
    std::future::pending::<()>().await;
    Ok(())
}

async fn queue_proxy(listen: SocketAddr, admin: SocketAddr, app: SocketAddr, cc: u32) -> anyhow::Result<()> {
    let config = QueueProxyConfig {
        namespace: "default".into(),
        service: "hello".into(),
        revision: "hello-00001".into(),
        instance: "hello-00001-bench".into(),
        node: "node1".into(),
        app,
        container_concurrency: cc,
        queue_depth: None,
        queue: "fifo".into(),
        priority_rules: Vec::new(),
        timeout: Duration::from_secs(300),
        response_start_timeout: None,
        idle_timeout: None,
        readiness: Readiness::from_probe(None),
        max_header_bytes: ikukantai_dataplane::defaults::MAX_HEADER_BYTES,
        upgrades: ikukantai_dataplane::edge::default_upgrades(),
    };
    let _proxy: QueueProxyHandle = QueueProxyHandle::start(
        config,
        tokio::net::TcpListener::bind(listen).await?,
        tokio::net::TcpListener::bind(admin).await?,
    )?;
    std::future::pending::<()>().await;
    Ok(())
}

/// Child processes that die with the harness.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn wait_for(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("nothing listens on {addr}")
}

fn which(tool: &str) -> anyhow::Result<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{tool} is not installed (apt-get install nginx haproxy wrk)")
}

fn me() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find this executable")
}

fn nginx_config(dir: &Path, listen: SocketAddr, backend: SocketAddr, threads: usize) -> String {
    let d = dir.display();
    format!(
        "worker_processes {threads};\ndaemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/nginx.err warn;\n\
         events {{ worker_connections 8000; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         upstream backend {{ server {backend}; keepalive 512; }}\n\
         server {{\n    listen {listen};\n    location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
    )
}

fn haproxy_config(listen: SocketAddr, backend: SocketAddr, threads: usize) -> String {
    format!(
        "global\n  nbthread {threads}\n  maxconn 8000\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  option http-keep-alive\n  http-reuse always\n\
         frontend f\n  bind {listen}\n  default_backend b\n\
         backend b\n  server s1 {backend}\n"
    )
}

#[derive(Debug, Clone, Copy)]
struct WrkResult {
    p50_ms: f64,
    p99_ms: f64,
    rps: f64,
    requests: f64,
}

/// CPU time (user + system) a process has used so far, in clock ticks (`/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces, so split after its closing paren):
    // state is field 3, utime 14 and stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("no command name in /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick =
        |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok()).context("short /proc/PID/stat");
    Ok(tick(14)? + tick(15)?)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when that fails).
fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The machine's CPU time so far and the part of it stolen by the hypervisor (`/proc/stat`).
fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal guest guest_nice; guests are in user.
    Ok((fields.iter().take(8).sum(), fields.get(7).copied().unwrap_or(0)))
}

fn parse_ms(text: &str) -> Option<f64> {
    let t = text.trim();
    let (num, factor) = if let Some(n) = t.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1e3)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * factor)
}

fn wrk(addr: SocketAddr, connections: usize, seconds: u64) -> anyhow::Result<WrkResult> {
    let out = Command::new(which("wrk")?)
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-H",
            &format!("Host: {HOST}"),
        ])
        .arg(format!("http://{addr}/"))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field =
        |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()));
    let p50 = field("50%").and_then(|v| parse_ms(&v));
    let p99 = field("99%").and_then(|v| parse_ms(&v));
    let rps = field("Requests/sec:").and_then(|v| v.parse::<f64>().ok());
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in").and_then(|(n, _)| n.parse::<f64>().ok()));
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("wrk saw errors against {addr}:\n{text}");
    }
    match (p50, p99, rps, requests) {
        (Some(p50_ms), Some(p99_ms), Some(rps), Some(requests)) => {
            Ok(WrkResult { p50_ms, p99_ms, rps, requests })
        }
        _ => bail!("cannot read wrk output:\n{text}"),
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// How often `proxy` measures a run again while the hypervisor steals more than allowed.
const STEAL_ATTEMPTS: usize = 5;

fn proxy(
    duration: u64,
    rounds: usize,
    threads: usize,
    connections: &[usize],
    paths: &[String],
    max_steal: f64,
) -> anyhow::Result<()> {
    if let Some(unknown) = paths.iter().find(|p| !PROXIES.contains(&p.as_str())) {
        bail!("--paths: unknown path `{unknown}` (known: {})", PROXIES.join(", "));
    }
    if !(0.0..=100.0).contains(&max_steal) {
        bail!("--max-steal: {max_steal} is not a percentage between 0 and 100");
    }
    let wanted = |name: &str| paths.iter().any(|p| p == name);
    let dir = std::env::temp_dir().join(format!("ikukantai-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let backend = free_port()?;
    let quiet = || Stdio::null();
    let mut procs = Procs(Vec::new());
    procs.0.push(
        Command::new(me()?).args(["backend", "--listen", &backend.to_string()]).stdout(quiet()).spawn()?,
    );
    let mut targets = vec![Target { name: "direct", addr: backend, pid: procs.0[0].id() }];
    for name in PROXIES.into_iter().filter(|n| wanted(n)) {
        let listen = free_port()?;
        let mut command = match name {
            "ikukantai" => {
                let admin = free_port()?;
                let mut c = Command::new(me()?);
                c.args(["gateway", "--listen", &listen.to_string(), "--admin", &admin.to_string()]).args([
                    "--backend",
                    &backend.to_string(),
                    "--threads",
                    &threads.to_string(),
                ]);
                c
            }
            "nginx" => {
                std::fs::write(dir.join("nginx.conf"), nginx_config(&dir, listen, backend, threads))?;
                let mut c = Command::new(which("nginx")?);
                c.arg("-c").arg(dir.join("nginx.conf")).arg("-p").arg(&dir);
                c
            }
            "haproxy" => {
                std::fs::write(dir.join("haproxy.cfg"), haproxy_config(listen, backend, threads))?;
                let mut c = Command::new(which("haproxy")?);
                c.arg("-f").arg(dir.join("haproxy.cfg"));
                c
            }
            _ => {
                let mut c = Command::new(me()?);
                c.args(["hyper-floor", "--listen", &listen.to_string(), "--backend", &backend.to_string()])
                    .args(["--threads", &threads.to_string()]);
                c
            }
        };
        let child = command.stdout(quiet()).stderr(quiet()).spawn()?;
        let name = if name == "hyper-floor" { "hyper floor" } else { name };
        targets.push(Target { name, addr: listen, pid: child.id() });
        procs.0.push(child);
    }
    for t in &targets {
        wait_for(t.addr)?;
    }
    // Warm every path once.
    for t in &targets {
        wrk(t.addr, 10, 1)?;
    }
    let tick = ticks_per_second();
    let (mut measured_again, mut kept_stolen) = (0, 0);
    let mut results: BTreeMap<(usize, &str), Vec<Run>> = BTreeMap::new();
    for round in 0..rounds {
        for &c in connections {
            // Each round starts at the next path, so that no path always runs right after the
            // same other one (or first, after a pause).
            for i in 0..targets.len() {
                let Target { name, addr, pid } = targets[(round + i) % targets.len()];
                for attempt in 1..=STEAL_ATTEMPTS {
                    let (cpu0, (all0, steal0)) = (cpu_ticks(pid)?, machine_ticks()?);
                    let wrk = wrk(addr, c, duration)?;
                    let (cpu1, (all1, steal1)) = (cpu_ticks(pid)?, machine_ticks()?);
                    let cpu_us = (cpu1 - cpu0) as f64 / tick * 1e6 / wrk.requests;
                    let stolen = (steal1 - steal0) as f64 * 100.0 / (all1 - all0).max(1) as f64;
                    eprintln!(
                        "round {round} c={c} {name}: p50 {:.3} ms p99 {:.3} ms {:.0} req/s, {cpu_us:.2} µs \
                         CPU per request, {stolen:.1} % of the machine stolen",
                        wrk.p50_ms, wrk.p99_ms, wrk.rps,
                    );
                    let over = stolen > max_steal;
                    if !over || attempt == STEAL_ATTEMPTS {
                        kept_stolen += usize::from(over);
                        results.entry((c, name)).or_default().push(Run { wrk, cpu_us, stolen: over });
                        break;
                    }
                    measured_again += 1;
                }
            }
        }
    }
    println!(
        "| connections | path | p50 (ms) | p99 (ms) | added p50 (ms) | added p99 (ms) | requests/s | CPU µs/request |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &c in connections {
        let direct = &results[&(c, "direct")];
        let (d50, d99) = (
            median(direct.iter().map(|r| r.wrk.p50_ms).collect()),
            median(direct.iter().map(|r| r.wrk.p99_ms).collect()),
        );
        for Target { name, .. } in &targets {
            let rs = &results[&(c, *name)];
            let p50 = median(rs.iter().map(|r| r.wrk.p50_ms).collect());
            let p99 = median(rs.iter().map(|r| r.wrk.p99_ms).collect());
            let rps = median(rs.iter().map(|r| r.wrk.rps).collect());
            let cpu = median(rs.iter().map(|r| r.cpu_us).collect());
            let added =
                |x: f64, d: f64| if *name == "direct" { "–".to_owned() } else { format!("{:.3}", x - d) };
            println!(
                "| {c} | {name} | {p50:.3} | {p99:.3} | {} | {} | {rps:.0} | {cpu:.2} |",
                added(p50, d50),
                added(p99, d99)
            );
        }
    }
    if max_steal < 100.0 {
        println!();
        println!(
            "{measured_again} runs measured again because the hypervisor took more than {max_steal} % of the \
             machine's CPU time during them; {kept_stolen} kept over that after {STEAL_ATTEMPTS} attempts."
        );
    }
    let names: Vec<&str> = targets.iter().map(|t| t.name).filter(|n| *n != "direct").collect();
    if wanted("nginx") {
        let others: Vec<&str> = names.iter().copied().filter(|n| *n != "nginx").collect();
        print_paired(&results, &others, "nginx", connections, rounds);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// One path `proxy` measures: where wrk sends its requests, and whose CPU time is counted (for
/// the direct path, the backend's).
#[derive(Debug, Clone, Copy)]
struct Target {
    name: &'static str,
    addr: SocketAddr,
    pid: u32,
}

/// One wrk run against one path, with the CPU time the path's process spent per request (for the
/// direct path, the backend's).
#[derive(Debug, Clone, Copy)]
struct Run {
    wrk: WrkResult,
    cpu_us: f64,
    /// Kept although the hypervisor took more than `--max-steal` of the machine during it.
    stolen: bool,
}

type MetricsClient =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn scrape(client: &MetricsClient, admin: SocketAddr) -> anyhow::Result<String> {
    let m = client.get(format!("http://{admin}/metrics").parse()?).await?;
    let body = http_body_util::BodyExt::collect(m.into_body()).await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The value of the first sample called `name`, with or without labels (Prometheus text format).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Proxies against a `baseline` (nginx), round by round: the ratio of throughputs, the
/// differences of p50 and p99 (the direct path is common to both, so a difference of latencies is
/// one of added latencies) and the ratio of CPU time per request, each as the median over rounds
/// with its 95 % interval, and in how many rounds the proxy was ahead with the sign test's
/// p-value for that count. A round in which either run was kept although more than `--max-steal`
/// was stolen during it is left out: the two did not share the machine alike.
fn print_paired(
    results: &BTreeMap<(usize, &str), Vec<Run>>,
    proxies: &[&str],
    baseline: &str,
    connections: &[usize],
    rounds: usize,
) {
    let interval = |xs: &[f64], digits: usize| match paired::median_interval(xs, 0.95) {
        Some(m) => format!("{:.digits$} [{:.digits$}, {:.digits$}]", m.median, m.low, m.high),
        None => "–".to_owned(),
    };
    let ahead = |wins: usize, ties: usize, pairs: usize| {
        let n = pairs - ties;
        format!("{wins}/{n} (p = {:.3})", paired::sign_test(wins, n))
    };
    println!();
    println!(
        "Paired with {baseline} per round ({rounds} rounds, less those in which either run was kept with \
         more than --max-steal stolen; median [interval holding the true median with at least 95 % \
         probability, or the whole range when the pairs are too few for that]; ahead = rounds better than \
         {baseline}, p = one-sided sign test):"
    );
    println!();
    println!(
        "| connections | path | pairs | req/s ratio | ahead | p50 difference (ms) | ahead | p99 difference (ms) \
         | ahead | CPU/request ratio | ahead |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &c in connections {
        let base = &results[&(c, baseline)];
        for name in proxies {
            let rs = &results[&(c, *name)];
            let pairs = || rs.iter().zip(base).filter(|(r, n)| !r.stolen && !n.stolen);
            let count_pairs = pairs().count();
            let ratio: Vec<f64> = pairs().map(|(r, n)| r.wrk.rps / n.wrk.rps).collect();
            let d50: Vec<f64> = pairs().map(|(r, n)| r.wrk.p50_ms - n.wrk.p50_ms).collect();
            let d99: Vec<f64> = pairs().map(|(r, n)| r.wrk.p99_ms - n.wrk.p99_ms).collect();
            let cpu: Vec<f64> = pairs().map(|(r, n)| r.cpu_us / n.cpu_us).collect();
            let count = |xs: &[f64], better: fn(f64) -> bool, neutral: f64| {
                (xs.iter().filter(|&&x| better(x)).count(), xs.iter().filter(|&&x| x == neutral).count())
            };
            let (w_rps, t_rps) = count(&ratio, |x| x > 1.0, 1.0);
            let (w50, t50) = count(&d50, |x| x < 0.0, 0.0);
            let (w99, t99) = count(&d99, |x| x < 0.0, 0.0);
            let (w_cpu, t_cpu) = count(&cpu, |x| x < 1.0, 1.0);
            println!(
                "| {c} | {name} | {count_pairs} | {} | {} | {} | {} | {} | {} | {} | {} |",
                interval(&ratio, 3),
                ahead(w_rps, t_rps, count_pairs),
                interval(&d50, 3),
                ahead(w50, t50, count_pairs),
                interval(&d99, 3),
                ahead(w99, t99, count_pairs),
                interval(&cpu, 3),
                ahead(w_cpu, t_cpu, count_pairs)
            );
        }
    }
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

fn rss(buffered: usize, h2_connections: Option<usize>) -> anyhow::Result<()> {
    let listen = free_port()?;
    let admin = free_port()?;
    let mut procs = Procs(Vec::new());
    procs.0.push(
        Command::new(me()?)
            .args([
                "gateway",
                "--listen",
                &listen.to_string(),
                "--admin",
                &admin.to_string(),
                "--threads",
                "1",
            ])
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_for(listen)?;
    let pid = procs.0[0].id();
    std::thread::sleep(Duration::from_millis(300));
    let idle = rss_kib(pid)?;
    // Open the requests; none can be served (no instance), so all wait in the activator queue.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let waiting = rt.block_on(async {
        let mut held = Vec::with_capacity(buffered);
        match h2_connections {
            None => {
                for _ in 0..buffered {
                    let stream = tokio::net::TcpStream::connect(listen).await?;
                    let (mut sender, conn) =
                        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                    tokio::spawn(conn);
                    let req = Request::get("/").header("host", HOST).body(Full::new(Bytes::new()))?;
                    held.push(tokio::spawn(async move { sender.send_request(req).await.map(drop) }));
                }
            }
            Some(connections) => {
                let per = buffered.div_ceil(connections.max(1));
                for c in 0..connections {
                    let stream = tokio::net::TcpStream::connect(listen).await?;
                    let (sender, conn) =
                        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                            .await?;
                    tokio::spawn(conn);
                    for _ in 0..per.min(buffered - c * per) {
                        let mut sender = sender.clone();
                        let req = Request::get(format!("http://{HOST}/")).body(Full::new(Bytes::new()))?;
                        held.push(tokio::spawn(async move { sender.send_request(req).await.map(drop) }));
                    }
                }
            }
        }
        // Wait until the gateway reports them all buffered.
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build::<_, Full<Bytes>>(hyper_util::client::legacy::connect::HttpConnector::new());
        for _ in 0..600 {
            let text = scrape(&client, admin).await?;
            let n = sample(&text, "ikukantai_gateway_buffered_requests").unwrap_or(0.0) as usize;
            if n >= buffered {
                return Ok::<_, anyhow::Error>((held, n));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the gateway never reported {buffered} buffered requests")
    })?;
    let loaded = rss_kib(pid)?;
    println!("| state | gateway RSS |");
    println!("|---|---|");
    println!("| idle | {:.1} MiB |", idle as f64 / 1024.0);
    let how = h2_connections.map_or_else(
        || "one HTTP/1.1 connection each".to_owned(),
        |c| format!("h2c streams over {c} connections"),
    );
    println!("| {} requests buffered, {how} | {:.1} MiB |", waiting.1, loaded as f64 / 1024.0);
    drop(waiting);
    Ok(())
}

fn ikukantai_binary() -> anyhow::Result<PathBuf> {
    let p = me()?.parent().context("no parent directory")?.join("ikukantai");
    anyhow::ensure!(p.exists(), "{} not found: cargo build --release -p ikukantai-cli", p.display());
    Ok(p)
}

fn percentile_ms(mut xs: Vec<Duration>, q: f64) -> f64 {
    xs.sort();
    let i = ((xs.len() - 1) as f64 * q).round() as usize;
    xs[i].as_secs_f64() * 1e3
}

/// Time from spawning the function to it accepting a TCP connection, on its own.
fn function_start(binary: &Path) -> anyhow::Result<Duration> {
    let addr = free_port()?;
    let started = std::time::Instant::now();
    let mut child = Command::new(binary)
        .args(["function", "hello"])
        .env("PORT", addr.port().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let elapsed = loop {
        if std::net::TcpStream::connect(addr).is_ok() {
            break started.elapsed();
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(10), "the function did not start");
        std::thread::sleep(Duration::from_micros(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    Ok(elapsed)
}

async fn coldstart(rounds: usize) -> anyhow::Result<()> {
    use ikukantai_api::config::{DEFAULT_PROBE_INTERVAL, FleetConfig};
    use ikukantai_fleet::fleet::{Fleet, FleetOptions};

    let binary = ikukantai_binary()?;
    let dir = std::env::temp_dir().join(format!("ikukantai-coldstart-{}", std::process::id()));
    let mut config = FleetConfig::new();
    config.autoscaler.allow_zero_initial_scale = true;
    config.autoscaler.scale_to_zero_grace_period = ikukantai_eval::run::SCALE_TO_ZERO_GRACE;
    let port = free_port()?.port();
    let fleet = Fleet::start(FleetOptions {
        state_dir: dir.clone(),
        topology: ikukantai_api::topology::Topology::demo(),
        config,
        gateway_port: port,
        admin_port: free_port()?.port(),
        probe_interval: DEFAULT_PROBE_INTERVAL,
        seed: 1,
        memory_release: Some(MemoryRelease::new(ikukantai_alloc::release_freed)),
        // Where each request was served is read from the gateway's response headers.
        edge: ikukantai_dataplane::gateway::EdgePolicy { internal_headers: true, ..Default::default() },
        holder: "ikukantai-bench platform".into(),
    })
    .await?;
    let manifest = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/window: \"6s\"\n        autoscaling.knative.dev/initial-scale: \"0\"\n    spec:\n      containers:\n        - image: ikukantai/hello\n          command: [{:?}, function, hello]\n",
        binary.display().to_string()
    );
    fleet.apply(&[("hello.yaml".into(), manifest)])?;
    let edge = fleet.nodes().iter().position(|n| n.name == "node3").context("node3")?;
    let gateway = fleet.nodes()[edge].gateway;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, Full<Bytes>>(hyper_util::client::legacy::connect::HttpConnector::new());
    let mut totals = Vec::new();
    for round in 0..rounds {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !fleet.instances().is_empty() {
            anyhow::ensure!(std::time::Instant::now() < deadline, "no scale to zero");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let req = Request::get(format!("http://{gateway}/"))
            .header("host", "hello.default")
            .body(Full::new(Bytes::new()))?;
        let started = std::time::Instant::now();
        let resp = client.request(req).await?;
        let first_byte = started.elapsed();
        let node =
            resp.headers().get("x-ikukantai-node").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        anyhow::ensure!(
            resp.status().is_success() && node == "node3",
            "round {round}: {} from {node}",
            resp.status()
        );
        eprintln!(
            "round {round}: first byte after {:.1} ms (served on {node})",
            first_byte.as_secs_f64() * 1e3
        );
        totals.push(first_byte);
    }
    let function: Vec<Duration> =
        (0..rounds.max(5)).map(|_| function_start(&binary)).collect::<anyhow::Result<_>>()?;
    fleet.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    let (t50, f50) = (percentile_ms(totals.clone(), 0.5), percentile_ms(function.clone(), 0.5));
    println!("| measure | min (ms) | median (ms) | max (ms) |");
    println!("|---|---|---|---|");
    println!(
        "| request at zero → first byte, entering at node3 | {:.1} | {t50:.1} | {:.1} |",
        percentile_ms(totals.clone(), 0.0),
        percentile_ms(totals, 1.0)
    );
    println!(
        "| the function alone: spawn → accepting connections | {:.1} | {f50:.1} | {:.1} |",
        percentile_ms(function.clone(), 0.0),
        percentile_ms(function, 1.0)
    );
    println!("| platform overhead (difference of medians) | | {:.1} | |", t50 - f50);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::sample;

    #[test]
    fn a_sample_is_found_by_its_whole_name_with_or_without_labels() {
        let text = "# HELP ikukantai_gateway_rejected Requests answered by the gateway itself.\n\
                    # TYPE ikukantai_gateway_rejected counter\n\
                    ikukantai_gateway_rejected_total_other 7\n\
                    ikukantai_gateway_rejected_total 880026\n\
                    ikukantai_gateway_buffered_requests{service=\"hello\"} 12\n";
        assert_eq!(sample(text, "ikukantai_gateway_rejected_total"), Some(880026.0));
        assert_eq!(sample(text, "ikukantai_gateway_buffered_requests"), Some(12.0));
        assert_eq!(sample(text, "ikukantai_gateway_rejected"), None);
    }
}
