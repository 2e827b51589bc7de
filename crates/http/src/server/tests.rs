//! Tests of the module above.

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

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
        Arc::default(),
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

/// F2: accept errors are waited out, longer each time, never retried at once.
#[test]
fn the_accept_backoff_doubles_from_10_ms_to_1_s() {
    let waits: Vec<u64> = (1..=10).map(|n| accept_backoff(n).as_millis() as u64).collect();
    assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
    assert_eq!(accept_backoff(u32::MAX), ACCEPT_BACKOFF_MAX);
}

/// A listener whose every accept fails as a full fd table makes it fail (`EMFILE`); it stops
/// answering after 100 calls, so that a loop that retries at once shows as a count, not a hang.
struct Failing(Arc<AtomicUsize>);

impl Accept for Failing {
    fn accept(&mut self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        let calls = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if calls > 100 {
                std::future::pending::<()>().await;
            }
            Err(io::Error::from_raw_os_error(24))
        }
    }
}

/// F2: with `accept` failing at once, the loop used to spin a core.
#[tokio::test(start_paused = true)]
async fn accept_errors_are_backed_off() {
    let calls = Arc::new(AtomicUsize::new(0));
    let addr = "127.0.0.1:1".parse().unwrap();
    let server = serve_on(Failing(calls.clone()), addr, Arc::new(Ok200), ServerConfig::new(8192));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // At 0, 10, 30, 70, 150, 310, 630 and 1270 ms.
    assert_eq!(calls.load(Ordering::SeqCst), 8);
    server.shutdown().await;
}

/// F1: past the cap, a connection is told so and closed; once one closes, there is room again.
#[tokio::test]
async fn connections_past_the_cap_get_503_and_are_closed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = ServerConfig { max_header_bytes: 8192, max_connections: 2 };
    let server = serve_with(listener, Arc::new(Ok200), config).unwrap();
    let first = TcpStream::connect(server.addr()).await.unwrap();
    let _second = TcpStream::connect(server.addr()).await.unwrap();
    let mut third = TcpStream::connect(server.addr()).await.unwrap();
    let refused = read_to_end(&mut third).await;
    assert_eq!(refused.as_bytes(), TOO_MANY);
    assert!(refused.ends_with("\r\n\r\nthe server has too many clients\n"), "{refused}");
    drop(first);
    // The server notices the close in its own time: try until it has.
    for _ in 0..200 {
        let mut next = TcpStream::connect(server.addr()).await.unwrap();
        next.write_all(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").await.unwrap();
        let answer = read_to_end(&mut next).await;
        if answer.starts_with("HTTP/1.1 200") {
            server.shutdown().await;
            return;
        }
        assert_eq!(answer.as_bytes(), TOO_MANY);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no room after a connection closed");
}

/// Bytes that come in the pieces given, counting the reads tried; nothing more after them (but
/// no end either, unless `end`).
struct Trickle {
    pieces: Mutex<VecDeque<&'static [u8]>>,
    reads: AtomicUsize,
    end: bool,
}

impl Trickle {
    fn new(pieces: &[&'static [u8]], end: bool) -> Self {
        Self { pieces: Mutex::new(pieces.iter().copied().collect()), reads: AtomicUsize::new(0), end }
    }
}

impl FirstBytes for Trickle {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        let ready = self.end || !self.pieces.lock().is_empty();
        async move {
            if !ready {
                std::future::pending::<()>().await;
            }
            Ok(())
        }
    }

    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        match self.pieces.lock().pop_front() {
            Some(piece) => {
                buf.extend_from_slice(piece);
                Ok(piece.len())
            }
            None if self.end => Ok(0),
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

#[tokio::test]
async fn the_first_bytes_tell_the_protocol_and_are_kept() {
    let (head, tail) = H2_PREFACE.split_at(7);
    for (pieces, end, expected, kept) in [
        (&[&b"GET / HTTP/1.1\r\n"[..]][..], false, Opening::Http1, &b"GET / HTTP/1.1\r\n"[..]),
        (&[b"P", b"UT /"], false, Opening::Http1, b"PUT /"),
        (&[b"PRI * HTTP/1.1"], false, Opening::Http1, b"PRI * HTTP/1.1"),
        (&[head, tail], false, Opening::H2, H2_PREFACE),
        (&[b"PRI"], true, Opening::Closed, b"PRI"),
        (&[], true, Opening::Closed, b""),
    ] {
        let stream = Trickle::new(pieces, end);
        let mut buf = BytesMut::new();
        assert_eq!(opening(&stream, &mut buf).await.unwrap(), expected, "{pieces:?}");
        assert_eq!(&buf[..], kept);
    }
}

/// F3: a partial preface used to be peeked at every millisecond (the peeked bytes kept the socket
/// readable) for up to 30 s.
#[tokio::test(start_paused = true)]
async fn a_partial_h2_preface_is_waited_for_without_polling() {
    let stream = Trickle::new(&[b"P"], false);
    let mut buf = BytesMut::new();
    let waited = timeout(Duration::from_secs(10), opening(&stream, &mut buf)).await;
    assert!(waited.is_err(), "still undecided");
    assert_eq!(stream.reads.load(Ordering::SeqCst), 1, "one read, then a wait for more bytes");
}

/// F1: a client that sends the preface and nothing else used to hold its connection forever.
#[tokio::test(start_paused = true)]
async fn an_h2c_connection_without_a_request_is_closed() {
    let server = server().await;
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    stream.write_all(H2_PREFACE).await.unwrap();
    let start = tokio::time::Instant::now();
    let mut got = Vec::new();
    timeout(Duration::from_secs(300), stream.read_to_end(&mut got)).await.expect("closed").unwrap();
    let after = start.elapsed();
    assert!(
        after >= H2_FIRST_REQUEST_TIMEOUT && after < H2_FIRST_REQUEST_TIMEOUT * 6,
        "closed after {after:?}"
    );
    server.shutdown().await;
}

/// F1: one that stops sending requests is told to go away once idle.
#[tokio::test(start_paused = true)]
async fn an_idle_h2c_connection_is_told_to_go_away() {
    let server = server().await;
    let stream = TcpStream::connect(server.addr()).await.unwrap();
    let (mut client, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("http://a/").body(http_body_util::Empty::<Bytes>::new()).unwrap();
    let resp = client.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let last = tokio::time::Instant::now();
    timeout(Duration::from_secs(300), conn).await.expect("the connection ended").unwrap().unwrap();
    let idle = last.elapsed();
    assert!(idle >= H2_IDLE_TIMEOUT && idle <= 2 * H2_IDLE_TIMEOUT, "closed after {idle:?} idle");
    server.shutdown().await;
}

#[tokio::test]
async fn accepted_connections_have_tcp_keepalive() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    tune(&accepted);
    let socket = socket2::SockRef::from(&accepted);
    assert!(socket.keepalive().unwrap() && socket.tcp_nodelay().unwrap());
    assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_TIME);
    assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
    assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
}

#[test]
fn the_open_files_limit_is_raised_to_the_hard_limit() {
    use nix::sys::resource::{Resource, getrlimit};
    let hard = raise_fd_limit().unwrap();
    assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
    assert!(default_max_connections() >= 32);
}
