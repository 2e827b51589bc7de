//! Reused HTTP/1.1 connections to one upstream: an instance (from a gateway) or the process behind
//! a queue proxy, and the HTTP/1.1 client that talks over them.
//!
//! The client is our own, driven inside the task of the request it carries: it writes the
//! request, reads the response head with httparse and hands back a body that decodes the rest
//! (fixed length, chunked with trailers, or up to the close) straight from the connection's read
//! buffer. hyper's client, which this replaces, runs every connection as a task of its own and
//! passes each request and response through channels to it; for an upstream that is a single
//! address that was a task switch, two channels and hyper's protocol state machine per request
//! (`docs/benchmarks.md` has the instruction counts). The server side is ours too ([`crate::h1`]);
//! both share the wire format in `wire`.
//!
//! A connection goes back to the pool when its response body has been read to the end (and its
//! request body written to the end), and is closed when the body is abandoned half-way, the
//! upstream said `Connection: close`, or the response ran to the close. The most recently used
//! idle connection is taken first, so under light load few stay warm; those idle for longer than
//! [`IDLE_TIMEOUT`] are closed as others come back. Taking an idle connection first checks,
//! without blocking, that the upstream has not closed it meanwhile (a read that would block; the
//! readiness it clears is the one the response read needs cleared anyway). Should the upstream close it between that
//! check and the request, an idempotent request without a body is sent once more on a new
//! connection, as Go's `net/http` does; nothing else is retried once it may have reached the
//! upstream. A request that failed before any of its body was lost can be handed back to its
//! caller (`Upstream::forward_again`: the queue proxy's, to wait out a restart of its process).

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use parking_lot::Mutex;
use tokio::time::Instant;

use self::head::{Head, parse_head};
use crate::body::{Body, BoxError};
use crate::connect::{Connect, Direct, Stream};
use crate::proxy::origin_form;
use crate::upgrade::{OnUpgrade, Upgraded};
use crate::wire::{
    BodyFraming, FieldSpan, Fill, READ_MIN, ReadError, WriteError, WriteFraming, Writer, decode,
    write_content_length, write_field,
};

/// Idle connections older than this are closed instead of reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// At most this many idle connections are kept per upstream.
pub const MAX_IDLE: usize = 1024;
/// Largest response head (and chunked-body trailer section) accepted from an upstream.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be opened.
    #[error("connecting to {addr}")]
    Connect {
        /// The upstream.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// Sending the request or reading the response head failed.
    #[error(transparent)]
    Exchange {
        /// The error.
        source: ExchangeError,
    },
    /// The request body the caller gave failed (its client's framing broke or it went away, or a
    /// limit such as [`crate::body::Limited`]'s was passed): the caller's side failed, not the
    /// upstream. The request may have been partly sent.
    #[error("request body")]
    RequestBody {
        /// Why (its source chain says more, e.g. [`crate::body::TooLarge`]).
        source: BoxError,
    },
}

impl From<ExchangeError> for UpstreamError {
    fn from(e: ExchangeError) -> Self {
        match e {
            ExchangeError::RequestBody(source) => Self::RequestBody { source },
            ExchangeError::RequestLength(why) => Self::RequestBody { source: why.into() },
            source => Self::Exchange { source },
        }
    }
}

/// A request its upstream did not answer ([`Upstream::forward_again`]).
#[derive(Debug)]
pub struct Unanswered {
    /// Why.
    pub error: UpstreamError,
    /// The request back, whole, when sending it again repeats none of its body: on
    /// [`UpstreamError::Connect`] it never left (or, after a reused connection the upstream had
    /// closed, it was a bodiless `replayable` one); on [`UpstreamError::Exchange`] it had no body
    /// and its connection closed before any byte of an answer, so it may have reached the upstream.
    pub request: Option<Request<Body>>,
}

/// What went wrong in one request/response exchange on a connection.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Writing to the connection failed.
    #[error("writing the request: {0}")]
    Write(io::Error),
    /// Reading from the connection failed.
    #[error("reading the response: {0}")]
    Read(io::Error),
    /// The upstream closed the connection before the whole response head.
    #[error("the upstream closed the connection before a complete response head")]
    ClosedBeforeHead,
    /// The response head broke HTTP/1.1's rules.
    #[error("invalid response head: {0}")]
    Head(String),
    /// The response body's framing broke HTTP/1.1's rules, or the body ended early.
    #[error("response body: {0}")]
    Body(&'static str),
    /// The request body failed (its source says why, e.g. over the size limit).
    #[error("request body")]
    RequestBody(#[source] BoxError),
    /// The request body did not match the length it declared.
    #[error("request body: {0}")]
    RequestLength(&'static str),
}

impl From<WriteError> for ExchangeError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Io(e) => Self::Write(e),
            WriteError::Body(e) => Self::RequestBody(e),
            WriteError::Length(why) => Self::RequestLength(why),
        }
    }
}

impl From<ReadError> for ExchangeError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(e) => Self::Read(e),
            ReadError::Framing(why) => Self::Body(why),
        }
    }
}

/// Starts an exchange on `writer`: the head of `parts` (framed for `body`, or for no body), and
/// the body as it streams.
fn begin(writer: &mut Writer, parts: &http::request::Parts, forwarding: Forwarding<'_>, body: Option<Body>) {
    let framing = body.as_ref().map_or(WriteFraming::Empty, WriteFraming::of);
    writer.start(framing, body, |out| write_head(parts, forwarding, framing, out));
}

impl ExchangeError {
    /// Errors after which the request may not have reached the upstream at all.
    fn is_connection_lost(&self) -> bool {
        matches!(self, Self::Write(_) | Self::Read(_) | Self::ClosedBeforeHead)
    }
}

/// One connection, with its buffers (kept across requests: no allocation per request).
struct Conn {
    io: Stream,
    /// Bytes read and not yet consumed.
    read: BytesMut,
    /// Where each header of the response head being parsed lies in it.
    spans: Vec<FieldSpan>,
    /// The request being written (here rather than in the response body, which then stays small
    /// enough to move cheaply).
    writer: Writer,
}

impl Fill for Conn {
    const EARLY: &'static str = "the upstream closed the connection before the body's end";
    type Io = Stream;

    fn parts(&mut self) -> (&mut Stream, &mut BytesMut) {
        (&mut self.io, &mut self.read)
    }
}

impl Conn {
    /// Boxed: a connection moves between the pool, the request and its response body, and a
    /// pointer moves cheaper than the connection with its buffers.
    fn new(io: Stream) -> Box<Self> {
        Box::new(Self { io, read: BytesMut::new(), spans: Vec::new(), writer: Writer::idle() })
    }

    /// Writes on what is left of the request, if anything, while the response is read. When
    /// writing fails the rest is given up and the error returned in `Ok`: the upstream may have
    /// answered early and stopped reading, so its response is still worth reading (but the
    /// connection cannot carry another exchange). A failing request body is an `Err`.
    fn keep_writing(&mut self, cx: &mut Context<'_>) -> Result<Option<io::Error>, ExchangeError> {
        if self.writer.complete {
            return Ok(None);
        }
        match self.writer.poll_write(&mut self.io, cx) {
            Poll::Ready(Err(WriteError::Io(e))) => {
                self.writer.abandon();
                Ok(Some(e))
            }
            Poll::Ready(Err(e)) => Err(e.into()),
            Poll::Ready(Ok(())) | Poll::Pending => Ok(None),
        }
    }

    /// True unless the upstream closed the connection (or sent bytes nobody asked for) while it
    /// was idle. Never waits.
    fn still_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        matches!(self.poll_fill(&mut cx, READ_MIN), Poll::Pending) && self.read.is_empty()
    }
}

/// Methods whose requests, without a body, may be sent again on a new connection when a reused
/// one turns out to have been closed (the set Go's `net/http` retries).
fn replayable(method: &Method, headers: &HeaderMap) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE)
        || headers.contains_key("idempotency-key")
        || headers.contains_key("x-idempotency-key")
}

/// Requests that may go once more, without a body, when the process behind a queue proxy died
/// before answering them: `replayable` and RFC 9110's other idempotent methods (§9.2.2), PUT and
/// DELETE. (The resend on a stale keep-alive connection keeps Go's narrower set.)
pub fn idempotent(method: &Method, headers: &HeaderMap) -> bool {
    replayable(method, headers) || matches!(*method, Method::PUT | Method::DELETE)
}

/// Headers a proxy changes as it forwards a request, written straight into the request head
/// rather than into the request's header map (sized to what the server parsed, so one more
/// header reallocates and rehashes it).
#[derive(Debug, Default, Clone, Copy)]
pub struct Forwarding<'a> {
    /// The request's own headers with these names are not sent.
    pub remove: &'a [&'a HeaderName],
    /// Sent after the request's own headers (a name the request has too then appears twice,
    /// which for a list-valued header such as `X-Forwarded-For` means appended).
    pub add: &'a [(&'a HeaderName, &'a HeaderValue)],
    /// The request asks to switch protocols: it goes with `Connection: upgrade` (beside its
    /// `Upgrade` header), and a `101` answer hands the connection over
    /// ([`Upstream::forward`]).
    pub upgrade: bool,
}

/// Appends the request line and headers to `out`, with the framing header for `framing`.
/// Whatever framing headers the request carried are replaced: the body decides.
fn write_head(
    parts: &http::request::Parts,
    forwarding: Forwarding<'_>,
    framing: WriteFraming,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || forwarding.remove.contains(&name)
        {
            continue;
        }
        write_field(name, value, out);
    }
    for (name, value) in forwarding.add {
        write_field(name, value, out);
    }
    // A request that asks to switch protocols says so in `Connection` too (RFC 9110 §7.8).
    if forwarding.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    match framing {
        WriteFraming::Empty | WriteFraming::Close => {
            // Methods that define a body say its length even when it is empty (RFC 9110 §8.6).
            if !matches!(
                parts.method,
                Method::GET
                    | Method::HEAD
                    | Method::DELETE
                    | Method::OPTIONS
                    | Method::TRACE
                    | Method::CONNECT
            ) {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
        }
        WriteFraming::Length(n) => write_content_length(n, out),
        WriteFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// A request on its way: the connection (with what is left of the request to write).
struct Exchange {
    conn: Box<Conn>,
    /// Writing failed (the upstream may have answered and closed): kept for when no response
    /// comes either.
    write_error: Option<io::Error>,
    /// Whether any byte of a response arrived.
    read_any: bool,
}

impl Exchange {
    fn new(conn: Box<Conn>) -> Self {
        Self { conn, write_error: None, read_any: false }
    }

    /// Writes the request while reading the response head (an upstream may answer before it has
    /// read the whole body).
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
        upgrade: bool,
    ) -> Poll<Result<Head, ExchangeError>> {
        if let Some(e) = self.conn.keep_writing(cx)? {
            self.write_error = Some(e);
        }
        loop {
            if !self.conn.read.is_empty()
                && let Some(mut head) =
                    parse_head(&mut self.conn.read, &mut self.conn.spans, head_request, upgrade)?
            {
                if self.write_error.is_some() {
                    head.keep_alive = false;
                }
                return Poll::Ready(Ok(head));
            }
            let read = ready!(self.conn.poll_fill(cx, READ_MIN));
            let error = match (read, self.write_error.take()) {
                (Ok(0), None) => ExchangeError::ClosedBeforeHead,
                (Ok(_), write_error) => {
                    self.write_error = write_error;
                    self.read_any = true;
                    continue;
                }
                (_, Some(e)) => ExchangeError::Write(e),
                (Err(e), None) => ExchangeError::Read(e),
            };
            return Poll::Ready(Err(error));
        }
    }
}

struct Idle {
    since: Instant,
    conn: Box<Conn>,
}

type IdleList = Mutex<Vec<Idle>>;

/// The connections to one upstream address.
pub struct Upstream {
    addr: SocketAddr,
    connector: Arc<dyn Connect>,
    idle: Arc<IdleList>,
    /// The address as a `Host` value, for requests that name no host.
    host: HeaderValue,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Upstream {
    /// Connections to `addr`, opened with `connector` (directly, or however it reaches the
    /// upstream: the data plane's through an emulated link).
    pub fn new(addr: SocketAddr, connector: Arc<dyn Connect>) -> Self {
        let host = HeaderValue::try_from(addr.to_string()).expect("a socket address is a valid header value");
        Self { addr, connector, idle: Arc::default(), host }
    }

    /// Connections to `addr` over plain TCP.
    pub fn direct(addr: SocketAddr) -> Self {
        Self::new(addr, Arc::new(Direct))
    }

    /// The upstream's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many idle connections are kept now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().len()
    }

    /// Sends `req` as HTTP/1.1 in origin form ([`origin_form`]) and returns the response head;
    /// the body streams, and the connection is reused once it has been read to the end. A
    /// request that names no host gets the upstream's address as its host.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<PooledBody>, UpstreamError> {
        self.forward(req, Forwarding::default()).await
    }

    /// [`send`](Self::send), with the headers `forwarding` removes and adds.
    pub async fn forward(
        &self,
        req: Request<Body>,
        forwarding: Forwarding<'_>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        self.forward_again(req, forwarding).await.map_err(|u| u.error)
    }

    /// [`forward`](Self::forward), handing the request back when it failed in a way that lets it
    /// be sent again ([`Unanswered`]).
    pub async fn forward_again(
        &self,
        mut req: Request<Body>,
        forwarding: Forwarding<'_>,
    ) -> Result<Response<PooledBody>, Unanswered> {
        if !origin_form(&mut req) {
            req.headers_mut().insert(header::HOST, self.host.clone());
        }
        let (parts, body) = req.into_parts();
        let head_request = parts.method == Method::HEAD;
        let upgrade = forwarding.upgrade;
        let bodiless = body.is_end_stream();
        let mut may_retry = bodiless && replayable(&parts.method, &parts.headers);
        let (mut conn, mut reused) = match self.take_idle() {
            Some(c) => (c, true),
            None => match self.connect().await {
                Ok(c) => (c, false),
                // The body is only handed to a connection's writer below: untouched.
                Err(error) => {
                    return Err(Unanswered { error, request: Some(Request::from_parts(parts, body)) });
                }
            },
        };
        begin(&mut conn.writer, &parts, forwarding, Some(body));
        let mut exchange = Exchange::new(conn);
        let head = loop {
            match poll_fn(|cx| exchange.poll_head(cx, head_request, upgrade)).await {
                Ok(head) => break head,
                Err(e) if reused && may_retry && !exchange.read_any && e.is_connection_lost() => {
                    // The upstream closed the idle connection as the request went out.
                    tracing::debug!(addr = %self.addr, error = %e, "reused connection was closed; sending again");
                    (may_retry, reused) = (false, false);
                    let mut conn = match self.connect().await {
                        Ok(c) => c,
                        Err(error) => {
                            let request = Some(Request::from_parts(parts, empty()));
                            return Err(Unanswered { error, request });
                        }
                    };
                    begin(&mut conn.writer, &parts, forwarding, None);
                    exchange = Exchange::new(conn);
                }
                Err(e) => {
                    // Without a body, nothing of the request is lost with the connection.
                    let again = bodiless && !exchange.read_any && e.is_connection_lost();
                    let request = again.then(|| Request::from_parts(parts, empty()));
                    return Err(Unanswered { error: e.into(), request });
                }
            }
        };
        let (mut parts, ()) = head.response.into_parts();
        // A `101` hands the connection over with the response; any other answer's body reads
        // from it and then gives it back to the pool.
        let body = if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            if !exchange.conn.writer.complete {
                // The rest of the request body would run into the new protocol's bytes.
                let why = "101 Switching Protocols before the request body was sent".to_owned();
                let error = UpstreamError::Exchange { source: ExchangeError::Head(why) };
                return Err(Unanswered { error, request: None });
            }
            // The connection leaves the pool with the response, in its extensions.
            let Conn { io, mut read, .. } = *exchange.conn;
            parts.extensions.insert(OnUpgrade::ready(Upgraded::upstream(read.split().freeze(), io)));
            PooledBody { conn: None, framing: BodyFraming::Length(0), keep_alive: false, home: Weak::new() }
        } else {
            let mut body = PooledBody {
                conn: Some(exchange.conn),
                framing: head.framing,
                keep_alive: head.keep_alive,
                home: Arc::downgrade(&self.idle),
            };
            if body.framing.is_done() {
                body.end();
            }
            body
        };
        Ok(Response::from_parts(parts, body))
    }

    /// The most recently returned idle connection that is still open. (One idle for longer
    /// than [`IDLE_TIMEOUT`] is still used if the upstream kept it open: the timeout is for
    /// trimming the pool, which [`put`] does.)
    fn take_idle(&self) -> Option<Box<Conn>> {
        loop {
            let Idle { mut conn, .. } = self.idle.lock().pop()?;
            if conn.still_open() {
                return Some(conn);
            }
        }
    }

    async fn connect(&self) -> Result<Box<Conn>, UpstreamError> {
        let addr = self.addr;
        let stream =
            self.connector.connect(addr).await.map_err(|source| UpstreamError::Connect { addr, source })?;
        Ok(Conn::new(stream))
    }
}

/// A body with nothing in it, for a bodiless request handed back.
fn empty() -> Body {
    crate::body::boxed(http_body_util::Empty::<Bytes>::new())
}

fn put(idle: &IdleList, conn: Box<Conn>) {
    let now = Instant::now();
    let mut idle = idle.lock();
    // The oldest are at the front: drop those past the idle timeout, and make room.
    let stale = idle.iter().take_while(|i| now - i.since >= IDLE_TIMEOUT).count();
    let excess = (idle.len() - stale + 1).saturating_sub(MAX_IDLE);
    let gone: Vec<Idle> = idle.drain(..stale + excess).collect();
    idle.push(Idle { since: now, conn });
    drop(idle);
    drop(gone);
}

/// A response body read from a pooled connection: when it has been read to the end, the
/// connection goes back to the pool; dropped earlier, the connection is closed. While the
/// request body is still being written (the upstream answered early), reading the response
/// writes it on.
pub struct PooledBody {
    /// `None` once the body has ended or failed.
    conn: Option<Box<Conn>>,
    framing: BodyFraming,
    keep_alive: bool,
    home: Weak<IdleList>,
}

impl PooledBody {
    /// The body is over: its connection goes back to the pool if it can carry another exchange.
    fn end(&mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        let reusable =
            self.keep_alive && conn.writer.complete && self.framing.is_done() && conn.read.is_empty();
        conn.writer.abandon();
        if reusable && let Some(idle) = self.home.upgrade() {
            put(&idle, conn);
        }
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("framing", &self.framing)
            .field("open", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
        match conn.keep_writing(cx) {
            Ok(None) => {}
            // The upstream stopped reading the request; its response may still be whole.
            Ok(Some(_)) => this.keep_alive = false,
            Err(e) => {
                this.conn = None;
                return Poll::Ready(Some(Err(e)));
            }
        }
        match ready!(decode(conn.as_mut(), &mut this.framing, cx)).map_err(ExchangeError::from) {
            Ok(Some(frame)) => {
                if this.framing.is_done() {
                    this.end();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Ok(None) => {
                this.end();
                Poll::Ready(None)
            }
            Err(e) => {
                this.conn = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            BodyFraming::Length(n) => SizeHint::with_exact(n),
            _ if self.conn.is_none() => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

pub(crate) mod head;
#[cfg(test)]
mod tests;
