//! `coldstart`: a request at zero instances to its first byte through a local fleet, against the
//! function's own start time.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioExecutor;
use ikukantai_dataplane::gateway::MemoryRelease;

use crate::harness::{free_port, me};

pub(crate) fn ikukantai_binary() -> anyhow::Result<PathBuf> {
    let p = me()?.parent().context("no parent directory")?.join("ikukantai");
    anyhow::ensure!(p.exists(), "{} not found: cargo build --release -p ikukantai-cli", p.display());
    Ok(p)
}

pub(crate) fn percentile_ms(mut xs: Vec<Duration>, q: f64) -> f64 {
    xs.sort();
    let i = ((xs.len() - 1) as f64 * q).round() as usize;
    xs[i].as_secs_f64() * 1e3
}

/// Time from spawning the function to it accepting a TCP connection, on its own.
pub(crate) fn function_start(binary: &Path) -> anyhow::Result<Duration> {
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

pub(crate) async fn coldstart(rounds: usize) -> anyhow::Result<()> {
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
