//! Emulated network links, in user space (the kernel here has no netem).
//!
//! A [`Link`] joins two nodes. Every byte that crosses it in either direction is held for half the
//! round-trip time, plus a normally distributed jitter (like netem: each direction gets
//! `jitter / √2` so the round trip has the configured spread), and, with a bandwidth cap, for its
//! serialization time on a wire shared by all connections in that direction. Order is kept.
//! Opening a connection costs one round trip, as a TCP handshake would.
//!
//! [`Link::connect`] returns a stream for the local side; two tasks per connection move bytes to
//! and from the real socket through the delay line, timed by the sub-millisecond [`crate::timer`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ikukantai_api::topology::LinkProperties;
use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Normal};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::timer::sleep_until;

const CHUNK: usize = 16 * 1024;
const LOCAL_BUFFER: usize = 64 * 1024;

/// One direction of a link: its delay distribution and its wire.
#[derive(Debug)]
struct Direction {
    one_way: Duration,
    jitter: Option<Normal<f64>>,
    bits_per_second: Option<u64>,
    state: Mutex<DirectionState>,
}

#[derive(Debug)]
struct DirectionState {
    rng: SmallRng,
    wire_free_at: Instant,
}

impl Direction {
    fn new(props: &LinkProperties, seed: u64) -> Self {
        let one_way = props.rtt / 2;
        let sd = props.jitter.as_secs_f64() / std::f64::consts::SQRT_2;
        Self {
            one_way,
            jitter: (sd > 0.0).then(|| Normal::new(0.0, sd).expect("finite jitter")),
            bits_per_second: props.bandwidth.map(|b| b.bits_per_second),
            state: Mutex::new(DirectionState {
                rng: SmallRng::seed_from_u64(seed),
                wire_free_at: Instant::now(),
            }),
        }
    }

    /// When a chunk of `len` bytes read at `now` arrives at the other end.
    fn release_time(&self, now: Instant, len: usize) -> Instant {
        let mut s = self.state.lock();
        let mut sent = now;
        if let Some(bps) = self.bits_per_second {
            let start = s.wire_free_at.max(now);
            let serialization = Duration::from_secs_f64(len as f64 * 8.0 / bps as f64);
            s.wire_free_at = start + serialization;
            sent = s.wire_free_at;
        }
        let delay = match &self.jitter {
            None => self.one_way,
            Some(normal) => {
                let extra = normal.sample(&mut s.rng);
                Duration::from_secs_f64((self.one_way.as_secs_f64() + extra).max(0.0))
            }
        };
        sent + delay
    }
}

/// A link between the local node and one remote node.
#[derive(Debug, Clone)]
pub struct Link {
    outbound: Arc<Direction>,
    inbound: Arc<Direction>,
    rtt: Duration,
}

impl Link {
    /// A link with the given properties; `seed` drives its jitter.
    pub fn new(props: &LinkProperties, seed: u64) -> Self {
        Self {
            outbound: Arc::new(Direction::new(props, seed)),
            inbound: Arc::new(Direction::new(props, seed ^ 0x005e_ed0f_1a7e)),
            rtt: props.rtt,
        }
    }

    /// The configured round-trip time.
    pub fn rtt(&self) -> Duration {
        self.rtt
    }

    /// Opens a TCP connection to `addr` across the link.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<DuplexStream> {
        let started = Instant::now();
        let socket = TcpStream::connect(addr).await?;
        ikukantai_http::server::tune(&socket);
        socket.set_nodelay(true)?;
        // The handshake crosses the link once in each direction.
        let handshake = self.outbound.release_time(started, 0);
        sleep_until(self.inbound.release_time(handshake, 0)).await;
        Ok(self.attach(socket))
    }

    /// Puts an established socket behind the link; returns the local end.
    pub fn attach(&self, socket: TcpStream) -> DuplexStream {
        let (local, inner) = tokio::io::duplex(LOCAL_BUFFER);
        let (inner_read, inner_write) = tokio::io::split(inner);
        let (sock_read, sock_write) = socket.into_split();
        pump(inner_read, sock_write, self.outbound.clone());
        pump(sock_read, inner_write, self.inbound.clone());
        local
    }
}

/// Moves bytes from `src` to `dst`, each chunk released when the direction says.
fn pump<R, W>(mut src: R, mut dst: W, dir: Arc<Direction>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // Bounded: a slow far end pushes back on the sender, as a real window would.
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(64);
    tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n: usize = src.read(&mut buf).await.unwrap_or_default();
            let at = dir.release_time(Instant::now(), n);
            if tx.send((at, Bytes::copy_from_slice(&buf[..n]))).await.is_err() || n == 0 {
                break;
            }
        }
    });
    tokio::spawn(async move {
        while let Some((at, chunk)) = rx.recv().await {
            sleep_until(at).await;
            if chunk.is_empty() {
                let _ = dst.shutdown().await;
                break;
            }
            if dst.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use ikukantai_api::topology::Bandwidth;

    fn props(rtt_ms: u64, jitter_ms: u64) -> LinkProperties {
        LinkProperties {
            rtt: Duration::from_millis(rtt_ms),
            jitter: Duration::from_millis(jitter_ms),
            bandwidth: None,
        }
    }

    #[test]
    fn release_times_are_half_the_rtt_and_jitter_is_seeded() {
        let d = Direction::new(&props(50, 0), 1);
        let now = Instant::now();
        assert_eq!(d.release_time(now, 100), now + Duration::from_millis(25));
        let a = Direction::new(&props(50, 10), 7);
        let b = Direction::new(&props(50, 10), 7);
        let xs: Vec<_> = (0..5).map(|_| a.release_time(now, 1)).collect();
        let ys: Vec<_> = (0..5).map(|_| b.release_time(now, 1)).collect();
        assert_eq!(xs, ys, "same seed, same jitter");
        assert!(xs.iter().any(|&t| t != now + Duration::from_millis(25)));
    }

    #[test]
    fn bandwidth_serializes_on_a_shared_wire() {
        let p = LinkProperties {
            rtt: Duration::ZERO,
            jitter: Duration::ZERO,
            bandwidth: Some(Bandwidth { bits_per_second: 8_000_000 }),
        };
        let d = Direction::new(&p, 1);
        let now = Instant::now();
        // 1 MB/s: 1000 bytes take 1 ms, the next 1000 bytes queue behind them.
        assert_eq!(d.release_time(now, 1000), now + Duration::from_millis(1));
        assert_eq!(d.release_time(now, 1000), now + Duration::from_millis(2));
    }
}
