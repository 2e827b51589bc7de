//! HTTP/1.1 on the wire, both ways: body framing, the chunked decoder, and the writer that sends a
//! head and streams a body after it. The upstream client ([`crate::pool`]) and the server
//! ([`crate::h1`]) share it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body as HttpBody, Frame};
use tokio::io::AsyncWrite;

use crate::body::{Body, BoxError};

mod decode;
pub(crate) mod mem;

#[cfg(test)]
pub(crate) use decode::chunk_line;
pub(crate) use decode::{BodyFraming, decode, section_end, trailer_allowed};

/// Most header fields in a head or trailer section.
pub(crate) const MAX_HEADERS: usize = 100;
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
                // Filtered here too: trailers may come from elsewhere than our decoder (h2c).
                for (name, value) in trailers.into_iter().flatten().filter(|(name, _)| trailer_allowed(name))
                {
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

/// Bytes the parsers look at, counted in tests: work that grows faster than the input is a denial
/// of service, and a count tells it where a timing could not.
pub(crate) mod work {
    #[cfg(test)]
    thread_local! {
        static BYTES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// `n` more bytes looked at.
    #[inline]
    pub(crate) fn add(n: usize) {
        #[cfg(test)]
        BYTES.with(|b| b.set(b.get() + n));
        let _ = n;
    }

    /// The bytes looked at on this thread since the last call.
    #[cfg(test)]
    pub(crate) fn take() -> usize {
        BYTES.with(|b| b.replace(0))
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
    fn written_lengths_and_chunk_sizes_read_back() {
        for n in [0, 1, 9, 10, 15, 16, 255, 4096, 1 << 31, usize::MAX] {
            let mut out = b"x".to_vec();
            write_chunk_size(n, &mut out);
            assert_eq!(out, format!("x{n:x}\r\n").into_bytes());
            assert_eq!(chunk_line(&out[1..out.len() - 1]), Some((n as u64, 0)));
        }
        for n in [0, 7, 10, 99, 1000, u64::MAX] {
            let mut out = b"x".to_vec();
            write_content_length(n, &mut out);
            assert_eq!(out, format!("xcontent-length: {n}\r\n").into_bytes());
            assert_eq!(content_length(&out[17..out.len() - 2]), Some(n));
        }
    }
}
