//! Bodies decoded from bytes in memory, arriving in pieces of a chosen size: for tests and fuzz
//! targets, which drive the decoder exactly as a connection does.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use http::HeaderMap;
use tokio::io::{AsyncRead, ReadBuf};

use super::{BodyFraming, Fill, ReadError, decode};

/// Bytes handed out `step` at a time, then the end of the stream.
#[derive(Debug)]
pub(crate) struct Pieces {
    data: Vec<u8>,
    at: usize,
    step: usize,
}

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.step.max(1).min(self.data.len() - self.at).min(out.remaining());
        out.put_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

/// A connection's read side over [`Pieces`].
#[derive(Debug)]
pub(crate) struct MemSource {
    io: Pieces,
    pub(crate) buf: BytesMut,
}

impl MemSource {
    pub(crate) fn new(data: &[u8], step: usize) -> Self {
        Self { io: Pieces { data: data.to_vec(), at: 0, step }, buf: BytesMut::new() }
    }
}

impl Fill for MemSource {
    const EARLY: &'static str = "the input ended before the body's end";
    type Io = Pieces;

    fn parts(&mut self) -> (&mut Pieces, &mut BytesMut) {
        (&mut self.io, &mut self.buf)
    }
}

/// A decoded body: its data and its trailers.
pub(crate) type Decoded = (Vec<u8>, Option<HeaderMap>);

/// Decodes a whole body framed as `framing` from `src`.
pub(crate) fn decode_all(src: &mut MemSource, mut framing: BodyFraming) -> Result<Decoded, ReadError> {
    let mut cx = Context::from_waker(Waker::noop());
    let (mut data, mut trailers) = (Vec::new(), None);
    loop {
        let Poll::Ready(frame) = decode(src, &mut framing, &mut cx) else {
            unreachable!("reading from memory never waits")
        };
        let Some(frame) = frame? else { return Ok((data, trailers)) };
        match frame.into_data() {
            Ok(bytes) => data.extend_from_slice(&bytes),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
}
