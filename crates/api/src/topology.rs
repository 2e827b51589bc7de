//! The fleet's topology: nodes, their capacity, and the links between them.
//!
//! ```yaml
//! nodes:
//!   - name: node1
//!     labels: {tier: cloud}
//!     capacity: 10          # max function instances on this node
//! links:
//!   - between: [node1, node3]
//!     rtt: 50ms             # round trip; each direction gets half
//!     jitter: 10ms          # optional, normal distribution like netem
//!     bandwidth: 100mbit    # optional cap, each direction
//! default_rtt: 0.5ms        # pairs not listed
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use ikukantai_policy::estimate::RttMatrix;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::duration::GoDuration;
use crate::error::FieldError;
use crate::validate::dns_label;

/// A configured RTT is used rather than a network coordinates' estimate expected to be more
/// than this far off (relative): in the local fleet the configured RTT is what the links emulate.
pub const CONFIGURED_PRIOR_MAX_ERROR: f64 = 0.2;

/// Capacity of a node that does not say (the original's per-node cap).
pub const DEFAULT_CAPACITY: u32 = 10;

/// A fleet topology.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// The nodes, in order (their index is their identity in the policy core).
    pub nodes: Vec<NodeSpec>,
    /// Links with a non-default RTT.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<LinkSpec>,
    /// RTT between nodes no link lists.
    #[serde(default = "default_rtt")]
    pub default_rtt: GoDuration,
}

fn default_rtt() -> GoDuration {
    GoDuration(Duration::from_micros(500))
}

fn default_capacity() -> u32 {
    DEFAULT_CAPACITY
}

/// A node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Unique name (a DNS label).
    pub name: String,
    /// Free-form labels (e.g. `tier: edge`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Maximum function instances on the node (default 10).
    #[serde(default = "default_capacity")]
    pub capacity: u32,
}

/// A link between two nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// The two nodes.
    pub between: Vec<String>,
    /// Round-trip time; each direction gets half.
    pub rtt: GoDuration,
    /// Standard deviation of the round trip (normal distribution, like netem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<GoDuration>,
    /// Bandwidth cap in each direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
}

/// A bandwidth written like tc/netem: `100mbit`, `1gbit`, `500kbit`, `10mbps` (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bandwidth {
    /// Bits per second.
    pub bits_per_second: u64,
}

impl Bandwidth {
    /// Parses `<number><unit>` with units bit, kbit, mbit, gbit (bits) or bps, kbps, mbps, gbps
    /// (bytes), case-insensitive.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim().to_ascii_lowercase();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let n: f64 = number.parse().map_err(|_| format!("{text:?} is not a bandwidth like \"100mbit\""))?;
        let factor = match unit {
            "bit" => 1.0,
            "kbit" => 1e3,
            "mbit" => 1e6,
            "gbit" => 1e9,
            "bps" => 8.0,
            "kbps" => 8e3,
            "mbps" => 8e6,
            "gbps" => 8e9,
            _ => {
                return Err(format!(
                    "{text:?}: unit must be bit, kbit, mbit, gbit (or bps, kbps, mbps, gbps for bytes)"
                ));
            }
        };
        let bits = n * factor;
        if !bits.is_finite() || bits < 1.0 {
            return Err(format!("{text:?} must be at least 1bit"));
        }
        Ok(Self { bits_per_second: bits as u64 })
    }
}

impl Serialize for Bandwidth {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}bit", self.bits_per_second))
    }
}

impl<'de> Deserialize<'de> for Bandwidth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The link properties between one ordered pair of nodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkProperties {
    /// Round-trip time.
    pub rtt: Duration,
    /// Round-trip jitter (standard deviation).
    pub jitter: Duration,
    /// Bandwidth cap, if any.
    pub bandwidth: Option<Bandwidth>,
}

impl LinkProperties {
    /// A node to itself: no delay.
    pub const LOCAL: Self = Self { rtt: Duration::ZERO, jitter: Duration::ZERO, bandwidth: None };
}

impl LinkSpec {
    fn properties(&self) -> LinkProperties {
        LinkProperties {
            rtt: self.rtt.0,
            jitter: self.jitter.map_or(Duration::ZERO, |j| j.0),
            bandwidth: self.bandwidth,
        }
    }
}

/// A topology's links by node pair ([`Topology::link_index`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LinkIndex {
    nodes: usize,
    default: LinkProperties,
    pairs: HashMap<(usize, usize), LinkProperties>,
}

impl LinkIndex {
    /// The link properties from node `a` to node `b`, as [`Topology::link`].
    pub fn link(&self, a: usize, b: usize) -> LinkProperties {
        if a == b {
            return LinkProperties::LOCAL;
        }
        self.pairs.get(&(a.min(b), a.max(b))).copied().unwrap_or(self.default)
    }

    /// The longest RTT between two nodes.
    pub fn longest_rtt(&self) -> Duration {
        let default = if self.nodes > 1 && self.pairs.len() < self.nodes * (self.nodes - 1) / 2 {
            self.default.rtt
        } else {
            Duration::ZERO
        };
        self.pairs.values().map(|p| p.rtt).fold(default, Duration::max)
    }
}

impl Topology {
    /// The original ikukantai demo: node1 and node2 in the cloud, node3 at the edge, 50 ms between
    /// the edge and the cloud.
    pub fn demo() -> Self {
        let node = |name: &str, tier: &str| NodeSpec {
            name: name.into(),
            labels: BTreeMap::from([("tier".to_owned(), tier.to_owned())]),
            capacity: DEFAULT_CAPACITY,
        };
        let link = |a: &str, b: &str| LinkSpec {
            between: vec![a.into(), b.into()],
            rtt: GoDuration(Duration::from_millis(50)),
            jitter: None,
            bandwidth: None,
        };
        Self {
            nodes: vec![node("node1", "cloud"), node("node2", "cloud"), node("node3", "edge")],
            links: vec![link("node1", "node3"), link("node2", "node3")],
            default_rtt: default_rtt(),
        }
    }

    /// Checks names, references and values. Errors name the field (`links[1].between[0]`).
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.nodes.is_empty() {
            errors.push(FieldError::new("nodes", "at least one node is required"));
        }
        let mut names = BTreeSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Err(e) = dns_label(&n.name) {
                errors.push(FieldError::new(format!("nodes[{i}].name"), e));
            } else if !names.insert(n.name.as_str()) {
                errors.push(FieldError::new(
                    format!("nodes[{i}].name"),
                    format!("{:?} is used by another node", n.name),
                ));
            }
        }
        let mut pairs = BTreeSet::new();
        for (i, l) in self.links.iter().enumerate() {
            let path = format!("links[{i}]");
            if l.between.len() != 2 {
                errors.push(FieldError::new(
                    format!("{path}.between"),
                    format!("{} nodes given: a link joins exactly two", l.between.len()),
                ));
                continue;
            }
            let mut ok = true;
            for (k, name) in l.between.iter().enumerate() {
                if !names.contains(name.as_str()) {
                    let hint = crate::error::did_you_mean(name, names.iter().copied())
                        .map(|s| format!(" (did you mean {s:?}?)"))
                        .unwrap_or_default();
                    errors.push(FieldError::new(
                        format!("{path}.between[{k}]"),
                        format!("unknown node {name:?}{hint}"),
                    ));
                    ok = false;
                }
            }
            if ok && l.between[0] == l.between[1] {
                errors.push(FieldError::new(format!("{path}.between"), "a link joins two different nodes"));
            } else if ok {
                let mut key = [l.between[0].as_str(), l.between[1].as_str()];
                key.sort();
                if !pairs.insert(key) {
                    errors.push(FieldError::new(
                        format!("{path}.between"),
                        format!("{key:?} already has a link"),
                    ));
                }
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    /// Index of the node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The link properties from node `a` to node `b` (indices); zero RTT from a node to itself.
    /// Scans the list of links: for many lookups, [`Topology::link_index`].
    pub fn link(&self, a: usize, b: usize) -> LinkProperties {
        if a == b {
            return LinkProperties::LOCAL;
        }
        let (na, nb) = (&self.nodes[a].name, &self.nodes[b].name);
        self.links
            .iter()
            .find(|l| {
                l.between.len() == 2
                    && ((&l.between[0] == na && &l.between[1] == nb)
                        || (&l.between[0] == nb && &l.between[1] == na))
            })
            .map_or(self.default_link(), LinkSpec::properties)
    }

    fn default_link(&self) -> LinkProperties {
        LinkProperties { rtt: self.default_rtt.0, jitter: Duration::ZERO, bandwidth: None }
    }

    /// The links by node pair, for lookups in constant time (a topology of hundreds of sites lists
    /// thousands of links, and the fleet looks up every pair).
    pub fn link_index(&self) -> LinkIndex {
        let by_name: HashMap<&str, usize> =
            self.nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
        let mut pairs = HashMap::new();
        for l in &self.links {
            if let [a, b] = &l.between[..]
                && let (Some(&a), Some(&b)) = (by_name.get(a.as_str()), by_name.get(b.as_str()))
            {
                pairs.entry((a.min(b), a.max(b))).or_insert_with(|| l.properties());
            }
        }
        LinkIndex { nodes: self.nodes.len(), default: self.default_link(), pairs }
    }

    /// The RTT matrix with the configured RTTs as priors: measurements override them while
    /// fresh (for `max_age`), network coordinates while recent and expected within
    /// [`CONFIGURED_PRIOR_MAX_ERROR`].
    pub fn rtt_matrix(&self, max_age: Duration) -> RttMatrix {
        let index = self.link_index();
        let mut m = RttMatrix::new(self.nodes.len(), self.default_rtt.0.as_secs_f64() * 1e3, max_age)
            .with_coordinate_limits(CONFIGURED_PRIOR_MAX_ERROR, max_age * 10);
        for (&(a, b), props) in &index.pairs {
            m.set_prior_symmetric(a, b, props.rtt.as_secs_f64() * 1e3);
        }
        m
    }

    /// [`Topology::link`] for every ordered pair, row by row (`from * n + to`), in one pass over
    /// the links rather than one per pair: fleets of hundreds of nodes list many links.
    pub fn link_table(&self) -> Vec<LinkProperties> {
        let n = self.nodes.len();
        let default = LinkProperties { rtt: self.default_rtt.0, jitter: Duration::ZERO, bandwidth: None };
        let mut table = vec![default; n * n];
        for i in 0..n {
            table[i * n + i] =
                LinkProperties { rtt: Duration::ZERO, jitter: Duration::ZERO, bandwidth: None };
        }
        let index: HashMap<&str, usize> =
            self.nodes.iter().enumerate().map(|(i, x)| (x.name.as_str(), i)).collect();
        // Reversed, so the first link listed for a pair wins, as in `link`.
        for l in self.links.iter().rev() {
            let [a, b] = l.between.as_slice() else { continue };
            let (Some(&a), Some(&b)) = (index.get(a.as_str()), index.get(b.as_str())) else { continue };
            if a == b {
                continue;
            }
            let props = LinkProperties {
                rtt: l.rtt.0,
                jitter: l.jitter.map_or(Duration::ZERO, |j| j.0),
                bandwidth: l.bandwidth,
            };
            table[a * n + b] = props;
            table[b * n + a] = props;
        }
        table
    }

    /// Capacities by node index.
    pub fn capacities(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.capacity).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn the_link_table_is_link_for_every_pair() {
        let text = "nodes: [{name: a}, {name: b}, {name: c}, {name: d}]\n\
                    links:\n  - {between: [a, b], rtt: 10ms, jitter: 1ms}\n  - {between: [c, a], rtt: 30ms}\n  \
                    - {between: [b, a], rtt: 99ms}\n\
                    default_rtt: 4ms\n";
        let t: Topology = serde_saphyr::from_str(text).unwrap();
        let n = t.nodes.len();
        let table = t.link_table();
        for a in 0..n {
            for b in 0..n {
                assert_eq!(table[a * n + b], t.link(a, b), "{a} → {b}");
            }
        }
        assert_eq!(table[1].rtt, Duration::from_millis(10), "the first link listed wins");
        let m = t.rtt_matrix(Duration::from_secs(1));
        assert_eq!(m.get(2, 0, std::time::Instant::now()), 30.0);
    }

    #[test]
    fn demo_is_the_original_three_nodes() {
        let t = Topology::demo();
        t.validate().unwrap();
        let m = t.rtt_matrix(Duration::from_secs(10));
        let now = Instant::now();
        assert_eq!(m.get(2, 0, now), 50.0);
        assert_eq!(m.get(0, 1, now), 0.5);
        assert_eq!(m.get(2, 2, now), 0.0);
        assert_eq!(t.capacities(), [10, 10, 10]);
    }

    #[test]
    fn the_example_topology_is_the_default_written_out() {
        let text = include_str!("../../../examples/topology.yaml");
        let example: Topology = serde_saphyr::from_str(text).unwrap();
        assert_eq!(example, Topology::demo());
    }

    #[test]
    fn the_link_index_agrees_with_the_list_and_knows_the_longest_rtt() {
        let mut t = Topology::demo();
        t.links[1].jitter = Some(GoDuration(Duration::from_millis(3)));
        let index = t.link_index();
        for a in 0..3 {
            for b in 0..3 {
                assert_eq!(index.link(a, b), t.link(a, b), "{a}→{b}");
            }
        }
        assert_eq!(index.longest_rtt(), Duration::from_millis(50));
        let two = Topology { links: vec![], ..Topology::demo() };
        assert_eq!(two.link_index().longest_rtt(), Duration::from_micros(500), "the default");
        let one = Topology { nodes: vec![t.nodes[0].clone()], links: vec![], ..Topology::demo() };
        assert_eq!(one.link_index().longest_rtt(), Duration::ZERO);
    }

    #[test]
    fn bandwidths_parse_like_tc() {
        assert_eq!(Bandwidth::parse("100mbit").unwrap().bits_per_second, 100_000_000);
        assert_eq!(Bandwidth::parse("1Gbit").unwrap().bits_per_second, 1_000_000_000);
        assert_eq!(Bandwidth::parse("10mbps").unwrap().bits_per_second, 80_000_000);
        assert!(Bandwidth::parse("fast").is_err());
        assert!(Bandwidth::parse("100").is_err());
    }

    #[test]
    fn validation_names_the_bad_field() {
        let mut t = Topology::demo();
        t.nodes.push(NodeSpec { name: "node1".into(), labels: BTreeMap::new(), capacity: 1 });
        t.nodes.push(NodeSpec { name: "Edge_2".into(), labels: BTreeMap::new(), capacity: 1 });
        t.links.push(LinkSpec {
            between: vec!["node3".into(), "node4".into()],
            rtt: GoDuration(Duration::from_millis(1)),
            jitter: None,
            bandwidth: None,
        });
        t.links.push(LinkSpec { between: vec!["node3".into(), "node1".into()], ..t.links[0].clone() });
        t.links.push(LinkSpec { between: vec!["node2".into(), "node2".into()], ..t.links[0].clone() });
        let e: Vec<String> = t.validate().unwrap_err().iter().map(ToString::to_string).collect();
        assert_eq!(
            e,
            [
                "nodes[3].name: \"node1\" is used by another node",
                "nodes[4].name: \"Edge_2\" is not a DNS-1035 label: lowercase letters, digits and '-', starting with a letter and ending with a letter or digit",
                "links[2].between[1]: unknown node \"node4\" (did you mean \"node1\"?)",
                "links[3].between: [\"node1\", \"node3\"] already has a link",
                "links[4].between: a link joins two different nodes",
            ]
        );
    }
}
