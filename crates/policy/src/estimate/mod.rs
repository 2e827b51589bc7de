//! Estimators: time-decayed EWMA steps, peak-EWMA, the node-to-node RTT matrix and the network
//! coordinates that fill it in between measurements.
//!
//! - this module: [`PeakEwma`], and the EWMA steps estimators kept elsewhere share (`blend`);
//! - `rtt`: [`RttMatrix`], measured first, coordinates second, priors last ([`RttSource`]);
//! - `vivaldi`: [`Vivaldi`] network coordinates with a height term (Serf's);
//! - `filter`: [`PeerFilter`], the last few samples per peer for a moving median.
//!
//! All of them take the current time as an argument; nothing here reads a clock.

mod filter;
mod rtt;
mod vivaldi;

pub use filter::{MEASURED_SAMPLES, PeerFilter};
pub use rtt::{Rtt, RttMatrix, RttSource};
pub use vivaldi::{Coordinate, CoordinateError, ObserveError, Vivaldi, VivaldiParams};

use std::time::{Duration, Instant};

/// Index of a node in the fleet's node list (the topology's order).
pub type NodeIndex = usize;

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
            (Some(old), Some(at)) => blend_peak(old, now.saturating_duration_since(at), sample, self.decay),
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

/// One step of an exponentially weighted moving average whose weights decay with *time*, not
/// with the number of samples: `old`, last updated `elapsed` ago, keeps `exp(-elapsed / decay)`
/// of its weight against `sample`.
pub(crate) fn blend(old: f64, elapsed: Duration, sample: f64, decay: Duration) -> f64 {
    let w = decay_weight(elapsed, decay);
    old * w + sample * (1.0 - w)
}

/// One step of [`PeakEwma`]: a sample above `old` replaces it, one below is blended in.
pub(crate) fn blend_peak(old: f64, elapsed: Duration, sample: f64, decay: Duration) -> f64 {
    if sample > old { sample } else { blend(old, elapsed, sample, decay) }
}

/// `exp(-elapsed / decay)`: how much of an old value survives `elapsed`.
pub(crate) fn decay_weight(elapsed: Duration, decay: Duration) -> f64 {
    if decay.is_zero() {
        return 0.0;
    }
    let x = elapsed.as_secs_f64() / decay.as_secs_f64();
    // Samples usually come microseconds apart against a decay of seconds. For x < 1e-3 the
    // Taylor series to x³ is exact to within x⁴/24 < 5e-14, at a few multiplications instead
    // of a call to `exp` (the gateway makes four of these per request).
    if x < 1e-3 { 1.0 - x * (1.0 - x * (0.5 - x / 6.0)) } else { (-x).exp() }
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
    fn an_ewma_step_decays_by_time() {
        // One decay constant later, the old value keeps e^-1 of its weight.
        let blended = blend(10.0, Duration::from_secs(1), 0.0, Duration::from_secs(1));
        let expected = 10.0 * (-1.0f64).exp();
        assert!((blended - expected).abs() < 1e-9);
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
}
