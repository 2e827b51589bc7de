//! [`ikukantai_policy::stats::RequestStats`] shared between a request's tasks.

use std::time::Instant;

use ikukantai_policy::autoscaler::Stat;
use ikukantai_policy::stats::RequestStats as Stats;
use parking_lot::Mutex;

/// Concurrency and request statistics of one instance (or one revision at one gateway).
#[derive(Debug)]
pub(crate) struct RequestStats {
    inner: Mutex<Stats>,
}

impl RequestStats {
    /// Starts counting at `now`.
    pub(crate) fn new(now: Instant) -> Self {
        Self { inner: Mutex::new(Stats::new(now)) }
    }

    /// A request started.
    pub(crate) fn request_in(&self, now: Instant, proxied: bool) {
        self.inner.lock().request_in(now, proxied);
    }

    /// A request finished.
    pub(crate) fn request_out(&self, now: Instant, proxied: bool) {
        self.inner.lock().request_out(now, proxied);
    }

    /// Requests in flight now.
    pub(crate) fn in_flight(&self) -> u32 {
        self.inner.lock().in_flight()
    }

    /// Cuts the report for the period since the last report and starts a new one.
    pub(crate) fn report(&self, now: Instant) -> Stat {
        self.inner.lock().report(now)
    }
}
