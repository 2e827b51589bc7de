//! Network coordinates: Vivaldi with a height term, the way Serf and Consul run it.
//!
//! Every node keeps a point in a low-dimensional Euclidean space plus a *height* (the access
//! link every path from the node pays, which a plane cannot model) and an *adjustment* (the mean
//! of what the embedding still gets wrong for this node). The estimated RTT between two nodes is
//! `|x_a − x_b| + h_a + h_b (+ adj_a + adj_b when that stays positive)`. Each probe's RTT moves the
//! prober's coordinate like a spring towards the length the probe measured, by a step weighted by
//! how sure the node is of itself against the peer; the node's *error* is a moving average of its
//! relative prediction error, so every estimate comes with how far off it tends to be.
//!
//! The algorithm and its default constants follow hashicorp/serf's `coordinate` package
//! (`client.go`: the latency filter, `updateVivaldi`, `updateAdjustment`, `updateGravity`;
//! `config.go`), which builds on Dabek et al., "Vivaldi: a decentralized network coordinate
//! system" (SIGCOMM 2004), Ledlie et al., "Network coordinates in the wild" (NSDI 2007) and Lee et
//! al., "On suitability of Euclidean embedding for host-based network coordinate systems" (2010).
//! Serf works in seconds; everything here is in milliseconds, the unit of [`super::RttMatrix`].

use std::fmt;
use std::str::FromStr;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::{NodeIndex, PeerFilter};

/// Two points closer than this (ms) are treated as one (Serf's `zeroThreshold`, 1 µs).
const ZERO_MS: f64 = 1e-3;

/// A sample above this is not a round trip but a broken measurement (Serf refuses > 10 s).
const MAX_RTT_MS: f64 = 10_000.0;

/// Tuning of the coordinates (Serf's defaults, converted to milliseconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VivaldiParams {
    /// Euclidean dimensions (Serf: 8; more than ~7 did not help in Ledlie et al.).
    pub dimensions: usize,
    /// How much one sample can move the node's error estimate (`c_e`).
    pub ce: f64,
    /// How much one sample can move the node's coordinate (`c_c`).
    pub cc: f64,
    /// The error of a node that has seen nothing, and the most it can grow to.
    pub error_max: f64,
    /// Samples averaged into the adjustment term (0 turns it off).
    pub adjustment_window: usize,
    /// The least height (ms): heights stay positive.
    pub height_min_ms: f64,
    /// Gravity towards the origin against drift: a pull of `(distance / rho)²` per sample (ms).
    pub gravity_rho_ms: f64,
    /// Samples per peer whose median is used (a moving median against one-off spikes).
    pub latency_filter: usize,
    /// Peers whose recent samples the median filter keeps (least recently probed one dropped
    /// beyond it), so a node's state stays bounded however large the fleet.
    pub filter_peers: usize,
}

impl Default for VivaldiParams {
    fn default() -> Self {
        Self {
            dimensions: 8,
            ce: 0.25,
            cc: 0.25,
            error_max: 1.5,
            adjustment_window: 20,
            height_min_ms: 0.01,
            gravity_rho_ms: 150_000.0,
            latency_filter: 3,
            filter_peers: 64,
        }
    }
}

/// A node's network coordinate, in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Coordinate {
    /// The Euclidean part.
    pub vec: Vec<f64>,
    /// The access-link part every path from the node pays (≥ `height_min_ms`).
    pub height: f64,
    /// Half the mean residual of the node's recent samples.
    pub adjustment: f64,
    /// The node's own estimate of its relative prediction error (0.1 = estimates tend to be 10 %
    /// off), at most `error_max`.
    pub error: f64,
}

impl Coordinate {
    /// A node that has seen nothing: the origin, the least height, the largest error.
    pub fn origin(params: &VivaldiParams) -> Self {
        Self {
            vec: vec![0.0; params.dimensions],
            height: params.height_min_ms,
            adjustment: 0.0,
            error: params.error_max,
        }
    }

    /// Estimated RTT to `other` (ms). The adjustments are left out when they would make the
    /// estimate negative (as Serf does).
    pub fn distance_ms(&self, other: &Self) -> f64 {
        let raw = self.raw_distance_ms(other);
        let adjusted = raw + self.adjustment + other.adjustment;
        if adjusted > 0.0 { adjusted } else { raw }
    }

    fn raw_distance_ms(&self, other: &Self) -> f64 {
        magnitude(self.vec.iter().zip(&other.vec).map(|(a, b)| a - b)) + self.height + other.height
    }

    /// Same number of dimensions.
    pub fn is_compatible_with(&self, other: &Self) -> bool {
        self.vec.len() == other.vec.len()
    }

    /// Every component finite.
    pub fn is_valid(&self) -> bool {
        self.vec.iter().all(|x| x.is_finite())
            && self.height.is_finite()
            && self.adjustment.is_finite()
            && self.error.is_finite()
    }

    /// Moves the coordinate by `force` (ms) along the line from `other` (away from it when
    /// positive); the height moves in proportion, as Serf's `ApplyForce`.
    fn apply_force(&mut self, params: &VivaldiParams, force: f64, other: &Self, rng: &mut SmallRng) {
        let (unit, mag) = unit_vector_at(&self.vec, &other.vec, rng);
        for (x, u) in self.vec.iter_mut().zip(unit) {
            *x += u * force;
        }
        if mag > ZERO_MS {
            self.height =
                (self.height + force * (self.height + other.height) / mag).max(params.height_min_ms);
        }
    }
}

fn magnitude(v: impl Iterator<Item = f64>) -> f64 {
    v.map(|x| x * x).sum::<f64>().sqrt()
}

/// The unit vector pointing from `b` to `a`, and the distance between them; a random direction
/// when they coincide (two fresh nodes both at the origin must be pushed apart somewhere).
fn unit_vector_at(a: &[f64], b: &[f64], rng: &mut SmallRng) -> (Vec<f64>, f64) {
    let diff: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let mag = magnitude(diff.iter().copied());
    if mag > ZERO_MS {
        return (diff.into_iter().map(|x| x / mag).collect(), mag);
    }
    let random: Vec<f64> = (0..a.len()).map(|_| rng.random::<f64>() - 0.5).collect();
    let m = magnitude(random.iter().copied());
    if m > ZERO_MS {
        return (random.into_iter().map(|x| x / m).collect(), 0.0);
    }
    let mut axis = vec![0.0; a.len()];
    if let Some(first) = axis.first_mut() {
        *first = 1.0;
    }
    (axis, 0.0)
}

/// Text form of a coordinate, for a response header: `x1,x2,…;height;adjustment;error`, in ms.
impl fmt::Display for Coordinate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, x) in self.vec.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{x:.4}")?;
        }
        write!(f, ";{:.4};{:.4};{:.4}", self.height, self.adjustment, self.error)
    }
}

/// A coordinate that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoordinateError {
    /// Not `x1,…;height;adjustment;error`.
    #[error("coordinate {0:?}: expected \"x1,x2,…;height;adjustment;error\"")]
    Format(String),
    /// A component is not a finite number, or the height or error is negative.
    #[error("coordinate {0:?}: every part must be a finite number, height and error not negative")]
    Value(String),
}

impl FromStr for Coordinate {
    type Err = CoordinateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.trim().split(';').collect();
        let [vec, height, adjustment, error] = parts[..] else {
            return Err(CoordinateError::Format(s.to_owned()));
        };
        let num = |t: &str| t.trim().parse::<f64>().ok().filter(|x| x.is_finite());
        let bad = || CoordinateError::Value(s.to_owned());
        let vec: Vec<f64> = vec.split(',').map(num).collect::<Option<_>>().ok_or_else(bad)?;
        let (height, adjustment, error) = (num(height), num(adjustment), num(error));
        let (Some(height), Some(adjustment), Some(error)) = (height, adjustment, error) else {
            return Err(bad());
        };
        if height < 0.0 || error < 0.0 || vec.is_empty() {
            return Err(bad());
        }
        Ok(Self { vec, height, adjustment, error })
    }
}

/// A sample the coordinates cannot use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ObserveError {
    /// The peer's coordinate has another number of dimensions, or is not finite.
    #[error("peer coordinate is incompatible (dimensions {theirs}, ours {ours}) or not finite")]
    Incompatible {
        /// The peer's dimensions.
        theirs: usize,
        /// Ours.
        ours: usize,
    },
    /// The RTT is negative, not finite or above 10 s.
    #[error("round trip of {0} ms is not between 0 and 10 s")]
    Rtt(f64),
}

/// One node's coordinate and the state that updates it from its own probes (Serf's `Client`).
#[derive(Debug, Clone)]
pub struct Vivaldi {
    params: VivaldiParams,
    coord: Coordinate,
    origin: Coordinate,
    adjustment_samples: Vec<f64>,
    adjustment_next: usize,
    filter: PeerFilter,
    observed: u64,
    resets: u64,
    rng: SmallRng,
}

impl Vivaldi {
    /// A node at the origin; `seed` breaks ties between nodes that start at the same point.
    pub fn new(params: VivaldiParams, seed: u64) -> Self {
        Self {
            coord: Coordinate::origin(&params),
            origin: Coordinate::origin(&params),
            adjustment_samples: vec![0.0; params.adjustment_window],
            adjustment_next: 0,
            filter: PeerFilter::new(params.latency_filter, params.filter_peers),
            observed: 0,
            resets: 0,
            rng: SmallRng::seed_from_u64(seed),
            params,
        }
    }

    /// The node's coordinate now.
    pub fn coordinate(&self) -> &Coordinate {
        &self.coord
    }

    /// Samples taken in so far.
    pub fn observed(&self) -> u64 {
        self.observed
    }

    /// Times the coordinate went invalid (not finite) and was reset to the origin.
    pub fn resets(&self) -> u64 {
        self.resets
    }

    /// Estimated RTT from this node to a node at `other` (ms).
    pub fn estimate_ms(&self, other: &Coordinate) -> f64 {
        self.coord.distance_ms(other)
    }

    /// Drops what the filter kept about `peer` (it left the fleet).
    pub fn forget(&mut self, peer: NodeIndex) {
        self.filter.forget(peer);
    }

    /// Takes in one probe: this node measured `rtt_ms` to `peer`, whose coordinate is
    /// `peer_coord`. Returns the updated coordinate.
    pub fn observe(
        &mut self,
        peer: NodeIndex,
        peer_coord: &Coordinate,
        rtt_ms: f64,
    ) -> Result<&Coordinate, ObserveError> {
        if !self.coord.is_compatible_with(peer_coord) || !peer_coord.is_valid() {
            return Err(ObserveError::Incompatible {
                theirs: peer_coord.vec.len(),
                ours: self.coord.vec.len(),
            });
        }
        if !(0.0..=MAX_RTT_MS).contains(&rtt_ms) {
            return Err(ObserveError::Rtt(rtt_ms));
        }
        self.observed += 1;
        let rtt = self.filtered(peer, rtt_ms);
        self.update_vivaldi(peer_coord, rtt);
        self.update_adjustment(peer_coord, rtt);
        self.update_gravity();
        if !self.coord.is_valid() {
            self.resets += 1;
            self.coord = Coordinate::origin(&self.params);
        }
        Ok(&self.coord)
    }

    /// The median of the last few samples to `peer`, this one included.
    fn filtered(&mut self, peer: NodeIndex, rtt_ms: f64) -> f64 {
        let sorted = self.filter.push(peer, rtt_ms);
        sorted[sorted.len() / 2]
    }

    fn update_vivaldi(&mut self, other: &Coordinate, rtt_ms: f64) {
        let p = self.params;
        let rtt = rtt_ms.max(ZERO_MS);
        let dist = self.coord.distance_ms(other);
        let wrongness = (dist - rtt).abs() / rtt;
        let total_error = (self.coord.error + other.error).max(ZERO_MS);
        let weight = self.coord.error / total_error;
        self.coord.error =
            (p.ce * weight * wrongness + self.coord.error * (1.0 - p.ce * weight)).min(p.error_max);
        let force = p.cc * weight * (rtt - dist);
        self.coord.apply_force(&p, force, other, &mut self.rng);
    }

    fn update_adjustment(&mut self, other: &Coordinate, rtt_ms: f64) {
        let window = self.adjustment_samples.len();
        if window == 0 {
            return;
        }
        // The raw distance: the adjustments do not explain themselves.
        self.adjustment_samples[self.adjustment_next] = rtt_ms - self.coord.raw_distance_ms(other);
        self.adjustment_next = (self.adjustment_next + 1) % window;
        self.coord.adjustment = self.adjustment_samples.iter().sum::<f64>() / (2.0 * window as f64);
    }

    fn update_gravity(&mut self) {
        let dist = self.origin.distance_ms(&self.coord);
        let force = -(dist / self.params.gravity_rho_ms).powi(2);
        let origin = self.origin.clone();
        self.coord.apply_force(&self.params, force, &origin, &mut self.rng);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(n: usize) -> Vec<Vivaldi> {
        (0..n).map(|i| Vivaldi::new(VivaldiParams::default(), i as u64)).collect()
    }

    fn observe(nodes: &mut [Vivaldi], a: usize, b: usize, rtt: f64) {
        let peer = nodes[b].coordinate().clone();
        nodes[a].observe(b, &peer, rtt).unwrap();
    }

    #[test]
    fn a_fresh_coordinate_is_at_the_origin_with_the_largest_error() {
        let v = Vivaldi::new(VivaldiParams::default(), 1);
        let c = v.coordinate();
        assert_eq!(c.vec, vec![0.0; 8]);
        assert_eq!(c.error, 1.5);
        assert!((c.distance_ms(c) - 0.02).abs() < 1e-12, "two heights of 10 µs");
    }

    #[test]
    fn two_nodes_learn_their_distance_and_their_error_falls() {
        let mut nodes = fleet(2);
        for _ in 0..200 {
            observe(&mut nodes, 0, 1, 40.0);
            observe(&mut nodes, 1, 0, 40.0);
        }
        let est = nodes[0].estimate_ms(nodes[1].coordinate());
        assert!((est - 40.0).abs() < 0.5, "{est}");
        assert!(nodes[0].coordinate().error < 0.05, "{:?}", nodes[0].coordinate());
    }

    #[test]
    fn a_star_needs_the_height_a_plane_cannot_give() {
        // Four leaves 10 ms from a hub and 20 ms from each other: leaf i's distance to every
        // other leaf is the sum of two access links, which is what the height models.
        let mut nodes = fleet(5);
        let rtt = |a: usize, b: usize| if a == 0 || b == 0 { 10.0 } else { 20.0 };
        for _ in 0..300 {
            for a in 0..5 {
                for b in 0..5 {
                    if a != b {
                        observe(&mut nodes, a, b, rtt(a, b));
                    }
                }
            }
        }
        let mut errors = Vec::new();
        for a in 0..5 {
            for b in 0..5 {
                if a != b {
                    let est = nodes[a].estimate_ms(nodes[b].coordinate());
                    errors.push((est - rtt(a, b)).abs() / rtt(a, b));
                }
            }
        }
        eprintln!("{errors:?}");
        assert!(errors.iter().all(|&e| e < 0.15), "{errors:?}");
        assert!(errors.iter().sum::<f64>() / (errors.len() as f64) < 0.08, "{errors:?}");
        assert!(nodes[1].coordinate().height > 1.0, "{:?}", nodes[1].coordinate());
    }

    #[test]
    fn the_median_filter_drops_a_single_spike() {
        let mut a = fleet(2);
        for _ in 0..100 {
            observe(&mut a, 0, 1, 30.0);
        }
        let before = a[0].coordinate().clone();
        observe(&mut a, 0, 1, 3_000.0);
        let after = a[0].estimate_ms(a[1].coordinate());
        assert!((after - before.distance_ms(a[1].coordinate())).abs() < 1.0, "{after}");
    }

    #[test]
    fn the_filter_keeps_a_bounded_number_of_peers_and_forgets_on_request() {
        let params = VivaldiParams { filter_peers: 4, ..VivaldiParams::default() };
        let mut v = Vivaldi::new(params, 3);
        let peer = Coordinate::origin(&params);
        for p in 0..10 {
            v.observe(p, &peer, 5.0).unwrap();
        }
        assert_eq!(v.filter.len(), 4);
        assert!((6..10).all(|p| v.filter.has(p)), "the least recent went first");
        v.forget(9);
        assert_eq!(v.filter.len(), 3);
    }

    #[test]
    fn bad_samples_are_refused_and_change_nothing() {
        let mut v = Vivaldi::new(VivaldiParams::default(), 1);
        let other = Coordinate::origin(&VivaldiParams { dimensions: 3, ..VivaldiParams::default() });
        assert!(matches!(v.observe(1, &other, 5.0), Err(ObserveError::Incompatible { theirs: 3, ours: 8 })));
        let peer = Coordinate::origin(&VivaldiParams::default());
        assert_eq!(v.observe(1, &peer, -1.0), Err(ObserveError::Rtt(-1.0)));
        assert!(v.observe(1, &peer, f64::NAN).unwrap_err().to_string().contains("NaN"));
        let nan = Coordinate { height: f64::NAN, ..peer };
        assert!(v.observe(1, &nan, 5.0).is_err());
        assert_eq!(v.observed(), 0);
        assert_eq!(v.coordinate(), &Coordinate::origin(&VivaldiParams::default()));
    }

    #[test]
    fn the_text_form_round_trips_and_bad_text_is_named() {
        let c = Coordinate { vec: vec![1.5, -2.25, 0.0], height: 3.0, adjustment: -0.5, error: 0.125 };
        let text = c.to_string();
        assert_eq!(text, "1.5000,-2.2500,0.0000;3.0000;-0.5000;0.1250");
        assert_eq!(text.parse::<Coordinate>().unwrap(), c);
        assert!(matches!("1,2;3".parse::<Coordinate>(), Err(CoordinateError::Format(_))));
        assert!(matches!("1,x;3;0;0".parse::<Coordinate>(), Err(CoordinateError::Value(_))));
        assert!(matches!("1;-3;0;0".parse::<Coordinate>(), Err(CoordinateError::Value(_))));
        assert!(matches!("1;inf;0;0".parse::<Coordinate>(), Err(CoordinateError::Value(_))));
    }
}
