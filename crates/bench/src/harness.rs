//! What every benchmark shares: the processes it starts and how it waits for them, ports, and what
//! it reads of a process (CPU time, memory) and of a gateway (its metrics).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Full;

pub(crate) const HOST: &str = "hello.default.example.com";

/// One thread: a single-threaded runtime, like one nginx worker; more: work-stealing.
pub(crate) fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
}

/// Accepts on `listen` for ever, each connection (with Nagle off) in a task of its own.
pub(crate) async fn serve_each<F, Fut>(listen: SocketAddr, per_connection: F) -> anyhow::Result<()>
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

/// Child processes that die with the harness.
pub(crate) struct Procs(pub(crate) Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub(crate) fn wait_for(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("nothing listens on {addr}")
}

pub(crate) fn which(tool: &str) -> anyhow::Result<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{tool} is not installed (apt-get install nginx haproxy wrk)")
}

pub(crate) fn me() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find this executable")
}

/// CPU time (user + system) a process has used so far, in clock ticks (`/proc/PID/stat`).
pub(crate) fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
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
pub(crate) fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The machine's CPU time so far and the part of it stolen by the hypervisor (`/proc/stat`).
pub(crate) fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal guest guest_nice; guests are in user.
    Ok((fields.iter().take(8).sum(), fields.get(7).copied().unwrap_or(0)))
}

pub(crate) type MetricsClient =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub(crate) async fn scrape(client: &MetricsClient, admin: SocketAddr) -> anyhow::Result<String> {
    let m = client.get(format!("http://{admin}/metrics").parse()?).await?;
    let body = http_body_util::BodyExt::collect(m.into_body()).await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The value of the first sample called `name`, with or without labels (Prometheus text format).
pub(crate) fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
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
