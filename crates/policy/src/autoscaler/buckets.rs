//! One-second metric buckets over a sliding window, after Knative's `TimedFloat64Buckets`
//! (`pkg/autoscaler/aggregation/bucketing.go`).
//!
//! Rules reproduced here (each has a test below):
//! - every value recorded in the same second is **summed** into that second's bucket;
//! - the average divides by the number of seconds that *have* data history: from the first write to
//!   the last, at most the window (a partial window early on);
//! - seconds between writes count as zeros; seconds *after* the last write are dropped from both the
//!   sum and the divisor;
//! - after a whole window without a write, the history resets and the average is 0.

use std::time::{Duration, Instant};

const GRANULARITY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub(crate) struct WindowBuckets {
    epoch: Instant,
    buckets: Vec<f64>,
    first_write: u64,
    last_write: u64,
    written: bool,
    total: f64,
}

impl WindowBuckets {
    /// Buckets covering `window` (rounded up to whole seconds, at least one).
    pub(crate) fn new(epoch: Instant, window: Duration) -> Self {
        let n = window.as_secs_f64() / GRANULARITY.as_secs_f64();
        let len = (n.ceil() as usize).max(1);
        Self { epoch, buckets: vec![0.0; len], first_write: 0, last_write: 0, written: false, total: 0.0 }
    }

    fn tick(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    fn reset(&mut self, tick: u64) {
        self.buckets.iter_mut().for_each(|b| *b = 0.0);
        self.total = 0.0;
        self.first_write = tick;
        self.last_write = tick;
        self.written = true;
    }

    /// Adds `value` to the bucket of the second `now` falls in.
    pub(crate) fn record(&mut self, now: Instant, value: f64) {
        let tick = self.tick(now);
        if !self.written || tick > self.last_write + self.len() {
            self.reset(tick);
        } else if tick > self.last_write {
            for t in self.last_write + 1..=tick {
                let idx = (t % self.len()) as usize;
                self.total -= self.buckets[idx];
                self.buckets[idx] = 0.0;
            }
            self.last_write = tick;
        } else if self.last_write - tick >= self.len() {
            // Older than the window: nothing of it is still visible.
            return;
        }
        let idx = (tick % self.len()) as usize;
        self.buckets[idx] += value;
        self.total += value;
    }

    /// As if zero had been recorded in every second from the last write through `now`'s: the
    /// quiet seconds count as zeros, and the history is not reset however long they last. Costs at
    /// most one pass over the buckets, whatever the gap.
    pub(crate) fn record_zeros_through(&mut self, now: Instant) {
        let tick = self.tick(now);
        if !self.written {
            // Zeros since the epoch (the revision's creation), as a report each second gives.
            self.reset(0);
        }
        if tick <= self.last_write {
            return;
        }
        if tick - self.last_write >= self.len() {
            self.buckets.iter_mut().for_each(|b| *b = 0.0);
            self.total = 0.0;
        } else {
            for t in self.last_write + 1..=tick {
                let idx = (t % self.len()) as usize;
                self.total -= self.buckets[idx];
                self.buckets[idx] = 0.0;
            }
        }
        self.last_write = tick;
    }

    /// True when nothing was recorded within the last window.
    pub(crate) fn is_empty(&self, now: Instant) -> bool {
        !self.written || self.tick(now).saturating_sub(self.last_write) >= self.len()
    }

    /// The linear window average at `now`, rounded to 6 digits like Knative.
    pub(crate) fn average(&self, now: Instant) -> f64 {
        if self.is_empty(now) {
            return 0.0;
        }
        let tick = self.tick(now);
        let history = (self.last_write - self.first_write + 1) as f64;
        let value = if tick <= self.last_write {
            self.total / history.min(self.len() as f64)
        } else {
            let gap = tick - self.last_write;
            let mut sum = self.total;
            for t in self.last_write + 1..=tick {
                sum -= self.buckets[(t % self.len()) as usize];
            }
            sum / history.min((self.len() - gap) as f64)
        };
        // Float sums can leave a tiny negative residue; the average of non-negative values is ≥ 0.
        ((value * 1e6).round() / 1e6).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn values_in_one_second_are_summed() {
        let t0 = Instant::now();
        let mut b = WindowBuckets::new(t0, Duration::from_secs(6));
        b.record(at(t0, 100), 2.0);
        b.record(at(t0, 900), 3.0);
        assert_eq!(b.average(at(t0, 999)), 5.0, "one bucket of history: 5 / 1");
    }

    #[test]
    fn partial_window_divides_by_history_only() {
        let t0 = Instant::now();
        let mut b = WindowBuckets::new(t0, Duration::from_secs(60));
        for s in 0..3 {
            b.record(at(t0, s * 1000), 10.0);
        }
        // Three seconds of data in a 60 s window: average over 3 buckets, not 60.
        assert_eq!(b.average(at(t0, 2500)), 10.0);
    }

    #[test]
    fn gaps_between_writes_count_as_zeros() {
        let t0 = Instant::now();
        let mut b = WindowBuckets::new(t0, Duration::from_secs(10));
        b.record(at(t0, 0), 10.0);
        b.record(at(t0, 3000), 10.0);
        // Buckets 0..=3: 10, 0, 0, 10 → 5.
        assert_eq!(b.average(at(t0, 3000)), 5.0);
    }

    #[test]
    fn trailing_silence_is_dropped_until_a_whole_window_passes() {
        let t0 = Instant::now();
        let mut b = WindowBuckets::new(t0, Duration::from_secs(10));
        for s in 0..20 {
            b.record(at(t0, s * 1000), 4.0);
        }
        // 5 s after the last write: the remaining 5 visible buckets are all 4.
        assert_eq!(b.average(at(t0, 24_000)), 4.0);
        assert!(!b.is_empty(at(t0, 28_000)));
        // A whole window with no write: empty, average 0, next write starts a new history.
        assert!(b.is_empty(at(t0, 29_000)));
        assert_eq!(b.average(at(t0, 29_000)), 0.0);
        b.record(at(t0, 40_000), 1.0);
        assert_eq!(b.average(at(t0, 40_000)), 1.0);
    }

    #[test]
    fn window_slides_old_buckets_out() {
        let t0 = Instant::now();
        let mut b = WindowBuckets::new(t0, Duration::from_secs(4));
        for s in 0..4 {
            b.record(at(t0, s * 1000), 8.0);
        }
        for s in 4..8 {
            b.record(at(t0, s * 1000), 0.0);
        }
        assert_eq!(b.average(at(t0, 7000)), 0.0);
        b.record(at(t0, 8000), 4.0);
        assert_eq!(b.average(at(t0, 8000)), 1.0);
    }

    #[test]
    fn zeros_through_now_equal_a_zero_recorded_every_second() {
        let t0 = Instant::now();
        for (gap, value) in [(0u64, 3.0), (1, 3.0), (5, 7.0), (9, 7.0), (10, 2.0), (11, 2.0), (250, 9.0)] {
            // Fed every second, zeros included, as a report each second does.
            let mut every = WindowBuckets::new(t0, Duration::from_secs(10));
            // Fed the same data, then nothing for `gap` seconds, then told those were zeros.
            let mut lazy = WindowBuckets::new(t0, Duration::from_secs(10));
            for s in 0..4 {
                every.record(at(t0, s * 1000 + 300), 5.0);
                lazy.record(at(t0, s * 1000 + 300), 5.0);
            }
            for s in 4..4 + gap {
                every.record(at(t0, s * 1000 + 300), 0.0);
            }
            let now = at(t0, (4 + gap) * 1000 + 700);
            lazy.record_zeros_through(now);
            every.record(now, value);
            lazy.record(now, value);
            for later in [0, 1500, 4000, 12_000] {
                let t = at(t0, (4 + gap) * 1000 + 700 + later);
                assert_eq!(every.average(t), lazy.average(t), "gap {gap} s, {later} ms later");
            }
        }
        // Never written: zeros since the epoch, so a first value is averaged over the window.
        let mut fresh = WindowBuckets::new(t0, Duration::from_secs(10));
        fresh.record_zeros_through(at(t0, 30_000));
        fresh.record(at(t0, 30_000), 10.0);
        assert_eq!(fresh.average(at(t0, 30_000)), 1.0);
    }

    #[test]
    fn writes_older_than_the_window_are_ignored() {
        let t0 = Instant::now();
        let mut b = WindowBuckets::new(t0, Duration::from_secs(2));
        b.record(at(t0, 10_000), 2.0);
        b.record(at(t0, 1_000), 100.0);
        assert_eq!(b.average(at(t0, 10_000)), 2.0);
    }
}
