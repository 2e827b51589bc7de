//! Time-weighted request statistics, like Knative's `RequestStats`: every change of the in-flight
//! count adds `in_flight × seconds since the last change` to an integral; a report divides the
//! integral by the period. Requests that came through the gateway's buffering path are also counted
//! separately ("proxied"), so the autoscaler can avoid counting them twice.
//!
//! What the autoscaler sees is computed here once, for the gateway, the queue proxy and the
//! simulator alike.

use std::time::Instant;

use crate::autoscaler::Stat;

/// Concurrency and request statistics of one instance (or one revision at one gateway).
#[derive(Debug, Clone)]
pub struct RequestStats {
    in_flight: u32,
    proxied_in_flight: u32,
    last_change: Instant,
    period_start: Instant,
    integral: f64,
    proxied_integral: f64,
    requests: u64,
    proxied_requests: u64,
}

impl RequestStats {
    /// Starts counting at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            in_flight: 0,
            proxied_in_flight: 0,
            last_change: now,
            period_start: now,
            integral: 0.0,
            proxied_integral: 0.0,
            requests: 0,
            proxied_requests: 0,
        }
    }

    fn advance(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last_change).as_secs_f64();
        self.integral += f64::from(self.in_flight) * dt;
        self.proxied_integral += f64::from(self.proxied_in_flight) * dt;
        self.last_change = self.last_change.max(now);
    }

    /// A request started.
    pub fn request_in(&mut self, now: Instant, proxied: bool) {
        self.advance(now);
        self.in_flight += 1;
        self.requests += 1;
        if proxied {
            self.proxied_in_flight += 1;
            self.proxied_requests += 1;
        }
    }

    /// A request finished.
    pub fn request_out(&mut self, now: Instant, proxied: bool) {
        self.advance(now);
        self.in_flight = self.in_flight.saturating_sub(1);
        if proxied {
            self.proxied_in_flight = self.proxied_in_flight.saturating_sub(1);
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Cuts the report for the period since the last report and starts a new one.
    pub fn report(&mut self, now: Instant) -> Stat {
        self.advance(now);
        let secs = now.saturating_duration_since(self.period_start).as_secs_f64();
        let stat = if secs > 0.0 {
            Stat {
                concurrency: self.integral / secs,
                proxied_concurrency: self.proxied_integral / secs,
                requests: self.requests as f64 / secs,
                proxied_requests: self.proxied_requests as f64 / secs,
            }
        } else {
            Stat::default()
        };
        self.integral = 0.0;
        self.proxied_integral = 0.0;
        self.requests = 0;
        self.proxied_requests = 0;
        self.period_start = now;
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
        let mut s = RequestStats::new(t0);
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
