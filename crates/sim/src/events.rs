//! Virtual time and the event queue.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

/// Virtual time: nanoseconds since the simulation began.
pub(crate) type Time = u64;

/// Milliseconds as virtual time.
pub(crate) fn ms(x: f64) -> Time {
    (x.max(0.0) * 1e6) as Time
}

/// A duration as virtual time.
pub(crate) fn span(d: Duration) -> Time {
    Time::try_from(d.as_nanos()).unwrap_or(Time::MAX)
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
    /// Events a fixed delay ahead (clients' deadlines) come in time order already: a FIFO keeps
    /// them, as many as requests sent in the last timeout, out of the heap.
    deadlines: VecDeque<(Time, u64, Event)>,
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
        Self { heap: BinaryHeap::new(), deadlines: VecDeque::new(), seq: 0, now: 0, base: zero() }
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

    /// Schedules `event` at `at`, no earlier than any deadline scheduled before it.
    pub(crate) fn deadline(&mut self, at: Time, event: Event) {
        self.seq += 1;
        let at = at.max(self.now);
        assert!(self.deadlines.back().is_none_or(|&(last, _, _)| last <= at), "deadlines out of order");
        self.deadlines.push_back((at, self.seq, event));
    }

    /// The next event due at or before `until`, and the clock moved to it.
    pub(crate) fn next(&mut self, until: Time) -> Option<Event> {
        let in_heap = self.heap.peek().map(|Reverse((at, seq, _))| (*at, *seq));
        let in_fifo = self.deadlines.front().map(|&(at, seq, _)| (at, seq));
        let fifo_first = match (in_heap, in_fifo) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(h), Some(d)) => d < h,
        };
        let (at, _) = if fifo_first { in_fifo? } else { in_heap? };
        if at > until {
            return None;
        }
        let event = if fifo_first { self.deadlines.pop_front()?.2 } else { self.heap.pop()?.0.2 };
        self.now = at;
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_and_other_events_leave_in_time_then_schedule_order() {
        let mut e = Events::new();
        e.deadline(5, Event::ClientTimeout { req: 1 });
        e.at(5, Event::Control);
        e.at(3, Event::Probe);
        e.deadline(9, Event::ClientTimeout { req: 2 });
        e.at(7, Event::Poked);
        let order: Vec<(Event, Time)> = std::iter::from_fn(|| e.next(8).map(|ev| (ev, e.now()))).collect();
        assert_eq!(
            order,
            [(Event::Probe, 3), (Event::ClientTimeout { req: 1 }, 5), (Event::Control, 5), (Event::Poked, 7)]
        );
        assert_eq!(e.next(9), Some(Event::ClientTimeout { req: 2 }));
        assert_eq!(e.next(100), None);
    }
}
