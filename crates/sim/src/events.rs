//! Virtual time and the event queue.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// Virtual time: nanoseconds since the simulation began.
pub(crate) type Time = u64;

/// Milliseconds as virtual time.
pub(crate) fn ms(x: f64) -> Time {
    (x.max(0.0) * 1e6) as Time
}

/// A duration as virtual time.
pub(crate) fn span(d: Duration) -> Time {
    d.as_nanos() as Time
}

/// What happens at a point in virtual time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Event {
    /// The next request of a load generator arrives at its origin's gateway.
    Arrive { generator: u32 },
    /// A forwarded request reaches its instance's queue proxy.
    AtInstance { req: u32 },
    /// An instance finished processing a request; the response leaves.
    Processed { req: u32 },
    /// A response reaches the gateway the request entered at.
    AtGateway { req: u32 },
    /// The client gives up on a request.
    ClientTimeout { req: u32 },
    /// A gateway's waiting requests re-check for capacity.
    Recheck { node: u32, rev: u32 },
    /// The control loop's periodic pass.
    Control,
    /// A gateway saw demand for a revision without instances.
    Poke { origin: u32, rev: u32 },
    /// The control plane decides for the pokes it heard (one pass for all that came at once).
    Poked,
    /// An instance became ready.
    Ready { instance: u32 },
    /// An instance's stop grace ended: it goes once idle.
    Drain { instance: u32 },
    /// The latency monitor's round.
    Probe,
}

/// Events in time order (ties in the order they were scheduled, so runs are deterministic).
#[derive(Debug)]
pub(crate) struct Events {
    heap: BinaryHeap<Reverse<(Time, u64, Event)>>,
    seq: u64,
    now: Time,
    base: Instant,
}

/// The `Instant` every simulated run's virtual zero maps to: one for the process, so what the
/// policy code is handed before a world exists (a scaler's start) lines up with it exactly, and
/// the wall time spent building a large world cannot shift a run.
pub(crate) fn zero() -> Instant {
    static ZERO: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ZERO.get_or_init(Instant::now)
}

impl Events {
    pub(crate) fn new() -> Self {
        Self { heap: BinaryHeap::new(), seq: 0, now: 0, base: zero() }
    }

    /// Now, in virtual time.
    pub(crate) fn now(&self) -> Time {
        self.now
    }

    /// A virtual time as the `Instant` the policy code takes (only differences matter to it).
    pub(crate) fn instant(&self, t: Time) -> Instant {
        self.base + Duration::from_nanos(t)
    }

    /// Schedules `event` at `at` (never in the past).
    pub(crate) fn at(&mut self, at: Time, event: Event) {
        self.seq += 1;
        self.heap.push(Reverse((at.max(self.now), self.seq, event)));
    }

    /// Schedules `event` `after` from now.
    pub(crate) fn after(&mut self, after: Time, event: Event) {
        self.at(self.now + after, event);
    }

    /// The next event due at or before `until`, and the clock moved to it.
    pub(crate) fn next(&mut self, until: Time) -> Option<Event> {
        let Reverse((at, _, _)) = self.heap.peek()?;
        if *at > until {
            return None;
        }
        let Reverse((at, _, event)) = self.heap.pop()?;
        self.now = at;
        Some(event)
    }
}
