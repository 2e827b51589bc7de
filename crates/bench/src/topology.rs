//! `topology`: writes the topology of a large edge fleet for `ikukantai up --topology`.
//!
//! `cloud` nodes in one data centre (0.5–1.5 ms apart) and `edge` sites whose RTTs to the cloud
//! spread evenly over `5ms..120ms`. Every pair is listed, so the edge sites are consistent with
//! each other: each site sits at a point of a plane around the cloud with an access link of its
//! own, and two sites are as far apart as their points plus both access links (two sites 5 and
//! 120 ms from the cloud are not 0.5 ms from each other). Seeded: the same arguments write the
//! same file.

use std::fmt::Write;
use std::time::Duration;

use ikukantai_api::duration::GoDuration;
use ikukantai_api::topology::{LinkSpec, NodeSpec, Topology};

/// SplitMix64: enough randomness for a layout, without a dependency.
struct Mix(u64);

impl Mix {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The fleet of issue #25's first measurements: `n` nodes, the first linked to the others at
/// 11–69 ms, the 2 ms default between the rest.
pub(crate) fn hub(n: usize) -> String {
    let mut out = format!(
        "# {n} nodes: node1 linked to the others at 11-69 ms, 2 ms between the rest\n\
         # (ikukantai-bench topology --hub {n}).\nnodes:\n"
    );
    for i in 1..=n {
        let _ = writeln!(out, "  - {{name: node{i}}}");
    }
    out.push_str("links:\n");
    for i in 2..=n {
        let rtt = 11.0 + 58.0 * (i - 2) as f64 / (n.max(3) - 2) as f64;
        let _ = writeln!(out, "  - {{between: [node1, node{i}], rtt: {rtt:.1}ms}}");
    }
    out.push_str("default_rtt: 2ms\n");
    out
}

/// The edge fleet's nodes (name, tier, capacity) and the RTT between two of them (ms).
struct Layout {
    nodes: Vec<(String, &'static str, u32)>,
    rtt: Box<dyn Fn(usize, usize) -> f64>,
}

fn layout(cloud: usize, edge: usize, seed: u64) -> Layout {
    let mut rng = Mix(seed);
    let n = cloud + edge;
    // Edge site k: RTT to the cloud's centre spread over 5–120 ms; an access link of 1–3 ms (both
    // ways) and the rest as distance on the plane.
    let mut access = vec![0.0; n];
    let mut at = vec![(0.0, 0.0); n];
    for k in 0..edge {
        let i = cloud + k;
        let to_cloud = 5.0 + 115.0 * k as f64 / (edge.max(2) - 1) as f64;
        access[i] = 1.0 + 2.0 * rng.unit();
        let r = (to_cloud - access[i] - 0.25).max(0.0);
        let angle = std::f64::consts::TAU * rng.unit();
        at[i] = (r * angle.cos(), r * angle.sin());
    }
    for (i, a) in access.iter_mut().enumerate().take(cloud) {
        *a = 0.25 + 0.5 * rng.unit() * (i as f64 + 1.0) / cloud as f64;
    }
    let nodes = (0..n)
        .map(|i| {
            if i < cloud {
                (format!("cloud-{}", i + 1), "cloud", 20)
            } else {
                (format!("edge-{:02}", i - cloud + 1), "edge", 4)
            }
        })
        .collect();
    let rtt = move |a: usize, b: usize| {
        let d = ((at[a].0 - at[b].0).powi(2) + (at[a].1 - at[b].1).powi(2)).sqrt();
        d + access[a] + access[b]
    };
    Layout { nodes, rtt: Box::new(rtt) }
}

/// The YAML of the fleet.
pub(crate) fn topology(cloud: usize, edge: usize, seed: u64) -> String {
    let Layout { nodes, rtt } = layout(cloud, edge, seed);
    let mut out = format!(
        "# {cloud} cloud nodes and {edge} edge sites at 5-120 ms from the cloud, every pair listed\n\
         # (ikukantai-bench topology --cloud {cloud} --edge {edge} --seed {seed}).\nnodes:\n"
    );
    for (name, tier, capacity) in &nodes {
        let _ = writeln!(out, "  - {{name: {name}, labels: {{tier: {tier}}}, capacity: {capacity}}}");
    }
    out.push_str("links:\n");
    for a in 0..nodes.len() {
        for b in a + 1..nodes.len() {
            let _ =
                writeln!(out, "  - {{between: [{}, {}], rtt: {:.1}ms}}", nodes[a].0, nodes[b].0, rtt(a, b));
        }
    }
    out
}

/// The same fleet as a [`Topology`], built without YAML (a thousand nodes list half a million
/// links).
pub(crate) fn fleet(cloud: usize, edge: usize, seed: u64) -> Topology {
    let Layout { nodes, rtt } = layout(cloud, edge, seed);
    let mut links = Vec::with_capacity(nodes.len() * nodes.len().saturating_sub(1) / 2);
    for a in 0..nodes.len() {
        for b in a + 1..nodes.len() {
            // Rounded as the YAML writes it, so both describe the same fleet.
            let ms = (rtt(a, b) * 10.0).round() / 10.0;
            links.push(LinkSpec {
                between: vec![nodes[a].0.clone(), nodes[b].0.clone()],
                rtt: GoDuration(Duration::from_secs_f64(ms / 1e3)),
                jitter: None,
                bandwidth: None,
            });
        }
    }
    let nodes = nodes
        .into_iter()
        .map(|(name, tier, capacity)| NodeSpec {
            name,
            labels: [("tier".to_string(), tier.to_string())].into(),
            capacity,
        })
        .collect();
    Topology { nodes, links, default_rtt: GoDuration(Duration::from_micros(500)) }
}
