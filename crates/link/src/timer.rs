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

#[derive(Default)]
struct State {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
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
            state: Mutex::default(),
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
            while let Some(Reverse(e)) = state.heap.peek() {
                let due = e.at.checked_sub(handoff).unwrap_or(e.at);
                if due > now + SLACK {
                    break;
                }
                if let Some(Reverse(e)) = state.heap.pop() {
                    let _ = e.wake.send(now);
                }
            }
            let Some(Reverse(next)) = state.heap.peek() else {
                self.changed.wait(&mut state);
                continue;
            };
            let due = next.at.checked_sub(handoff).unwrap_or(next.at);
            let wake_at = due.checked_sub(self.lead.get()).unwrap_or(due);
            if wake_at > now {
                if !self.changed.wait_for(&mut state, wake_at - now).timed_out() {
                    // A new earliest deadline (or a spurious wake-up): look again.
                    continue;
                }
                now = Instant::now();
                self.lead.observe(now.saturating_duration_since(wake_at));
            }
            // The rest of the way spinning, without the lock, so that deadlines can be added.
            if due > now + SLACK {
                MutexGuard::unlocked(&mut state, || {
                    while Instant::now() < due {
                        std::hint::spin_loop();
                    }
                });
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
    async fn never_wakes_early_and_keeps_order() {
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
        let mut sorted = deadlines;
        sorted.sort();
        assert_eq!(*woke.lock(), sorted);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_sleepers_on_two_workers_never_wake_early() {
        let start = Instant::now();
        let tasks: Vec<_> = (0..200u64)
            .map(|i| {
                // Deadlines 0–9.95 ms out in 50 µs steps, in a scrambled order.
                let d = start + Duration::from_micros((i * 37 % 200) * 50);
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
