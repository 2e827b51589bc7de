//! Serving HTTP/1.1 and h2c on a listener, with limits and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::FutureExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::{Service, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulConnection;
use pin_project_lite::pin_project;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::body::Body;
use crate::h1::{Handler, RequestBody, serve_connection};
use crate::peer::Peer;

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

/// What h2c "prior knowledge" clients send first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the client opens with the HTTP/2 preface. Peeks, so nothing is consumed: the
/// server's first read then gets the whole request head or preface. (hyper-util's
/// auto-detection reads the first bytes itself and hands them back, and that split first read
/// made hyper grow every HTTP/1.1 connection's read buffer from 8 to 16 KiB.) Any byte that
/// differs from the preface decides HTTP/1.1, which is the first byte for every method but `P…`.
async fn opens_with_h2_preface(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // Only part of the preface has arrived; peeking again at once would see the same bytes.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Graceful shutdown of a server's connections. hyper-util's `GracefulShutdown` polls a watch
/// channel, which takes its lock, on every poll of every connection. Here a connection registers
/// its task's waker once and then reads a flag (one atomic load per poll), and keeps only a slot
/// number: the registration costs a connection 16 bytes, which keeps its task in a smaller
/// allocation (this state lives as long as the connection, also while its request waits).
#[derive(Debug, Default)]
struct Drain {
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
    fn conns(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells every connection, present and future, to finish its requests and close.
    fn start(&self) {
        // The flag first: a connection registering after the wake-ups below still sees it.
        self.closing.store(true, Ordering::SeqCst);
        for waker in self.conns().wakers.iter().flatten() {
            waker.wake_by_ref();
        }
    }

    /// A new connection, counted from now (also while its protocol is not yet known) until its
    /// registration is dropped.
    fn enter(self: &Arc<Self>) -> Registration {
        self.conns().live += 1;
        Registration { drain: self.clone(), slot: NO_SLOT }
    }

    /// Returns once every watched connection has ended.
    async fn ended(&self) {
        loop {
            // Made before the check, so a notification in between is not lost.
            let notified = self.ended.notified();
            if self.conns().live == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A connection's place in its [`Drain`]; gives it up when dropped (after the connection, which
/// is declared before it).
#[derive(Debug)]
struct Registration {
    drain: Arc<Drain>,
    slot: usize,
}

impl Registration {
    /// `conn`, told to close gracefully by `shut_down` once [`Drain::start`] is called (at once
    /// if it already was).
    fn watch<C: Future>(self, conn: C, shut_down: fn(Pin<&mut C>)) -> Draining<C> {
        Draining { conn, registration: self, closing: false, shut_down }
    }

    /// Whether the server is draining (for connections that look for themselves).
    fn closing(&self) -> impl Fn() -> bool + Send + 'static {
        let drain = self.drain.clone();
        move || drain.closing.load(Ordering::SeqCst)
    }

    fn register(&mut self, waker: &Waker) {
        let mut conns = self.drain.conns();
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
            let mut conns = self.drain.conns();
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
    struct Draining<C> {
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

/// hyper's service for one h2c connection from `peer`. It returns the handler's own future,
/// mapped: an `async` block around it would also hold what it moves in (the request, or the
/// future itself), and the future lives as long as a request waits.
fn connection_service<H: Handler>(
    handler: Arc<H>,
    peer: Arc<Peer>,
) -> impl Service<Request<Incoming>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone {
    service_fn(move |req: Request<Incoming>| {
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
/// with hyper's. `max_header_bytes` bounds the request head (larger heads get 431 from HTTP/1.1).
pub fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    max_header_bytes: usize,
) -> std::io::Result<ServerHandle> {
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = watch::channel(false);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2.max_header_list_size(max_header_bytes.try_into().unwrap_or(u32::MAX));
    // Shared, not copied into every connection's task (which lives as long as the connection).
    let http2 = Arc::new(http2);
    let task = tokio::spawn(async move {
        let drain = Arc::new(Drain::default());
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, peer)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let handler = handler.clone();
                    let http2 = http2.clone();
                    // Counted from here, so that a shutdown also waits for this connection.
                    let registration = drain.enter();
                    let mut stopped = stopped.clone();
                    // Two tasks: this one waits for the first bytes; the connection then gets a
                    // task of its own, sized for it alone (none of this one's state stays with
                    // a connection whose request waits in the activator queue).
                    tokio::spawn(async move {
                        let h2 = tokio::select! {
                            h2 = timeout(FIRST_BYTES_TIMEOUT, opens_with_h2_preface(&stream)) => h2,
                            // Shutting down before the client said anything: nothing to finish.
                            _ = stopped.wait_for(|s| *s) => return,
                        };
                        let client = Arc::new(Peer::new(peer));
                        match h2 {
                            Ok(Ok(false)) => {
                                let closing = registration.closing();
                                let conn = serve_connection(
                                    stream,
                                    handler,
                                    client,
                                    max_header_bytes,
                                    HEADER_READ_TIMEOUT,
                                    closing,
                                );
                                // It looks at `closing` itself.
                                tokio::spawn(registration.watch(conn, |_| {}));
                            }
                            Ok(Ok(true)) => {
                                let service = connection_service(handler, client);
                                let conn = http2.serve_connection(TokioIo::new(stream), service);
                                tokio::spawn(
                                    registration
                                        .watch(conn, GracefulConnection::graceful_shutdown)
                                        .map(connection_ended(peer)),
                                );
                            }
                            Ok(Err(_)) | Err(_) => {}
                        }
                    });
                }
                _ = stopped.changed() => break,
            }
        }
        drop(listener);
        drain.start();
        drain.ended().await;
    });
    Ok(ServerHandle { addr, stop, task })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::body::full;

    struct Ok200;

    impl Handler for Ok200 {
        async fn handle(self: Arc<Self>, req: Request<RequestBody>, _: Arc<Peer>) -> Response<Body> {
            Response::new(full(format!("{} {:?}", req.method(), req.version())))
        }
    }

    async fn server() -> ServerHandle {
        serve(TcpListener::bind("127.0.0.1:0").await.unwrap(), Arc::new(Ok200), 8192).unwrap()
    }

    fn handler_future_size<H, F, Fut>(_: F) -> usize
    where
        F: Fn(Arc<H>, Request<RequestBody>, Arc<Peer>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    fn service_future_size<S: Service<Request<Incoming>>>(_: &S) -> usize {
        std::mem::size_of::<S::Future>()
    }

    #[test]
    fn a_peer_carries_its_ip_as_the_header_value_display_gives() {
        for addr in ["127.0.0.1:80", "10.20.30.40:1", "255.255.255.255:65535", "[2001:db8::1]:8080"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let peer = Peer::new(addr);
            assert_eq!(peer.ip_header().to_str().unwrap(), addr.ip().to_string());
            assert_eq!(peer.addr(), addr);
            assert_eq!(peer.addr_text(), addr.to_string());
        }
    }

    #[test]
    fn the_service_future_is_the_handlers_without_copies() {
        let handler = handler_future_size(<Ok200 as Handler>::handle);
        let service = service_future_size(&connection_service(
            Arc::new(Ok200),
            Arc::new(Peer::new(([127, 0, 0, 1], 1).into())),
        ));
        // The mapping adds its state, not a second copy of the request or of the future.
        assert!(service <= handler + 16, "the service's future is {service} bytes, the handler's {handler}");
    }

    /// Writes `pieces` with pauses between them, so that each arrives on its own, then reads
    /// until the server has sent at least `at_least` bytes.
    async fn exchange(addr: SocketAddr, pieces: &[&[u8]], at_least: usize) -> Vec<u8> {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        for piece in pieces {
            stream.write_all(piece).await.unwrap();
            stream.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while got.len() < at_least {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the server closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[tokio::test]
    async fn methods_starting_like_the_h2_preface_are_http1() {
        let server = server().await;
        for pieces in [
            &[b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n".as_slice()][..],
            &[b"P", b"UT / HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n"],
            &[b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"],
        ] {
            let got = exchange(server.addr(), pieces, 12).await;
            assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
        }
        server.shutdown().await;
    }

    #[tokio::test]
    async fn an_h2_preface_in_pieces_is_http2() {
        let server = server().await;
        let (head, tail) = H2_PREFACE.split_at(7);
        // The server's first frame answers the preface: SETTINGS (type 4) on stream 0.
        let got = exchange(server.addr(), &[head, tail], 9).await;
        assert_eq!(got[3], 4, "expected a SETTINGS frame, got {:?}", String::from_utf8_lossy(&got));
        server.shutdown().await;
    }

    /// Answers after 100 ms; tells `entered` when a request reaches it.
    struct Slow {
        entered: Arc<Notify>,
    }

    impl Handler for Slow {
        async fn handle(self: Arc<Self>, _: Request<RequestBody>, _: Arc<Peer>) -> Response<Body> {
            self.entered.notify_one();
            tokio::time::sleep(Duration::from_millis(100)).await;
            Response::new(full("done"))
        }
    }

    /// What the server sends until it closes (a failure, not a hang, if it never does).
    async fn read_to_end(stream: &mut TcpStream) -> String {
        let mut got = Vec::new();
        timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await.expect("closed").unwrap();
        String::from_utf8_lossy(&got).into_owned()
    }

    #[tokio::test]
    async fn shutdown_finishes_requests_in_flight_and_closes_idle_connections() {
        let entered = Arc::new(Notify::new());
        let slow = Arc::new(Slow { entered: entered.clone() });
        let server = serve(TcpListener::bind("127.0.0.1:0").await.unwrap(), slow, 8192).unwrap();
        let request = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        // Kept alive after one answer, then silent.
        let mut idle = TcpStream::connect(server.addr()).await.unwrap();
        idle.write_all(request).await.unwrap();
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        while !got.ends_with(b"done") {
            let n = idle.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
        }
        entered.notified().await; // the idle connection's request
        // In the handler when the shutdown starts.
        let mut busy = TcpStream::connect(server.addr()).await.unwrap();
        busy.write_all(request).await.unwrap();
        entered.notified().await;
        let shutdown = tokio::spawn(server.shutdown());
        let answer = read_to_end(&mut busy).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"), "{answer}");
        assert_eq!(read_to_end(&mut idle).await, "", "the idle connection is closed");
        tokio::time::timeout(Duration::from_secs(10), shutdown).await.expect("shutdown returns").unwrap();
    }

    /// Reads one `Ok200` answer (`GET HTTP/1.1`, 16 bytes of body).
    async fn read_answer(stream: &mut TcpStream) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"GET HTTP/1.1") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    /// Waits until the server closes `stream` (an answer before that, such as a 408, is fine).
    async fn closed(stream: &mut (impl tokio::io::AsyncRead + Unpin)) {
        let mut buf = [0u8; 1024];
        while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    }

    /// A connection closed `after` waiting for a head: no sooner than the timeout, and within
    /// `slack` of it.
    fn closed_at_header_timeout(after: Duration, slack: Duration) {
        assert!(
            after >= HEADER_READ_TIMEOUT && after < HEADER_READ_TIMEOUT + slack,
            "closed after {after:?}, the header-read timeout is {HEADER_READ_TIMEOUT:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_trickles_in_is_cut_off_at_the_header_read_timeout() {
        let server = server().await;
        let (mut reader, mut writer) = TcpStream::connect(server.addr()).await.unwrap().into_split();
        let start = tokio::time::Instant::now();
        writer.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n").await.unwrap();
        let trickle = async {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if writer.write_all(b"x-slow: 1\r\n").await.is_err() {
                    return;
                }
            }
        };
        let cut_off = async {
            tokio::select! {
                () = closed(&mut reader) => {}
                () = trickle => {}
            }
        };
        timeout(HEADER_READ_TIMEOUT * 3, cut_off).await.expect("the connection is closed");
        // The head's last piece may have come up to 5 s before the timeout ended.
        closed_at_header_timeout(start.elapsed(), Duration::from_secs(6));
        server.shutdown().await;
    }

    /// Each head gets the whole timeout from when the server starts to wait for it, also when the
    /// timer's sleeps are reused: a request sent after an earlier head's deadline is served.
    #[tokio::test(start_paused = true)]
    async fn every_head_gets_its_own_header_read_timeout_and_idle_connections_close() {
        let server = server().await;
        let mut stream = TcpStream::connect(server.addr()).await.unwrap();
        let request = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        let start = tokio::time::Instant::now();
        for _ in 0..4 {
            stream.write_all(request).await.unwrap();
            let answer = read_answer(&mut stream).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            tokio::time::sleep(HEADER_READ_TIMEOUT - Duration::from_secs(5)).await;
        }
        assert!(start.elapsed() > HEADER_READ_TIMEOUT * 3, "the requests spanned several deadlines");
        let idle_since = tokio::time::Instant::now() - (HEADER_READ_TIMEOUT - Duration::from_secs(5));
        timeout(HEADER_READ_TIMEOUT * 3, closed(&mut stream)).await.expect("the idle connection is closed");
        closed_at_header_timeout(idle_since.elapsed(), Duration::from_secs(1));
        server.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_does_not_hold_up_shutdown() {
        let server = server().await;
        let _silent = TcpStream::connect(server.addr()).await.unwrap();
        // Let the server accept it without letting paused time jump (which it does whenever
        // every task waits), so that its first-bytes timer is still running at shutdown.
        for _ in 0..1000 {
            tokio::task::yield_now().await;
        }
        let start = tokio::time::Instant::now();
        server.shutdown().await;
        // With time paused, waiting for the first-bytes timeout would show as that much time.
        assert!(start.elapsed() < FIRST_BYTES_TIMEOUT, "shutdown waited {:?}", start.elapsed());
    }
}
