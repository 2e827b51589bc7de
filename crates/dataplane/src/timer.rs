//! A timer with sub-millisecond precision for the link emulator.
//!
//! tokio's timer works in whole milliseconds and rounds deadlines up, which would add up to 1 ms
//! per direction to every emulated link. This timer keeps deadlines in a heap served by one OS
//! thread that waits on a condition variable until the earliest deadline (Linux wakes such waits
//! within tens of microseconds), then completes the waiting futures.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Deadlines closer than this are treated as due (not worth a thread hop).
const SLACK: Duration = Duration::from_micros(20);

struct Entry {
    at: Instant,
    seq: u64,
    wake: oneshot::Sender<()>,
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
}

fn timer() -> &'static Timer {
    static TIMER: OnceLock<&'static Timer> = OnceLock::new();
    TIMER.get_or_init(|| {
        let t: &'static Timer =
            Box::leak(Box::new(Timer { state: Mutex::default(), changed: Condvar::new() }));
        std::thread::Builder::new()
            .name("ikukantai-link-timer".into())
            .spawn(move || t.run())
            .expect("spawn the link timer thread");
        t
    })
}

impl Timer {
    fn run(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            while state.heap.peek().is_some_and(|Reverse(e)| e.at <= now + SLACK) {
                if let Some(Reverse(e)) = state.heap.pop() {
                    let _ = e.wake.send(());
                }
            }
            state = match state.heap.peek() {
                None => self.changed.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(Reverse(e)) => {
                    let wait = e.at.saturating_duration_since(now);
                    self.changed.wait_timeout(state, wait).unwrap_or_else(|e| e.into_inner()).0
                }
            };
        }
    }
}

/// Completes at `deadline`, give or take a few tens of microseconds.
pub async fn sleep_until(deadline: Instant) {
    if deadline <= Instant::now() + SLACK {
        return;
    }
    let t = timer();
    let (tx, rx) = oneshot::channel();
    {
        let mut state = t.state.lock().unwrap_or_else(|e| e.into_inner());
        state.seq += 1;
        let earliest = state.heap.peek().is_none_or(|Reverse(e)| deadline < e.at);
        let seq = state.seq;
        state.heap.push(Reverse(Entry { at: deadline, seq, wake: tx }));
        if earliest {
            t.changed.notify_one();
        }
    }
    let _ = rx.await;
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
                woke.lock().unwrap().push(d);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut sorted = deadlines;
        sorted.sort();
        assert_eq!(*woke.lock().unwrap(), sorted);
    }
}
