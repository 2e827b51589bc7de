//! The server side of HTTP/1.1: one connection, its requests served one after another by a
//! [`Handler`] in the connection's own task.
//!
//! Our own, like the upstream client ([`crate::pool`]) and sharing its wire format
//! (`wire`): a request head is parsed with httparse straight from the connection's read
//! buffer (header values stay slices of it), the handler's future is polled here while the
//! connection is watched for the client going away, and the response head and body are written
//! by the same `Writer` that writes requests upstream. hyper's server, which this replaces for
//! HTTP/1.1, runs a protocol state machine and buffers of its own around every request; h2c
//! connections are still hyper's.
//!
//! The rules a proxy must keep to not be fooled about where one request ends (RFC 9112 §6):
//! a request with both `Transfer-Encoding` and `Content-Length`, with `Content-Length` values that
//! disagree or are not plain digits, with `Transfer-Encoding` in HTTP/1.0 or with `chunked` not
//! its last coding, is refused with 400 and the connection closed, as is one with two `Host`
//! headers; other transfer codings get 501.
//! A connection whose request body was not read to its end is closed after the response (the
//! bytes left cannot be told apart from a next request).
//!
//! A request with `Connection: upgrade` and `Upgrade` carries an [`OnUpgrade`] in its extensions;
//! when the handler answers `101`, the connection is handed over to it after the `101` head
//! ([`crate::upgrade`]).

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode, Version, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use parking_lot::Mutex;
use tokio::io::{AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;
use tokio::time::Instant;

pub(crate) mod head;

use self::head::{Head, HeadScan, Refused, parse_head};
use crate::body::{Body, BoxError, error_response};
use crate::peer::Peer;
use crate::upgrade::{OnUpgrade, Upgraded};
use crate::wire::{
    BodyFraming, Fill, READ_MAX, READ_MIN, ReadError, WriteFraming, Writer, content_length, decode,
    poll_write_all, write_content_length, write_field,
};

/// Handles one request; `peer` is the client end of its connection.
pub trait Handler: Send + Sync + 'static {
    /// Answers a request.
    fn handle(
        self: Arc<Self>,
        req: Request<RequestBody>,
        peer: Arc<Peer>,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// What a server answers to `Expect: 100-continue` once the handler reads the body.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// After a response, a connection whose client may still be sending (a request body nobody read)
/// reads and drops what comes for up to this long and this many bytes before it closes, so that
/// closing does not reset the connection under a response the client has not read yet.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 << 20;

/// A request's body: nothing, read from an HTTP/1.1 connection as the handler asks for it, or
/// hyper's (h2c).
pub struct RequestBody(Kind);

enum Kind {
    Empty,
    H1 {
        side: Arc<Mutex<ReadSide>>,
        /// The request it belongs to (a body kept past its request must not read the next one).
        request: u64,
        ended: bool,
    },
    H2(Incoming),
}

impl RequestBody {
    /// No body.
    pub fn empty() -> Self {
        Self(Kind::Empty)
    }

    /// For a request about to wait long (in the activator queue): lets its HTTP/1.1 connection
    /// give up its read buffer meanwhile, unless it holds bytes. A head parsed from the buffer
    /// keeps sharing it, so copy the head out too ([`crate::proxy::detach_head`]) for the memory
    /// to be freed. The connection allocates a new buffer for its next read.
    pub fn release_read_buffer(&self) {
        if let Kind::H1 { side, request, .. } = &self.0 {
            let mut side = side.lock();
            if side.request == *request && side.buf.is_empty() {
                side.buf = BytesMut::new();
            }
        }
    }
}

impl From<Incoming> for RequestBody {
    fn from(body: Incoming) -> Self {
        Self(Kind::H2(body))
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Kind::Empty => "RequestBody::Empty",
            Kind::H1 { .. } => "RequestBody::H1",
            Kind::H2(_) => "RequestBody::H2",
        })
    }
}

/// Reading a request body failed.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct RequestBodyError(BodyFault);

/// Why; a connection's failure stays its source rather than becoming text.
#[derive(Debug, thiserror::Error)]
enum BodyFault {
    #[error("request body: read after its request was answered")]
    AfterAnswer,
    #[error("request body: {0}")]
    Framing(&'static str),
    #[error("request body")]
    Io(#[source] std::io::Error),
}

impl From<ReadError> for RequestBodyError {
    fn from(e: ReadError) -> Self {
        Self(match e {
            ReadError::Io(e) => BodyFault::Io(e),
            ReadError::Framing(why) => BodyFault::Framing(why),
        })
    }
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let (side, request, ended) = match &mut self.get_mut().0 {
            Kind::Empty => return Poll::Ready(None),
            Kind::H2(body) => return Pin::new(body).poll_frame(cx).map_err(Into::into),
            Kind::H1 { side, request, ended } => (side, *request, ended),
        };
        if *ended {
            return Poll::Ready(None);
        }
        let mut side = side.lock();
        if side.request != request {
            *ended = true;
            let e = RequestBodyError(BodyFault::AfterAnswer);
            return Poll::Ready(Some(Err(e.into())));
        }
        if side.expect == Expect::Unasked {
            side.expect = Expect::Wanted;
            if let Some(waker) = side.conn.take() {
                waker.wake();
            }
        }
        let mut framing = side.framing;
        let decoded = decode(&mut *side, &mut framing, cx);
        side.framing = framing;
        match ready!(decoded) {
            Ok(Some(frame)) => Poll::Ready(Some(Ok(frame))),
            Ok(None) => {
                *ended = true;
                Poll::Ready(None)
            }
            Err(e) => {
                *ended = true;
                side.broken = true;
                Poll::Ready(Some(Err(RequestBodyError::from(e).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Empty => true,
            Kind::H2(body) => body.is_end_stream(),
            Kind::H1 { side, request, ended } => {
                *ended || {
                    let side = side.lock();
                    side.request != *request || side.framing.is_done()
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::H2(body) => body.size_hint(),
            Kind::H1 { side, ended, .. } => match side.lock().framing {
                _ if *ended => SizeHint::with_exact(0),
                BodyFraming::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            },
        }
    }
}

/// Where a request stands with `Expect: 100-continue`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Not asked for (or already answered).
    No,
    /// The client waits for it; the handler has not read the body yet.
    Unasked,
    /// The handler reads the body: the connection sends `100 Continue`.
    Wanted,
}

/// A connection's read side, shared by the connection and its current request's body.
struct ReadSide {
    io: OwnedReadHalf,
    buf: BytesMut,
    /// How the current request's body is framed, and how far it has been read.
    framing: BodyFraming,
    /// Counts the connection's requests.
    request: u64,
    expect: Expect,
    /// The connection's task while a `100 Continue` may be wanted (the body may be read in
    /// another task).
    conn: Option<Waker>,
    /// The body's framing broke: nothing after it can be trusted.
    broken: bool,
    /// The current request asked to switch protocols: where the connection goes if it does.
    /// (Here rather than in the connection's future, which every waiting request pays for.)
    upgrade: Option<oneshot::Sender<Upgraded>>,
}

impl Fill for ReadSide {
    const EARLY: &'static str = "the client closed the connection before the body's end";
    type Io = OwnedReadHalf;

    fn parts(&mut self) -> (&mut OwnedReadHalf, &mut BytesMut) {
        (&mut self.io, &mut self.buf)
    }
}

impl ReadSide {
    /// Whether the current request's body has been read to its end, so that what follows is the
    /// next request.
    fn body_over(&self) -> bool {
        self.framing.is_done() && !self.broken
    }
}

/// Appends the `Date` header for now (formatted once a second per thread).
fn write_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

/// Appends a response head: the status line, the response's headers (framing and connection
/// headers replaced by what `framing` and `connection` say, except in a response to HEAD or a
/// 304, whose `Content-Length` describes what a GET would have got), a `Date` unless it has one.
fn write_response_head(
    parts: &http::response::Parts,
    framing: WriteFraming,
    bodiless: bool,
    connection: Option<&str>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // Noted on the way rather than looked up: a lookup hashes the name.
    let mut dated = false;
    // A 1xx or 204 says nothing of a length either (RFC 9110 §8.6, RFC 9112 §6.1).
    let lengthless = parts.status.is_informational() || parts.status == StatusCode::NO_CONTENT;
    for (name, value) in &parts.headers {
        if name == header::CONNECTION
            || ((!bodiless || lengthless)
                && (name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING))
        {
            continue;
        }
        dated |= name == header::DATE;
        write_field(name, value, out);
    }
    if !dated {
        write_date(out);
    }
    match framing {
        _ if bodiless => {}
        WriteFraming::Empty => out.extend_from_slice(b"content-length: 0\r\n"),
        WriteFraming::Length(n) => write_content_length(n, out),
        WriteFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        WriteFraming::Close => {}
    }
    if let Some(connection) = connection {
        out.extend_from_slice(b"connection: ");
        out.extend_from_slice(connection.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How a response goes out: its body's framing, whether it has a body at all, and whether the
/// connection stays open after it.
fn response_framing(
    parts: &http::response::Parts,
    body: &Body,
    head_request: bool,
    version: Version,
    keep_alive: &mut bool,
) -> (WriteFraming, bool) {
    let status = parts.status;
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return (WriteFraming::Empty, true);
    }
    // A length the response declares is kept to (a body that disagrees fails and closes the
    // connection, as in hyper).
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| content_length(v.as_bytes()));
    let framing = match declared.map_or_else(|| WriteFraming::of(body), WriteFraming::Length) {
        WriteFraming::Chunked if version == Version::HTTP_10 => {
            *keep_alive = false;
            WriteFraming::Close
        }
        framing => framing,
    };
    (framing, false)
}

/// Puts `response` into `writer` (head serialized, body to stream), framed for the request
/// (`head_request`, `version`) and for whether the connection is to stay open (`keep_alive`).
/// Returns whether it stays open after this response.
fn start_response(
    writer: &mut Writer,
    response: http::Response<Body>,
    head_request: bool,
    version: Version,
    mut keep_alive: bool,
) -> bool {
    let (parts, body) = response.into_parts();
    let (framing, bodiless) = response_framing(&parts, &body, head_request, version, &mut keep_alive);
    let connection = match (keep_alive, version) {
        // What follows is the other protocol's.
        _ if parts.status == StatusCode::SWITCHING_PROTOCOLS => Some("upgrade"),
        (false, _) => Some("close"),
        (true, Version::HTTP_10) => Some("keep-alive"),
        (true, _) => None,
    };
    writer.start(framing, Some(body), |out| write_response_head(&parts, framing, bodiless, connection, out));
    keep_alive
}

/// Serves the HTTP/1.1 connection `stream` from `peer` with `handler` until it closes, `read`
/// holding what was already read from it. Heads larger than `max_head` bytes get 431; `closing`
/// says the server is draining (requests in progress are finished, then the connection closes).
/// The connection's task must be woken when `closing` turns true.
pub(crate) fn serve_connection<H: Handler>(
    stream: TcpStream,
    read: BytesMut,
    handler: Arc<H>,
    peer: Arc<Peer>,
    max_head: usize,
    header_read_timeout: Duration,
    closing: impl Fn() -> bool,
) -> impl Future<Output = ()> {
    // Split here, not in the future: its arguments take room in it for as long as it lives.
    let (read_half, write) = stream.into_split();
    let shared = Arc::new(Mutex::new(ReadSide {
        io: read_half,
        buf: read,
        framing: BodyFraming::Length(0),
        request: 0,
        expect: Expect::No,
        conn: None,
        broken: false,
        upgrade: None,
    }));
    serve_split(shared, write, handler, peer, max_head, header_read_timeout, closing)
}

/// [`serve_connection`], its read side shared with request bodies.
async fn serve_split<H: Handler>(
    shared: Arc<Mutex<ReadSide>>,
    mut write: OwnedWriteHalf,
    handler: Arc<H>,
    peer: Arc<Peer>,
    max_head: usize,
    header_read_timeout: Duration,
    closing: impl Fn() -> bool,
) {
    let mut writer = Writer::idle();
    let mut spans = Vec::new();
    // One timer for the connection, not one per request: when it fires before the current
    // head's deadline it is set to that deadline (a deadline is never later than the one it
    // replaces: each starts when its wait does, 30 s before it).
    let mut head_timer = pin!(tokio::time::sleep(header_read_timeout));
    loop {
        // In a block: what is gone once the request is built takes no room in the connection's
        // future while the handler runs (moved-from locals keep theirs until their scope ends).
        let Some((request, keep_alive, version, head_request)) = ('head: {
            let deadline = Instant::now() + header_read_timeout;
            let mut scan = HeadScan::default();
            let head = poll_fn(|cx| -> Poll<Result<Option<Head>, Refused>> {
                let mut side = shared.lock();
                loop {
                    if side.buf.is_empty() {
                        if closing() {
                            return Poll::Ready(Ok(None));
                        }
                    } else if let Some(head) = parse_head(&mut side.buf, &mut scan, &mut spans, max_head)? {
                        return Poll::Ready(Ok(Some(head)));
                    }
                    match side.poll_fill(cx, READ_MIN) {
                        // Closed between requests (or in the middle of a head: nothing to answer).
                        Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Ok(None)),
                        Poll::Ready(Ok(_)) => {}
                        Poll::Pending => break,
                    }
                }
                while head_timer.as_mut().poll(cx).is_ready() {
                    if head_timer.deadline() >= deadline {
                        return Poll::Ready(Ok(None));
                    }
                    head_timer.as_mut().reset(deadline);
                }
                Poll::Pending
            })
            .await;
            let head = match head {
                Ok(Some(head)) => head,
                Ok(None) => return,
                Err(refused) => {
                    let response = error_response(refused.status, refused.why);
                    start_response(&mut writer, response, false, Version::HTTP_11, false);
                    break 'head None;
                }
            };
            let Head { mut parts, framing, keep_alive, expect_continue, upgrade } = head;
            let (version, head_request) = (parts.version, parts.method == Method::HEAD);
            let upgrade = upgrade.then(|| {
                let (tx, on_upgrade) = OnUpgrade::new();
                parts.extensions.insert(on_upgrade);
                tx
            });
            let body = {
                let mut side = shared.lock();
                side.request += 1;
                side.framing = framing;
                side.expect = if expect_continue { Expect::Unasked } else { Expect::No };
                // Empty since the last answer, which dropped any the request before had.
                debug_assert!(side.upgrade.is_none());
                if upgrade.is_some() {
                    side.upgrade = upgrade;
                }
                let ended = framing.is_done();
                RequestBody(Kind::H1 { side: shared.clone(), request: side.request, ended })
            };
            Some((Request::from_parts(parts, body), keep_alive, version, head_request))
        }) else {
            // Refused: the answer is in the writer.
            if poll_fn(|cx| writer.poll_write(&mut write, cx)).await.is_ok() {
                linger(write, &shared).await;
            }
            return;
        };

        // The handler, with the connection watched meanwhile: a `100 Continue` sent when the body
        // is first read, and the client going away (once its request body is in) ends the
        // request, dropping the handler's future (which cancels what it waits for upstream).
        let (response, continue_written) = {
            let mut handling = pin!(handler.clone().handle(request, peer.clone()));
            let (mut continue_written, mut more_sent) = (0, false);
            let response = poll_fn(|cx| {
                if let Poll::Ready(response) = handling.as_mut().poll(cx) {
                    return Poll::Ready(Some(response));
                }
                let mut side = shared.lock();
                match side.expect {
                    Expect::No => {}
                    Expect::Unasked => side.conn = Some(cx.waker().clone()),
                    Expect::Wanted => match poll_write_all(&mut write, CONTINUE, &mut continue_written, cx) {
                        Poll::Ready(Ok(())) => side.expect = Expect::No,
                        Poll::Ready(Err(_)) => return Poll::Ready(None),
                        Poll::Pending => {}
                    },
                }
                // Once the body is in, a peek tells whether the client went away (a peek, not a
                // read: the read buffer stays untouched, so a parked request's connection can let
                // go of it). Bytes the client sends meanwhile are the next request's, read after
                // this one is answered.
                if side.body_over() && !more_sent {
                    let mut byte = [0u8; 1];
                    match side.io.poll_peek(cx, &mut ReadBuf::new(&mut byte)) {
                        Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                        Poll::Ready(Ok(_)) => more_sent = true,
                        Poll::Pending => {}
                    }
                }
                Poll::Pending
            });
            let Some(response) = response.await else {
                tracing::debug!(peer = %peer.addr(), "the client closed the connection before its answer");
                return;
            };
            (response, continue_written)
        };
        // A `100 Continue` cut short by the answer is finished before the answer's head.
        if continue_written > 0
            && continue_written < CONTINUE.len()
            && write.write_all(&CONTINUE[continue_written..]).await.is_err()
        {
            return;
        }
        // A `101` switches the connection only if it may ([`may_switch`]); one that may not
        // becomes a 502. Replaced in place: passing every response through a function by value
        // cost each a call and its moves (32 instructions, callgrind). In a block: a local still
        // takes room in the future across the awaits in its scope, moved from or not.
        let (keep_alive, switch) = {
            let mut response = response;
            let mut switch = false;
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                switch = may_switch(&shared);
                if !switch {
                    response = refused_switch();
                }
            }
            let keep_alive = keep_alive && !closing();
            (start_response(&mut writer, response, head_request, version, keep_alive), switch)
        };
        if let Err(e) = poll_fn(|cx| writer.poll_write(&mut write, cx)).await {
            tracing::debug!(peer = %peer.addr(), error = %e, "the response was cut short");
            return;
        }
        if switch {
            let mut side = shared.lock();
            if let Some(tx) = side.upgrade.take() {
                // Bytes the client sent behind its request go first.
                let pre = side.buf.split().freeze();
                drop(side);
                let _ = tx.send(Upgraded::client(pre, Box::new(ClientRead(shared)), write));
            }
            return;
        }
        let (body_over, unread) = {
            let mut side = shared.lock();
            // Not switching (any answer but a `101`): the request's `OnUpgrade` learns so. (Only
            // a request that asked has one to drop: the test spares the rest a call.)
            if side.upgrade.is_some() {
                side.upgrade = None;
            }
            (side.body_over(), !side.buf.is_empty())
        };
        if !body_over || (!keep_alive && unread) {
            linger(write, &shared).await;
            return;
        }
        if !keep_alive {
            return;
        }
    }
}

/// Whether a `101` answer may switch the connection's protocol: the request asked to switch, and
/// its body (if any) has been read, so that what follows is the new protocol's.
#[cold]
fn may_switch(shared: &Mutex<ReadSide>) -> bool {
    let side = shared.lock();
    side.upgrade.is_some() && side.body_over()
}

/// What a client gets instead of a `101` that may not switch its connection.
#[cold]
fn refused_switch() -> http::Response<Body> {
    let why =
        "the instance switched protocols, which the request did not ask for (or before reading its body)";
    error_response(StatusCode::BAD_GATEWAY, why)
}

/// The read side of a client's connection after it switched protocols.
pub(crate) struct ClientRead(Arc<Mutex<ReadSide>>);

impl tokio::io::AsyncRead for ClientRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0.lock().io).poll_read(cx, buf)
    }
}

/// Closes the write side and drops what the client still sends for a while, then returns (and the
/// connection closes).
async fn linger(mut write: OwnedWriteHalf, side: &Mutex<ReadSide>) {
    if write.shutdown().await.is_err() {
        return;
    }
    let mut dropped = 0;
    let drain = poll_fn(|cx| {
        let mut side = side.lock();
        loop {
            side.buf.clear();
            match ready!(side.poll_fill(cx, READ_MAX)) {
                Ok(0) | Err(_) => return Poll::Ready(()),
                Ok(n) if dropped + n > LINGER_BYTES => return Poll::Ready(()),
                Ok(n) => dropped += n,
            }
        }
    });
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

#[cfg(test)]
mod tests;
