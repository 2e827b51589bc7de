//! Serving HTTP/1.1 and h2c on a listener, with limits and graceful shutdown.
//!
//! What bounds a listener against clients that hold connections (#23): at most
//! [`ServerConfig::max_connections`] at once (a connection past it is answered 503 and closed at
//! once, so that the refusal is clear and the kernel's backlog is not left to fill); TCP
//! keepalive on every connection, so that a peer that vanished is noticed; a first-bytes deadline;
//! for HTTP/1.1 the head deadline; for h2c a deadline for the first request, an idle timeout and
//! keepalive pings. Accept errors (`EMFILE` when the fd table is full) are backed off, never
//! retried at once, and the fd soft limit is raised to the hard limit once, when the first server
//! starts.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::{Service, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep, timeout};

use self::drain::Drain;
use crate::body::Body;
use crate::h1::{Handler, RequestBody, serve_connection};
use crate::peer::Peer;
use crate::wire::READ_MIN;

mod drain;
#[cfg(test)]
mod tests;

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets open connections finish their requests, and returns when they have.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// How long a new connection may take to show which protocol it speaks; the limit for reading
/// an HTTP/1.1 head takes over after that.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an HTTP/1.1 client has to send a whole request head, counted from when the server
/// starts waiting for it: a client that trickles a head byte by byte holds a connection no longer
/// than this, and neither does an idle keep-alive connection (the connection is closed).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// An h2c connection with no request in its first this long is told to go away (GOAWAY)…
const H2_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// …and so is one that then starts no request for this long (closed between one and two of
/// them after its last request started; requests in progress finish).
const H2_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// An h2c client is pinged this often, and the connection closed if a ping is not answered in
/// time: a peer that stopped reading (or answering a GOAWAY) holds nothing for long.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// TCP keepalive on accepted connections: probes after this long without traffic, then every
/// interval, dropping the connection after so many unanswered (a peer gone without a FIN or RST
/// is noticed in about 90 s).
const KEEPALIVE_TIME: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 3;

/// Waits after accept errors: the first, doubled at each error in a row, capped.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What h2c "prior knowledge" clients send first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection past [`ServerConfig::max_connections`] is sent before it is closed.
const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
    content-length: 32\r\nconnection: close\r\n\r\nthe server has too many clients\n";

/// How a server treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    /// Largest request head (HTTP/1.1 answers 431 past it; h2c's header list limit).
    pub max_header_bytes: usize,
    /// Most connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
}

impl ServerConfig {
    /// Heads up to `max_header_bytes`, and [`default_max_connections`].
    pub fn new(max_header_bytes: usize) -> Self {
        Self { max_header_bytes, max_connections: default_max_connections() }
    }
}

/// A quarter of the fd limit (once raised, [`raise_fd_limit`]), at least 32: a proxied
/// connection takes a second fd upstream, and the process has other listeners and files.
pub fn default_max_connections() -> usize {
    let limit = raised_fd_limit().unwrap_or(1024);
    usize::try_from(limit / 4).unwrap_or(usize::MAX).max(32)
}

/// Raises the soft limit on open files to the hard limit and returns it. Rust, unlike Go's runtime,
/// leaves it at what it inherited: often 1 024, which a thousand idle connections would exhaust.
pub fn raise_fd_limit() -> nix::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
        tracing::debug!(from = soft, to = hard, "raised the open files limit");
    }
    Ok(hard)
}

/// [`raise_fd_limit`], once per process.
fn raised_fd_limit() -> Option<u64> {
    static RAISED: OnceLock<Option<u64>> = OnceLock::new();
    *RAISED.get_or_init(|| {
        raise_fd_limit()
            .inspect_err(|e| tracing::warn!(error = %e, "could not read the open files limit"))
            .ok()
    })
}

/// How long to wait after the `errors`-th accept error in a row (1 for the first): `EMFILE` and
/// its kin leave the listener readable, so retrying at once spins a core while nothing is
/// accepted.
pub(crate) fn accept_backoff(errors: u32) -> Duration {
    let doublings = errors.saturating_sub(1).min(16);
    ACCEPT_BACKOFF_MIN.saturating_mul(1 << doublings).min(ACCEPT_BACKOFF_MAX)
}

/// Where connections come from: a TCP listener (or, in tests, one that fails).
pub(crate) trait Accept: Send + 'static {
    fn accept(&mut self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send;
}

impl Accept for TcpListener {
    fn accept(&mut self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }
}

/// TCP keepalive and no Nagle on a connection, accepted or opened: a peer gone without a FIN or
/// RST (a dead tunnel end, a vanished client) is noticed, and its resources let go.
pub fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// What a connection's first bytes say it speaks.
#[derive(Debug, PartialEq)]
enum Opening {
    Http1,
    H2,
    /// Closed before saying.
    Closed,
}

/// A connection's read side as the protocol detection sees it.
pub(crate) trait FirstBytes {
    /// Ready when a read may find bytes.
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
    /// Reads what is there into `buf`, without waiting (`WouldBlock` if nothing is).
    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize>;
}

impl FirstBytes for TcpStream {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        TcpStream::readable(self)
    }

    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        TcpStream::try_read_buf(self, buf)
    }
}

/// Reads a connection's first bytes into `buf` until they tell HTTP/1.1 from the HTTP/2 preface:
/// any byte that differs from the preface decides HTTP/1.1, which is the first byte for every
/// method but `P…`. Read, not peeked: a peek leaves the socket readable, so waiting for the rest
/// of a partial preface could only poll. The bytes read are the chosen protocol's first.
async fn opening(stream: &impl FirstBytes, buf: &mut BytesMut) -> io::Result<Opening> {
    buf.reserve(READ_MIN);
    loop {
        stream.readable().await?;
        match stream.try_read_buf(buf) {
            Ok(0) => return Ok(Opening::Closed),
            Ok(_) => {
                let n = buf.len().min(H2_PREFACE.len());
                if buf[..n] != H2_PREFACE[..n] {
                    return Ok(Opening::Http1);
                }
                if n == H2_PREFACE.len() {
                    return Ok(Opening::H2);
                }
            }
            // A readiness that found nothing is cleared: the next wait is for new bytes.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// A stream whose first bytes were already read: they are read again first.
struct Rewind {
    pre: Bytes,
    io: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pre.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.pre.len().min(buf.remaining());
        buf.put_slice(&self.pre[..n]);
        self.pre.advance(n);
        if self.pre.is_empty() {
            // Lets go of the first read's buffer, which would otherwise live with the connection.
            self.pre = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

pin_project! {
    /// An h2c connection told to go away (gracefully: requests in progress finish) when it starts
    /// no request for a while: hyper's server has no idle timeout of its own.
    struct H2Idle<C> {
        #[pin]
        conn: C,
        #[pin]
        timer: Sleep,
        // Requests started on the connection, counted by its service, and the count when the
        // timer was last set.
        started: Arc<AtomicU64>,
        seen: u64,
        going: bool,
        shut_down: fn(Pin<&mut C>),
    }
}

impl<C: Future> Future for H2Idle<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        while !*this.going && this.timer.as_mut().poll(cx).is_ready() {
            let started = this.started.load(Ordering::Relaxed);
            if started == *this.seen {
                *this.going = true;
                (this.shut_down)(this.conn.as_mut());
            } else {
                *this.seen = started;
                this.timer.as_mut().reset(Instant::now() + H2_IDLE_TIMEOUT);
            }
        }
        this.conn.poll(cx)
    }
}

/// Tells an h2c connection to finish its requests and close (the server is draining).
fn h2_shut_down<C>(conn: Pin<&mut H2Idle<C>>) {
    let this = conn.project();
    if !std::mem::replace(this.going, true) {
        (this.shut_down)(this.conn);
    }
}

/// hyper's service for one h2c connection from `peer`, counting the requests it starts. It
/// returns the handler's own future, mapped: an `async` block around it would also hold what it
/// moves in (the request, or the future itself), and the future lives as long as a request waits.
fn connection_service<H: Handler>(
    handler: Arc<H>,
    peer: Arc<Peer>,
    started: Arc<AtomicU64>,
) -> impl Service<Request<Incoming>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone {
    service_fn(move |req: Request<Incoming>| {
        started.fetch_add(1, Ordering::Relaxed);
        handler.clone().handle(req.map(RequestBody::from), peer.clone()).map(never_fails)
    })
}

/// Logs how a connection from `peer` ended, if not well.
fn connection_ended(peer: SocketAddr) -> impl FnOnce(Result<(), hyper::Error>) {
    move |result| {
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// A handler's response as hyper's service result (a named fn: the `Ok` constructor trips
/// higher-ranked inference over the body's `dyn Error + 'static`).
fn never_fails(response: Response<Body>) -> Result<Response<Body>, Infallible> {
    Ok(response)
}

/// Serves `handler` on `listener` until shut down: HTTP/1.1 with our own [`crate::h1`], h2c
/// with hyper's. `max_header_bytes` bounds the request head (larger heads get 431 from HTTP/1.1);
/// connections are capped at [`default_max_connections`].
pub fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    max_header_bytes: usize,
) -> io::Result<ServerHandle> {
    serve_with(listener, handler, ServerConfig::new(max_header_bytes))
}

/// [`serve`], as `config` says.
pub fn serve_with<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    config: ServerConfig,
) -> io::Result<ServerHandle> {
    let addr = listener.local_addr()?;
    Ok(serve_on(listener, addr, handler, config))
}

/// Serves connections from `listener`, which listens on `addr`.
pub(crate) fn serve_on<A: Accept, H: Handler>(
    mut listener: A,
    addr: SocketAddr,
    handler: Arc<H>,
    config: ServerConfig,
) -> ServerHandle {
    let (stop, mut stopped) = watch::channel(false);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .max_header_list_size(config.max_header_bytes.try_into().unwrap_or(u32::MAX));
    // Shared, not copied into every connection's task (which lives as long as the connection).
    let http2 = Arc::new(http2);
    let task = tokio::spawn(async move {
        let drain = Arc::new(Drain::default());
        let mut errors = 0;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stopped.changed() => break,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => {
                    errors = 0;
                    accepted
                }
                Err(e) => {
                    errors += 1;
                    let wait = accept_backoff(errors);
                    if errors == 1 {
                        tracing::warn!(%addr, error = %e, "accepting a connection failed; backing off");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(wait) => continue,
                        _ = stopped.changed() => break,
                    }
                }
            };
            // Counted from here, so that a shutdown also waits for this connection.
            let Some(registration) = drain.enter(config.max_connections) else {
                // One write without waiting (a client that sent its request already may see a
                // reset instead): an excess connection holds its fd no longer than this.
                let _ = stream.try_write(TOO_MANY);
                continue;
            };
            tune(&stream);
            let handler = handler.clone();
            let http2 = http2.clone();
            let mut stopped = stopped.clone();
            // Two tasks: this one waits for the first bytes; the connection then gets a task of
            // its own, sized for it alone (none of this one's state stays with a connection whose
            // request waits in the activator queue).
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                let opening = tokio::select! {
                    opening = timeout(FIRST_BYTES_TIMEOUT, opening(&stream, &mut buf)) => opening,
                    // Shutting down before the client said anything: nothing to finish.
                    _ = stopped.wait_for(|s| *s) => return,
                };
                let client = Arc::new(Peer::new(peer));
                match opening {
                    Ok(Ok(Opening::Http1)) => {
                        let closing = registration.closing();
                        let conn = serve_connection(
                            stream,
                            buf,
                            handler,
                            client,
                            config.max_header_bytes,
                            HEADER_READ_TIMEOUT,
                            closing,
                        );
                        // It looks at `closing` itself.
                        tokio::spawn(registration.watch(conn, |_| {}));
                    }
                    Ok(Ok(Opening::H2)) => {
                        let started = Arc::new(AtomicU64::new(0));
                        let service = connection_service(handler, client, started.clone());
                        let io = TokioIo::new(Rewind { pre: buf.freeze(), io: stream });
                        let conn = H2Idle {
                            conn: http2.serve_connection(io, service),
                            timer: tokio::time::sleep(H2_FIRST_REQUEST_TIMEOUT),
                            started,
                            seen: 0,
                            going: false,
                            shut_down: GracefulConnection::graceful_shutdown,
                        };
                        tokio::spawn(registration.watch(conn, h2_shut_down).map(connection_ended(peer)));
                    }
                    Ok(Ok(Opening::Closed) | Err(_)) | Err(_) => {}
                }
            });
        }
        drop(listener);
        drain.start();
        drain.ended().await;
    });
    ServerHandle { addr, stop, task }
}
