//! hyper's timer for HTTP/1.1 servers, with tokio sleeps that are used again.
//!
//! hyper's HTTP/1.1 server asks its timer for a new sleep whenever it starts to wait for a request
//! head (the time a client has to send it, our protection against clients that trickle a head
//! byte by byte), and drops that sleep once the head is in: on a keep-alive connection, once per
//! request. With hyper-util's `TokioTimer` each of those is an allocation, an insertion into
//! tokio's timer wheel and a removal from it. [`RecyclingTimer`] puts a dropped sleep into a small
//! pool, still filed in the wheel, and gives it to the next head with a later deadline: tokio
//! moves a deadline later without touching the wheel (the entry is re-filed only when its old
//! deadline comes), so a request costs a pool push and pop instead.
//!
//! A sleep in the pool keeps the waker of the task that polled it last until the next user polls
//! it: that task's allocation (about a kilobyte for a connection) outlives the task by as long, at
//! most [`POOL_MAX`] of them per server. If the sleep's old deadline comes while it waits in the
//! pool, that task is woken once for nothing (or nothing happens if it has ended).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};
use pin_project_lite::pin_project;

/// Sleeps kept for reuse at most (each is a boxed tokio sleep, about a hundred bytes).
const POOL_MAX: usize = 64;

type Pool = Mutex<Vec<Pin<Box<tokio::time::Sleep>>>>;

/// A hyper [`Timer`] on tokio's clock (paused time included) that reuses dropped sleeps. Made
/// inside the tokio runtime whose timer its sleeps use, like any tokio sleep.
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
        let recycled = lock(&self.pool).pop();
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
        lock(&self.pool).len()
    }
}

fn lock(pool: &Pool) -> MutexGuard<'_, Vec<Pin<Box<tokio::time::Sleep>>>> {
    pool.lock().unwrap_or_else(|e| e.into_inner())
}

impl Timer for RecyclingTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        Box::pin(self.take(tokio::time::Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(self.take(deadline.into()))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<RecycledSleep>() {
            Some(mine) => mine.get_mut().reset(new_deadline.into()),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// A sleep that goes back to its timer's pool when dropped.
#[derive(Debug)]
struct RecycledSleep {
    /// `Some` until dropped.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    pool: Arc<Pool>,
}

impl RecycledSleep {
    fn reset(&mut self, deadline: tokio::time::Instant) {
        if let Some(sleep) = &mut self.sleep {
            sleep.as_mut().reset(deadline);
        }
    }
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

impl Sleep for RecycledSleep {}

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
            let mut pool = lock(&self.pool);
            if pool.len() < POOL_MAX {
                pool.push(sleep);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_reused_sleep_ends_at_its_new_deadline() {
        let timer = RecyclingTimer::default();
        let first = timer.sleep(Duration::from_secs(30));
        drop(first);
        assert_eq!(timer.pooled(), 1);
        // Its old deadline passes while it waits in the pool; reused, it keeps the new one.
        tokio::time::sleep(Duration::from_secs(40)).await;
        let start = tokio::time::Instant::now();
        timer.sleep(Duration::from_secs(30)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        assert_eq!(timer.pooled(), 1, "the same sleep went back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reused_sleep_does_not_end_at_its_old_deadline() {
        let timer = RecyclingTimer::default();
        drop(timer.sleep(Duration::from_secs(30)));
        tokio::time::sleep(Duration::from_secs(10)).await;
        // Taken before its old deadline (20 s from now) and given one 30 s away.
        let start = tokio::time::Instant::now();
        timer.sleep(Duration::from_secs(30)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn reset_moves_the_deadline_both_ways() {
        let timer = RecyclingTimer::default();
        let start = tokio::time::Instant::now();
        let mut sleep = timer.sleep(Duration::from_secs(30));
        timer.reset(&mut sleep, timer.now() + Duration::from_secs(5));
        sleep.as_mut().await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        timer.reset(&mut sleep, timer.now() + Duration::from_secs(50));
        sleep.await;
        assert_eq!(start.elapsed(), Duration::from_secs(55));
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
        let many: Vec<_> = (0..POOL_MAX + 10).map(|_| timer.sleep(Duration::from_secs(30))).collect();
        drop(many);
        assert_eq!(timer.pooled(), POOL_MAX);
    }
}
