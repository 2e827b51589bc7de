//! HTTP/1.1 on the wire, both ways: body framing, the chunked decoder, and the writer that sends a
//! head and streams a body after it. The upstream client ([`crate::pool`]) and the server
//! ([`crate::h1`]) share it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body as HttpBody, Frame};
use tokio::io::AsyncWrite;

use crate::body::{Body, BoxError};

/// Most header fields in a head or trailer section.
pub(crate) const MAX_HEADERS: usize = 100;
/// Largest trailer section of a chunked body.
pub(crate) const MAX_TRAILERS: usize = 64 * 1024;
/// Longest chunk-size line (size and extensions) in a chunked body.
const MAX_CHUNK_LINE: usize = 4096;
/// Smallest and largest room made in a read buffer before a read.
pub(crate) const READ_MIN: usize = 8 * 1024;
pub(crate) const READ_MAX: usize = 64 * 1024;
/// Body frames up to this size are copied next to the head and written with it; larger ones are
/// written on their own.
const COPY_MAX: usize = 16 * 1024;

/// Where a header field of a parsed head lies in the buffer the head was parsed from.
#[derive(Clone, Copy)]
pub(crate) struct FieldSpan {
    name: (usize, usize),
    value: (usize, usize),
}

impl FieldSpan {
    /// Records where the fields httparse found in `buf` lie, into `spans` (cleared first).
    pub(crate) fn record(buf: &[u8], fields: &[httparse::Header<'_>], spans: &mut Vec<FieldSpan>) {
        spans.clear();
        spans.extend(
            fields
                .iter()
                .map(|h| FieldSpan { name: span(buf, h.name.as_bytes()), value: span(buf, h.value) }),
        );
    }

    /// The field in `head`, the frozen buffer: the name checked, the value a slice of `head`.
    pub(crate) fn field(self, head: &Bytes) -> Result<(HeaderName, HeaderValue), &'static str> {
        let name =
            HeaderName::from_bytes(&head[self.name.0..self.name.1]).map_err(|_| "invalid header name")?;
        let value = HeaderValue::from_maybe_shared(head.slice(self.value.0..self.value.1))
            .map_err(|_| "invalid header value")?;
        Ok((name, value))
    }
}

/// Where `part`, a slice of `buf`, lies in it.
pub(crate) fn span(buf: &[u8], part: &[u8]) -> (usize, usize) {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    (start, start + part.len())
}

/// Takes a `Content-Length` value into `length`: plain digits, and the same as any before it.
pub(crate) fn add_content_length(length: &mut Option<u64>, value: &HeaderValue) -> Result<(), &'static str> {
    let n = content_length(value.as_bytes()).ok_or("invalid Content-Length")?;
    if length.is_some_and(|l| l != n) {
        return Err("Content-Length headers that disagree");
    }
    *length = Some(n);
    Ok(())
}

/// Reading an incoming body failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The connection failed.
    #[error("{0}")]
    Io(io::Error),
    /// The framing broke HTTP/1.1's rules, or the body ended early.
    #[error("{0}")]
    Framing(&'static str),
}

/// Writing an outgoing message failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    /// The connection failed.
    #[error("{0}")]
    Io(io::Error),
    /// The body failed.
    #[error("{0}")]
    Body(BoxError),
    /// The body did not match the length it declared.
    #[error("{0}")]
    Length(&'static str),
}

/// A connection's read side as the body decoder sees it: a buffer of bytes read and not yet
/// consumed, and a way to read more into it.
pub(crate) trait Fill {
    /// What a body that ends with the connection, before its framing says it is done, fails with.
    const EARLY: &'static str;
    /// What it reads from.
    type Io: tokio::io::AsyncRead + Unpin;
    /// What it reads from, and the bytes read and not yet consumed.
    fn parts(&mut self) -> (&mut Self::Io, &mut BytesMut);

    /// The bytes read and not yet consumed.
    fn buffer(&mut self) -> &mut BytesMut {
        self.parts().1
    }

    /// Reads what is there into the buffer, with room for at least `want` bytes (within
    /// [`READ_MIN`]..=[`READ_MAX`]). `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let (io, buf) = self.parts();
        poll_read_into(io, buf, cx, want)
    }
}

/// Makes room for `want` bytes (clamped to [`READ_MIN`]..=[`READ_MAX`]) in `buf` and reads into
/// it what `io` has.
fn poll_read_into<R: tokio::io::AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
    want: usize,
) -> Poll<io::Result<usize>> {
    let want = want.clamp(READ_MIN, READ_MAX);
    if buf.capacity() - buf.len() < want / 2 {
        buf.reserve(want);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// How an outgoing body (a request's or a response's) is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum WriteFraming {
    /// No body bytes.
    Empty,
    /// `Content-Length`: this many bytes still to come.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// As the bytes come, delimited by closing the connection (responses to HTTP/1.0).
    Close,
}

impl WriteFraming {
    /// What `body` needs: its exact length when it knows it, else chunks.
    pub(crate) fn of(body: &Body) -> Self {
        if body.is_end_stream() {
            Self::Empty
        } else {
            body.size_hint().exact().map_or(Self::Chunked, Self::Length)
        }
    }
}

/// Writes `buf` out from `written` on, counting what went in `written`.
pub(crate) fn poll_write_all<W: AsyncWrite + Unpin>(
    io: &mut W,
    buf: &[u8],
    written: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while *written < buf.len() {
        let n = ready!(Pin::new(&mut *io).poll_write(cx, &buf[*written..]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        *written += n;
    }
    Poll::Ready(Ok(()))
}

/// Writes a message: its head (serialized at the start) and then its body as it streams. One per
/// connection, reused for each message (its buffer keeps its capacity).
pub(crate) struct Writer {
    /// Bytes to write; `written` of them are written.
    buf: Vec<u8>,
    written: usize,
    /// The body still to write; `None` once it has ended.
    body: Option<Body>,
    framing: WriteFraming,
    /// A large body frame being written directly, not copied, `large_written` of it so far…
    large: Option<Bytes>,
    large_written: usize,
    /// …and what is written after it (its chunk's end, the body's end).
    after_large: Vec<u8>,
    /// Everything is written (or writing was given up).
    pub(crate) complete: bool,
}

/// A `content-length` line. With `itoa`, not `write!`: the formatting machinery cost a proxied
/// request 320 instructions (callgrind).
pub(crate) fn write_content_length(n: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A chunk-size line: the size in lowercase hex (by hand, for the same reason).
fn write_chunk_size(n: usize, out: &mut Vec<u8>) {
    let mut digits = [0u8; 2 * size_of::<usize>()];
    let (mut start, mut rest) = (digits.len(), n);
    loop {
        start -= 1;
        digits[start] = b"0123456789abcdef"[rest & 0xf];
        rest >>= 4;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
    out.extend_from_slice(b"\r\n");
}

/// One `name: value` line.
pub(crate) fn write_field(name: &HeaderName, value: &HeaderValue, out: &mut Vec<u8>) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

impl Writer {
    /// A writer with nothing to write.
    pub(crate) fn idle() -> Self {
        Self {
            buf: Vec::new(),
            written: 0,
            body: None,
            framing: WriteFraming::Empty,
            large: None,
            large_written: 0,
            after_large: Vec::new(),
            complete: true,
        }
    }

    /// Starts a message: `head` serializes its head into the buffer, framed as `framing` says,
    /// and the body follows as it streams (none for [`WriteFraming::Empty`]).
    pub(crate) fn start(
        &mut self,
        framing: WriteFraming,
        body: Option<Body>,
        head: impl FnOnce(&mut Vec<u8>),
    ) {
        self.abandon();
        self.buf.clear();
        self.written = 0;
        self.after_large.clear();
        head(&mut self.buf);
        self.body = body.filter(|_| framing != WriteFraming::Empty);
        self.framing = framing;
        self.complete = false;
    }

    /// Takes one frame of the body into the write buffer (or as the large frame).
    fn take_frame(&mut self, frame: Option<Result<Frame<Bytes>, BoxError>>) -> Result<(), WriteError> {
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Err(WriteError::Body(e)),
            None => return self.finish(None),
        };
        match frame.into_data() {
            Ok(data) => {
                if !data.is_empty() {
                    match &mut self.framing {
                        WriteFraming::Length(left) => {
                            *left = left
                                .checked_sub(data.len() as u64)
                                .ok_or(WriteError::Length("longer than the Content-Length it declared"))?;
                        }
                        WriteFraming::Chunked => write_chunk_size(data.len(), &mut self.buf),
                        WriteFraming::Empty | WriteFraming::Close => {}
                    }
                    let chunked = self.framing == WriteFraming::Chunked;
                    if data.len() <= COPY_MAX {
                        self.buf.extend_from_slice(&data);
                        if chunked {
                            self.buf.extend_from_slice(b"\r\n");
                        }
                    } else {
                        self.large = Some(data);
                        if chunked {
                            self.after_large.extend_from_slice(b"\r\n");
                        }
                    }
                }
                if self.body.as_ref().is_some_and(HttpBody::is_end_stream) {
                    self.finish(None)?;
                }
                Ok(())
            }
            Err(frame) => self.finish(frame.trailers_ref()),
        }
    }

    /// The body ended (with `trailers`, if any).
    fn finish(&mut self, trailers: Option<&HeaderMap>) -> Result<(), WriteError> {
        self.body = None;
        match self.framing {
            WriteFraming::Length(0) | WriteFraming::Empty | WriteFraming::Close => Ok(()),
            WriteFraming::Length(_) => Err(WriteError::Length("shorter than the Content-Length it declared")),
            WriteFraming::Chunked => {
                // After a large last frame still being written, if there is one.
                let out = if self.large.is_some() { &mut self.after_large } else { &mut self.buf };
                out.extend_from_slice(b"0\r\n");
                for (name, value) in trailers.into_iter().flatten() {
                    write_field(name, value, out);
                }
                out.extend_from_slice(b"\r\n");
                Ok(())
            }
        }
    }

    /// Writes what it can: the buffered bytes, the large frame, and body frames as they come.
    /// Ready with `Ok` once the whole request is written.
    pub(crate) fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteError>> {
        loop {
            // Gather the frames that are ready while the buffer is small: a head and a small body
            // leave in one write.
            let mut body_pending = false;
            while self.large.is_none() && self.buf.len() < COPY_MAX {
                let Some(body) = self.body.as_mut() else { break };
                match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => {
                        body_pending = true;
                        break;
                    }
                    Poll::Ready(frame) => self.take_frame(frame)?,
                }
            }
            ready!(poll_write_all(io, &self.buf, &mut self.written, cx)).map_err(WriteError::Io)?;
            self.buf.clear();
            self.written = 0;
            if let Some(large) = &self.large {
                ready!(poll_write_all(io, large, &mut self.large_written, cx)).map_err(WriteError::Io)?;
                self.large = None;
                self.large_written = 0;
                self.buf.append(&mut self.after_large);
                continue;
            }
            if self.body.is_none() {
                self.complete = true;
                return Poll::Ready(Ok(()));
            }
            if body_pending {
                return Poll::Pending;
            }
        }
    }

    /// Stops writing (the peer will not read the rest; the connection cannot be reused).
    pub(crate) fn abandon(&mut self) {
        self.body = None;
        self.large = None;
        self.large_written = 0;
        self.complete = true;
    }
}

/// How an incoming body (a response's or a request's) is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum BodyFraming {
    /// This many bytes still to come.
    Length(u64),
    /// Chunked, in this state.
    Chunked(Chunk),
    /// Up to the end of the stream.
    Close,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Chunk {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk, with this many bytes left.
    Data(u64),
    /// At the line end after a chunk's data.
    DataEnd,
    /// After the last chunk, at the trailer section.
    Trailers,
    /// Past the end.
    Done,
}

impl BodyFraming {
    pub(crate) fn is_done(self) -> bool {
        matches!(self, Self::Length(0) | Self::Chunked(Chunk::Done))
    }
}

/// The chunk size at the start of a chunk-size line (`1a;ext=1\r`), if the line is valid.
pub(crate) fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.iter().position(|b| !b.is_ascii_hexdigit()).unwrap_or(line.len());
    if digits == 0 || digits > 16 || !matches!(line.get(digits), None | Some(b';' | b' ' | b'\t')) {
        return None;
    }
    line[..digits].iter().try_fold(0u64, |n, &b| Some(n << 4 | u64::from(char::from(b).to_digit(16)?)))
}

/// A `Content-Length` value: decimal digits only.
pub(crate) fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        let digit = char::from(b).to_digit(10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Whether the comma-separated `value` lists `token` (any case).
pub(crate) fn lists(value: &HeaderValue, token: &str) -> bool {
    value.as_bytes().split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Decodes the next frame of a body from `src`. `None` at its end.
pub(crate) fn decode<S: Fill>(
    src: &mut S,
    framing: &mut BodyFraming,
    cx: &mut Context<'_>,
) -> Poll<Result<Option<Frame<Bytes>>, ReadError>> {
    /// Reads more, failing with `early` at the end of the stream.
    fn more<S: Fill>(
        src: &mut S,
        cx: &mut Context<'_>,
        want: u64,
        early: &'static str,
    ) -> Poll<Result<(), ReadError>> {
        let n =
            ready!(src.poll_fill(cx, usize::try_from(want).unwrap_or(usize::MAX))).map_err(ReadError::Io)?;
        Poll::Ready(if n == 0 { Err(ReadError::Framing(early)) } else { Ok(()) })
    }
    loop {
        match framing {
            BodyFraming::Length(0) | BodyFraming::Chunked(Chunk::Done) => return Poll::Ready(Ok(None)),
            BodyFraming::Length(left) | BodyFraming::Chunked(Chunk::Data(left)) => {
                if src.buffer().is_empty() {
                    ready!(more(src, cx, *left, S::EARLY))?;
                }
                let take = src.buffer().len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= take as u64;
                if let BodyFraming::Chunked(chunk @ Chunk::Data(0)) = framing {
                    *chunk = Chunk::DataEnd;
                }
                return Poll::Ready(Ok(Some(Frame::data(src.buffer().split_to(take).freeze()))));
            }
            BodyFraming::Close => {
                if src.buffer().is_empty() {
                    let n = ready!(src.poll_fill(cx, READ_MAX)).map_err(ReadError::Io)?;
                    if n == 0 {
                        return Poll::Ready(Ok(None));
                    }
                }
                return Poll::Ready(Ok(Some(Frame::data(src.buffer().split().freeze()))));
            }
            BodyFraming::Chunked(chunk @ Chunk::Size) => {
                match src.buffer().iter().position(|&b| b == b'\n') {
                    Some(end) => {
                        let size = chunk_size(&src.buffer()[..end])
                            .ok_or(ReadError::Framing("invalid chunk size line"))?;
                        src.buffer().advance(end + 1);
                        *chunk = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
                    }
                    None if src.buffer().len() > MAX_CHUNK_LINE => {
                        return Poll::Ready(Err(ReadError::Framing("chunk size line too long")));
                    }
                    None => ready!(more(src, cx, 0, S::EARLY))?,
                }
            }
            BodyFraming::Chunked(chunk @ Chunk::DataEnd) => {
                if src.buffer().starts_with(b"\r\n") {
                    src.buffer().advance(2);
                } else if src.buffer().starts_with(b"\n") {
                    src.buffer().advance(1);
                } else if src.buffer().is_empty() || src.buffer()[..] == *b"\r" {
                    ready!(more(src, cx, 0, S::EARLY))?;
                    continue;
                } else {
                    return Poll::Ready(Err(ReadError::Framing("chunk data longer than its size")));
                }
                *chunk = Chunk::Size;
            }
            BodyFraming::Chunked(chunk @ Chunk::Trailers) => {
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let buffered = src.buffer().len();
                match httparse::parse_headers(src.buffer(), &mut fields) {
                    Ok(httparse::Status::Complete((len, fields))) => {
                        let mut trailers = HeaderMap::new();
                        for f in fields {
                            let (Ok(name), Ok(value)) =
                                (HeaderName::from_bytes(f.name.as_bytes()), HeaderValue::from_bytes(f.value))
                            else {
                                return Poll::Ready(Err(ReadError::Framing("invalid trailer field")));
                            };
                            trailers.append(name, value);
                        }
                        src.buffer().advance(len);
                        *chunk = Chunk::Done;
                        return Poll::Ready(Ok((!trailers.is_empty()).then(|| Frame::trailers(trailers))));
                    }
                    Ok(httparse::Status::Partial) if buffered <= MAX_TRAILERS => {
                        ready!(more(src, cx, 0, S::EARLY))?;
                    }
                    Ok(httparse::Status::Partial) => {
                        return Poll::Ready(Err(ReadError::Framing("trailer section too large")));
                    }
                    Err(_) => return Poll::Ready(Err(ReadError::Framing("invalid trailer section"))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_lengths_are_decimal_digits_within_u64() {
        for (value, length) in [
            (&b"0"[..], Some(0)),
            (b"42", Some(42)),
            (b"18446744073709551615", Some(u64::MAX)),
            (b"18446744073709551616", None),
            (b"", None),
            (b"+1", None),
            (b" 1", None),
            (b"1,1", None),
        ] {
            assert_eq!(content_length(value), length, "{:?}", String::from_utf8_lossy(value));
        }
    }

    #[test]
    fn chunk_size_lines() {
        for (line, size) in [
            (&b"0"[..], Some(0)),
            (b"1a\r", Some(26)),
            (b"FFFF;ext=\"v\"\r", Some(65535)),
            (b"10 ;x\r", Some(16)),
            (b"ffffffffffffffff\r", Some(u64::MAX)),
            (b"1ffffffffffffffff\r", None),
            (b"\r", None),
            (b"-1\r", None),
            (b"1x\r", None),
            (b"0x10\r", None),
        ] {
            assert_eq!(chunk_size(line), size, "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn written_lengths_and_chunk_sizes_read_back() {
        for n in [0, 1, 9, 10, 15, 16, 255, 4096, 1 << 31, usize::MAX] {
            let mut out = b"x".to_vec();
            write_chunk_size(n, &mut out);
            assert_eq!(out, format!("x{n:x}\r\n").into_bytes());
            assert_eq!(chunk_size(&out[1..out.len() - 1]), Some(n as u64));
        }
        for n in [0, 7, 10, 99, 1000, u64::MAX] {
            let mut out = b"x".to_vec();
            write_content_length(n, &mut out);
            assert_eq!(out, format!("xcontent-length: {n}\r\n").into_bytes());
            assert_eq!(content_length(&out[17..out.len() - 2]), Some(n));
        }
    }
}
