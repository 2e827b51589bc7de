//! Open-loop load, as `ikukantai bench` drives it: per origin, Poisson arrivals at `users ×
//! rate_per_user` per second, each request with a work time uniform in the function's range. The
//! arrivals and work times depend only on the seed, the level and the origin, so every policy set
//! meets the very same requests.

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Exp};

use crate::events::{Event, Time};
use crate::world::World;

/// One origin's load generator during one level.
#[derive(Debug)]
pub(crate) struct Generator {
    origin: u32,
    rev: u32,
    level: u32,
    rng: SmallRng,
    gaps: Exp<f64>,
    work_ms: (f64, f64),
    measure_from: Time,
    end: Time,
}

impl Generator {
    /// A generator of `rate` requests per second at `origin`, from now until `end`.
    #[expect(clippy::too_many_arguments, reason = "one call site, each a different fact")]
    pub(crate) fn new(
        seed: u64,
        origin: u32,
        rev: u32,
        level: u32,
        rate: f64,
        work_ms: (f64, f64),
        measure_from: Time,
        end: Time,
    ) -> Self {
        let rng = SmallRng::seed_from_u64(
            seed ^ (u64::from(level) + 1) ^ (u64::from(origin) << 8) ^ (u64::from(rev) << 32),
        );
        Self {
            origin,
            rev,
            level,
            rng,
            gaps: Exp::new(rate.max(1e-9)).expect("positive rate"),
            work_ms,
            measure_from,
            end,
        }
    }

    fn gap(&mut self) -> Time {
        (self.gaps.sample(&mut self.rng) * 1e9) as Time
    }
}

impl World {
    /// Starts a generator: its first arrival is scheduled.
    pub(crate) fn start_generator(&mut self, mut g: Generator) {
        let first = self.events.now() + g.gap();
        if first < g.end {
            self.events.at(first, Event::Arrive { generator: self.load.len() as u32 });
        }
        self.load.push(g);
    }

    /// A request of generator `index` arrives; the next one is scheduled.
    pub(crate) fn arrive(&mut self, index: u32) {
        let now = self.events.now();
        let g = &mut self.load[index as usize];
        let (lo, hi) = g.work_ms;
        let work = if hi > lo { g.rng.random_range(lo..hi) } else { lo };
        let (origin, rev, level, measured) = (g.origin, g.rev, g.level, now >= g.measure_from);
        let next = now + g.gap();
        if next < g.end {
            self.events.at(next, Event::Arrive { generator: index });
        }
        let req = self.new_request(origin, rev, work, level, measured);
        self.schedule_timeout(req);
        self.admit(req);
    }
}
