//! Time-weighted request statistics, like Knative's `RequestStats`: every change of the in-flight
//! count adds `in_flight × seconds since the last change` to an integral; a report divides the
//! integral by the period. Requests that came through the gateway's buffering path are also counted
//! separately ("proxied"), so the autoscaler can avoid counting them twice.

use std::time::Instant;

use ikukantai_policy::autoscaler::Stat;
use parking_lot::Mutex;

#[derive(Debug)]
struct Inner {
    in_flight: u32,
    proxied_in_flight: u32,
    last_change: Instant,
    period_start: Instant,
    integral: f64,
    proxied_integral: f64,
    requests: u64,
    proxied_requests: u64,
}

/// Concurrency and request statistics of one instance (or one revision at one gateway).
#[derive(Debug)]
pub(crate) struct RequestStats {
    inner: Mutex<Inner>,
}

impl RequestStats {
    /// Starts counting at `now`.
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            inner: Mutex::new(Inner {
                in_flight: 0,
                proxied_in_flight: 0,
                last_change: now,
                period_start: now,
                integral: 0.0,
                proxied_integral: 0.0,
                requests: 0,
                proxied_requests: 0,
            }),
        }
    }

    fn advance(inner: &mut Inner, now: Instant) {
        let dt = now.saturating_duration_since(inner.last_change).as_secs_f64();
        inner.integral += f64::from(inner.in_flight) * dt;
        inner.proxied_integral += f64::from(inner.proxied_in_flight) * dt;
        inner.last_change = inner.last_change.max(now);
    }

    /// A request started.
    pub(crate) fn request_in(&self, now: Instant, proxied: bool) {
        let mut i = self.inner.lock();
        Self::advance(&mut i, now);
        i.in_flight += 1;
        i.requests += 1;
        if proxied {
            i.proxied_in_flight += 1;
            i.proxied_requests += 1;
        }
    }

    /// A request finished.
    pub(crate) fn request_out(&self, now: Instant, proxied: bool) {
        let mut i = self.inner.lock();
        Self::advance(&mut i, now);
        i.in_flight = i.in_flight.saturating_sub(1);
        if proxied {
            i.proxied_in_flight = i.proxied_in_flight.saturating_sub(1);
        }
    }

    /// Requests in flight now.
    pub(crate) fn in_flight(&self) -> u32 {
        self.inner.lock().in_flight
    }

    /// Cuts the report for the period since the last report and starts a new one.
    pub(crate) fn report(&self, now: Instant) -> Stat {
        let mut i = self.inner.lock();
        Self::advance(&mut i, now);
        let secs = now.saturating_duration_since(i.period_start).as_secs_f64();
        let stat = if secs > 0.0 {
            Stat {
                concurrency: i.integral / secs,
                proxied_concurrency: i.proxied_integral / secs,
                requests: i.requests as f64 / secs,
                proxied_requests: i.proxied_requests as f64 / secs,
            }
        } else {
            Stat::default()
        };
        i.integral = 0.0;
        i.proxied_integral = 0.0;
        i.requests = 0;
        i.proxied_requests = 0;
        i.period_start = now;
        stat
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn concurrency_is_time_weighted() {
        let t0 = Instant::now();
        let ms = |m| t0 + Duration::from_millis(m);
        let s = RequestStats::new(t0);
        s.request_in(ms(0), false);
        s.request_in(ms(500), true);
        s.request_out(ms(750), true);
        // 1 in flight for 1 s, plus a second one for 250 ms.
        let r = s.report(ms(1000));
        assert!((r.concurrency - 1.25).abs() < 1e-9, "{r:?}");
        assert!((r.proxied_concurrency - 0.25).abs() < 1e-9, "{r:?}");
        assert_eq!((r.requests, r.proxied_requests), (2.0, 1.0));
        // The next period starts empty but keeps the one still in flight.
        let r = s.report(ms(2000));
        assert!((r.concurrency - 1.0).abs() < 1e-9);
        assert_eq!(r.requests, 0.0);
        assert_eq!(s.in_flight(), 1);
    }
}
