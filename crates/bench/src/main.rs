//! `ikukantai-bench`: measures the gateway against real peers, on loopback.
//!
//! - `proxy`: one hop through our gateway, nginx and HAProxy (each a reverse proxy with the same
//!   number of worker threads in front of the same trivial backend), and through the least proxy
//!   that can be built on hyper (`hyper-floor`), driven by wrk at 1, 10 and 100 connections; prints
//!   added p50/p99 latency over the direct path and throughput, as Markdown;
//! - `rss`: the gateway's resident memory idle and with 10 000 requests buffered in its activator
//!   queue;
//! - `backend`, `gateway`, `hyper-floor`: the processes the two above start;
//! - `queue-proxy`: a queue proxy alone in front of a backend, to profile it (docs/benchmarks.md);
//! - `raw-floor`: the least HTTP/1.1 proxy tokio and httparse allow, a yardstick for a request
//!   path without hyper (docs/benchmarks.md).

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
    },
    /// Cold start: request at zero to first byte through a local fleet, against the function's own
    /// start time. Needs the `ikukantai` binary next to this one (build both).
    Coldstart {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// The gateway's memory, idle and with requests buffered.
    Rss {
        #[arg(long, default_value_t = 10_000)]
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
        Cmd::Proxy { duration, rounds, threads, connections } => {
            proxy(duration, rounds, threads, &connections)
        }
        Cmd::Rss { buffered, h2_connections } => rss(buffered, h2_connections),
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
        max_header_bytes: 64 * 1024,
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
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("wrk saw errors against {addr}:\n{text}");
    }
    match (p50, p99, rps) {
        (Some(p50_ms), Some(p99_ms), Some(rps)) => Ok(WrkResult { p50_ms, p99_ms, rps }),
        _ => bail!("cannot read wrk output:\n{text}"),
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn proxy(duration: u64, rounds: usize, threads: usize, connections: &[usize]) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("ikukantai-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let backend = free_port()?;
    let ours = free_port()?;
    let ours_admin = free_port()?;
    let nginx = free_port()?;
    let haproxy = free_port()?;
    let floor = free_port()?;
    std::fs::write(dir.join("nginx.conf"), nginx_config(&dir, nginx, backend, threads))?;
    std::fs::write(dir.join("haproxy.cfg"), haproxy_config(haproxy, backend, threads))?;
    let quiet = || Stdio::null();
    let mut procs = Procs(Vec::new());
    procs.0.push(
        Command::new(me()?).args(["backend", "--listen", &backend.to_string()]).stdout(quiet()).spawn()?,
    );
    procs.0.push(
        Command::new(me()?)
            .args(["gateway", "--listen", &ours.to_string(), "--admin", &ours_admin.to_string()])
            .args(["--backend", &backend.to_string(), "--threads", &threads.to_string()])
            .stdout(quiet())
            .spawn()?,
    );
    procs.0.push(
        Command::new(me()?)
            .args(["hyper-floor", "--listen", &floor.to_string(), "--backend", &backend.to_string()])
            .args(["--threads", &threads.to_string()])
            .stdout(quiet())
            .spawn()?,
    );
    procs.0.push(
        Command::new(which("nginx")?)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(&dir)
            .stderr(quiet())
            .spawn()?,
    );
    procs.0.push(
        Command::new(which("haproxy")?)
            .arg("-f")
            .arg(dir.join("haproxy.cfg"))
            .stdout(quiet())
            .stderr(quiet())
            .spawn()?,
    );
    for a in [backend, ours, nginx, haproxy, floor] {
        wait_for(a)?;
    }
    let targets = [
        ("direct", backend),
        ("ikukantai", ours),
        ("nginx", nginx),
        ("haproxy", haproxy),
        ("hyper floor", floor),
    ];
    // Warm every path once.
    for (_, addr) in targets {
        wrk(addr, 10, 1)?;
    }
    let mut results: BTreeMap<(usize, &str), Vec<WrkResult>> = BTreeMap::new();
    for round in 0..rounds {
        for &c in connections {
            for (name, addr) in targets {
                let r = wrk(addr, c, duration)?;
                eprintln!(
                    "round {round} c={c} {name}: p50 {:.3} ms p99 {:.3} ms {:.0} req/s",
                    r.p50_ms, r.p99_ms, r.rps
                );
                results.entry((c, name)).or_default().push(r);
            }
        }
    }
    println!("| connections | path | p50 (ms) | p99 (ms) | added p50 (ms) | added p99 (ms) | requests/s |");
    println!("|---|---|---|---|---|---|---|");
    for &c in connections {
        let direct = &results[&(c, "direct")];
        let (d50, d99) = (
            median(direct.iter().map(|r| r.p50_ms).collect()),
            median(direct.iter().map(|r| r.p99_ms).collect()),
        );
        for (name, _) in targets {
            let rs = &results[&(c, name)];
            let p50 = median(rs.iter().map(|r| r.p50_ms).collect());
            let p99 = median(rs.iter().map(|r| r.p99_ms).collect());
            let rps = median(rs.iter().map(|r| r.rps).collect());
            let added =
                |x: f64, d: f64| if name == "direct" { "–".to_owned() } else { format!("{:.3}", x - d) };
            println!(
                "| {c} | {name} | {p50:.3} | {p99:.3} | {} | {} | {rps:.0} |",
                added(p50, d50),
                added(p99, d99)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
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
            let m = client.get(format!("http://{admin}/metrics").parse()?).await?;
            let body = http_body_util::BodyExt::collect(m.into_body()).await?.to_bytes();
            let text = String::from_utf8_lossy(&body).into_owned();
            let n = text
                .lines()
                .find(|l| l.starts_with("ikukantai_gateway_buffered_requests{"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
                .unwrap_or(0);
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
    use ikukantai_api::config::{ConfigMap, FleetConfig};
    use ikukantai_fleet::fleet::{Fleet, FleetOptions};

    let binary = ikukantai_binary()?;
    let dir = std::env::temp_dir().join(format!("ikukantai-coldstart-{}", std::process::id()));
    let mut config = FleetConfig::new();
    config.autoscaler.allow_zero_initial_scale = true;
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "config-autoscaler"},
        "data": {"scale-to-zero-grace-period": "1s"}
    }))?;
    config.apply(&cm).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let port = free_port()?.port();
    let fleet = Fleet::start(FleetOptions {
        state_dir: dir.clone(),
        topology: ikukantai_api::topology::Topology::demo(),
        config,
        gateway_port: port,
        admin_port: free_port()?.port(),
        probe_interval: Duration::from_secs(5),
        seed: 1,
        memory_release: Some(MemoryRelease::new(ikukantai_alloc::release_freed)),
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
