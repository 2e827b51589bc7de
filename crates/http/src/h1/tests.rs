//! Tests of the module above.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderValue, Response};
use http_body_util::{BodyExt, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::timeout;

use super::head::{Head, HeadScan, Refused, parse_head};
use super::*;
use crate::body::{boxed, full};
use crate::server::{ServerHandle, serve};
use crate::wire::{MAX_HEADERS, work};

fn parse(head: &str) -> Result<Option<Head>, Refused> {
    parse_head(&mut BytesMut::from(head), &mut HeadScan::default(), &mut Vec::new(), 8192)
}

fn refused(head: &str) -> (u16, String) {
    match parse(head) {
        Err(r) => (r.status.as_u16(), r.why),
        Ok(h) => panic!("{head:?} was accepted: {:?}", h.map(|h| h.framing)),
    }
}

#[test]
fn heads_frame_their_bodies_and_say_whether_the_connection_stays() {
    for (head, framing, keep_alive, expect) in [
        ("GET / HTTP/1.1\r\nhost: a\r\n\r\n", BodyFraming::Length(0), true, false),
        ("GET / HTTP/1.0\r\n\r\n", BodyFraming::Length(0), false, false),
        ("GET / HTTP/1.0\r\nconnection: Keep-Alive\r\n\r\n", BodyFraming::Length(0), true, false),
        ("GET / HTTP/1.1\r\nconnection: foo, close\r\n\r\n", BodyFraming::Length(0), false, false),
        // Once a `close` has been asked for, a later `keep-alive` does not undo it (I1).
        (
            "GET / HTTP/1.0\r\nconnection: close\r\nconnection: keep-alive\r\n\r\n",
            BodyFraming::Length(0),
            false,
            false,
        ),
        ("GET / HTTP/1.0\r\nconnection: close, keep-alive\r\n\r\n", BodyFraming::Length(0), false, false),
        // Empty lines before the request line are ignored (RFC 9112 §2.2).
        ("\r\n\r\nGET / HTTP/1.1\r\nhost: a\r\n\r\n", BodyFraming::Length(0), true, false),
        (
            "POST / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n",
            BodyFraming::Length(5),
            true,
            false,
        ),
        ("POST / HTTP/1.1\r\ntransfer-encoding: Chunked\r\n\r\n", BodyFraming::CHUNKED, true, false),
        (
            "PUT / HTTP/1.1\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n",
            BodyFraming::Length(3),
            true,
            true,
        ),
        // Nothing to wait for without a body.
        (
            "PUT / HTTP/1.1\r\ncontent-length: 0\r\nexpect: 100-continue\r\n\r\n",
            BodyFraming::Length(0),
            true,
            false,
        ),
    ] {
        let h = parse(head).unwrap().unwrap();
        assert_eq!((h.framing, h.keep_alive, h.expect_continue), (framing, keep_alive, expect), "{head:?}");
    }
    let h = parse("OPTIONS * HTTP/1.1\r\nX-A: 1\r\nx-a: 2\r\n\r\n").unwrap().unwrap();
    assert_eq!((h.parts.method, h.parts.uri.to_string()), (Method::OPTIONS, "*".to_owned()));
    assert_eq!(h.parts.headers.get_all("x-a").iter().count(), 2);
    assert!(parse("GET / HTTP/1.1\r\nhost: a\r\n").unwrap().is_none(), "incomplete");
}

#[test]
fn an_upgrade_is_asked_for_with_both_headers_in_http_1_1() {
    for (head, upgrade) in [
        ("GET / HTTP/1.1\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n", true),
        ("GET / HTTP/1.1\r\nupgrade: websocket\r\nconnection: keep-alive, upgrade\r\n\r\n", true),
        // `Upgrade` without `Connection` naming it (a proxy before us dropped it), and the reverse.
        ("GET / HTTP/1.1\r\nupgrade: websocket\r\n\r\n", false),
        ("GET / HTTP/1.1\r\nconnection: upgrade\r\n\r\n", false),
        // HTTP/1.0 has no upgrades (RFC 9110 §7.8).
        ("GET / HTTP/1.0\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n", false),
    ] {
        assert_eq!(parse(head).unwrap().unwrap().upgrade, upgrade, "{head:?}");
    }
}

/// Parses a head arriving in `pieces`, as the connection does (one buffer, one scan): whether
/// each piece completed it, and the head.
fn in_pieces<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> (Vec<bool>, Option<Head>) {
    let (mut buf, mut scan, mut spans) = (BytesMut::new(), HeadScan::default(), Vec::new());
    let (mut completed, mut head) = (Vec::new(), None);
    for piece in pieces {
        buf.extend_from_slice(piece);
        let parsed = parse_head(&mut buf, &mut scan, &mut spans, 65536).unwrap();
        completed.push(parsed.is_some());
        head = head.or(parsed);
    }
    (completed, head)
}

#[test]
fn a_head_is_parsed_once_its_empty_line_has_come_and_looked_at_once() {
    let head = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
    // Where each piece that arrives ends.
    for ends in [vec![head.len()], vec![10, head.len()], vec![24, 25, 26, 27], (1..=head.len()).collect()] {
        let starts = std::iter::once(0).chain(ends.iter().copied());
        work::take();
        let (completed, parsed) = in_pieces(starts.zip(&ends).map(|(from, &to)| &head[from..to]));
        // Only the last piece completes the head…
        assert_eq!(completed.iter().filter(|c| **c).count(), 1, "{completed:?}");
        assert!(*completed.last().unwrap() && parsed.is_some());
        // …which was scanned for its end once and parsed once.
        assert_eq!(work::take(), 2 * head.len(), "{ends:?}");
    }
}

/// F10 (a): empty lines before a request line, trickled in, used to be parsed again from the
/// start at every piece (quadratic: about 10^9 bytes looked at for these 64 KB).
#[test]
fn empty_lines_trickled_before_a_head_cost_work_linear_in_their_size() {
    let head = b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n";
    let pieces: Vec<&[u8]> = std::iter::repeat_n(&b"\r\n"[..], 32_000).chain(head.chunks(1)).collect();
    work::take();
    let (completed, parsed) = in_pieces(pieces);
    assert_eq!(parsed.unwrap().parts.uri, "/x");
    assert_eq!(completed.iter().filter(|c| **c).count(), 1);
    let work = work::take();
    assert!(work <= 2 * (64_000 + head.len()), "{work} bytes looked at");
}

#[test]
fn heads_that_could_smuggle_a_request_or_are_too_large_are_refused() {
    let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
    let long = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(9000));
    for (head, status, why) in [
        (
            "POST / HTTP/1.1\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
            400,
            "both Transfer-Encoding and Content-Length",
        ),
        (
            "POST / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            400,
            "Content-Length headers that disagree",
        ),
        ("POST / HTTP/1.1\r\ncontent-length: +5\r\n\r\n", 400, "invalid Content-Length"),
        ("POST / HTTP/1.1\r\ncontent-length: 5, 5\r\n\r\n", 400, "invalid Content-Length"),
        (
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            400,
            "Transfer-Encoding whose last coding is not chunked",
        ),
        (
            "POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            501,
            "only the chunked transfer coding is served",
        ),
        (
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
            400,
            "more than one Transfer-Encoding header",
        ),
        (
            "POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
            400,
            "Transfer-Encoding in an HTTP/1.0 request",
        ),
        ("GET / HTTP/2.0\r\n\r\n", 505, "only HTTP/1.0 and 1.1 are served"),
        ("GET / HTTP/1.1\r\nhost: a\r\nHost: b\r\n\r\n", 400, "more than one Host header"),
        ("GET / HTTP/1.1\r\nbad header\r\n\r\n", 400, "invalid request head: invalid header name"),
        // A bare LF ends a line for httparse and maybe not for a proxy in front (F6).
        (
            "GET / HTTP/1.1\r\nhost: a\r\nx: a\ntransfer-encoding: chunked\r\n\r\n",
            400,
            "invalid request head: a line ends with a bare LF",
        ),
        ("GET / HTTP/1.0\n\n", 400, "invalid request head: a line ends with a bare LF"),
        ("\nGET / HTTP/1.1\r\n\r\n", 400, "invalid request head: a line ends with a bare LF"),
        ("GET / HTTP/1.1\r\nx: a\rb\r\n\r\n", 400, "invalid request head: invalid header value"),
        (&long, 431, "request head larger than 8192 bytes"),
    ] {
        assert_eq!(refused(head), (status, why.to_owned()), "{head:?}");
    }
    let (status, _) = refused(&format!("GET / HTTP/1.1\r\n{many}\r\n"));
    assert_eq!(status, 431);
    // Too large is told before the head is complete.
    assert_eq!(refused(&long[..8300]).0, 431);
}

/// Answers with what it got: method, target, body (read to its end) and trailer names.
struct Echo;

impl Handler for Echo {
    async fn handle(self: Arc<Self>, req: Request<RequestBody>, _: Arc<Peer>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let text = match body.collect().await {
            Ok(c) => {
                let trailers: Vec<String> =
                    c.trailers().into_iter().flatten().map(|(n, v)| format!("{n}={v:?}")).collect();
                let body = String::from_utf8_lossy(&c.to_bytes()).into_owned();
                format!("{} {} body={body} trailers={}", parts.method, parts.uri, trailers.join(","))
            }
            Err(e) => format!("error {e}"),
        };
        Response::new(full(text))
    }
}

/// Answers at once without reading the body; streams its answer (no length known) for
/// `/stream`, and sets `dropped` when a request to `/hang` (which never ends) is dropped.
struct Quick {
    dropped: Arc<AtomicBool>,
}

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Handler for Quick {
    async fn handle(self: Arc<Self>, req: Request<RequestBody>, _: Arc<Peer>) -> Response<Body> {
        match req.uri().path() {
            "/hang" => {
                let _guard = SetOnDrop(self.dropped.clone());
                std::future::pending::<()>().await;
                unreachable!()
            }
            "/stream" => {
                let frames = ["ab", "cd"].map(|s| Ok::<_, BoxError>(Frame::data(Bytes::from(s))));
                Response::new(boxed(StreamBody::new(futures_util::stream::iter(frames))))
            }
            "/head" => {
                let mut r = Response::new(full("hello"));
                r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
                r
            }
            "/switch" => {
                let mut r = Response::new(full(""));
                *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                r
            }
            // What an upstream's 204 may come with.
            "/no-content" => {
                let mut r = Response::new(full(""));
                *r.status_mut() = StatusCode::NO_CONTENT;
                r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
                r.headers_mut().insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
                r
            }
            path => Response::new(full(format!("quick {path}"))),
        }
    }
}

async fn start<H: Handler>(handler: H) -> ServerHandle {
    serve(TcpListener::bind("127.0.0.1:0").await.unwrap(), Arc::new(handler), 8192).unwrap()
}

/// Sends `bytes` and returns everything the server sends until it closes (or, with
/// `until`, until that text has come).
async fn talk(addr: SocketAddr, bytes: &[u8], until: Option<&str>) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_from(&mut stream, until).await
}

async fn read_from(stream: &mut TcpStream, until: Option<&str>) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    timeout(Duration::from_secs(10), async {
        loop {
            if until.is_some_and(|u| String::from_utf8_lossy(&got).contains(u)) {
                break;
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server answered and closed in time");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_with_chunked_bodies_and_trailers() {
    let server = start(Echo).await;
    let requests = "GET /one HTTP/1.1\r\nhost: a\r\n\r\n\
                    POST /two HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n\
                    3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nx-sum: 5\r\nserver-timing: 5\r\n\r\n\
                    PUT /three HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\nconnection: close\r\n\r\nfg";
    let got = talk(server.addr(), requests.as_bytes(), None).await;
    let bodies: Vec<&str> =
        got.split("HTTP/1.1 200 OK\r\n").skip(1).map(|r| r.split("\r\n\r\n").nth(1).unwrap()).collect();
    assert_eq!(
        bodies,
        [
            "GET /one body= trailers=",
            "POST /two body=abcde trailers=server-timing=\"5\"",
            "PUT /three body=fg trailers="
        ],
        "{got}"
    );
    assert!(got.contains("date: "), "{got}");
    assert!(got.contains("connection: close\r\n"), "the last answer says the connection closes: {got}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_body_is_asked_for_with_100_continue_when_the_handler_reads_it() {
    let server = start(Echo).await;
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    stream
        .write_all(b"POST /up HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let interim = read_from(&mut stream, Some("\r\n\r\n")).await;
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").await.unwrap();
    let answer = read_from(&mut stream, Some("trailers=")).await;
    assert!(
        answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("POST /up body=hello trailers="),
        "{answer}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn an_unread_body_is_never_taken_for_the_next_request() {
    let server = start(Quick { dropped: Arc::default() }).await;
    // The body looks like a request; the handler answers without reading it.
    let smuggled = "GET /evil HTTP/1.1\r\nhost: a\r\n\r\n";
    let request =
        format!("POST /first HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\r\n{smuggled}", smuggled.len());
    let got = talk(server.addr(), request.as_bytes(), None).await;
    assert!(got.contains("quick /first"), "{got}");
    assert!(!got.contains("/evil"), "the body was served as a request: {got}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_request_that_could_be_smuggled_gets_400_and_the_connection_closes() {
    let server = start(Echo).await;
    let request = "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n\
                   0\r\n\r\nGET /evil HTTP/1.1\r\nhost: a\r\n\r\n";
    let got = talk(server.addr(), request.as_bytes(), None).await;
    assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
    assert!(
        got.ends_with("both Transfer-Encoding and Content-Length\n") && got.contains("connection: close"),
        "{got}"
    );
    assert_eq!(got.matches("HTTP/1.1").count(), 1, "{got}");
    server.shutdown().await;
}

#[tokio::test]
async fn responses_are_framed_for_the_request_and_the_client() {
    let server = start(Quick { dropped: Arc::default() }).await;
    let addr = server.addr();
    // Length unknown: chunked to HTTP/1.1, up to the close for HTTP/1.0.
    let got = talk(addr, b"GET /stream HTTP/1.1\r\nhost: a\r\n\r\n", Some("0\r\n\r\n")).await;
    assert!(
        got.contains("transfer-encoding: chunked\r\n")
            && got.ends_with("\r\n\r\n2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n"),
        "{got}"
    );
    let got = talk(addr, b"GET /stream HTTP/1.0\r\nconnection: keep-alive\r\n\r\n", None).await;
    assert!(got.contains("connection: close\r\n") && got.ends_with("\r\n\r\nabcd"), "{got}");
    assert!(!got.contains("transfer-encoding") && !got.contains("content-length"), "{got}");
    // HEAD: the length a GET would get, no body; then the connection serves on.
    let got = talk(
        addr,
        b"HEAD /head HTTP/1.1\r\nhost: a\r\n\r\nGET /next HTTP/1.1\r\nhost: a\r\n\r\n",
        Some("quick /next"),
    )
    .await;
    let (head, rest) = got.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("content-length: 5"), "{got}");
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "no body after the HEAD answer: {got}");
    // HTTP/1.0 with keep-alive is kept alive and told so.
    let got = talk(addr, b"GET /a HTTP/1.0\r\nconnection: keep-alive\r\n\r\n", Some("quick /a")).await;
    assert!(got.contains("connection: keep-alive\r\n") && got.contains("content-length: 8\r\n"), "{got}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_request() {
    let dropped = Arc::new(AtomicBool::new(false));
    let server = start(Quick { dropped: dropped.clone() }).await;
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    stream.write_all(b"GET /hang HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!dropped.load(Ordering::SeqCst));
    drop(stream);
    timeout(Duration::from_secs(10), async {
        while !dropped.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the handler's future was dropped");
    server.shutdown().await;
}

/// I4: a 204 says nothing of a length (RFC 9110 §8.6); a 304 or an answer to HEAD may.
#[tokio::test]
async fn a_204_goes_out_without_length_or_coding() {
    let server = start(Quick { dropped: Arc::default() }).await;
    let got = talk(
        server.addr(),
        b"GET /no-content HTTP/1.1\r\nhost: a\r\n\r\nGET /next HTTP/1.1\r\nhost: a\r\n\r\n",
        Some("quick /next"),
    )
    .await;
    let (head, rest) = got.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 204 No Content\r\n"), "{got}");
    assert!(!head.contains("content-length") && !head.contains("transfer-encoding"), "{got}");
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    server.shutdown().await;
}

/// I1: HTTP/1.0 `Connection: close` and then `Connection: keep-alive`: the close wins.
#[tokio::test]
async fn a_later_keep_alive_does_not_undo_a_close() {
    let server = start(Quick { dropped: Arc::default() }).await;
    let got =
        talk(server.addr(), b"GET /a HTTP/1.0\r\nconnection: close\r\nconnection: keep-alive\r\n\r\n", None)
            .await;
    assert!(got.contains("\r\nconnection: close\r\n") && got.ends_with("quick /a"), "{got}");
    server.shutdown().await;
}

/// F6: the review's EXT.TERM proof of concept. A front end that reads `;\n` as the start of an
/// extension forwards one request; we must not serve the one hidden in the chunk.
#[tokio::test]
async fn a_chunk_line_ended_by_a_bare_lf_fails_the_body_and_nothing_after_it_is_served() {
    let server = start(Echo).await;
    let smuggled = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a\r\ncontent-length: 7\r\n\r\n";
    let n = smuggled.len();
    let request = format!(
        "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n{n:x};\n{}\r\n{smuggled}\r\n0\r\n\r\n",
        "x".repeat(n)
    );
    let got = talk(server.addr(), request.as_bytes(), None).await;
    assert!(got.ends_with("error request body: invalid chunk size line"), "{got}");
    assert_eq!(got.matches("HTTP/1.1").count(), 1, "{got}");
    assert!(!got.contains("/smuggled"), "{got}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_101_to_a_request_that_did_not_ask_to_switch_is_not_passed_on() {
    let server = start(Quick { dropped: Arc::default() }).await;
    let got = talk(server.addr(), b"GET /switch HTTP/1.1\r\nhost: a\r\n\r\n", Some("before")).await;
    assert!(got.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{got}");
    assert!(got.contains("switched protocols, which the request did not ask for"), "{got}");
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_for_the_handler() {
    let server = start(Echo).await;
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    stream.write_all(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\nabc").await.unwrap();
    stream.shutdown().await.unwrap();
    let got = read_from(&mut stream, None).await;
    assert!(
        got.ends_with("error request body: the client closed the connection before the body's end"),
        "{got}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_connection_holds_its_handlers_future_and_little_else() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let handler = Arc::new(Echo);
    let peer = Arc::new(Peer::new(stream.local_addr().unwrap()));
    let handling = handler.clone().handle(Request::new(RequestBody::empty()), peer.clone());
    let handler_size = std::mem::size_of_val(&handling);
    let conn =
        serve_connection(stream, BytesMut::new(), handler, peer, 8192, Duration::from_secs(30), || false);
    let size = std::mem::size_of_val(&conn);
    // What a waiting request's connection holds besides its handler's future: the writer,
    // the timer, the head's scratch room. A moved-from request head kept in scope would add
    // hundreds of bytes to every connection.
    assert!(
        size <= handler_size + 512,
        "the connection's future is {size} bytes, its handler's {handler_size}"
    );
}

/// Lets go of its connection's read buffer, as a request that parks does, and answers with
/// the buffer's capacity before and after.
struct Parks;

impl Handler for Parks {
    async fn handle(self: Arc<Self>, req: Request<RequestBody>, _: Arc<Peer>) -> Response<Body> {
        let capacity = |req: &Request<RequestBody>| match &req.body().0 {
            Kind::H1 { side, .. } => side.lock().buf.capacity(),
            _ => usize::MAX,
        };
        let before = capacity(&req);
        req.body().release_read_buffer();
        Response::new(full(format!("{before}->{}", capacity(&req))))
    }
}

#[tokio::test]
async fn a_parked_request_lets_its_connection_give_up_the_read_buffer() {
    let server = start(Parks).await;
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    for _ in 0..2 {
        stream.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
        let got = read_from(&mut stream, Some("->0")).await;
        let before: usize =
            got.rsplit("\r\n\r\n").next().unwrap().split("->").next().unwrap().parse().unwrap();
        // The next request on the connection is read into a new buffer.
        assert!(before >= READ_MIN / 2, "{got}");
    }
    server.shutdown().await;
}
