//! What the simulator models rather than runs, in one place: the links, the proxies' own cost, the
//! function's processing, cold starts and the monitor's probes. Everything that *decides* is the
//! fleet's own code (`ikukantai-policy`); everything here is calibrated against the emulator
//! (docs/simulation.md).

use std::time::Duration;

use ikukantai_api::topology::Topology;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Normal};

/// The modelled costs.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// The client's side of a request and its way into the gateway: added to every response time
    /// (ms).
    pub client_ms: f64,
    /// Gateway → queue proxy → function and back, beyond the links and processing, each way (ms):
    /// the proxies' parsing and copying.
    pub hop_ms: f64,
    /// Extra per-hop cost when the hop crosses a link (connection handling, the link's pumps)
    /// (ms).
    pub remote_hop_ms: f64,
    /// What the function takes beyond its work time: the bench's function sleeps on a timer of
    /// millisecond resolution, which wakes it up to this much later (uniform, ms).
    pub timer_ms: f64,
    /// From an instance's start to its readiness: process start and the first readiness probe
    /// (uniform in this range, ms).
    pub cold_start_ms: (f64, f64),
    /// What a probe adds to the round trip it measures (ms).
    pub probe_overhead_ms: f64,
    /// Probes per node per monitor round: every peer while the fleet is smaller, a rotating
    /// subset beyond.
    pub probes_per_round: usize,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            client_ms: 0.6,
            timer_ms: 1.0,
            hop_ms: 0.15,
            remote_hop_ms: 0.1,
            cold_start_ms: (25.0, 60.0),
            probe_overhead_ms: 0.3,
            probes_per_round: 32,
        }
    }
}

/// Link delays between every ordered pair, as the emulator's links draw them: half the round trip
/// each way plus normal jitter of `jitter / √2` (so a round trip has the configured spread), never
/// below zero.
#[derive(Debug, Clone)]
pub struct Links {
    n: usize,
    one_way_ms: Vec<f64>,
    jitter: Vec<Option<Normal<f64>>>,
    longest_rtt: Duration,
}

impl Links {
    /// The links of `topology`.
    pub fn new(topology: &Topology) -> Self {
        let n = topology.nodes.len();
        let table = topology.link_table();
        let one_way_ms = table.iter().map(|l| l.rtt.as_secs_f64() * 1e3 / 2.0).collect();
        let jitter = table
            .iter()
            .map(|l| {
                let sd = l.jitter.as_secs_f64() * 1e3 / std::f64::consts::SQRT_2;
                (sd > 0.0).then(|| Normal::new(0.0, sd).expect("finite jitter"))
            })
            .collect();
        let longest_rtt = table.iter().map(|l| l.rtt).max().unwrap_or_default();
        Self { n, one_way_ms, jitter, longest_rtt }
    }

    /// One crossing from `from` to `to` (ms); 0 on the same node.
    pub fn one_way(&self, from: usize, to: usize, rng: &mut SmallRng) -> f64 {
        if from == to {
            return 0.0;
        }
        let i = from * self.n + to;
        match &self.jitter[i] {
            None => self.one_way_ms[i],
            Some(normal) => (self.one_way_ms[i] + normal.sample(rng)).max(0.0),
        }
    }

    /// The longest configured round trip (the fleet's stop grace is based on it).
    pub fn longest_rtt(&self) -> Duration {
        self.longest_rtt
    }
}
