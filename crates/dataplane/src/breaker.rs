//! A concurrency limit with a bounded waiting queue, ordered by a queue discipline from the policy
//! core: the queue proxy's containerConcurrency. (The gateway's activator queue is its own: it
//! waits for the balancer to pick an instance, not for a slot of one limit.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ikukantai_policy::queue::{QueueDiscipline, RequestMeta};
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// The queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{waiting} requests already waiting (queue depth {depth})")]
pub(crate) struct QueueFull {
    /// Waiting now.
    pub waiting: usize,
    /// The limit.
    pub depth: usize,
}

struct State {
    in_flight: u32,
    waiting: Box<dyn QueueDiscipline<oneshot::Sender<()>>>,
}

/// At most `capacity` holders at once (0 = unlimited), at most `depth` waiting.
pub(crate) struct Breaker {
    capacity: u32,
    depth: usize,
    state: Mutex<State>,
    ids: AtomicU64,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker").field("capacity", &self.capacity).field("depth", &self.depth).finish()
    }
}

/// Held while a request runs; dropping it lets the next waiter in.
#[derive(Debug)]
pub(crate) struct Permit {
    breaker: Arc<Breaker>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.breaker.release();
    }
}

impl Breaker {
    /// A breaker whose waiters are ordered by `discipline`.
    pub(crate) fn new(
        capacity: u32,
        depth: usize,
        discipline: Box<dyn QueueDiscipline<oneshot::Sender<()>>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            depth,
            state: Mutex::new(State { in_flight: 0, waiting: discipline }),
            ids: AtomicU64::new(1),
        })
    }

    /// Requests holding a permit.
    pub(crate) fn in_flight(&self) -> u32 {
        self.state.lock().in_flight
    }

    /// Requests waiting.
    pub(crate) fn waiting(&self) -> usize {
        self.state.lock().waiting.len()
    }

    /// Takes a permit now, or a place in the queue (`meta` describes the request to the
    /// discipline; its `id` is replaced), or fails at once when the queue is full.
    pub(crate) fn enter(self: &Arc<Self>, meta: &RequestMeta<'_>) -> Result<Ticket, QueueFull> {
        let mut s = self.state.lock();
        if self.capacity == 0 || (s.in_flight < self.capacity && s.waiting.is_empty()) {
            s.in_flight += 1;
            return Ok(Ticket { breaker: self.clone(), id: 0, rx: None, used: false });
        }
        if s.waiting.len() >= self.depth {
            return Err(QueueFull { waiting: s.waiting.len(), depth: self.depth });
        }
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        s.waiting.push(&RequestMeta { id, ..*meta }, tx);
        Ok(Ticket { breaker: self.clone(), id, rx: Some(rx), used: false })
    }

    fn release(&self) {
        let mut s = self.state.lock();
        // Hand the slot straight to the next live waiter; the in-flight count stays the same.
        while let Some(next) = s.waiting.pop() {
            if next.send(()).is_ok() {
                return;
            }
        }
        s.in_flight = s.in_flight.saturating_sub(1);
    }
}

/// A place in the breaker: either a permit already, or a place in its queue.
/// Dropping a ticket that still waits leaves the queue.
#[derive(Debug)]
pub(crate) struct Ticket {
    breaker: Arc<Breaker>,
    id: u64,
    rx: Option<oneshot::Receiver<()>>,
    used: bool,
}

impl Ticket {
    /// True when the ticket had to queue.
    pub(crate) fn queued(&self) -> bool {
        self.rx.is_some()
    }

    /// Waits until the permit is granted.
    pub(crate) async fn wait(mut self) -> Permit {
        if let Some(rx) = self.rx.as_mut() {
            // The sender lives in the breaker's queue, which this ticket keeps alive; it is only
            // dropped without sending when the ticket itself was removed, which cannot happen here.
            let _ = rx.await;
        }
        self.rx = None;
        self.used = true;
        Permit { breaker: self.breaker.clone() }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.used {
            return;
        }
        let Some(mut rx) = self.rx.take() else {
            // Granted at once but never used.
            self.breaker.release();
            return;
        };
        let mut s = self.breaker.state.lock();
        if s.waiting.remove(self.id).is_none() && rx.try_recv().is_ok() {
            // The slot was handed over just as we gave up: pass it on.
            drop(s);
            self.breaker.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ikukantai_policy::queue::Fifo;
    use std::time::Instant;

    fn meta(headers: &Vec<(String, String)>) -> RequestMeta<'_> {
        RequestMeta {
            id: 0,
            source: None,
            host: "h",
            path: "/",
            method: "GET",
            headers,
            arrival: Instant::now(),
            deadline: None,
        }
    }

    #[tokio::test]
    async fn limits_concurrency_queues_in_order_and_rejects_overflow() {
        let b = Breaker::new(1, 2, Box::new(Fifo::default()));
        let h = Vec::new();
        let first = b.enter(&meta(&h)).unwrap().wait().await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..2 {
            let (b, order) = (b.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let h = Vec::new();
                let t = b.enter(&meta(&h)).unwrap();
                let p = t.wait().await;
                order.lock().push(i);
                drop(p);
            }));
            tokio::task::yield_now().await;
        }
        assert_eq!(b.waiting(), 2);
        assert_eq!(b.enter(&meta(&h)).unwrap_err(), QueueFull { waiting: 2, depth: 2 });
        drop(first);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock(), [0, 1]);
        assert_eq!(b.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_leaves_the_queue() {
        let b = Breaker::new(1, 10, Box::new(Fifo::default()));
        let h = Vec::new();
        let first = b.enter(&meta(&h)).unwrap().wait().await;
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move {
                let h = Vec::new();
                let t = b.enter(&meta(&h)).unwrap();
                let _p = t.wait().await;
            })
        };
        tokio::task::yield_now().await;
        assert_eq!(b.waiting(), 1);
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(b.waiting(), 0);
        drop(first);
        assert_eq!(b.in_flight(), 0);
        let _again = b.enter(&meta(&h)).unwrap().wait().await;
    }

    #[tokio::test]
    async fn unlimited_capacity_never_waits() {
        let b = Breaker::new(0, 0, Box::new(Fifo::default()));
        let h = Vec::new();
        let permits: Vec<_> = (0..100).map(|_| b.enter(&meta(&h)).unwrap()).collect();
        assert!(permits.iter().all(|t| !t.queued()));
        assert_eq!(b.in_flight(), 100);
        drop(permits);
        assert_eq!(b.in_flight(), 0, "unused tickets give their slot back");
    }
}
