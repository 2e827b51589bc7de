//! Graceful shutdown of a server's connections, and their count.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
use pin_project_lite::pin_project;
use tokio::sync::Notify;

/// Graceful shutdown of a server's connections. hyper-util's `GracefulShutdown` polls a watch
/// channel, which takes its lock, on every poll of every connection. Here a connection registers
/// its task's waker once and then reads a flag (one atomic load per poll), and keeps only a slot
/// number: the registration costs a connection 16 bytes, which keeps its task in a smaller
/// allocation (this state lives as long as the connection, also while its request waits).
#[derive(Debug, Default)]
pub(super) struct Drain {
    closing: AtomicBool,
    conns: Mutex<Conns>,
    /// Notified when the last connection ends.
    ended: Notify,
}

/// The connections under a [`Drain`].
#[derive(Debug, Default)]
struct Conns {
    live: usize,
    /// Registered wakers by slot; `free` holds the empty slots.
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

/// A connection that has not registered a waker yet.
const NO_SLOT: usize = usize::MAX;

impl Drain {
    /// Tells every connection, present and future, to finish its requests and close.
    pub(super) fn start(&self) {
        // The flag first: a connection registering after the wake-ups below still sees it.
        self.closing.store(true, Ordering::SeqCst);
        for waker in self.conns.lock().wakers.iter().flatten() {
            waker.wake_by_ref();
        }
    }

    /// A new connection, counted from now (also while its protocol is not yet known) until its
    /// registration is dropped; `None` if `max` are open already.
    pub(super) fn enter(self: &Arc<Self>, max: usize) -> Option<Registration> {
        let mut conns = self.conns.lock();
        if conns.live >= max {
            return None;
        }
        conns.live += 1;
        Some(Registration { drain: self.clone(), slot: NO_SLOT })
    }

    /// Returns once every watched connection has ended.
    pub(super) async fn ended(&self) {
        loop {
            // Made before the check, so a notification in between is not lost.
            let notified = self.ended.notified();
            if self.conns.lock().live == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A connection's place in its [`Drain`]; gives it up when dropped (after the connection, which
/// is declared before it).
#[derive(Debug)]
pub(super) struct Registration {
    drain: Arc<Drain>,
    slot: usize,
}

impl Registration {
    /// `conn`, told to close gracefully by `shut_down` once [`Drain::start`] is called (at once
    /// if it already was).
    pub(super) fn watch<C: Future>(self, conn: C, shut_down: fn(Pin<&mut C>)) -> Draining<C> {
        Draining { conn, registration: self, closing: false, shut_down }
    }

    /// Whether the server is draining (for connections that look for themselves).
    pub(super) fn closing(&self) -> impl Fn() -> bool + Send + 'static {
        let drain = self.drain.clone();
        move || drain.closing.load(Ordering::SeqCst)
    }

    fn register(&mut self, waker: &Waker) {
        let mut conns = self.drain.conns.lock();
        let slot = match conns.free.pop() {
            Some(slot) => {
                conns.wakers[slot] = Some(waker.clone());
                slot
            }
            None => {
                conns.wakers.push(Some(waker.clone()));
                conns.wakers.len() - 1
            }
        };
        self.slot = slot;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let last = {
            let mut conns = self.drain.conns.lock();
            if self.slot != NO_SLOT {
                conns.wakers[self.slot] = None;
                conns.free.push(self.slot);
            }
            conns.live -= 1;
            conns.live == 0
        };
        if last {
            self.drain.ended.notify_waiters();
        }
    }
}

pin_project! {
    /// A connection under a [`Drain`].
    pub(super) struct Draining<C> {
        #[pin]
        conn: C,
        registration: Registration,
        closing: bool,
        shut_down: fn(Pin<&mut C>),
    }
}

impl<C: Future> Future for Draining<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if !*this.closing {
            if this.registration.slot == NO_SLOT {
                // This task's waker: the same at every later poll, as the connection never
                // leaves its task.
                this.registration.register(cx.waker());
            }
            // Read after registering: a drain that starts later wakes this task.
            if this.registration.drain.closing.load(Ordering::SeqCst) {
                *this.closing = true;
                (this.shut_down)(this.conn.as_mut());
            }
        }
        this.conn.poll(cx)
    }
}
