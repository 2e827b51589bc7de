//! Timeouts armed on every request (the gateway's and the queue proxy's request timeouts), on
//! tokio sleeps that are used again.
//!
//! With a fresh tokio sleep per request, each request costs an allocation, an insertion into
//! tokio's timer wheel and a removal from it. [`RecyclingTimer`] puts a dropped sleep into a small
//! pool, still filed in the wheel, and gives it to the next timeout with a later deadline: tokio
//! moves a deadline later without touching the wheel (the entry is re-filed only when its old
//! deadline comes), so a request costs a pool push and pop instead. (It began as hyper's timer
//! for its HTTP/1.1 server's header-read timeout; our own server keeps one sleep per connection.)
//!
//! A sleep in the pool keeps the waker of the task that polled it last until the next user polls
//! it: that task's allocation (about a kilobyte for a connection) outlives the task by as long, at
//! most [`POOL_MAX`] of them per server. If the sleep's old deadline comes while it waits in the
//! pool, that task is woken once for nothing (or nothing happens if it has ended).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use pin_project_lite::pin_project;

/// Sleeps kept for reuse at most (each is a boxed tokio sleep, about a hundred bytes).
const POOL_MAX: usize = 64;

type Pool = Mutex<Vec<Pin<Box<tokio::time::Sleep>>>>;

/// Timeouts on tokio's clock (paused time included) that reuse dropped sleeps. Made inside the
/// tokio runtime whose timer its sleeps use, like any tokio sleep.
#[derive(Debug, Clone, Default)]
pub(crate) struct RecyclingTimer {
    pool: Arc<Pool>,
}

impl RecyclingTimer {
    /// `fut`'s output, or `None` if `deadline` comes first: tokio's `timeout_at` with a reused
    /// sleep, for timeouts armed on every request.
    pub(crate) fn timeout_at<F: Future>(&self, deadline: tokio::time::Instant, fut: F) -> Timeout<F> {
        Timeout { fut, sleep: self.take(deadline) }
    }

    /// A sleep until `deadline`, from the pool if it has one.
    fn take(&self, deadline: tokio::time::Instant) -> RecycledSleep {
        // Popped in a statement of its own, so that the lock is not held while tokio re-files.
        let recycled = self.pool.lock().pop();
        let sleep = match recycled {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        RecycledSleep { sleep: Some(sleep), pool: self.pool.clone() }
    }

    /// Sleeps waiting in the pool (for tests).
    #[cfg(test)]
    fn pooled(&self) -> usize {
        self.pool.lock().len()
    }
}

/// A sleep that goes back to its timer's pool when dropped.
#[derive(Debug)]
struct RecycledSleep {
    /// `Some` until dropped.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    pool: Arc<Pool>,
}

impl Future for RecycledSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.get_mut().sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

pin_project! {
    /// See [`RecyclingTimer::timeout_at`].
    #[derive(Debug)]
    pub(crate) struct Timeout<F> {
        #[pin]
        fut: F,
        sleep: RecycledSleep,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Some(out));
        }
        Pin::new(this.sleep).poll(cx).map(|()| None)
    }
}

impl Drop for RecycledSleep {
    fn drop(&mut self) {
        if let Some(sleep) = self.sleep.take() {
            let mut pool = self.pool.lock();
            if pool.len() < POOL_MAX {
                pool.push(sleep);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sleep(timer: &RecyclingTimer, duration: Duration) -> RecycledSleep {
        timer.take(tokio::time::Instant::now() + duration)
    }

    #[tokio::test(start_paused = true)]
    async fn a_reused_sleep_ends_at_its_new_deadline() {
        let timer = RecyclingTimer::default();
        let first = sleep(&timer, Duration::from_secs(30));
        drop(first);
        assert_eq!(timer.pooled(), 1);
        // Its old deadline passes while it waits in the pool; reused, it keeps the new one.
        tokio::time::sleep(Duration::from_secs(40)).await;
        let start = tokio::time::Instant::now();
        sleep(&timer, Duration::from_secs(30)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        assert_eq!(timer.pooled(), 1, "the same sleep went back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reused_sleep_does_not_end_at_its_old_deadline() {
        let timer = RecyclingTimer::default();
        drop(sleep(&timer, Duration::from_secs(30)));
        tokio::time::sleep(Duration::from_secs(10)).await;
        // Taken before its old deadline (20 s from now) and given one 30 s away.
        let start = tokio::time::Instant::now();
        sleep(&timer, Duration::from_secs(30)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_gives_the_output_or_none_at_the_deadline() {
        let timer = RecyclingTimer::default();
        let now = tokio::time::Instant::now();
        let quick = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            7
        };
        assert_eq!(timer.timeout_at(now + Duration::from_secs(2), quick).await, Some(7));
        let slow = tokio::time::sleep(Duration::from_secs(60));
        assert_eq!(timer.timeout_at(now + Duration::from_secs(3), slow).await, None);
        assert_eq!(now.elapsed(), Duration::from_secs(3));
        assert_eq!(timer.pooled(), 1, "both used the same sleep");
    }

    #[tokio::test]
    async fn the_pool_is_bounded() {
        let timer = RecyclingTimer::default();
        let many: Vec<_> = (0..POOL_MAX + 10).map(|_| sleep(&timer, Duration::from_secs(30))).collect();
        drop(many);
        assert_eq!(timer.pooled(), POOL_MAX);
    }
}
