//! Open-loop load, as `ikukantai bench` drives it: per function and origin, Poisson arrivals
//! following the scenario's rate over time (`Scenario::streams`: `users × rate_per_user`, times
//! the phases' factors), each request with a work time uniform in its function's range. The
//! arrivals and work times depend only on the seed, the level, the origin and the function, so
//! every policy set meets the very same requests.

use ikukantai_eval::scenario::RateCurve;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Exp1};

use crate::events::{Event, Time};
use crate::world::World;

/// One origin's load generator during one level.
#[derive(Debug)]
pub(crate) struct Generator {
    origin: u32,
    rev: u32,
    level: u32,
    rng: SmallRng,
    curve: RateCurve,
    work_ms: (f64, f64),
    /// When the level began: the curve's time 0.
    start: Time,
    measure_from: Time,
    end: Time,
}

impl Generator {
    /// A generator of requests at `origin` for revision `rev`, following `curve` from the level's
    /// `start` (now) until `end`.
    #[expect(clippy::too_many_arguments, reason = "one call site, each a different fact")]
    pub(crate) fn new(
        seed: u64,
        origin: u32,
        rev: u32,
        level: u32,
        curve: RateCurve,
        work_ms: (f64, f64),
        start: Time,
        measure_from: Time,
        end: Time,
    ) -> Self {
        let rng = SmallRng::seed_from_u64(
            seed ^ (u64::from(level) + 1) ^ (u64::from(origin) << 8) ^ (u64::from(rev) << 32),
        );
        Self { origin, rev, level, rng, curve, work_ms, start, measure_from, end }
    }

    /// The next arrival after `now`, if the rate is not zero from now on and it comes before the
    /// level ends.
    fn next_after(&mut self, now: Time) -> Option<Time> {
        let e: f64 = Exp1.sample(&mut self.rng);
        let t = (now - self.start) as f64 / 1e9;
        let gap = self.curve.gap(t, e).map(|g| (g * 1e9) as Time)?;
        // A rate near zero draws a gap of centuries: past the end, not around to the start.
        Some(now.saturating_add(gap)).filter(|&next| next < self.end)
    }

    /// The request arriving `now`: its work time, and when the next one arrives. The world and
    /// [`replay`] both draw through here, so they see the same requests.
    fn draw(&mut self, now: Time) -> (f64, Option<Time>) {
        let (lo, hi) = self.work_ms;
        let work = if hi > lo { self.rng.random_range(lo..hi) } else { lo };
        (work, self.next_after(now))
    }
}

/// A request as a generator offers it: when, how much work, whether it is measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Offered {
    pub(crate) arrival: Time,
    pub(crate) work_ms: f64,
    pub(crate) measured: bool,
}

/// Every request `g` sends over its level, without a world: the very arrivals and work times
/// the simulation draws (they depend only on the generator's seed and curve).
pub(crate) fn replay(mut g: Generator) -> Vec<Offered> {
    let mut out = Vec::new();
    let mut next = g.next_after(g.start);
    while let Some(arrival) = next {
        let (work_ms, after) = g.draw(arrival);
        out.push(Offered { arrival, work_ms, measured: arrival >= g.measure_from });
        next = after;
    }
    out
}

impl World {
    /// Starts a generator: its first arrival is scheduled.
    pub(crate) fn start_generator(&mut self, mut g: Generator) {
        if let Some(first) = g.next_after(self.events.now()) {
            self.events.at(first, Event::Arrive { generator: self.load.len() as u32 });
        }
        self.load.push(g);
    }

    /// A request of generator `index` arrives; the next one is scheduled.
    pub(crate) fn arrive(&mut self, index: u32) {
        let now = self.events.now();
        let g = &mut self.load[index as usize];
        let (work, next) = g.draw(now);
        let (origin, rev, level, measured) = (g.origin, g.rev, g.level, now >= g.measure_from);
        if let Some(next) = next {
            self.events.at(next, Event::Arrive { generator: index });
        }
        self.sent += usize::from(measured);
        let req = self.new_request(origin, rev, work, level, measured);
        self.schedule_timeout(req);
        self.admit(req);
    }
}
