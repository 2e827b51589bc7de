//! Polling for an upstream's answer instead of sleeping until it comes, while nothing else waits.
//!
//! When a request has gone upstream and the gateway (or queue proxy) has nothing else to do, its
//! thread goes to sleep in `epoll_wait`, and the answer then has to wake it: on a VM that wake-up
//! is several microseconds of the request's latency, about as much as the gateway's own work at
//! one connection (`docs/benchmarks.md`, "Answer polling"). So while a request waits for an
//! answer expected within a small budget (50 µs by default), alone, the waiting task yields
//! instead of sleeping: tokio then polls its reactor without blocking (`epoll_wait` with a zero
//! timeout) and runs the task again, which finds the answer as soon as it is there. Every other
//! connection's readiness is still seen on each round, so nothing is kept waiting behind the
//! polling.
//!
//! It costs CPU time that would otherwise be idle, at most the budget per request, and only when
//! nothing else would wake the thread anyway: a request polls only if it is the only one waiting
//! and the last [`ALONE_STREAK`] requests each waited alone from start to answer (no other began
//! meanwhile), and only while the machine has a CPU for every thread that could run
//! (`/proc/loadavg`'s count of runnable threads, read once when a wait starts to poll, at most
//! the CPUs this process may use). Under load other requests keep arriving while one waits, or
//! the load generator, the instance and the gateway all want a CPU, and everything sleeps as
//! before — there polling would take CPU time from the processes that make the answers
//! (measured: 4–6 % less throughput at 100 connections with only the first two rules; with all
//! three, no round of polling at 10 or 100 connections, so what remains under load is this
//! bookkeeping, about 50 instructions per request). An
//! upstream whose answers take longer than the budget (a running average per upstream; a
//! function that computes for milliseconds) is never polled for. On a machine with one CPU it is
//! off (polling would take the CPU from the upstream it waits for), and a budget of zero turns it
//! off.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

/// The budget the gateway and queue proxy use unless configured otherwise, in microseconds.
pub const DEFAULT_BUDGET_MICROS: u64 = 50;
/// [`DEFAULT_BUDGET_MICROS`] as a duration.
pub const DEFAULT_BUDGET: Duration = Duration::from_micros(DEFAULT_BUDGET_MICROS);

/// Answer polling for one gateway or queue proxy: its budget and how many of its requests wait
/// for an answer now. Shared by all its upstreams.
#[derive(Debug)]
pub struct AnswerPoll {
    budget: Duration,
    /// CPUs this process may use.
    cpus: usize,
    /// Whether every runnable thread of the machine has a CPU now, given [`Self::cpus`].
    room: fn(usize) -> bool,
    /// Requests waiting now.
    waiting: AtomicUsize,
    /// Waits begun so far (to tell whether another began during one).
    begun: AtomicU64,
    /// How many waits in a row were alone from start to answer (capped).
    alone: AtomicU32,
    /// Rounds of polling (a metric of the gateway or queue proxy).
    rounds: Counter,
}

/// Waits in a row that must each have been alone before a wait polls.
pub const ALONE_STREAK: u32 = 8;

impl AnswerPoll {
    /// Polling for answers expected within `budget`, counting its rounds in `rounds`; off for a
    /// zero budget or on a machine (or cgroup) with one CPU.
    pub fn new(budget: Duration, rounds: Counter) -> Arc<Self> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_cpus(budget, cpus, room_on_this_machine, rounds)
    }

    pub(crate) fn with_cpus(
        budget: Duration,
        cpus: usize,
        room: fn(usize) -> bool,
        rounds: Counter,
    ) -> Arc<Self> {
        let budget = if cpus > 1 { budget } else { Duration::ZERO };
        Arc::new(Self {
            budget,
            cpus,
            room,
            waiting: AtomicUsize::new(0),
            begun: AtomicU64::new(0),
            alone: AtomicU32::new(0),
            rounds,
        })
    }

    /// Off: every wait sleeps.
    pub fn off() -> Arc<Self> {
        Self::with_cpus(Duration::ZERO, 1, |_| false, Counter::default())
    }

    /// The budget in effect (zero when off).
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Rounds of polling so far (each one a yield to the runtime and a non-blocking look at the
    /// reactor).
    pub fn rounds(&self) -> u64 {
        self.rounds.get()
    }
}

/// How long one upstream's answers take: a running average (weight 1/8) of the time from a
/// request's start to its response head, of requests that waited alone, in nanoseconds; 0 before
/// the first.
#[derive(Debug, Default)]
pub(crate) struct AnswerTimes {
    average_ns: AtomicU64,
}

impl AnswerTimes {
    fn expected(&self) -> Duration {
        Duration::from_nanos(self.average_ns.load(Ordering::Relaxed))
    }

    fn record(&self, took: Duration) {
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        // Racing updates may lose a sample; an average of many does not mind.
        let before = self.average_ns.load(Ordering::Relaxed);
        self.average_ns.store(averaged(before, sample), Ordering::Relaxed);
    }
}

/// The running average after `sample`: weight 1/8, the first sample taken whole.
fn averaged(before: u64, sample: u64) -> u64 {
    if before == 0 { sample.max(1) } else { before - before / 8 + sample / 8 }
}

/// Whether a request that has waited `waited` for its answer polls once more: only while it is
/// the only one waiting, after a streak of `alone` waits that were each alone, its upstream's
/// answers are expected within the budget (or nothing is known of them yet), and the budget is
/// not spent.
fn polls(budget: Duration, waiting: usize, alone: u32, expected: Duration, waited: Duration) -> bool {
    waiting == 1 && alone >= ALONE_STREAK && expected <= budget && waited < budget
}

/// Whether the machine has a CPU for every runnable thread now: `/proc/loadavg`'s running count
/// (which includes the caller) at most `cpus`. Where it cannot be read, no.
fn room_on_this_machine(cpus: usize) -> bool {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|text| runnable(&text)).is_some_and(|n| n <= cpus)
}

/// The runnable threads in `/proc/loadavg`'s text (its fourth field, `running/total`).
fn runnable(loadavg: &str) -> Option<usize> {
    loadavg.split_whitespace().nth(3)?.split_once('/')?.0.parse().ok()
}

/// The streak of lone waits after one that was (or was not) alone.
fn streak(before: u32, alone: bool) -> u32 {
    if alone { (before + 1).min(ALONE_STREAK) } else { 0 }
}

/// One request waiting for its answer; counted among the gateway's waiting requests until
/// dropped.
#[derive(Debug)]
pub(crate) struct Wait<'a> {
    poll: &'a AnswerPoll,
    times: &'a AnswerTimes,
    /// For a wait that began while no other waited: when (the real clock, `std`, also under
    /// tokio's paused test time: the budget is CPU time spent) and [`AnswerPoll::begun`] after it
    /// began. A wait that began among others never polls and is not timed: under load the
    /// bookkeeping stays a few atomic operations, without reading the clock.
    alone: Option<(Instant, u64)>,
    /// Whether the machine had room when this wait started to poll (0: not looked yet, 1: yes,
    /// 2: no).
    room: AtomicU8,
}

impl<'a> Wait<'a> {
    /// A wait that may poll; `None` when polling is off (then nothing is counted or timed).
    pub(crate) fn begin(poll: &'a AnswerPoll, times: &'a AnswerTimes) -> Option<Self> {
        if poll.budget.is_zero() {
            return None;
        }
        let others = poll.waiting.fetch_add(1, Ordering::Relaxed);
        let begun = poll.begun.fetch_add(1, Ordering::Relaxed) + 1;
        let alone = (others == 0).then(|| (Instant::now(), begun));
        Some(Self { poll, times, alone, room: AtomicU8::new(0) })
    }

    /// Whether to poll again rather than sleep (counting the round if so).
    pub(crate) fn poll_again(&self) -> bool {
        let Some((start, _)) = self.alone else { return false };
        let again = polls(
            self.poll.budget,
            self.poll.waiting.load(Ordering::Relaxed),
            self.poll.alone.load(Ordering::Relaxed),
            self.times.expected(),
            start.elapsed(),
        ) && self.room();
        if again {
            self.poll.rounds.inc();
        }
        again
    }

    /// Whether the machine has room for polling, looked at once per wait.
    fn room(&self) -> bool {
        match self.room.load(Ordering::Relaxed) {
            0 => {
                let room = (self.poll.room)(self.poll.cpus);
                self.room.store(if room { 1 } else { 2 }, Ordering::Relaxed);
                room
            }
            seen => seen == 1,
        }
    }

    /// The answer came. A wait that was alone from start to answer adds its time to the
    /// upstream's average and extends the streak; any other ends it.
    pub(crate) fn answered(self) {
        let alone = match self.alone {
            Some((start, begun)) if begun == self.poll.begun.load(Ordering::Relaxed) => {
                self.times.record(start.elapsed());
                true
            }
            _ => false,
        };
        let before = self.poll.alone.load(Ordering::Relaxed);
        let after = streak(before, alone);
        if after != before {
            self.poll.alone.store(after, Ordering::Relaxed);
        }
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        self.poll.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn only_a_lone_wait_for_a_quick_upstream_polls_and_only_within_the_budget() {
        let (budget, s) = (50 * US, ALONE_STREAK);
        assert!(polls(budget, 1, s, Duration::ZERO, Duration::ZERO), "nothing known yet: try");
        assert!(polls(budget, 1, s, 20 * US, 49 * US));
        assert!(!polls(budget, 1, s, 20 * US, 50 * US), "budget spent");
        assert!(!polls(budget, 2, s, 20 * US, Duration::ZERO), "another request waits");
        assert!(!polls(budget, 1, s - 1, 20 * US, Duration::ZERO), "recent waits were not alone");
        assert!(!polls(budget, 1, s, 51 * US, Duration::ZERO), "this upstream answers slower");
        assert!(!polls(Duration::ZERO, 1, s, Duration::ZERO, Duration::ZERO));
    }

    #[test]
    fn a_machine_with_more_runnable_threads_than_cpus_has_no_room_and_its_waits_sleep() {
        assert_eq!(runnable("0.93 1.57 1.52 2/345 12345\n"), Some(2));
        assert_eq!(runnable("0.93 1.57 1.52"), None);
        assert_eq!(runnable(""), None);
        let times = AnswerTimes::default();
        let crowded =
            AnswerPoll::with_cpus(Duration::from_secs(3600), 2, |cpus| cpus > 2, Counter::default());
        crowded.alone.store(ALONE_STREAK, Ordering::Relaxed);
        let wait = Wait::begin(&crowded, &times).unwrap();
        assert!(!wait.poll_again() && !wait.poll_again());
        assert_eq!(wait.room.load(Ordering::Relaxed), 2, "looked once, remembered");
        assert_eq!(crowded.rounds(), 0);
    }

    #[test]
    fn the_streak_counts_lone_waits_up_to_what_polling_needs_and_one_crowded_wait_ends_it() {
        let mut s = 0;
        for _ in 0..20 {
            s = streak(s, true);
        }
        assert_eq!(s, ALONE_STREAK);
        assert_eq!(streak(s, false), 0);
    }

    #[test]
    fn the_average_takes_the_first_answer_whole_and_then_follows_by_an_eighth() {
        assert_eq!(averaged(0, 800), 800);
        assert_eq!(averaged(0, 0), 1, "a known average is never 0 (0 means none yet)");
        assert_eq!(averaged(800, 1600), 900);
        let mut a = 1_000_000;
        for _ in 0..100 {
            a = averaged(a, 16_000);
        }
        assert!((16_000..16_100).contains(&a), "settles on steady answers: {a}");
    }

    #[test]
    fn one_cpu_or_a_zero_budget_is_off_and_waits_are_counted_while_they_last() {
        assert!(AnswerPoll::with_cpus(DEFAULT_BUDGET, 1, |_| true, Counter::default()).budget().is_zero());
        assert!(AnswerPoll::with_cpus(Duration::ZERO, 8, |_| true, Counter::default()).budget().is_zero());
        let off = AnswerPoll::off();
        let times = AnswerTimes::default();
        assert!(Wait::begin(&off, &times).is_none());

        let poll = AnswerPoll::with_cpus(Duration::from_secs(3600), 2, |_| true, Counter::default());
        for i in 0..ALONE_STREAK {
            let wait = Wait::begin(&poll, &times).unwrap();
            assert!(!wait.poll_again(), "wait {i}: the streak is still too short");
            wait.answered();
        }
        let first = Wait::begin(&poll, &times).unwrap();
        assert!(first.poll_again());
        let second = Wait::begin(&poll, &times).unwrap();
        assert!(!first.poll_again() && !second.poll_again(), "two wait: both sleep");
        drop(second);
        assert!(first.poll_again());
        assert_eq!(poll.rounds(), 2);
        first.answered();
        assert_eq!(poll.waiting.load(Ordering::Relaxed), 0);
        assert!(times.expected() > Duration::ZERO);
        // Another began while `first` waited: the streak starts over.
        assert!(!Wait::begin(&poll, &times).unwrap().poll_again());
        // A wait that began alone but saw another begin (and go, unanswered: that leaves the
        // streak alone) before its answer breaks it too.
        let mut poll = AnswerPoll::with_cpus(Duration::from_secs(3600), 2, |_| true, Counter::default());
        Arc::get_mut(&mut poll).unwrap().alone = AtomicU32::new(ALONE_STREAK);
        let lone = Wait::begin(&poll, &times).unwrap();
        drop(Wait::begin(&poll, &times).unwrap());
        assert_eq!(poll.alone.load(Ordering::Relaxed), ALONE_STREAK);
        lone.answered();
        assert_eq!(poll.alone.load(Ordering::Relaxed), 0);
    }
}
