//! The command line: one subcommand per benchmark, and the processes they start.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};

use crate::proxy::PROXIES;

#[derive(Debug, Parser)]
#[command(about = "ikukantai benchmark harness")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
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
    /// RTT probes between gateways through emulated links: their error, the link timer's
    /// lateness, the runtime's wait and the CPU, per fleet size and way of sending.
    Probes {
        #[arg(long, value_delimiter = ',', default_values_t = [20usize, 60, 100])]
        nodes: Vec<usize>,
        #[arg(long, value_delimiter = ',', default_values = ["burst", "spread"])]
        modes: Vec<crate::probes::Mode>,
        /// Rounds measured (after one that is not).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per round.
        #[arg(long, default_value_t = 5)]
        interval: u64,
        /// `planned`: random peers per round (the local fleet's 2; the default elsewhere 12).
        #[arg(long, default_value_t = 2)]
        explore: usize,
        /// `planned`: nearest peers measured as placement candidates (the local fleet's 2).
        #[arg(long, default_value_t = 2)]
        candidates: usize,
    },
    /// Prints a topology of `cloud` nodes and `edge` sites at 5–120 ms from the cloud (or, with
    /// `--hub N`, N nodes: one linked to the others at 11–69 ms, 2 ms between the rest).
    Topology {
        #[arg(long, default_value_t = 5)]
        cloud: usize,
        #[arg(long, default_value_t = 95)]
        edge: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        hub: Option<usize>,
    },
    /// Times `ikukantai sim` on a large fleet (`topology`'s layout, users at every node): by
    /// default 1 000 nodes at 20 000 requests a second for 10 minutes of virtual time.
    SimScale {
        #[arg(long, default_value_t = 10)]
        cloud: usize,
        #[arg(long, default_value_t = 990)]
        edge: usize,
        /// Requests a second over the whole fleet.
        #[arg(long, default_value_t = 20_000.0)]
        rate: f64,
        /// Measured virtual seconds (after a 10 s warm-up).
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Policy sets to run, one after the other.
        #[arg(long, value_delimiter = ',', default_value = "ours")]
        sets: Vec<String>,
    },
    /// The gateway's memory, idle and with requests buffered.
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
