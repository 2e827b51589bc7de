//! The subcommands.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ikukantai_api::config::{DEFAULT_PROBE_INTERVAL, FleetConfig};
use ikukantai_api::duration::{GoDuration, parse_duration};
use ikukantai_api::parse::{Document, load};
use ikukantai_api::service::Service;
use ikukantai_api::topology::Topology;
use ikukantai_dataplane::edge::Cidr;
use ikukantai_dataplane::gateway::{EdgePolicy, MemoryRelease};
use ikukantai_dataplane::headers::{INSTANCE_HEADER, NODE_HEADER};
use ikukantai_fleet::fleet::{Fleet, FleetOptions};
use ikukantai_fleet::view::{ApplyResult, InstanceView, LatencyView, NodeView, PlacementView, RevisionView};
use ikukantai_policy::registry;
use serde::Serialize;

use crate::client::Api;
use crate::out::{out, outln};
use crate::{ApiArgs, Kind, Output};

/// Where the fleet API listens, and where the CLI looks for it, unless told otherwise.
pub(crate) const DEFAULT_API: &str = "127.0.0.1:7700";

/// `ikukantai up` options.
#[derive(Debug, clap::Args)]
pub(crate) struct UpArgs {
    /// Where the API listens (loopback unless told otherwise).
    #[arg(long, env = "IKUKANTAI_API", default_value = DEFAULT_API)]
    api: SocketAddr,
    /// Require this bearer token on the API.
    #[arg(long, env = "IKUKANTAI_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// State directory: applied services and instance logs (default: ~/.local/state/ikukantai).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Topology file (default: the original demo, node1 and node2 in the cloud, node3 at the edge 50 ms away).
    #[arg(long)]
    topology: Option<PathBuf>,
    /// Fleet configuration: config-autoscaler / config-ikukantai ConfigMaps. Repeatable.
    #[arg(long = "config")]
    configs: Vec<PathBuf>,
    /// Port of every node's gateway (node i listens on 127.0.1.i+1).
    #[arg(long, default_value_t = 8080)]
    gateway_port: u16,
    /// Port of every gateway's admin listener (/metrics, /healthz).
    #[arg(long, default_value_t = 9090)]
    admin_port: u16,
    /// How often nodes measure their RTT to each other.
    #[arg(long, default_value_t = GoDuration(DEFAULT_PROBE_INTERVAL), value_parser = parse_go_duration)]
    probe_interval: GoDuration,
    /// Seed of every policy's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    edge: EdgeArgs,
}

/// `--probe-interval`: a duration like `5s`, kept as a `GoDuration` so its default prints the same.
fn parse_go_duration(text: &str) -> Result<GoDuration, String> {
    parse_duration(text).map(GoDuration)
}

/// The gateway's policy towards clients, as flags of `ikukantai up` and `ikukantai gateway`
/// (docs/dataplane.md).
#[derive(Debug, clap::Args)]
pub(crate) struct EdgeArgs {
    /// Pass the queue proxy's x-ikukantai-* response headers (serving instance, node, load, service
    /// time) on to clients [default: true for `up`, a developer tool on loopback, false for `gateway`].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    internal_headers: Option<bool>,
    /// A network (CIDR, or one address) of proxies in front whose Forwarded / X-Forwarded-* /
    /// X-Real-IP headers are believed; from anyone else they are replaced. Repeatable [default: none].
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    trusted_proxies: Vec<Cidr>,
}

impl EdgeArgs {
    /// The policy, with `internal_headers` unless the flag says otherwise.
    pub(crate) fn policy(&self, internal_headers: bool) -> EdgePolicy {
        EdgePolicy {
            internal_headers: self.internal_headers.unwrap_or(internal_headers),
            trusted_proxies: self.trusted_proxies.clone(),
            ..EdgePolicy::default()
        }
    }
}

fn read_source(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("cannot read standard input")?;
        Ok(text)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))
    }
}

fn sources(files: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    // Diagnostics name the file; standard input by that name.
    files
        .iter()
        .map(|f| Ok((if f == "-" { "standard input".to_owned() } else { f.clone() }, read_source(f)?)))
        .collect()
}

/// The local fleet's defaults: Knative's, except that `initial-scale: "0"` is allowed, so a
/// Service can start at zero and have its first instance placed where its first request enters.
fn local_defaults() -> FleetConfig {
    let mut c = FleetConfig::new();
    c.autoscaler.allow_zero_initial_scale = true;
    c
}

/// Logs to stderr, filtered by `IKUKANTAI_LOG` (else `default`).
pub(crate) fn init_logs(default: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IKUKANTAI_LOG").unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

pub(crate) async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    init_logs("warn");
    let topology = match &args.topology {
        None => Topology::demo(),
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let file = path.display().to_string();
            let (docs, _) =
                load(&[(file.clone(), text)], &FleetConfig::new()).map_err(|d| anyhow::anyhow!("{d}"))?;
            match docs.into_iter().map(|d| d.document).collect::<Vec<_>>().as_slice() {
                [Document::Topology(t)] => t.clone(),
                _ => bail!("{file}: expected exactly one topology document"),
            }
        }
    };
    let config_sources: Vec<(String, String)> = args
        .configs
        .iter()
        .map(|p| {
            Ok((
                p.display().to_string(),
                std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let (docs, config) = load(&config_sources, &local_defaults()).map_err(|d| anyhow::anyhow!("{d}"))?;
    if let Some(d) = docs.iter().find(|d| !matches!(d.document, Document::Config(_))) {
        bail!(
            "{}: document {}: --config takes config-autoscaler / config-ikukantai ConfigMaps only",
            d.file,
            d.index
        );
    }
    let state_dir = args.state_dir.clone().unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map_or_else(|| PathBuf::from(".ikukantai"), |h| PathBuf::from(h).join(".local/state/ikukantai"))
    });
    let api_listener = tokio::net::TcpListener::bind(args.api)
        .await
        .with_context(|| format!("cannot listen on {}", args.api))?;
    let fleet = Fleet::start(FleetOptions {
        state_dir: state_dir.clone(),
        topology,
        config,
        gateway_port: args.gateway_port,
        admin_port: args.admin_port,
        probe_interval: args.probe_interval.0,
        seed: args.seed,
        memory_release: Some(MemoryRelease::new(ikukantai_alloc::release_freed)),
        edge: args.edge.policy(true),
        holder: format!("API http://{}", args.api),
    })
    .await?;
    for p in &fleet.problems {
        eprintln!("warning: state file {} was not loaded: {} (left untouched)", p.path.display(), p.reason);
    }
    let router = ikukantai_fleet::api::router(fleet.clone(), args.token.clone());
    let server = tokio::spawn(async move { axum::serve(api_listener, router).await });

    print_banner(&fleet, &args, &state_dir);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        r = server => { r.context("API server task")?.context("API server")?; }
    }
    eprintln!("stopping: draining and stopping every instance…");
    fleet.shutdown().await;
    eprintln!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// What `up` says once it runs: where everything listens and what to type next (with `--api`
/// when the API is not where the CLI looks by default). Nobody reading it is no error.
fn print_banner(fleet: &Fleet, args: &UpArgs, state_dir: &std::path::Path) {
    use std::fmt::Write as _;
    let mut b = String::new();
    let _ = writeln!(b, "ikukantai fleet is up — API on http://{}", args.api);
    let _ = writeln!(b, "state: {}", state_dir.display());
    let nodes = fleet.nodes();
    for n in &nodes {
        let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            b,
            "  node {:<8} gateway http://{}  metrics http://{}/metrics  capacity {}  {}",
            n.name,
            n.gateway,
            n.admin,
            n.capacity,
            labels.join(",")
        );
    }
    let _ = writeln!(b, "services loaded: {}\n", fleet.services().len());
    let api =
        if args.api.to_string() == DEFAULT_API { String::new() } else { format!(" --api {}", args.api) };
    let edge = nodes.last().map(|n| n.name.clone()).unwrap_or_default();
    let _ = writeln!(b, "next, in another terminal:");
    let _ = writeln!(b, "  ikukantai apply -f examples/hello.yaml{api}");
    let _ = writeln!(b, "  ikukantai invoke hello --from {edge}{api}");
    let _ = writeln!(b, "  ikukantai get placements{api}");
    let _ = writeln!(
        b,
        "  curl -H 'Host: hello.default.{}' http://{}/",
        fleet.options().config.domain,
        nodes.last().map(|n| n.gateway.to_string()).unwrap_or_default()
    );
    let _ = writeln!(b, "stop with Ctrl-C");
    let mut stdout = std::io::stdout().lock();
    let _ = std::io::Write::write_all(&mut stdout, b.as_bytes())
        .and_then(|()| std::io::Write::flush(&mut stdout));
}

pub(crate) async fn apply(files: &[String], api: &ApiArgs) -> anyhow::Result<ExitCode> {
    let client = Api::new(&api.api, api.token.clone());
    let body = serde_json::to_vec(&serde_json::json!({ "sources": sources(files)? }))?;
    let result: ApplyResult = client.call(Method::POST, "/api/v1/apply", Some(body)).await?;
    for l in result.lines {
        outln!("{l}");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> =
            cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        outln!("{}", parts.join("   ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn print_value<T: Serialize>(value: &T, output: Output) -> anyhow::Result<bool> {
    match output {
        Output::Json => outln!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => out!("{}", serde_saphyr::to_string(value)?),
        Output::Table => return Ok(false),
    }
    Ok(true)
}

fn condition(s: &Service, type_: &str) -> (String, String) {
    s.status
        .as_ref()
        .and_then(|st| st.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
        .unwrap_or_else(|| ("Unknown".into(), String::new()))
}

pub(crate) async fn get(kind: Kind, output: Output, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    let client = Api::new(&api.api, api.token.clone());
    match kind {
        Kind::Services => {
            let v: Vec<Service> = client.get("/api/v1/services").await?;
            if !print_value(&v, output)? {
                let rows: Vec<Vec<String>> = v
                    .iter()
                    .map(|s| {
                        let st = s.status.clone().unwrap_or_default();
                        let (ready, reason) = condition(s, "Ready");
                        vec![
                            s.metadata.name().to_owned(),
                            s.metadata.namespace().to_owned(),
                            st.url.unwrap_or_default(),
                            st.latest_created_revision_name.unwrap_or_default(),
                            st.latest_ready_revision_name.unwrap_or_default(),
                            ready,
                            reason,
                        ]
                    })
                    .collect();
                print_table(
                    &["NAME", "NAMESPACE", "URL", "LATESTCREATED", "LATESTREADY", "READY", "REASON"],
                    &rows,
                );
            }
        }
        Kind::Revisions => {
            let v: Vec<RevisionView> = client.get("/api/v1/revisions").await?;
            if !print_value(&v, output)? {
                let rows: Vec<Vec<String>> = v
                    .iter()
                    .map(|r| {
                        vec![
                            r.name.clone(),
                            r.service.clone(),
                            r.generation.to_string(),
                            format!("{}%", r.traffic),
                            format!("{}/{}", r.ready, r.desired),
                            r.balancer.clone(),
                            r.placement.clone(),
                            r.queue.clone(),
                        ]
                    })
                    .collect();
                print_table(
                    &["NAME", "SERVICE", "GENERATION", "TRAFFIC", "READY", "BALANCER", "PLACEMENT", "QUEUE"],
                    &rows,
                );
            }
        }
        Kind::Instances => {
            let v: Vec<InstanceView> = client.get("/api/v1/instances").await?;
            if !print_value(&v, output)? {
                let rows: Vec<Vec<String>> = v
                    .iter()
                    .map(|i| {
                        vec![
                            i.name.clone(),
                            i.revision.clone(),
                            i.node.clone(),
                            i.state.clone(),
                            i.restarts.to_string(),
                            i.queue_proxy.to_string(),
                            i.address.to_string(),
                            i.message.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                print_table(
                    &["NAME", "REVISION", "NODE", "STATE", "RESTARTS", "QUEUE-PROXY", "ADDRESS", "MESSAGE"],
                    &rows,
                );
            }
        }
        Kind::Nodes => {
            let v: Vec<NodeView> = client.get("/api/v1/nodes").await?;
            if !print_value(&v, output)? {
                let rows: Vec<Vec<String>> = v
                    .iter()
                    .map(|n| {
                        let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        vec![
                            n.name.clone(),
                            format!("{}/{}", n.instances, n.capacity),
                            n.gateway.to_string(),
                            n.admin.to_string(),
                            labels.join(","),
                        ]
                    })
                    .collect();
                print_table(&["NAME", "INSTANCES", "GATEWAY", "ADMIN", "LABELS"], &rows);
            }
        }
        Kind::Placements => {
            let v: Vec<PlacementView> = client.get("/api/v1/placements").await?;
            if !print_value(&v, output)? {
                let rows: Vec<Vec<String>> = v
                    .iter()
                    .map(|p| {
                        let demand: Vec<String> = p.demand.iter().map(|d| format!("{d:.2}")).collect();
                        vec![
                            p.revision.clone(),
                            p.service.clone(),
                            format!("{:?}", p.nodes),
                            p.summary(),
                            demand.join("-"),
                        ]
                    })
                    .collect();
                print_table(&["REVISION", "SERVICE", "NODES", "READY/DESIRED", "DEMAND"], &rows);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn describe(namespace: &str, name: &str, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    let client = Api::new(&api.api, api.token.clone());
    let svc: Service = client.get(&format!("/api/v1/services/{namespace}/{name}")).await?;
    out!("{}", serde_saphyr::to_string(&svc)?);
    let revisions: Vec<RevisionView> = client.get("/api/v1/revisions").await?;
    let placements: Vec<PlacementView> = client.get("/api/v1/placements").await?;
    outln!("---\n# revisions and placement");
    for r in revisions.iter().filter(|r| r.namespace == namespace && r.service == name) {
        let placement =
            placements.iter().find(|p| p.revision == r.name).map(PlacementView::summary).unwrap_or_default();
        outln!(
            "# {}  traffic {}%  ready {}/{}  placement {}  balancer {}  queue {}  ({})",
            r.name,
            r.traffic,
            r.ready,
            r.desired,
            r.placement,
            r.balancer,
            r.queue,
            placement
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn delete(namespace: &str, name: &str, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    let client = Api::new(&api.api, api.token.clone());
    let _: serde_json::Value =
        client.call(Method::DELETE, &format!("/api/v1/services/{namespace}/{name}"), None).await?;
    outln!("service/{name} deleted");
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn invoke(
    service: &str,
    namespace: &str,
    from: &str,
    path: &str,
    count: usize,
    api: &ApiArgs,
) -> anyhow::Result<ExitCode> {
    let client = Api::new(&api.api, api.token.clone());
    let nodes: Vec<NodeView> = client.get("/api/v1/nodes").await?;
    let Some(node) = nodes.iter().find(|n| n.name == from) else {
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        bail!("no node {from:?}; nodes: {}", names.join(", "));
    };
    let http = Client::builder(TokioExecutor::new())
        .build::<_, Full<Bytes>>(hyper_util::client::legacy::connect::HttpConnector::new());
    let host = format!("{service}.{namespace}");
    let mut failures = 0;
    for _ in 0..count {
        let req = Request::get(format!("http://{}{path}", node.gateway))
            .header("host", &host)
            .body(Full::new(Bytes::new()))?;
        let started = Instant::now();
        let resp = http
            .request(req)
            .await
            .with_context(|| format!("cannot reach the gateway of {from} at {}", node.gateway))?;
        let status = resp.status();
        let header =
            |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
        let (instance, served) = (header(INSTANCE_HEADER), header(NODE_HEADER));
        let body = resp.into_body().collect().await?.to_bytes();
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let text = String::from_utf8_lossy(&body);
        let text = text.trim_end();
        if !status.is_success() {
            failures += 1;
        }
        outln!("{text}    [{status}, served by {instance} on {served}, {ms:.1} ms]");
    }
    Ok(if failures == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub(crate) async fn latency(output: Output, from: Option<&str>, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    let client = Api::new(&api.api, api.token.clone());
    let l: LatencyView = client.get("/api/v1/latency").await?;
    if let Some(name) = from
        && !l.nodes.iter().any(|n| n == name)
    {
        bail!("no node {name:?}; nodes: {}", l.nodes.join(", "));
    }
    if !print_value(&l, output)? {
        let headers = ["FROM", "TO", "RTT (ms)", "SOURCE", "MEASURED", "ESTIMATED", "CONFIGURED"];
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2}"));
        let mut rows = Vec::new();
        for (i, a) in l.nodes.iter().enumerate().filter(|(_, a)| from.is_none_or(|f| f == a.as_str())) {
            for (j, b) in l.nodes.iter().enumerate().filter(|&(j, _)| j != i) {
                rows.push(vec![
                    a.clone(),
                    b.clone(),
                    format!("{:.2}", l.used[i][j]),
                    l.source[i][j].clone(),
                    ms(l.measured[i][j]),
                    ms(l.estimated[i][j]),
                    format!("{:.2}", l.configured[i][j]),
                ]);
            }
        }
        print_table(&headers, &rows);
        outln!(
            "RTT: what balancing and placement use now, from SOURCE: a fresh probe (measured), both nodes' \
             network coordinates (estimated), else the topology (configured)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn logs(instance: &str, tail: Option<usize>, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    let client = Api::new(&api.api, api.token.clone());
    let path = match tail {
        Some(t) => format!("/api/v1/logs/{instance}?tail={t}"),
        None => format!("/api/v1/logs/{instance}"),
    };
    let (status, body) = client.raw(Method::GET, &path, None).await?;
    if !status.is_success() {
        let message = serde_json::from_slice::<ikukantai_fleet::view::ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_default();
        bail!("{message}");
    }
    out!("{}", String::from_utf8_lossy(&body));
    Ok(ExitCode::SUCCESS)
}

/// A scenario of `bench` and `sim` (a mapping with any of `topology`, `load`, `function` or
/// `functions`, which no manifest or topology file has), so that one missing a part is told
/// which.
fn is_scenario(text: &str) -> bool {
    serde_saphyr::from_str::<serde_json::Value>(text)
        .is_ok_and(|v| ["topology", "load", "function", "functions"].iter().any(|k| v.get(k).is_some()))
}

/// Checks scenario files; returns how many problems were found.
fn validate_scenarios(scenarios: &[(String, String)]) -> usize {
    let mut problems = 0;
    for (file, text) in scenarios {
        match ikukantai_eval::scenario::Scenario::parse(file, text) {
            Ok(s) => outln!("ok: {file}: scenario {}", s.name),
            Err(e) => {
                eprintln!("{e}");
                problems += e.0.len();
            }
        }
    }
    problems
}

pub(crate) fn validate(files: &[String]) -> anyhow::Result<ExitCode> {
    // Judged as `up` judges them: against the local fleet's defaults.
    let (scenarios, sources): (Vec<_>, Vec<_>) =
        sources(files)?.into_iter().partition(|(_, t)| is_scenario(t));
    let bad_scenarios = validate_scenarios(&scenarios);
    if sources.is_empty() && !scenarios.is_empty() {
        if bad_scenarios > 0 {
            eprintln!("{bad_scenarios} problem(s) found");
            return Ok(ExitCode::FAILURE);
        }
        outln!("{} scenario(s) valid", scenarios.len());
        return Ok(ExitCode::SUCCESS);
    }
    match load(&sources, &local_defaults()) {
        Ok((docs, _)) if docs.is_empty() => {
            let labels: Vec<&str> = sources.iter().map(|(f, _)| f.as_str()).collect();
            eprintln!("{}: no documents found", labels.join(", "));
            Ok(ExitCode::FAILURE)
        }
        Ok((docs, _)) => {
            for d in &docs {
                outln!("ok: {}: document {} ({})", d.file, d.index, d.document.subject());
                if let Document::Service(svc) = &d.document
                    && let Some(warning) = ikukantai_fleet::fleet::local_warning(svc)
                {
                    eprintln!(
                        "warning: {}: document {} ({}): {warning}",
                        d.file,
                        d.index,
                        d.document.subject()
                    );
                }
            }
            if bad_scenarios > 0 {
                eprintln!("{bad_scenarios} problem(s) found");
                return Ok(ExitCode::FAILURE);
            }
            outln!("{} document(s) valid", docs.len() + scenarios.len());
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            for p in &problems.0 {
                eprintln!("{p}");
            }
            eprintln!("{} problem(s) found", problems.0.len() + bad_scenarios);
            Ok(ExitCode::FAILURE)
        }
    }
}

pub(crate) fn policies() {
    outln!("balancers (annotation ikukantai.dev/balancer, default {}):", registry::DEFAULT_BALANCER);
    for e in registry::BALANCERS {
        outln!("  {:<10} {}", e.name, e.summary);
    }
    outln!("placements (annotation ikukantai.dev/placement, default {}):", registry::DEFAULT_PLACEMENT);
    for e in registry::PLACEMENTS {
        outln!("  {:<10} {}", e.name, e.summary);
    }
    outln!("queues (annotation ikukantai.dev/queue, default {}):", registry::DEFAULT_QUEUE);
    for (name, summary) in registry::QUEUES {
        outln!("  {name:<10} {summary}");
    }
}
