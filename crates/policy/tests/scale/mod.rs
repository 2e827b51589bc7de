//! A simulated fleet with a realistic RTT structure, probed the way the runtimes probe it: every
//! node plans its rounds with the `ProbePlanner`, feeds its `Vivaldi` coordinate with what it
//! measures, and records samples and coordinates in one `RttMatrix` (the local fleet's view).

#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use ikukantai_policy::estimate::{NodeIndex, RttMatrix, Vivaldi, VivaldiParams};
use ikukantai_policy::probe::{Needs, PlannedProbe, ProbeParams, ProbePlanner, ProbeReason, nearest};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

/// Samples are fresh for three probe intervals, as in the local fleet.
pub const INTERVAL: Duration = Duration::from_secs(5);
pub const MAX_AGE: Duration = Duration::from_secs(15);

/// Where the nodes are: regions on a continent-sized plane, sites around each region's centre,
/// a few nodes per site. Each site has an access link (edge sites' last mile), each node a small
/// one of its own, and every pair of sites a fixed ±10 % detour (routes are not straight lines,
/// so the triangle inequality does not quite hold, as on the Internet).
#[derive(Debug, Clone)]
pub struct World {
    pub site_of: Vec<usize>,
    site_xy: Vec<(f64, f64)>,
    site_access_ms: Vec<f64>,
    node_access_ms: Vec<f64>,
    /// Standard deviation of a sample's jitter, relative to the RTT (delay only ever adds).
    pub jitter: f64,
    seed: u64,
}

fn normal(rng: &mut SmallRng) -> f64 {
    // Box–Muller: the policy crate has no distribution crate.
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A hash of an unordered pair to [0, 1).
fn pair_unit(seed: u64, a: usize, b: usize) -> f64 {
    let (a, b) = (a.min(b) as u64, a.max(b) as u64);
    let mut x = seed ^ a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

impl World {
    /// `regions` × `sites` × `per_site` nodes.
    pub fn new(regions: usize, sites: usize, per_site: usize, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let centres: Vec<(f64, f64)> =
            (0..regions).map(|_| (rng.random::<f64>() * 120.0, rng.random::<f64>() * 120.0)).collect();
        let mut site_xy = Vec::new();
        let mut site_access_ms = Vec::new();
        let mut site_of = Vec::new();
        let mut node_access_ms = Vec::new();
        for c in &centres {
            for _ in 0..sites {
                let s = site_xy.len();
                site_xy.push((c.0 + normal(&mut rng) * 8.0, c.1 + normal(&mut rng) * 8.0));
                site_access_ms.push(1.0 + rng.random::<f64>() * 14.0);
                for _ in 0..per_site {
                    site_of.push(s);
                    node_access_ms.push(0.05 + rng.random::<f64>() * 0.25);
                }
            }
        }
        Self { site_of, site_xy, site_access_ms, node_access_ms, jitter: 0.05, seed }
    }

    pub fn len(&self) -> usize {
        self.site_of.len()
    }

    /// The true RTT between two nodes (ms).
    pub fn rtt(&self, a: NodeIndex, b: NodeIndex) -> f64 {
        if a == b {
            return 0.0;
        }
        let (sa, sb) = (self.site_of[a], self.site_of[b]);
        let local = self.node_access_ms[a] + self.node_access_ms[b];
        if sa == sb {
            return 0.2 + local;
        }
        let (pa, pb) = (self.site_xy[sa], self.site_xy[sb]);
        let path = ((pa.0 - pb.0).powi(2) + (pa.1 - pb.1).powi(2)).sqrt();
        let detour = 0.9 + 0.2 * pair_unit(self.seed, sa, sb);
        (path * detour + self.site_access_ms[sa] + self.site_access_ms[sb]) + local
    }

    /// One measurement: the true RTT plus queueing jitter.
    pub fn sample(&self, a: NodeIndex, b: NodeIndex, rng: &mut SmallRng) -> f64 {
        let rtt = self.rtt(a, b);
        rtt + (normal(rng) * self.jitter * rtt).abs()
    }

    /// The true matrix as priors (what a decision would see knowing everything).
    pub fn true_matrix(&self) -> RttMatrix {
        let n = self.len();
        let mut m = RttMatrix::new(n, 0.0, MAX_AGE);
        for a in 0..n {
            for b in 0..n {
                if a != b {
                    m.set_prior(a, b, self.rtt(a, b));
                }
            }
        }
        m
    }
}

/// The fleet's probing, round by round.
pub struct Sim {
    pub world: World,
    pub rtt: RttMatrix,
    pub nodes: Vec<Vivaldi>,
    pub planners: Vec<ProbePlanner>,
    /// Nodes that answer probes (a node that left is not among them).
    pub alive: Vec<NodeIndex>,
    /// What each node's gateway routes to.
    pub routed: Vec<Vec<NodeIndex>>,
    pub now: Instant,
    pub probes_sent: Vec<usize>,
    pub max_probes_per_round: usize,
    rng: SmallRng,
}

impl Sim {
    /// Every node knows nothing but a prior of `prior_ms` for every pair (as on Kubernetes).
    pub fn new(world: World, prior_ms: f64, seed: u64) -> Self {
        let n = world.len();
        Self {
            rtt: RttMatrix::new(n, prior_ms, MAX_AGE),
            nodes: (0..n).map(|i| Vivaldi::new(VivaldiParams::default(), seed ^ i as u64)).collect(),
            planners: (0..n).map(|i| ProbePlanner::new(i, ProbeParams::default(), seed)).collect(),
            alive: (0..n).collect(),
            routed: vec![Vec::new(); n],
            now: Instant::now(),
            probes_sent: vec![0; n],
            max_probes_per_round: 0,
            rng: SmallRng::seed_from_u64(seed),
            world,
        }
    }

    /// One probe interval: every alive node plans its round, and the probes of all nodes are
    /// answered in the order of their times.
    pub fn round(&mut self) {
        let now = self.now;
        let mut probes: Vec<(NodeIndex, PlannedProbe)> = Vec::new();
        for &i in &self.alive {
            let k = self.planners[i].params().candidates;
            let candidates = nearest(i, &self.alive, k, &self.rtt, now);
            let needs = Needs { routed: &self.routed[i], candidates: &candidates };
            let plan = self.planners[i].plan(now, &needs, &self.alive, &self.rtt);
            self.max_probes_per_round = self.max_probes_per_round.max(plan.len());
            probes.extend(plan.into_iter().map(|p| (i, p)));
        }
        probes.sort_by_key(|(i, p)| (p.at, *i, p.to));
        for (i, p) in probes {
            self.probe(i, p.to, p.at, p.reason == ProbeReason::Explore);
        }
        self.now += INTERVAL;
    }

    /// Node `i` measures `j` at `at`; a `random` probe feeds `i`'s coordinate too.
    pub fn probe(&mut self, i: NodeIndex, j: NodeIndex, at: Instant, random: bool) {
        let ms = self.world.sample(i, j, &mut self.rng);
        if random {
            let peer = self.nodes[j].coordinate().clone();
            self.nodes[i].observe(j, &peer, ms).expect("valid sample");
        }
        self.rtt.record(i, j, ms, at);
        self.rtt.set_coordinate(i, self.nodes[i].coordinate().clone(), at);
        self.probes_sent[i] += 1;
    }

    /// Relative errors of the coordinates' estimates against the truth over `pairs` random
    /// pairs of alive nodes, sorted.
    pub fn coordinate_errors(&self, pairs: usize, seed: u64) -> Vec<f64> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let m = self.alive.len();
        let mut errors: Vec<f64> = (0..pairs)
            .filter_map(|_| {
                let a = self.alive[rng.random_range(0..m)];
                let b = self.alive[rng.random_range(0..m)];
                (a != b).then(|| {
                    let est = self.nodes[a].estimate_ms(self.nodes[b].coordinate());
                    let truth = self.world.rtt(a, b);
                    (est - truth).abs() / truth
                })
            })
            .collect();
        errors.sort_by(f64::total_cmp);
        errors
    }
}

/// The `q` quantile of sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
