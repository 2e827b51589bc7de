//! `proxy`: one hop through our gateway, nginx, HAProxy and the hyper floor, driven by wrk, and
//! each proxy paired with nginx round by round.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::bail;

use crate::harness::{
    HOST, Procs, cpu_ticks, free_port, machine_ticks, me, ticks_per_second, wait_for, which,
};
use crate::paired;

/// The proxies `proxy` can measure, in table order.
pub(crate) const PROXIES: [&str; 4] = ["ikukantai", "nginx", "haproxy", "hyper-floor"];

pub(crate) fn nginx_config(dir: &Path, listen: SocketAddr, backend: SocketAddr, threads: usize) -> String {
    let d = dir.display();
    format!(
        "worker_processes {threads};\ndaemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/nginx.err warn;\n\
         events {{ worker_connections 8000; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         upstream backend {{ server {backend}; keepalive 512; }}\n\
         server {{\n    listen {listen};\n    location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
    )
}

pub(crate) fn haproxy_config(listen: SocketAddr, backend: SocketAddr, threads: usize) -> String {
    format!(
        "global\n  nbthread {threads}\n  maxconn 8000\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  option http-keep-alive\n  http-reuse always\n\
         frontend f\n  bind {listen}\n  default_backend b\n\
         backend b\n  server s1 {backend}\n"
    )
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct WrkResult {
    p50_ms: f64,
    p99_ms: f64,
    rps: f64,
    requests: f64,
}

pub(crate) fn parse_ms(text: &str) -> Option<f64> {
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

pub(crate) fn wrk(addr: SocketAddr, connections: usize, seconds: u64) -> anyhow::Result<WrkResult> {
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

pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// How often `proxy` measures a run again while the hypervisor steals more than allowed.
pub(crate) const STEAL_ATTEMPTS: usize = 5;

pub(crate) fn proxy(
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
pub(crate) struct Target {
    name: &'static str,
    addr: SocketAddr,
    pid: u32,
}

/// One wrk run against one path, with the CPU time the path's process spent per request (for the
/// direct path, the backend's).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    wrk: WrkResult,
    cpu_us: f64,
    /// Kept although the hypervisor took more than `--max-steal` of the machine during it.
    stolen: bool,
}

/// Proxies against a `baseline` (nginx), round by round: the ratio of throughputs, the
/// differences of p50 and p99 (the direct path is common to both, so a difference of latencies is
/// one of added latencies) and the ratio of CPU time per request, each as the median over rounds
/// with its 95 % interval, and in how many rounds the proxy was ahead with the sign test's
/// p-value for that count. A round in which either run was kept although more than `--max-steal`
/// was stolen during it is left out: the two did not share the machine alike.
pub(crate) fn print_paired(
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
