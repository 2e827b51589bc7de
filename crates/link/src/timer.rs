//! A timer with sub-millisecond precision for the link emulator.
//!
//! tokio's timer works in whole milliseconds and rounds deadlines up, which would add up to 1 ms
//! per direction to every emulated link. This timer keeps deadlines in a heap served by one OS
//! thread that waits on a condition variable until the earliest deadline.
//!
//! Waiting is not enough on its own: a waiting thread or task on an idle virtual machine wakes
//! late, by tens of microseconds on a quiet host and by 0.2–0.5 ms on one whose idle vCPUs are
//! halted (measured on a Firecracker VM: a 20 ms emulated link then measured 21.0–21.2 ms at best).
//! So both waits end early by what they have been observed to overrun, and the difference is
//! spent spinning: the timer thread stops waiting `lead` before it must hand a deadline over,
//! and hands it over `handoff` before the deadline, which the woken task spends yielding until
//! the deadline itself. A future never completes before its deadline. Both leads follow the
//! lateness measured at each wake-up (an exponential average, at most 1 ms), so on a
//! machine whose wake-ups are quick, or a busy one, little is spun.
//!
//! Spinning costs CPU per deadline, not per byte: a fleet of 100 nodes probing each other sets
//! hundreds of deadlines a second, each spun on by this thread and by a worker, which alone took
//! a third of the CPU of such a fleet (docs/latency.md). So the spinning is budgeted (20 ms of it
//! a second, saved up to 100 ms: `SPIN_RATE`, `SPIN_BURST`); past the budget a wait ends when the
//! machine wakes it (0.2–0.5 ms late on that VM), still never early.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// Deadlines closer than this are treated as due (not worth a thread hop).
const SLACK: Duration = Duration::from_micros(20);

/// The most either wait ends early: bounds the spinning when a wake-up is delayed by something
/// other than the machine's wake-up latency (preemption, a stop in a debugger).
pub(crate) const MAX_LEAD: Duration = Duration::from_millis(1);

/// Spinning allowed per second of wall time, both waits together: 2 % of a core.
pub(crate) const SPIN_RATE: Duration = Duration::from_millis(20);

/// Spinning that can be saved up, for a burst of precise deadlines (a link's 20 round trips in
/// `tests/link_rtt.rs` spin about 20 ms).
pub(crate) const SPIN_BURST: Duration = Duration::from_millis(100);

/// The spinning the timer may still do: [`SPIN_RATE`] per second, at most [`SPIN_BURST`].
#[derive(Debug)]
pub(crate) struct SpinBudget {
    left: Duration,
    at: Instant,
}

impl SpinBudget {
    pub(crate) fn new(now: Instant) -> Self {
        Self { left: SPIN_BURST, at: now }
    }

    /// True if `spin` can be afforded at `now` (it is not yet spent).
    pub(crate) fn allows(&mut self, now: Instant, spin: Duration) -> bool {
        let earned = SPIN_RATE.mul_f64(now.saturating_duration_since(self.at).as_secs_f64());
        self.left = (self.left + earned).min(SPIN_BURST);
        self.at = self.at.max(now);
        self.left >= spin
    }

    /// Takes `spin` off what is left.
    pub(crate) fn spend(&mut self, spin: Duration) {
        self.left = self.left.saturating_sub(spin);
    }
}

/// How far ahead of an event to stop waiting for it, learned from how late waits ended: an
/// exponential average (weight 1/8) of the lateness observed, capped at [`MAX_LEAD`].
#[derive(Debug, Default)]
pub(crate) struct Lead(AtomicU64);

impl Lead {
    /// The current lead.
    pub(crate) fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }

    /// Takes in one wake-up that came `late` after the time it was due (zero if it was not).
    /// Concurrent callers may lose each other's samples, which only slows the learning.
    pub(crate) fn observe(&self, late: Duration) {
        let cap = MAX_LEAD.as_nanos() as u64;
        let sample = (late.as_nanos() as u64).min(2 * cap);
        let old = self.0.load(Ordering::Relaxed);
        let new = (old - old / 8 + sample / 8).min(cap);
        self.0.store(new, Ordering::Relaxed);
    }
}

struct Entry {
    at: Instant,
    seq: u64,
    /// Sent the time of the hand-over.
    wake: oneshot::Sender<Instant>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct State {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    budget: SpinBudget,
}

struct Timer {
    state: Mutex<State>,
    changed: Condvar,
    /// How late the timer thread's waits end.
    lead: Lead,
    /// How late a task runs after its deadline was handed over.
    handoff: Lead,
}

fn timer() -> &'static Timer {
    static TIMER: OnceLock<&'static Timer> = OnceLock::new();
    TIMER.get_or_init(|| {
        let t: &'static Timer = Box::leak(Box::new(Timer {
            state: Mutex::new(State {
                heap: BinaryHeap::new(),
                seq: 0,
                budget: SpinBudget::new(Instant::now()),
            }),
            changed: Condvar::new(),
            lead: Lead::default(),
            handoff: Lead::default(),
        }));
        std::thread::Builder::new()
            .name("ikukantai-link-timer".into())
            .spawn(move || t.run())
            .expect("spawn the link timer thread");
        t
    })
}

impl Timer {
    fn run(&self) {
        let mut state = self.state.lock();
        loop {
            let handoff = self.handoff.get();
            let mut now = Instant::now();
            // Hand over what is due: `handoff` early while the budget pays for the task's
            // yielding until its deadline, else at the deadline.
            while let Some(at) = state.heap.peek().map(|Reverse(e)| e.at) {
                let early = if state.budget.allows(now, handoff) { handoff } else { Duration::ZERO };
                if at.checked_sub(early).unwrap_or(at) > now + SLACK {
                    break;
                }
                if let Some(Reverse(e)) = state.heap.pop() {
                    state.budget.spend(e.at.saturating_duration_since(now));
                    let _ = e.wake.send(now);
                }
            }
            let Some(next) = state.heap.peek().map(|Reverse(e)| e.at) else {
                self.changed.wait(&mut state);
                continue;
            };
            let lead = self.lead.get();
            let precise = state.budget.allows(now, lead + handoff);
            let due = if precise { next.checked_sub(handoff).unwrap_or(next) } else { next };
            let wake_at = if precise { due.checked_sub(lead).unwrap_or(due) } else { due };
            if wake_at > now {
                if !self.changed.wait_for(&mut state, wake_at - now).timed_out() {
                    // A new earliest deadline (or a spurious wake-up): look again.
                    continue;
                }
                now = Instant::now();
                self.lead.observe(now.saturating_duration_since(wake_at));
            }
            // The rest of the way spinning, without the lock, so that deadlines can be added.
            if precise && due > now + SLACK {
                MutexGuard::unlocked(&mut state, || {
                    while Instant::now() < due {
                        std::hint::spin_loop();
                    }
                });
                state.budget.spend(due - now);
            }
        }
    }
}

/// Completes at `deadline`, or a little after it; never before.
pub async fn sleep_until(deadline: Instant) {
    // A deadline closer than the thread hop is spun to right here.
    if deadline > Instant::now() + SLACK {
        let t = timer();
        let (tx, rx) = oneshot::channel();
        {
            let mut state = t.state.lock();
            state.seq += 1;
            let earliest = state.heap.peek().is_none_or(|Reverse(e)| deadline < e.at);
            let seq = state.seq;
            state.heap.push(Reverse(Entry { at: deadline, seq, wake: tx }));
            if earliest {
                t.changed.notify_one();
            }
        }
        if let Ok(handed_over) = rx.await {
            t.handoff.observe(Instant::now().saturating_duration_since(handed_over));
        }
    }
    // Handed over early by what tasks have been taking to run: the rest of the way yielding,
    // which keeps this worker from going idle (and waking late) without holding it.
    while Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn never_wakes_early_and_wakes_everyone() {
        // Which of two sleepers whose deadlines are both past wakes first is the scheduler's
        // choice (a thread held off the CPU for 2 ms reorders them), so only that is checked.
        let start = Instant::now();
        let deadlines: Vec<Instant> =
            [7u64, 3, 5, 1].iter().map(|ms| start + Duration::from_millis(*ms)).collect();
        let woke = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for d in deadlines.clone() {
            let woke = woke.clone();
            tasks.push(tokio::spawn(async move {
                sleep_until(d).await;
                assert!(Instant::now() >= d, "woke before the deadline");
                woke.lock().push(d);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut woken = woke.lock().clone();
        woken.sort();
        let mut sorted = deadlines;
        sorted.sort();
        assert_eq!(woken, sorted);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_sleepers_on_two_workers_never_wake_early() {
        // Deadlines 0–9.95 ms out in 50 µs steps, in a scrambled order.
        never_early((0..200u64).map(|i| Duration::from_micros((i * 37 % 200) * 50))).await;
    }

    /// Sleeps until each of `offsets` from now on its own task; asserts none woke early.
    async fn never_early(offsets: impl Iterator<Item = Duration>) {
        let start = Instant::now();
        let tasks: Vec<_> = offsets
            .map(|offset| {
                let d = start + offset;
                tokio::spawn(async move {
                    sleep_until(d).await;
                    Instant::now() >= d
                })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap(), "woke before the deadline");
        }
    }

    #[test]
    fn the_spin_budget_earns_its_rate_and_saves_up_to_a_burst() {
        let t0 = Instant::now();
        let mut b = SpinBudget::new(t0);
        assert!(b.allows(t0, SPIN_BURST));
        assert!(!b.allows(t0, SPIN_BURST + Duration::from_nanos(1)));
        b.spend(SPIN_BURST);
        assert!(!b.allows(t0, Duration::from_micros(1)), "spent");
        // Half a second earns half the rate.
        let half = t0 + Duration::from_millis(500);
        assert!(b.allows(half, SPIN_RATE / 2));
        assert!(!b.allows(half, SPIN_RATE / 2 + Duration::from_micros(1)));
        // A long quiet saves no more than a burst.
        assert!(b.allows(t0 + Duration::from_secs(3600), SPIN_BURST));
        assert!(!b.allows(t0 + Duration::from_secs(3600), SPIN_BURST + Duration::from_nanos(1)));
        // Time going backwards (an earlier `now` from another thread) earns nothing.
        b.spend(SPIN_BURST);
        assert!(!b.allows(t0, Duration::from_nanos(1)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_budget_deadlines_are_still_never_early() {
        // 2 000 sleepers over 20 ms would want far more spinning than the budget has.
        never_early((0..2000u64).map(|i| Duration::from_micros(1000 + (i * 7919 % 2000) * 10))).await;
    }

    #[test]
    fn leads_follow_the_lateness_seen_and_stay_bounded() {
        let lead = Lead::default();
        assert_eq!(lead.get(), Duration::ZERO);
        for _ in 0..100 {
            lead.observe(Duration::from_micros(300));
        }
        let settled = lead.get();
        assert!(settled > Duration::from_micros(290) && settled <= Duration::from_micros(300), "{settled:?}");
        // One wake-up stalled for a second moves it by at most an eighth of twice the cap.
        lead.observe(Duration::from_secs(1));
        assert!(lead.get() <= settled + 2 * MAX_LEAD / 8, "{:?}", lead.get());
        for _ in 0..100 {
            lead.observe(Duration::from_secs(1));
        }
        assert_eq!(lead.get(), MAX_LEAD);
        // On a machine whose wake-ups are on time it decays to nothing.
        for _ in 0..200 {
            lead.observe(Duration::ZERO);
        }
        assert!(lead.get() < Duration::from_micros(1), "{:?}", lead.get());
    }
}
