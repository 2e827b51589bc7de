//! `ikukantai-bench`: measures the gateway against real peers, on loopback.
//!
//! - `proxy`: one hop through our gateway, nginx and HAProxy (each a reverse proxy with the same
//!   number of worker threads in front of the same trivial backend), and through the least proxy
//!   that can be built on hyper (`hyper-floor`), driven by wrk at 1, 10 and 100 connections; prints
//!   added p50/p99 latency over the direct path, throughput and CPU time per request, and each
//!   proxy paired with nginx round by round (`paired`), as Markdown;
//! - `rss`: the gateway's resident memory idle and with 10 000 requests buffered in its activator
//!   queue;
//! - `probes`: RTT probes through emulated links between `n` gateways, all pairs at once,
//!   spread, or planned by every gateway's own monitor, and what a link crossing waits for besides
//!   its delay (docs/latency.md);
//! - `topology`: writes a large edge fleet's topology (every pair listed) for `ikukantai up`;
//! - `sim-scale`: how long `ikukantai sim` takes for a fleet of 1 000 nodes (docs/benchmarks.md);
//! - `soak`: a gateway under abusive clients while a normal one keeps sending (docs/security.md);
//! - `backend`, `gateway`, `hyper-floor`: the processes the two above start;
//! - `queue-proxy`: a queue proxy alone in front of a backend, to profile it (docs/benchmarks.md);
//! - `raw-floor`: the least HTTP/1.1 proxy tokio and httparse allow, a yardstick for a request
//!   path without hyper (docs/benchmarks.md).

mod cli;
mod coldstart;
mod harness;
mod paired;
mod peers;
mod probes;
mod proxy;
mod rss;
mod simscale;
mod soak;
mod topology;
mod yardsticks;

use clap::Parser;

use crate::cli::{Cli, Cmd};
use crate::harness::runtime;

// The allocator: ikukantai_alloc, the same as the `ikukantai` binary's, so the gateway measured
// here is the one shipped (linked through `peers::gateway`'s memory release).

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Backend { listen } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(peers::backend(listen)),
        Cmd::Gateway { listen, admin, backend, threads } => {
            runtime(threads)?.block_on(peers::gateway(listen, admin, backend))
        }
        Cmd::QueueProxy { listen, admin, backend, container_concurrency } => {
            runtime(1)?.block_on(peers::queue_proxy(listen, admin, backend, container_concurrency))
        }
        Cmd::RawFloor { listen, backend } => runtime(1)?.block_on(yardsticks::raw_floor(listen, backend)),
        Cmd::HyperFloor { listen, backend, threads } => {
            runtime(threads)?.block_on(yardsticks::hyper_floor(listen, backend))
        }
        Cmd::Proxy { duration, rounds, threads, connections, paths, max_steal } => {
            proxy::proxy(duration, rounds, threads, &connections, &paths, max_steal)
        }
        Cmd::Rss { buffered, h2_connections } => rss::rss(buffered, h2_connections),
        Cmd::Soak { idle, slow, partial_preface, h2_silent, hangups_per_second, seconds } => {
            soak::soak(soak::Abuse { idle, slow, partial_preface, h2_silent, hangups_per_second, seconds })
        }
        Cmd::Topology { cloud, edge, seed, hub } => {
            print!("{}", hub.map_or_else(|| topology::topology(cloud, edge, seed), topology::hub));
            Ok(())
        }
        Cmd::SimScale { cloud, edge, rate, seconds, seed, sets } => {
            simscale::sim_scale(&simscale::Scale { cloud, edge, rate, seconds, seed, sets })
        }
        Cmd::Probes { nodes, modes, rounds, interval, explore, candidates } => {
            let params = ikukantai_policy::probe::ProbeParams {
                interval: std::time::Duration::from_secs(interval),
                explore,
                candidates,
                ..Default::default()
            };
            probes::header();
            for &n in &nodes {
                for &mode in &modes {
                    probes::probes(n, mode, rounds, params)?;
                }
            }
            Ok(())
        }
        Cmd::Coldstart { rounds } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(coldstart::coldstart(rounds)),
    }
}
