//! The node-to-node RTT matrix: measured first, coordinates second, priors last.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::NodeIndex;
use super::vivaldi::Coordinate;

/// Where an RTT the matrix gives came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RttSource {
    /// A node to itself: 0.
    Local,
    /// A measurement of this pair no older than the matrix's `max_age`.
    Measured,
    /// Both nodes' network coordinates; `error` is the pair's expected relative error (the mean
    /// of the two nodes' own estimates: 0.1 = about 10 % off).
    Estimated {
        /// Expected relative error.
        error: f64,
    },
    /// The configured (or assumed) RTT.
    Prior,
}

/// An RTT (milliseconds) and where it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rtt {
    /// Milliseconds.
    pub ms: f64,
    /// Which of the matrix's sources gave it.
    pub source: RttSource,
}

/// When coordinates stand in for a measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CoordinateUse {
    /// A pair whose expected error is above this gets its prior instead (a coordinate that has
    /// seen little is worse than a configured RTT, though better than a blind guess).
    max_error: f64,
    /// A coordinate not refreshed for this long belongs to a node that stopped probing (it left,
    /// or its monitor stopped): the prior again.
    max_age: Duration,
}

/// One measured RTT: 16 bytes rather than an `Option<(f64, Instant)>`'s 24, since a row is read
/// whole (a placement reads every origin's; at a thousand nodes the matrix is the size of L3).
#[derive(Debug, Clone, Copy)]
struct Sample {
    ms: f64,
    /// When taken, in nanoseconds from [`epoch`]; [`NOT_TAKEN`] for none.
    taken: i64,
}

const NOT_TAKEN: i64 = i64::MIN;

impl Sample {
    const NONE: Sample = Sample { ms: f64::NAN, taken: NOT_TAKEN };

    fn get(self) -> Option<(f64, Instant)> {
        (self.taken != NOT_TAKEN).then(|| (self.ms, from_nanos(self.taken)))
    }
}

/// The instant sample times count from: one for the process, so matrices compare alike.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `at` in nanoseconds from [`epoch`], either side of it (saturating some 292 years away).
fn nanos(at: Instant) -> i64 {
    let clamp = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX - 1);
    match at.checked_duration_since(epoch()) {
        Some(after) => clamp(after),
        None => -clamp(epoch().duration_since(at)),
    }
}

fn from_nanos(ns: i64) -> Instant {
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 { epoch() + d } else { epoch() - d }
}

/// One node's samples to every node.
type Row = Box<[Sample]>;

/// Round-trip times between nodes, in milliseconds.
///
/// Each ordered pair has a *prior* (the configured or expected RTT) and an optional measured
/// *sample*; each node may have a network [`Coordinate`]. [`RttMatrix::lookup`] takes a sample
/// no older than `max_age` first, else both nodes' coordinates when they are recent and their
/// expected error is small enough, else the prior, and says which ([`RttSource`]). So a monitor that
/// stops reporting degrades to estimates, then to configuration, rather than to a frozen value.
///
/// Samples are kept per row, and a row exists only once something was recorded from its node:
/// a gateway's matrix holds its own row, not n² samples.
#[derive(Debug, Clone)]
pub struct RttMatrix {
    n: usize,
    /// Shared between clones until one changes them (every gateway starts from the same priors).
    prior_ms: Arc<Vec<f64>>,
    rows: Vec<Option<Row>>,
    coords: Vec<Option<(Coordinate, Instant)>>,
    max_age: Duration,
    coordinates: CoordinateUse,
}

impl RttMatrix {
    /// `n` nodes, every off-diagonal prior `default_ms`, the diagonal 0. Samples are fresh for
    /// `max_age`; coordinates stand in for ten times that, whatever their error (the priors are
    /// taken for a guess; [`RttMatrix::with_coordinate_limits`] for priors worth more).
    pub fn new(n: usize, default_ms: f64, max_age: Duration) -> Self {
        let mut prior_ms = vec![default_ms; n * n];
        for i in 0..n {
            prior_ms[i * n + i] = 0.0;
        }
        Self {
            n,
            prior_ms: Arc::new(prior_ms),
            rows: vec![None; n],
            coords: vec![None; n],
            max_age,
            coordinates: CoordinateUse { max_error: f64::INFINITY, max_age: max_age * 10 },
        }
    }

    /// Sets when coordinates stand in for measurements: a pair's expected relative error at most
    /// `max_error` (priors from configuration are worth more than a coordinate far off), both
    /// coordinates refreshed within `max_age`.
    pub fn with_coordinate_limits(mut self, max_error: f64, max_age: Duration) -> Self {
        self.coordinates = CoordinateUse { max_error, max_age };
        self
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True for a matrix of zero nodes.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// How long a sample counts as fresh.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// Grows the matrix to `n` nodes (no-op if it has as many): every prior, sample and
    /// coordinate it had is kept; pairs with a new node get the prior `default_ms` (0 on the
    /// diagonal).
    pub fn grow(&mut self, n: usize, default_ms: f64) {
        if n <= self.n {
            return;
        }
        let old = self.n;
        let mut prior_ms = vec![default_ms; n * n];
        for from in 0..n {
            for to in 0..n {
                prior_ms[from * n + to] = if from == to {
                    0.0
                } else if from < old && to < old {
                    self.prior_ms[from * old + to]
                } else {
                    default_ms
                };
            }
        }
        self.prior_ms = Arc::new(prior_ms);
        for row in self.rows.iter_mut().flatten() {
            let mut grown = row.to_vec();
            grown.resize(n, Sample::NONE);
            *row = grown.into_boxed_slice();
        }
        self.rows.resize(n, None);
        self.coords.resize(n, None);
        self.n = n;
    }

    /// Sets the prior for the ordered pair `from → to`.
    pub fn set_prior(&mut self, from: NodeIndex, to: NodeIndex, rtt_ms: f64) {
        let n = self.n;
        Arc::make_mut(&mut self.prior_ms)[from * n + to] = rtt_ms;
    }

    /// Sets the prior for both directions.
    pub fn set_prior_symmetric(&mut self, a: NodeIndex, b: NodeIndex, rtt_ms: f64) {
        self.set_prior(a, b, rtt_ms);
        self.set_prior(b, a, rtt_ms);
    }

    /// The prior for `from → to`.
    pub fn prior(&self, from: NodeIndex, to: NodeIndex) -> f64 {
        self.prior_ms[from * self.n + to]
    }

    /// Records a measured RTT for `from → to` taken at `now`.
    pub fn record(&mut self, from: NodeIndex, to: NodeIndex, rtt_ms: f64, now: Instant) {
        let n = self.n;
        if from >= n || to >= n {
            return;
        }
        let row = self.rows[from].get_or_insert_with(|| vec![Sample::NONE; n].into_boxed_slice());
        row[to] = Sample { ms: rtt_ms, taken: nanos(now) };
    }

    /// Sets node `node`'s network coordinate, as of `now`.
    pub fn set_coordinate(&mut self, node: NodeIndex, coordinate: Coordinate, now: Instant) {
        if let Some(slot) = self.coords.get_mut(node) {
            *slot = Some((coordinate, now));
        }
    }

    /// Node `node`'s coordinate and when it was set, recent or not.
    pub fn coordinate(&self, node: NodeIndex) -> Option<(&Coordinate, Instant)> {
        self.coords.get(node)?.as_ref().map(|(c, at)| (c, *at))
    }

    /// Forgets what was measured to and from `node` and its coordinate (it left the fleet); its
    /// index stays, with its priors.
    pub fn forget(&mut self, node: NodeIndex) {
        if node >= self.n {
            return;
        }
        self.rows[node] = None;
        for row in self.rows.iter_mut().flatten() {
            row[node] = Sample::NONE;
        }
        self.coords[node] = None;
    }

    /// The RTT to use at `now` (ms): see [`RttMatrix::lookup`].
    pub fn get(&self, from: NodeIndex, to: NodeIndex, now: Instant) -> f64 {
        self.lookup(from, to, now).ms
    }

    /// The RTT to use at `now` and its source: a fresh sample, else both nodes' recent
    /// coordinates if their expected error is small enough, else the prior.
    pub fn lookup(&self, from: NodeIndex, to: NodeIndex, now: Instant) -> Rtt {
        // A node to itself needs no sample: most of a gateway's responses come from its own node.
        let sample = if from == to { Sample::NONE } else { self.stored(from, to) };
        let fresh = self.fresh_since(now);
        self.choose(from, to, now, fresh, sample, || self.recent_coordinate(from, now))
    }

    /// The sample stored for `from → to`, taken or not.
    fn stored(&self, from: NodeIndex, to: NodeIndex) -> Sample {
        self.rows.get(from).and_then(|row| row.as_ref()?.get(to).copied()).unwrap_or(Sample::NONE)
    }

    /// The oldest time a fresh sample may have been taken at `now`, in [`nanos`].
    fn fresh_since(&self, now: Instant) -> i64 {
        now.checked_sub(self.max_age).map_or(i64::MIN + 1, nanos)
    }

    /// Every RTT from `from` at `now` (ms, by node), as [`RttMatrix::get`] gives them one by one:
    /// a caller that needs a whole row reads it in one pass.
    pub fn row_into(&self, from: NodeIndex, now: Instant, out: &mut Vec<f64>) {
        out.clear();
        if from >= self.n {
            return;
        }
        let (n, fresh) = (self.n, self.fresh_since(now));
        let priors = &self.prior_ms[from * n..(from + 1) * n];
        let samples = self.rows[from].as_deref();
        match (self.recent_coordinate(from, now), samples) {
            (None, None) => out.extend_from_slice(priors),
            // Without coordinates from here, a fresh sample else the prior: one branch-free pass.
            (None, Some(samples)) => {
                let pick = |(s, &prior): (&Sample, &f64)| if s.taken >= fresh { s.ms } else { prior };
                out.extend(samples.iter().zip(priors).map(pick));
                out[from] = priors[from];
            }
            (here, _) => {
                let sample = |to: usize| samples.map_or(Sample::NONE, |r| r[to]);
                out.extend((0..n).map(|to| self.choose(from, to, now, fresh, sample(to), || here).ms));
            }
        }
    }

    /// The coordinates' estimate for `from → to` and its expected relative error, whatever the
    /// error (`None` without two recent compatible coordinates).
    pub fn estimate(&self, from: NodeIndex, to: NodeIndex, now: Instant) -> Option<(f64, f64)> {
        Self::between(self.recent_coordinate(from, now)?, self.recent_coordinate(to, now)?)
    }

    /// [`RttMatrix::lookup`] with the pair's sample at hand, the oldest fresh sample's time (in
    /// [`nanos`]) and `from`'s recent coordinate a call away (asked only when the sample is not
    /// fresh: a gateway's lookups mostly end at the sample).
    fn choose<'a>(
        &'a self,
        from: NodeIndex,
        to: NodeIndex,
        now: Instant,
        fresh_since: i64,
        sample: Sample,
        here: impl FnOnce() -> Option<&'a Coordinate>,
    ) -> Rtt {
        let prior = self.prior_ms[from * self.n + to];
        if from == to {
            return Rtt { ms: prior, source: RttSource::Local };
        }
        if sample.taken >= fresh_since {
            return Rtt { ms: sample.ms, source: RttSource::Measured };
        }
        if let Some(a) = here()
            && let Some(b) = self.recent_coordinate(to, now)
            && let Some((ms, error)) = Self::between(a, b)
            && error <= self.coordinates.max_error
        {
            return Rtt { ms, source: RttSource::Estimated { error } };
        }
        Rtt { ms: prior, source: RttSource::Prior }
    }

    /// Node `node`'s coordinate if it was refreshed recently enough to stand in for samples.
    fn recent_coordinate(&self, node: NodeIndex, now: Instant) -> Option<&Coordinate> {
        self.coordinate(node)
            .filter(|(_, at)| now.saturating_duration_since(*at) <= self.coordinates.max_age)
            .map(|(c, _)| c)
    }

    /// Two coordinates' distance and expected relative error, if they are comparable.
    fn between(a: &Coordinate, b: &Coordinate) -> Option<(f64, f64)> {
        a.is_compatible_with(b).then(|| (a.distance_ms(b), (a.error + b.error) / 2.0))
    }

    /// The last measured sample and when it was taken, fresh or not.
    pub fn sample(&self, from: NodeIndex, to: NodeIndex) -> Option<(f64, Instant)> {
        self.stored(from, to).get()
    }

    /// True when `from → to` has a sample no older than `max_age`.
    pub fn is_fresh(&self, from: NodeIndex, to: NodeIndex, now: Instant) -> bool {
        matches!(self.sample(from, to), Some((_, taken)) if now.saturating_duration_since(taken) <= self.max_age)
    }
}

#[cfg(test)]
mod tests {
    use super::super::vivaldi::VivaldiParams;
    use super::*;

    fn at(x: f64, error: f64) -> Coordinate {
        let mut c = Coordinate::origin(&VivaldiParams::default());
        c.vec[0] = x;
        c.error = error;
        c
    }

    #[test]
    fn prefers_fresh_samples_and_falls_back_to_prior() {
        let t0 = Instant::now();
        let mut m = RttMatrix::new(3, 0.5, Duration::from_secs(10));
        m.set_prior_symmetric(0, 2, 50.0);
        assert_eq!(m.get(0, 0, t0), 0.0);
        assert_eq!(m.get(0, 1, t0), 0.5);
        assert_eq!(m.get(2, 0, t0), 50.0);
        m.record(0, 2, 48.0, t0);
        assert!(m.is_fresh(0, 2, t0));
        assert_eq!(
            m.lookup(0, 2, t0 + Duration::from_secs(10)),
            Rtt { ms: 48.0, source: RttSource::Measured }
        );
        // Stale after max_age: back to the prior, the sample is still visible.
        assert_eq!(m.lookup(0, 2, t0 + Duration::from_secs(11)), Rtt { ms: 50.0, source: RttSource::Prior });
        assert!(!m.is_fresh(0, 2, t0 + Duration::from_secs(11)));
        assert_eq!(m.sample(0, 2), Some((48.0, t0)));
        // Direction matters.
        assert_eq!(m.get(2, 0, t0), 50.0);
        assert_eq!(m.lookup(1, 1, t0).source, RttSource::Local);
    }

    #[test]
    fn coordinates_come_second_and_only_while_recent_and_good_enough() {
        let t0 = Instant::now();
        let mut m = RttMatrix::new(3, 1.0, Duration::from_secs(10))
            .with_coordinate_limits(0.5, Duration::from_secs(100));
        m.set_coordinate(0, at(0.0, 0.1), t0);
        m.set_coordinate(1, at(30.0, 0.3), t0);
        // 30 ms apart plus two heights of 10 µs.
        let r = m.lookup(0, 1, t0);
        assert!((r.ms - 30.02).abs() < 1e-9, "{r:?}");
        assert_eq!(r.source, RttSource::Estimated { error: 0.2 });
        // A fresh sample wins over them.
        m.record(0, 1, 25.0, t0);
        assert_eq!(m.lookup(0, 1, t0).source, RttSource::Measured);
        assert_eq!(m.lookup(1, 0, t0).source, RttSource::Estimated { error: 0.2 });
        // One node without a coordinate: the prior.
        assert_eq!(m.lookup(0, 2, t0), Rtt { ms: 1.0, source: RttSource::Prior });
        // Too uncertain: the prior (a fresh node has error 1.5).
        m.set_coordinate(2, at(5.0, 1.5), t0);
        assert_eq!(m.lookup(0, 2, t0).source, RttSource::Prior);
        assert!(m.estimate(0, 2, t0).is_some_and(|(_, e)| (e - 0.8).abs() < 1e-12));
        // Coordinates older than ten sample lifetimes: the prior.
        let later = t0 + Duration::from_secs(101);
        assert_eq!(m.lookup(1, 0, later), Rtt { ms: 1.0, source: RttSource::Prior });
        let strict = m.clone().with_coordinate_limits(0.1, Duration::from_secs(1000));
        assert_eq!(strict.lookup(1, 0, later).source, RttSource::Prior, "0.2 > 0.1");
        let loose = m.with_coordinate_limits(0.9, Duration::from_secs(1000));
        assert!(matches!(loose.lookup(2, 0, later).source, RttSource::Estimated { .. }));
    }

    #[test]
    fn a_row_is_what_each_lookup_gives() {
        let t0 = Instant::now();
        let mut m = RttMatrix::new(5, 1.0, Duration::from_secs(10))
            .with_coordinate_limits(0.5, Duration::from_secs(100));
        m.set_prior_symmetric(0, 4, 70.0);
        m.set_coordinate(0, at(0.0, 0.1), t0);
        m.set_coordinate(1, at(30.0, 0.3), t0);
        m.set_coordinate(2, at(5.0, 1.5), t0);
        m.record(0, 3, 25.0, t0);
        m.record(0, 1, 26.0, t0 - Duration::from_secs(20));
        // A row with samples and no coordinate of its own, one of them to itself (never used).
        m.record(4, 0, 33.0, t0);
        m.record(4, 4, 9.0, t0);
        let mut row = Vec::new();
        for now in [t0, t0 + Duration::from_secs(11), t0 + Duration::from_secs(101)] {
            for from in 0..5 {
                m.row_into(from, now, &mut row);
                let each: Vec<f64> = (0..5).map(|to| m.get(from, to, now)).collect();
                assert_eq!(row, each, "from {from}");
            }
        }
        m.row_into(9, t0, &mut row);
        assert!(row.is_empty(), "no such node");
    }

    #[test]
    fn a_node_that_leaves_is_forgotten_but_keeps_its_index_and_priors() {
        let t0 = Instant::now();
        let mut m = RttMatrix::new(3, 1.0, Duration::from_secs(10));
        m.set_prior_symmetric(0, 2, 40.0);
        m.record(0, 2, 41.0, t0);
        m.record(2, 0, 42.0, t0);
        m.record(0, 1, 3.0, t0);
        m.set_coordinate(2, at(40.0, 0.1), t0);
        m.forget(2);
        assert_eq!((m.sample(0, 2), m.sample(2, 0)), (None, None));
        assert!(m.coordinate(2).is_none());
        assert_eq!(m.lookup(0, 2, t0), Rtt { ms: 40.0, source: RttSource::Prior });
        assert_eq!(m.sample(0, 1), Some((3.0, t0)), "other pairs stay");
        m.forget(7);
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn grows_keeping_what_it_knew() {
        let t0 = Instant::now();
        let mut m = RttMatrix::new(2, 1.0, Duration::from_secs(10));
        m.set_prior(0, 1, 40.0);
        m.record(1, 0, 42.0, t0);
        m.set_coordinate(1, at(1.0, 0.1), t0);
        m.grow(1, 9.0);
        assert_eq!(m.len(), 2, "never shrinks");
        m.grow(3, 7.0);
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(0, 1, t0), 40.0);
        assert_eq!(m.sample(1, 0), Some((42.0, t0)));
        assert_eq!(m.get(1, 0, t0), 42.0);
        assert_eq!((m.get(0, 2, t0), m.get(2, 1, t0), m.get(2, 2, t0)), (7.0, 7.0, 0.0));
        assert_eq!(m.sample(2, 0), None);
        assert!(m.coordinate(1).is_some());
        m.record(0, 2, 5.0, t0);
        assert_eq!(m.get(0, 2, t0), 5.0);
        m.record(2, 1, 6.0, t0);
        assert_eq!(m.get(2, 1, t0), 6.0);
        // Out of range: ignored, not a panic.
        m.record(3, 0, 1.0, t0);
        assert_eq!(m.sample(3, 0), None);
    }

    #[test]
    fn clones_share_priors_until_one_changes_them() {
        let mut a = RttMatrix::new(2, 1.0, Duration::from_secs(10));
        let b = a.clone();
        assert!(Arc::ptr_eq(&a.prior_ms, &b.prior_ms));
        a.set_prior(0, 1, 9.0);
        assert_eq!((a.prior(0, 1), b.prior(0, 1)), (9.0, 1.0));
    }

    #[test]
    fn samples_keep_their_exact_time_either_side_of_the_epoch() {
        let e = epoch();
        let mut m = RttMatrix::new(3, 1.0, Duration::from_secs(10));
        let after = e + Duration::from_nanos(3_000_000_007);
        m.record(0, 1, 5.0, after);
        assert_eq!(m.sample(0, 1), Some((5.0, after)));
        if let Some(before) = e.checked_sub(Duration::from_nanos(1_234_567_891)) {
            m.record(0, 2, 6.0, before);
            assert_eq!(m.sample(0, 2), Some((6.0, before)));
            assert!(m.is_fresh(0, 2, before + Duration::from_secs(10)));
            assert!(!m.is_fresh(0, 2, before + Duration::from_secs(10) + Duration::from_nanos(1)));
        }
        assert_eq!(m.sample(1, 0), None, "never taken");
    }

    #[test]
    fn only_rows_with_samples_are_kept() {
        let t0 = Instant::now();
        let mut m = RttMatrix::new(100, 1.0, Duration::from_secs(10));
        m.record(7, 3, 2.0, t0);
        assert_eq!(m.rows.iter().filter(|r| r.is_some()).count(), 1);
    }
}
