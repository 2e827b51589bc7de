//! Estimators: time-decayed EWMA, peak-EWMA, and the node-to-node RTT matrix.
//!
//! All of them take the current time as an argument; nothing here reads a clock.

use std::time::{Duration, Instant};

/// Index of a node in the fleet's node list (the topology's order).
pub type NodeIndex = usize;

/// An exponentially weighted moving average whose weights decay with *time*, not with the number of
/// samples: a sample taken `dt` after the previous one keeps `exp(-dt / decay)` of the old value.
#[derive(Debug, Clone)]
pub struct Ewma {
    value: Option<f64>,
    updated: Option<Instant>,
    decay: Duration,
}

impl Ewma {
    /// An empty average; the first sample becomes its value.
    pub fn new(decay: Duration) -> Self {
        Self { value: None, updated: None, decay }
    }

    /// Adds a sample observed at `now`.
    pub fn observe(&mut self, now: Instant, sample: f64) {
        self.value = Some(match (self.value, self.updated) {
            (Some(old), Some(at)) => {
                let w = decay_weight(now.saturating_duration_since(at), self.decay);
                old * w + sample * (1.0 - w)
            }
            _ => sample,
        });
        self.updated = Some(now);
    }

    /// The current average, `None` before the first sample.
    pub fn get(&self) -> Option<f64> {
        self.value
    }
}

/// Peak-sensitive EWMA (the estimator linkerd and tower use for latency): a sample above the current
/// estimate replaces it at once, a sample below it is blended in with a time-decayed weight. It reacts
/// to slowdowns immediately and forgets them gradually.
#[derive(Debug, Clone)]
pub struct PeakEwma {
    estimate: Option<f64>,
    updated: Option<Instant>,
    decay: Duration,
}

impl PeakEwma {
    /// An empty estimator.
    pub fn new(decay: Duration) -> Self {
        Self { estimate: None, updated: None, decay }
    }

    /// Records one observation (any unit; the balancers use milliseconds).
    pub fn observe(&mut self, now: Instant, sample: f64) {
        let next = match (self.estimate, self.updated) {
            (Some(old), _) if sample > old => sample,
            (Some(old), Some(at)) => {
                let w = decay_weight(now.saturating_duration_since(at), self.decay);
                old * w + sample * (1.0 - w)
            }
            _ => sample,
        };
        self.estimate = Some(next);
        self.updated = Some(now);
    }

    /// The current estimate, `None` before the first observation.
    pub fn get(&self) -> Option<f64> {
        self.estimate
    }
}

/// `exp(-elapsed / decay)`: how much of an old value survives `elapsed`.
fn decay_weight(elapsed: Duration, decay: Duration) -> f64 {
    if decay.is_zero() {
        return 0.0;
    }
    let x = elapsed.as_secs_f64() / decay.as_secs_f64();
    // Samples usually come microseconds apart against a decay of seconds. For x < 1e-3 the
    // Taylor series to x³ is exact to within x⁴/24 < 5e-14, at a few multiplications instead
    // of a call to `exp` (the gateway makes four of these per request).
    if x < 1e-3 { 1.0 - x * (1.0 - x * (0.5 - x / 6.0)) } else { (-x).exp() }
}

/// Round-trip times between nodes, in milliseconds.
///
/// Each ordered pair has a *prior* (the configured or expected RTT) and an optional measured
/// *sample*. A sample older than `max_age` is stale and the prior is used instead, so a monitor that
/// stops reporting degrades to configuration rather than to a frozen value.
#[derive(Debug, Clone)]
pub struct RttMatrix {
    n: usize,
    prior_ms: Vec<f64>,
    sample: Vec<Option<(f64, Instant)>>,
    max_age: Duration,
}

impl RttMatrix {
    /// `n` nodes, every off-diagonal prior `default_ms`, the diagonal 0.
    pub fn new(n: usize, default_ms: f64, max_age: Duration) -> Self {
        let mut prior_ms = vec![default_ms; n * n];
        for i in 0..n {
            prior_ms[i * n + i] = 0.0;
        }
        Self { n, prior_ms, sample: vec![None; n * n], max_age }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True for a matrix of zero nodes.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Grows the matrix to `n` nodes (no-op if it has as many): every prior and sample it had is
    /// kept; pairs with a new node get the prior `default_ms` (0 on the diagonal).
    pub fn grow(&mut self, n: usize, default_ms: f64) {
        if n <= self.n {
            return;
        }
        let mut grown = Self::new(n, default_ms, self.max_age);
        for from in 0..self.n {
            for to in 0..self.n {
                grown.prior_ms[from * n + to] = self.prior_ms[from * self.n + to];
                grown.sample[from * n + to] = self.sample[from * self.n + to];
            }
        }
        *self = grown;
    }

    /// Sets the prior for the ordered pair `from → to`.
    pub fn set_prior(&mut self, from: NodeIndex, to: NodeIndex, rtt_ms: f64) {
        self.prior_ms[from * self.n + to] = rtt_ms;
    }

    /// Sets the prior for both directions.
    pub fn set_prior_symmetric(&mut self, a: NodeIndex, b: NodeIndex, rtt_ms: f64) {
        self.set_prior(a, b, rtt_ms);
        self.set_prior(b, a, rtt_ms);
    }

    /// Records a measured RTT for `from → to` taken at `now`.
    pub fn record(&mut self, from: NodeIndex, to: NodeIndex, rtt_ms: f64, now: Instant) {
        self.sample[from * self.n + to] = Some((rtt_ms, now));
    }

    /// The RTT to use at `now`: the fresh sample if there is one, else the prior.
    pub fn get(&self, from: NodeIndex, to: NodeIndex, now: Instant) -> f64 {
        let at = from * self.n + to;
        match self.sample[at] {
            Some((ms, taken)) if now.saturating_duration_since(taken) <= self.max_age => ms,
            _ => self.prior_ms[at],
        }
    }

    /// The last measured sample and when it was taken, fresh or not.
    pub fn sample(&self, from: NodeIndex, to: NodeIndex) -> Option<(f64, Instant)> {
        self.sample[from * self.n + to]
    }

    /// True when `from → to` has a sample no older than `max_age`.
    pub fn is_fresh(&self, from: NodeIndex, to: NodeIndex, now: Instant) -> bool {
        matches!(self.sample[from * self.n + to],
            Some((_, taken)) if now.saturating_duration_since(taken) <= self.max_age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_weight_is_exp_on_both_sides_of_the_short_cut() {
        let decay = Duration::from_secs(10);
        for nanos in [0u64, 1, 1_000, 35_000, 1_000_000, 9_999_999, 10_000_000, 10_000_001, 2_000_000_000] {
            let elapsed = Duration::from_nanos(nanos);
            let exact = (-elapsed.as_secs_f64() / 10.0).exp();
            let w = decay_weight(elapsed, decay);
            assert!((w - exact).abs() < 1e-13, "{elapsed:?}: {w} vs {exact}");
        }
        assert_eq!(decay_weight(Duration::from_secs(1), Duration::ZERO), 0.0);
    }

    #[test]
    fn ewma_first_sample_is_value_and_decays_by_time() {
        let t0 = Instant::now();
        let mut e = Ewma::new(Duration::from_secs(1));
        assert_eq!(e.get(), None);
        e.observe(t0, 10.0);
        assert_eq!(e.get(), Some(10.0));
        // One decay constant later, the old value keeps e^-1 of its weight.
        e.observe(t0 + Duration::from_secs(1), 0.0);
        let expected = 10.0 * (-1.0f64).exp();
        assert!((e.get().unwrap() - expected).abs() < 1e-9);
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let t0 = Instant::now();
        let mut p = PeakEwma::new(Duration::from_secs(10));
        p.observe(t0, 5.0);
        p.observe(t0 + Duration::from_millis(1), 50.0);
        assert_eq!(p.get(), Some(50.0), "a peak is taken at once");
        p.observe(t0 + Duration::from_secs(10), 5.0);
        let v = p.get().unwrap();
        assert!(v < 50.0 && v > 5.0, "a lower sample is blended: {v}");
        // Many seconds of low samples bring it back close to the low value.
        for s in 11..200 {
            p.observe(t0 + Duration::from_secs(s), 5.0);
        }
        assert!((p.get().unwrap() - 5.0).abs() < 0.01);
    }

    #[test]
    fn rtt_matrix_prefers_fresh_samples_and_falls_back_to_prior() {
        let t0 = Instant::now();
        let mut m = RttMatrix::new(3, 0.5, Duration::from_secs(10));
        m.set_prior_symmetric(0, 2, 50.0);
        assert_eq!(m.get(0, 0, t0), 0.0);
        assert_eq!(m.get(0, 1, t0), 0.5);
        assert_eq!(m.get(2, 0, t0), 50.0);
        m.record(0, 2, 48.0, t0);
        assert!(m.is_fresh(0, 2, t0));
        assert_eq!(m.get(0, 2, t0 + Duration::from_secs(10)), 48.0);
        // Stale after max_age: back to the prior, the sample is still visible.
        assert_eq!(m.get(0, 2, t0 + Duration::from_secs(11)), 50.0);
        assert!(!m.is_fresh(0, 2, t0 + Duration::from_secs(11)));
        assert_eq!(m.sample(0, 2), Some((48.0, t0)));
        // Direction matters.
        assert_eq!(m.get(2, 0, t0), 50.0);
    }

    #[test]
    fn rtt_matrix_grows_keeping_what_it_knew() {
        let t0 = Instant::now();
        let mut m = RttMatrix::new(2, 1.0, Duration::from_secs(10));
        m.set_prior(0, 1, 40.0);
        m.record(1, 0, 42.0, t0);
        m.grow(1, 9.0);
        assert_eq!(m.len(), 2, "never shrinks");
        m.grow(3, 7.0);
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(0, 1, t0), 40.0);
        assert_eq!(m.sample(1, 0), Some((42.0, t0)));
        assert_eq!(m.get(1, 0, t0), 42.0);
        assert_eq!((m.get(0, 2, t0), m.get(2, 1, t0), m.get(2, 2, t0)), (7.0, 7.0, 0.0));
        assert_eq!(m.sample(2, 0), None);
        m.record(0, 2, 5.0, t0);
        assert_eq!(m.get(0, 2, t0), 5.0);
    }
}
