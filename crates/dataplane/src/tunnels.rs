//! Tunnels: a client's connection and an instance's, spliced after a `101 Switching Protocols`
//! ([`ikukantai_http::upgrade`] hands them over). Bytes go both ways until either side closes;
//! the proxies do not read what goes through, so any protocol can be tunnelled.
//!
//! A tunnel counts as one request in flight for as long as it is open (the balancer, the
//! autoscaler and containerConcurrency see it, as Knative's do). Its `101` is counted with the
//! requests when it is passed on; the tunnel's lifetime and bytes are counted by a
//! [`TunnelMeter`]. Tunnels are cut when their gateway shuts down or their queue proxy starts to
//! drain: they have no end to wait for.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use ikukantai_http::upgrade::{OnUpgrade, Upgraded};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::TunnelMeter;

/// The tunnels a proxy has open, all cut by [`close`](Self::close).
#[derive(Debug)]
pub(crate) struct Tunnels {
    closed: watch::Sender<bool>,
}

impl Default for Tunnels {
    fn default() -> Self {
        Self { closed: watch::Sender::new(false) }
    }
}

impl Tunnels {
    /// Splices `client` (once handed over) with `upstream` in a task of its own until either
    /// side closes, nothing crosses for `idle` (if given), or [`close`](Self::close) is called;
    /// `guard` is dropped when the tunnel ends. `meter` counts the tunnel while it is open, its
    /// bytes and its duration. Once closed, tunnels end as they open.
    pub(crate) fn open<G: Send + 'static>(
        &self,
        client: OnUpgrade,
        upstream: OnUpgrade,
        idle: Option<Duration>,
        guard: G,
        meter: TunnelMeter,
    ) {
        let mut closed = self.closed.subscribe();
        let open = Open::new(meter);
        tokio::spawn(async move {
            let _guard = guard;
            let splice = async {
                let (Ok(mut client), Ok(mut upstream)) = (client.await, upstream.await) else { return };
                let start = Instant::now();
                let last = Arc::new(AtomicU64::new(0));
                let mut client = Watched { io: &mut client, start, last: last.clone(), meter: &open.meter };
                let quiet = async {
                    let Some(idle) = idle else { return std::future::pending().await };
                    loop {
                        let until = start + Duration::from_nanos(last.load(Ordering::Relaxed)) + idle;
                        if Instant::now() >= until {
                            return;
                        }
                        tokio::time::sleep_until(until).await;
                    }
                };
                tokio::select! {
                    result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "tunnel ended with an error");
                        }
                    }
                    () = quiet => tracing::debug!(?idle, "tunnel cut: idle"),
                }
            };
            tokio::select! {
                () = splice => {}
                _ = closed.wait_for(|c| *c) => tracing::debug!("tunnel cut: shutting down"),
            }
            drop(open);
        });
    }

    /// Cuts every open tunnel, and every one opened from now on.
    pub(crate) fn close(&self) {
        self.closed.send_replace(true);
    }
}

/// A tunnel counted as open from its `101` until it is dropped, when its duration is recorded.
struct Open {
    meter: TunnelMeter,
    since: Instant,
}

impl Open {
    fn new(meter: TunnelMeter) -> Self {
        meter.open.inc();
        Self { meter, since: Instant::now() }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.meter.open.dec();
        self.meter.duration.observe(self.since.elapsed().as_secs_f64());
    }
}

/// The client's side of a tunnel, noting when bytes last crossed in either direction and
/// counting them (every byte crosses through it: read from the client, or written to it).
struct Watched<'a> {
    io: &'a mut Upgraded,
    start: Instant,
    /// Nanoseconds from `start`.
    last: Arc<AtomicU64>,
    meter: &'a TunnelMeter,
}

impl Watched<'_> {
    fn touch(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched<'_> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut *this.io).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            this.touch();
            this.meter.from_client.inc_by(read as u64);
        }
        result
    }
}

impl AsyncWrite for Watched<'_> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut *this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result
            && n > 0
        {
            this.touch();
            this.meter.to_client.inc_by(n as u64);
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use ikukantai_http::connect::Stream;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    use super::*;

    /// A tunnel between two in-memory connections (so that paused time works); returns the far
    /// ends: the client's and the upstream's.
    fn tunnel(
        tunnels: &Tunnels,
        idle: Option<Duration>,
        guard: impl Send + 'static,
    ) -> (DuplexStream, DuplexStream) {
        metered(tunnels, idle, guard, TunnelMeter::default())
    }

    /// [`tunnel`], counted by `meter`.
    fn metered(
        tunnels: &Tunnels,
        idle: Option<Duration>,
        guard: impl Send + 'static,
        meter: TunnelMeter,
    ) -> (DuplexStream, DuplexStream) {
        let (client, client_far) = duplex(1024);
        let (upstream, upstream_far) = duplex(1024);
        let client = OnUpgrade::ready(Upgraded::upstream(Bytes::from_static(b"pre;"), Stream::Pipe(client)));
        let upstream = OnUpgrade::ready(Upgraded::upstream(Bytes::new(), Stream::Pipe(upstream)));
        tunnels.open(client, upstream, idle, guard, meter);
        (client_far, upstream_far)
    }

    async fn read_some(s: &mut DuplexStream) -> String {
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    struct Flag(Arc<AtomicU64>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_either_way_keep_a_tunnel_open_and_silence_cuts_it_after_the_idle_time() {
        let tunnels = Tunnels::default();
        let ended = Arc::new(AtomicU64::new(0));
        let (mut client, mut upstream) = tunnel(&tunnels, Some(Duration::from_secs(1)), Flag(ended.clone()));
        // Bytes read before the hand-over come first.
        assert_eq!(read_some(&mut upstream).await, "pre;");
        let start = Instant::now();
        for i in 0..10 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            // Alternate directions: either keeps the tunnel alive.
            if i % 2 == 0 {
                client.write_all(b"up").await.unwrap();
                assert_eq!(read_some(&mut upstream).await, "up");
            } else {
                upstream.write_all(b"down").await.unwrap();
                assert_eq!(read_some(&mut client).await, "down");
            }
        }
        assert_eq!(ended.load(Ordering::SeqCst), 0, "open after 6 s with bytes every 0.6 s");
        let last = Instant::now();
        assert_eq!(read_some(&mut client).await, "", "cut");
        assert_eq!(last - start, Duration::from_secs(6));
        assert_eq!(Instant::now() - last, Duration::from_secs(1), "one idle time after the last byte");
        tokio::task::yield_now().await;
        assert_eq!(ended.load(Ordering::SeqCst), 1, "the guard went with the tunnel");
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_without_an_idle_time_lasts_until_a_side_closes_or_the_tunnels_close() {
        let tunnels = Tunnels::default();
        let meter = TunnelMeter::default();
        let (mut client, mut upstream) = metered(&tunnels, None, (), meter.clone());
        assert_eq!(read_some(&mut upstream).await, "pre;");
        tokio::time::sleep(Duration::from_secs(3600)).await;
        client.write_all(b"late").await.unwrap();
        assert_eq!(read_some(&mut upstream).await, "late");
        // One side closing its write half closes the other's, and the way back stays open.
        client.shutdown().await.unwrap();
        assert_eq!(read_some(&mut upstream).await, "");
        upstream.write_all(b"bye").await.unwrap();
        assert_eq!(read_some(&mut client).await, "bye");
        // Counted while open: the bytes from the client include those read before the hand-over.
        assert_eq!((meter.open.get(), meter.from_client.get(), meter.to_client.get()), (1, 8, 3));
        // Closing the tunnels cuts it, and a tunnel opened later ends at once.
        let (mut other, _other_upstream) = tunnel(&tunnels, None, ());
        tunnels.close();
        assert_eq!(read_some(&mut client).await, "");
        assert_eq!(read_some(&mut other).await, "");
        let (mut late, _late_upstream) = tunnel(&tunnels, None, ());
        assert_eq!(read_some(&mut late).await, "");
        tokio::task::yield_now().await;
        assert_eq!(meter.open.get(), 0, "no longer open");
    }
}
