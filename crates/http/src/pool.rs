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
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;

use crate::body::{Body, BoxError};
use crate::connect::{Connect, Direct, Stream};
use crate::proxy::origin_form;
use crate::upgrade::{OnUpgrade, Upgraded};
use crate::wire::{
    BodyFraming, Chunk, FieldSpan, Fill, MAX_HEADERS, READ_MIN, ReadError, WriteError, WriteFraming, Writer,
    add_content_length, decode, lists, write_content_length, write_field,
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
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The upstream.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// Sending the request or reading the response head failed.
    #[error("{source}")]
    Exchange {
        /// The error (its source says more, e.g. a request body over the limit).
        source: ExchangeError,
    },
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
    #[error("request body: {0}")]
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

/// A parsed response head and what follows it.
struct Head {
    response: Response<()>,
    framing: BodyFraming,
    keep_alive: bool,
}

/// Parses the response head at the start of the read buffer (skipping 1xx interim responses; a
/// `101` is final when `upgrade` says the request asked for it). `None` if it is not complete
/// yet.
fn parse_head(conn: &mut Conn, head_request: bool, upgrade: bool) -> Result<Option<Head>, ExchangeError> {
    let bad = |why: &str| ExchangeError::Head(why.to_owned());
    let (len, code, version) = loop {
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let status = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut parsed, &conn.read, &mut headers)
            .map_err(|e| ExchangeError::Head(e.to_string()))?;
        let seen = match status {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => conn.read.len(),
        };
        if seen > MAX_RESPONSE_HEAD {
            return Err(ExchangeError::Head(format!("larger than {MAX_RESPONSE_HEAD} bytes")));
        }
        let httparse::Status::Complete(len) = status else { return Ok(None) };
        let code = parsed.code.unwrap_or_default();
        let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        if code == 101 && !upgrade {
            return Err(bad("101 Switching Protocols, but no upgrade was asked for"));
        }
        if (100..200).contains(&code) && code != 101 {
            // Interim (`100 Continue`, `103 Early Hints`): the final response follows.
            conn.read.advance(len);
            if conn.read.is_empty() {
                return Ok(None);
            }
            continue;
        }
        FieldSpan::record(&conn.read, parsed.headers, &mut conn.spans);
        break (len, code, version);
    };
    let status = StatusCode::from_u16(code).map_err(|_| bad("invalid status code"))?;
    // Header values keep pointing into the frozen head: no copy.
    let head = conn.read.split_to(len).freeze();
    // Room for the few headers the proxies add to a response (they would grow a full map).
    let mut headers = HeaderMap::with_capacity(conn.spans.len() + 4);
    let (mut length, mut transfer_encoding, mut chunked) = (None, false, false);
    let mut keep_alive = version == Version::HTTP_11;
    for span in &conn.spans {
        let (name, value) = span.field(&head).map_err(bad)?;
        if name == header::CONTENT_LENGTH {
            add_content_length(&mut length, &value).map_err(bad)?;
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = true;
            // Chunked only if it is the last coding of the last such header.
            chunked = value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONNECTION {
            if lists(&value, "close") {
                keep_alive = false;
            } else if version == Version::HTTP_10 && lists(&value, "keep-alive") {
                keep_alive = true;
            }
        }
        headers.append(name, value);
    }
    // RFC 9112 §6.3, in its order.
    let framing = if code == 101 {
        // What follows is the other protocol's, and the connection is not HTTP's any more.
        keep_alive = false;
        BodyFraming::Length(0)
    } else if head_request || code == 204 || code == 304 {
        BodyFraming::Length(0)
    } else if transfer_encoding {
        // With a Content-Length beside it, the length is wrong (not sent on) and the connection
        // cannot be trusted for another message.
        if length.is_some() {
            headers.remove(header::CONTENT_LENGTH);
            keep_alive = false;
        }
        if chunked { BodyFraming::Chunked(Chunk::Size) } else { BodyFraming::Close }
    } else if let Some(n) = length {
        BodyFraming::Length(n)
    } else {
        BodyFraming::Close
    };
    if framing == BodyFraming::Close {
        keep_alive = false;
    }
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Some(Head { response, framing, keep_alive }))
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
                && let Some(mut head) = parse_head(&mut self.conn, head_request, upgrade)?
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
        lock(&self.idle).len()
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
                    return Err(Unanswered { error: UpstreamError::Exchange { source: e }, request });
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
            let Idle { mut conn, .. } = lock(&self.idle).pop()?;
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

fn lock(idle: &IdleList) -> std::sync::MutexGuard<'_, Vec<Idle>> {
    idle.lock().unwrap_or_else(|e| e.into_inner())
}

fn put(idle: &IdleList, conn: Box<Conn>) {
    let now = Instant::now();
    let mut idle = lock(idle);
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;
    use crate::body::full;

    /// A backend that counts its connections; `/close` answers and closes the connection, `/slow`
    /// streams two chunks 50 ms apart, `/late` answers after 80 ms.
    async fn backend() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = service_fn(|req: Request<Incoming>| async move {
                        let path = req.uri().path().to_owned();
                        let host = req.headers().get(header::HOST).cloned();
                        if path == "/late" {
                            tokio::time::sleep(Duration::from_millis(80)).await;
                        }
                        if path == "/echo" {
                            // The request's framing and body, back.
                            let framing = format!(
                                "{:?} {:?} ",
                                req.headers().get(header::CONTENT_LENGTH),
                                req.headers().get(header::TRANSFER_ENCODING)
                            );
                            let collected = req.into_body().collect().await.unwrap();
                            let trailers =
                                collected.trailers().map(|t| format!(" {t:?}")).unwrap_or_default();
                            let mut text = framing.into_bytes();
                            text.extend_from_slice(&collected.to_bytes());
                            text.extend_from_slice(trailers.as_bytes());
                            return Ok(Response::new(
                                http_body_util::Full::new(Bytes::from(text))
                                    .map_err(|never| match never {})
                                    .boxed(),
                            ));
                        }
                        let mut resp = match path.as_str() {
                            "/slow" => {
                                let chunks = futures_util::stream::iter([b"a".as_slice(), b"b".as_slice()])
                                    .then(|c| async move {
                                        tokio::time::sleep(Duration::from_millis(50)).await;
                                        Ok::<_, Infallible>(Frame::data(Bytes::from_static(c)))
                                    });
                                Response::new(BodyExt::boxed(StreamBody::new(chunks)))
                            }
                            _ => Response::new(
                                http_body_util::Full::new(Bytes::from(format!("{path} {host:?}")))
                                    .map_err(|never| match never {})
                                    .boxed(),
                            ),
                        };
                        if path == "/close" {
                            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                        }
                        Ok::<_, Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(path).header("host", "svc.test").body(full("")).unwrap()
    }

    async fn text(resp: Response<PooledBody>) -> String {
        String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection() {
        let (addr, accepted) = backend().await;
        let up = Upstream::direct(addr);
        for _ in 0..5 {
            assert_eq!(text(up.send(get("/a")).await.unwrap()).await, "/a Some(\"svc.test\")");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(up.idle_count(), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_open_connections_which_are_then_reused() {
        let (addr, accepted) = backend().await;
        let up = Upstream::direct(addr);
        let (a, b) = tokio::join!(up.send(get("/slow")), up.send(get("/slow")));
        let (a, b) = tokio::join!(text(a.unwrap()), text(b.unwrap()));
        assert_eq!((a.as_str(), b.as_str()), ("ab", "ab"));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(up.idle_count(), 2);
        text(up.send(get("/a")).await.unwrap()).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// On a multi-threaded runtime a connection can come back before its task has seen the end of
    /// the exchange; it must still be reused (not leaked, not used too early).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_reused_across_threads() {
        let (addr, accepted) = backend().await;
        let up = Arc::new(Upstream::direct(addr));
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let up = up.clone();
                tokio::spawn(async move {
                    for i in 0..50 {
                        let path = format!("/w{w}-{i}");
                        let got = text(up.send(get(&path)).await.unwrap()).await;
                        assert_eq!(got, format!("{path} Some(\"svc.test\")"));
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        let opened = accepted.load(Ordering::SeqCst);
        // 4 in every run, loaded machine or not; the bound leaves room for a slow return.
        assert!(opened <= 40, "200 requests, 4 at a time, opened {opened} connections");
    }

    #[tokio::test]
    async fn a_body_dropped_half_way_does_not_return_its_connection() {
        let (addr, accepted) = backend().await;
        let up = Upstream::direct(addr);
        let resp = up.send(get("/slow")).await.unwrap();
        drop(resp);
        assert_eq!(up.idle_count(), 0);
        text(up.send(get("/a")).await.unwrap()).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_reused() {
        let (addr, accepted) = backend().await;
        let up = Upstream::direct(addr);
        text(up.send(get("/close")).await.unwrap()).await;
        // Whether it was pooled before hyper saw the close or not, the next request must work.
        assert_eq!(text(up.send(get("/a")).await.unwrap()).await, "/a Some(\"svc.test\")");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_request_without_host_gets_the_upstream_address() {
        let (addr, _) = backend().await;
        let up = Upstream::direct(addr);
        let req = Request::get("/h").body(full("")).unwrap();
        assert_eq!(text(up.send(req).await.unwrap()).await, format!("/h Some({:?})", addr.to_string()));
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error_naming_the_address() {
        let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let up = Upstream::direct(addr);
        let err = up.send(get("/a")).await.unwrap_err();
        assert!(matches!(err, UpstreamError::Connect { .. }), "{err}");
        assert!(err.to_string().starts_with(&format!("connecting to {addr}: ")), "{err}");
    }

    #[tokio::test]
    async fn a_request_that_can_go_again_is_handed_back_whole() {
        // Nothing listening: it never left, body and all.
        let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let up = Upstream::direct(addr);
        let post = Request::post("/").header("host", "svc.test").body(full("payload")).unwrap();
        let back = up.forward_again(post, Forwarding::default()).await.unwrap_err();
        assert!(matches!(back.error, UpstreamError::Connect { .. }), "{:?}", back.error);
        let body = back.request.expect("handed back").into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "payload");
        // Closed before any answer: only a request without a body comes back.
        let (addr, accepted) = scripted(64, |_, _, _| None).await;
        let up = Upstream::direct(addr);
        let back = up.forward_again(get("/"), Forwarding::default()).await.unwrap_err();
        assert!(matches!(back.error, UpstreamError::Exchange { .. }), "{:?}", back.error);
        assert!(back.request.is_some_and(|r| r.method() == Method::GET && r.body().is_end_stream()));
        let post = Request::post("/").header("host", "svc.test").body(full("x")).unwrap();
        assert!(up.forward_again(post, Forwarding::default()).await.unwrap_err().request.is_none());
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "neither was sent twice");
    }

    /// An upstream that answers from a script: `answer(connection, request on it, request head)`
    /// gives the bytes to send back (written `piece` bytes at a time, to split them across
    /// reads), or `None` to close the connection instead. Request bodies are read by their
    /// Content-Length. Counts connections.
    async fn scripted<F>(piece: usize, answer: F) -> (SocketAddr, Arc<AtomicUsize>)
    where
        F: Fn(usize, usize, &str) -> Option<Vec<u8>> + Send + Sync + 'static,
    {
        scripted_with(piece, false, answer).await
    }

    /// [`scripted`], closing each connection after its first answer if `once`.
    async fn scripted_with<F>(piece: usize, once: bool, answer: F) -> (SocketAddr, Arc<AtomicUsize>)
    where
        F: Fn(usize, usize, &str) -> Option<Vec<u8>> + Send + Sync + 'static,
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let connection = count.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for request in 0.. {
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut more = [0u8; 4096];
                            match stream.read(&mut more).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&more[..n]),
                            }
                        };
                        let head = String::from_utf8(buf[..end].to_vec()).unwrap();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |n| n.trim().parse::<usize>().unwrap());
                        while buf.len() < end + length {
                            let mut more = [0u8; 4096];
                            match stream.read(&mut more).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&more[..n]),
                            }
                        }
                        buf.drain(..end + length);
                        let Some(reply) = answer(connection, request, &head) else { return };
                        for part in reply.chunks(piece.max(1)) {
                            if stream.write_all(part).await.is_err() {
                                return;
                            }
                            if piece < reply.len() {
                                tokio::task::yield_now().await;
                            }
                        }
                        if once {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// An upstream that answers the first request on each connection with `reply` and closes it.
    /// Counts connections.
    async fn answer_and_close(reply: &'static [u8]) -> (SocketAddr, Arc<AtomicUsize>) {
        scripted_with(64, true, move |_, _, _| Some(reply.to_vec())).await
    }

    /// All of a response: its data, and its trailers if any.
    async fn frames(resp: Response<PooledBody>) -> Result<(Vec<u8>, Option<HeaderMap>), ExchangeError> {
        let collected = resp.into_body().collect().await?;
        let trailers = collected.trailers().cloned();
        Ok((collected.to_bytes().to_vec(), trailers))
    }

    #[tokio::test]
    async fn chunked_responses_with_extensions_and_trailers_are_decoded_byte_by_byte() {
        let reply = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
            4\r\nWiki\r\n5;name=value\r\npedia\r\nE \r\n in\r\n\r\nchunks.\r\n0\r\nx-sum: 23\r\n\r\n";
        let (addr, accepted) = scripted(1, move |_, _, _| Some(reply.to_vec())).await;
        let up = Upstream::direct(addr);
        for _ in 0..2 {
            let (data, trailers) = frames(up.send(get("/")).await.unwrap()).await.unwrap();
            assert_eq!(data, b"Wikipedia in\r\n\r\nchunks.");
            assert_eq!(trailers.unwrap()["x-sum"], "23");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "the connection is reused after a chunked body");
    }

    #[tokio::test]
    async fn random_chunkings_and_read_splits_decode_to_the_same_body() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for case in 0..40 {
            let body: Vec<u8> = (0..rng.random_range(0..3000)).map(|i| (i % 251) as u8).collect();
            let mut wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec();
            let mut rest = body.as_slice();
            while !rest.is_empty() {
                let n = rng.random_range(1..=rest.len().min(700));
                let ext = if rng.random_bool(0.3) { ";x=y" } else { "" };
                wire.extend_from_slice(format!("{n:X}{ext}\r\n").as_bytes());
                wire.extend_from_slice(&rest[..n]);
                wire.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let piece = rng.random_range(1..64);
            let (addr, _) = scripted(piece, move |_, _, _| Some(wire.clone())).await;
            let up = Upstream::direct(addr);
            let (data, trailers) = frames(up.send(get("/")).await.unwrap()).await.unwrap();
            assert_eq!(data, body, "case {case}, pieces of {piece}");
            assert!(trailers.is_none());
            assert_eq!(up.idle_count(), 1, "case {case}");
        }
    }

    #[tokio::test]
    async fn a_body_up_to_the_close_is_read_whole_and_its_connection_not_kept() {
        let (addr, _) =
            answer_and_close(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end").await;
        let up = Upstream::direct(addr);
        let resp = up.send(get("/")).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_10);
        assert_eq!(frames(resp).await.unwrap().0, b"until the end");
        assert_eq!(up.idle_count(), 0);
    }

    #[tokio::test]
    async fn bodiless_responses_end_at_their_head_and_interim_responses_are_skipped() {
        let (addr, accepted) = scripted(5, |_, request, _| {
            Some(match request {
                // HEAD: the length it would have, no body.
                0 => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".to_vec(),
                1 => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
                2 => b"HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n".to_vec(),
                _ => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
                       HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"
                    .to_vec(),
            })
        })
        .await;
        let up = Upstream::direct(addr);
        let head = Request::head("/").header("host", "svc.test").body(full("")).unwrap();
        let resp = up.send(head).await.unwrap();
        assert_eq!(resp.headers()["content-length"], "5");
        assert!(resp.body().is_end_stream());
        assert_eq!(frames(resp).await.unwrap().0, b"");
        for status in [204, 304] {
            let resp = up.send(get("/")).await.unwrap();
            assert_eq!(resp.status(), status);
            assert_eq!(frames(resp).await.unwrap().0, b"");
        }
        let resp = up.send(get("/")).await.unwrap();
        assert_eq!(resp.status(), 201);
        assert_eq!(frames(resp).await.unwrap().0, b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_request_that_asks_to_switch_protocols_gets_the_connection_with_the_101() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        // One byte at a time, with the new protocol's first bytes right behind the 101's head.
        let (addr, accepted) = scripted(1, move |_, request, head| {
            seen.lock().unwrap().push(head.to_owned());
            Some(match request {
                0 => b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\nhi;"
                    .to_vec(),
                _ => b"pong".to_vec(),
            })
        })
        .await;
        let up = Upstream::direct(addr);
        let mut req = get("/ws");
        req.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("echo"));
        let resp = up.forward(req, Forwarding { upgrade: true, ..Forwarding::default() }).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(resp.headers()[header::UPGRADE], "echo");
        let head = heads.lock().unwrap()[0].clone();
        assert!(
            head.contains("\r\nupgrade: echo\r\n") && head.contains("\r\nconnection: upgrade\r\n"),
            "{head}"
        );
        let on_upgrade = resp.extensions().get::<OnUpgrade>().cloned().expect("the connection");
        let mut io = on_upgrade.await.unwrap();
        let mut got = Vec::new();
        while got.len() < 3 {
            let mut b = [0u8; 8];
            let n = io.read(&mut b).await.unwrap();
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(got, b"hi;", "bytes behind the head are not lost");
        // The connection is ours now (the script takes this for a second head).
        io.write_all(b"ping\r\n\r\n").await.unwrap();
        let mut got = Vec::new();
        while got.len() < 4 {
            let mut b = [0u8; 8];
            let n = io.read(&mut b).await.unwrap();
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(got, b"pong");
        // It never went back to the pool.
        assert_eq!((up.idle_count(), accepted.load(Ordering::SeqCst)), (0, 1));
    }

    #[tokio::test]
    async fn broken_responses_are_errors_that_say_what_broke() {
        let (addr, _) = scripted(64, |_, _, head| {
            let path = head.split(' ').nth(1).unwrap();
            Some(
                match path {
                    "/short" => "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
                    "/garbage" => "HTTP/1.1 2OO OK\r\n\r\n",
                    "/two-lengths" => "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
                    "/bad-size" => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                    "/overlong-chunk" => {
                        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\n"
                    }
                    "/switch" => "HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
                    _ => return None,
                }
                .as_bytes()
                .to_vec(),
            )
        })
        .await;
        let up = Upstream::direct(addr);
        // The head is fine, the body is not: the error comes with the body, after the data.
        let short = up.send(get("/short")).await.unwrap();
        let mut body = short.into_body();
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "abc");
        drop(body);
        for (path, expected) in [
            ("/garbage", "invalid response head: invalid response status"),
            ("/two-lengths", "invalid response head: Content-Length headers that disagree"),
            ("/switch", "invalid response head: 101 Switching Protocols, but no upgrade was asked for"),
            ("/closed", "the upstream closed the connection before a complete response head"),
        ] {
            let err = up.send(get(path)).await.unwrap_err();
            assert_eq!(err.to_string(), expected, "{path}");
        }
        for (path, expected) in [
            ("/bad-size", "response body: invalid chunk size line"),
            ("/overlong-chunk", "response body: chunk data longer than its size"),
        ] {
            let err = frames(up.send(get(path)).await.unwrap()).await.unwrap_err();
            assert_eq!(err.to_string(), expected, "{path}");
        }
    }

    #[tokio::test]
    async fn a_chunked_body_that_also_claims_a_length_is_read_as_chunked_and_its_connection_dropped() {
        let (addr, accepted) = scripted(64, |_, _, _| {
            Some(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec())
        })
        .await;
        let up = Upstream::direct(addr);
        for _ in 0..2 {
            let resp = up.send(get("/")).await.unwrap();
            assert_eq!(resp.headers().get(header::CONTENT_LENGTH), None);
            assert_eq!(frames(resp).await.unwrap().0, b"hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_cut_short_by_the_close_is_an_error() {
        let (addr, _) = answer_and_close(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc").await;
        let up = Upstream::direct(addr);
        let err = frames(up.send(get("/")).await.unwrap()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "response body: the upstream closed the connection before the body's end"
        );
        assert_eq!(up.idle_count(), 0);
    }

    #[tokio::test]
    async fn request_bodies_go_with_their_length_or_chunked_and_arrive_whole() {
        let (addr, accepted) = backend().await;
        let up = Upstream::direct(addr);
        let post = |body: Body| Request::post("/echo").header("host", "svc.test").body(body).unwrap();
        // Known length (small: one write with the head).
        let (data, _) = frames(up.send(post(full("hello"))).await.unwrap()).await.unwrap();
        assert_eq!(String::from_utf8(data).unwrap(), "Some(\"5\") None hello");
        // Known length, larger than what is copied next to the head.
        let (data, _) = frames(up.send(post(full(vec![b'y'; 50_000]))).await.unwrap()).await.unwrap();
        assert_eq!(data.len(), "Some(\"50000\") None ".len() + 50_000);
        assert!(data.starts_with(b"Some(\"50000\") None yyy") && data.ends_with(b"yyy"));
        // Empty, on a method that defines a body: says so.
        let (data, _) = frames(up.send(post(full(""))).await.unwrap()).await.unwrap();
        assert_eq!(String::from_utf8(data).unwrap(), "Some(\"0\") None ");
        // Unknown length, with a frame large enough to be written on its own in the middle.
        let large = vec![b'x'; 100_000];
        let mut sum = HeaderMap::new();
        sum.insert("x-sum", HeaderValue::from_static("7"));
        let frames_sent = vec![
            Frame::data(Bytes::from_static(b"a")),
            Frame::data(Bytes::from(large.clone())),
            Frame::data(Bytes::from_static(b"z")),
            Frame::trailers(sum),
        ];
        let stream = futures_util::stream::iter(frames_sent.into_iter().map(Ok::<_, BoxError>));
        let (data, _) =
            frames(up.send(post(BodyExt::boxed(StreamBody::new(stream)))).await.unwrap()).await.unwrap();
        let mut expected = b"None Some(\"chunked\") a".to_vec();
        expected.extend_from_slice(&large);
        expected.extend_from_slice(b"z {\"x-sum\": \"7\"}");
        assert_eq!(data, expected);
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for all four");
    }

    #[tokio::test]
    async fn a_request_body_over_its_limit_fails_the_exchange_with_that_reason() {
        let (addr, _) = backend().await;
        let up = Upstream::direct(addr);
        let body = crate::body::boxed(crate::body::Limited::new(full("too long"), 3));
        let err = up.send(Request::post("/echo").body(body).unwrap()).await.unwrap_err();
        assert!(crate::body::is_too_large(&err), "{err}");
    }

    #[tokio::test]
    async fn an_upstream_answering_before_the_request_body_ends_is_heard_and_the_connection_not_kept() {
        let (addr, _) =
            scripted(64, |_, _, _| Some(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly".to_vec())).await;
        let up = Upstream::direct(addr);
        // A body with a first frame and then nothing more for as long as the test lasts.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        tx.send(Ok(Frame::data(Bytes::from_static(b"start")))).await.unwrap();
        let stream =
            futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
        // No length: the script reads the head (no content-length) and answers at once.
        let req = Request::post("/").body(BodyExt::boxed(StreamBody::new(stream))).unwrap();
        let resp = up.send(req).await.unwrap();
        assert_eq!(frames(resp).await.unwrap().0, b"early");
        assert_eq!(up.idle_count(), 0, "the rest of the request body would be read as the next request");
        drop(tx);
    }

    #[tokio::test]
    async fn a_101_before_the_request_body_is_sent_is_an_error() {
        let (addr, _) = scripted(64, |_, _, _| {
            Some(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n".to_vec())
        })
        .await;
        let up = Upstream::direct(addr);
        // A body that never ends: the script answers after the head.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        tx.send(Ok(Frame::data(Bytes::from_static(b"start")))).await.unwrap();
        let stream =
            futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
        let mut req = Request::post("/").body(BodyExt::boxed(StreamBody::new(stream))).unwrap();
        req.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("echo"));
        let err = up.forward(req, Forwarding { upgrade: true, ..Forwarding::default() }).await.unwrap_err();
        assert!(err.to_string().contains("before the request body was sent"), "{err}");
        drop(tx);
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_noticed_before_it_is_used() {
        // Answers, then closes without saying so: the close arrives while the connection idles.
        let (addr, accepted) = answer_and_close(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let up = Upstream::direct(addr);
        assert_eq!(frames(up.send(get("/")).await.unwrap()).await.unwrap().0, b"ok");
        tokio::time::sleep(Duration::from_millis(80)).await;
        // Not idempotent, so never sent twice: it must go out on a new connection at once.
        let post = Request::post("/").header("host", "svc.test").body(full("x")).unwrap();
        assert_eq!(frames(up.send(post).await.unwrap()).await.unwrap().0, b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_reused_connection_closed_as_the_request_goes_out_is_retried_only_if_idempotent() {
        // Answers a connection's first request; closes on its second without answering.
        let (addr, accepted) = scripted(64, |_, request, _| {
            (request == 0).then(|| b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec())
        })
        .await;
        let up = Upstream::direct(addr);
        assert_eq!(frames(up.send(get("/")).await.unwrap()).await.unwrap().0, b"ok");
        assert_eq!(frames(up.send(get("/")).await.unwrap()).await.unwrap().0, b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "the GET went again on a new connection");
        let post = Request::post("/").header("host", "svc.test").body(full("x")).unwrap();
        let err = up.send(post).await.unwrap_err();
        assert_eq!(err.to_string(), "the upstream closed the connection before a complete response head");
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "the POST was not sent twice");
    }
}
