//! Connections that switch protocols (`Upgrade`, RFC 9110 §7.8; WebSocket is the common one):
//! the hand-over.
//!
//! A client asks with `Connection: upgrade` and `Upgrade: <protocol>` on an HTTP/1.1 request. A
//! proxy forwards the request with both headers ([`strip_request`]); when the upstream answers
//! `101 Switching Protocols`, the client's connection ([`OnUpgrade`] in the request's extensions,
//! from the server) and the upstream's ([`OnUpgrade`] in the response's, from the client) are
//! handed over as [`Upgraded`] streams, for the proxy to splice.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::oneshot;

use crate::connect::Stream;
use crate::proxy::strip_hop_by_hop;

/// One side of a connection that switched protocols: bytes in both directions, raw. Bytes that
/// arrived with the `101` (or behind the request head) are read first.
pub struct Upgraded {
    pre: Bytes,
    io: Io,
}

enum Io {
    /// A client's connection to our HTTP/1.1 server (its read side is the server's).
    Client { read: Box<dyn AsyncRead + Send + Unpin>, write: OwnedWriteHalf },
    /// A connection to an upstream.
    Upstream(Stream),
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = match self.io {
            Io::Client { .. } => "client",
            Io::Upstream(_) => "upstream",
        };
        f.debug_struct("Upgraded").field("side", &side).field("pre", &self.pre.len()).finish()
    }
}

impl Upgraded {
    pub(crate) fn client(pre: Bytes, read: Box<dyn AsyncRead + Send + Unpin>, write: OwnedWriteHalf) -> Self {
        Self { pre, io: Io::Client { read, write } }
    }

    /// An upstream's connection, `pre` the bytes that came with the `101`.
    pub fn upstream(pre: Bytes, io: Stream) -> Self {
        Self { pre, io: Io::Upstream(io) }
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre[..n]);
            this.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        match &mut this.io {
            Io::Client { read, .. } => Pin::new(read).poll_read(cx, buf),
            Io::Upstream(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Client { write, .. } => Pin::new(write).poll_write(cx, buf),
            Io::Upstream(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Client { write, .. } => Pin::new(write).poll_flush(cx),
            Io::Upstream(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Client { write, .. } => Pin::new(write).poll_shutdown(cx),
            Io::Upstream(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// In a request's extensions when its client asked to switch protocols: resolves to the client's
/// connection once a `101` answer has been written to it (and to an error if the answer was
/// anything else, or the connection closed first). In the extensions of an upstream's `101`
/// response ([`crate::pool::Upstream::forward`]): resolves to the upstream's connection.
/// (`Clone`, as request extensions must be; the first clone to see the connection takes it.)
#[derive(Debug, Clone)]
pub struct OnUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl OnUpgrade {
    pub(crate) fn new() -> (oneshot::Sender<Upgraded>, Self) {
        let (tx, rx) = oneshot::channel();
        (tx, Self(Arc::new(Mutex::new(Some(rx)))))
    }

    /// Resolves to `upgraded` (an upstream's connection, which has switched already).
    pub fn ready(upgraded: Upgraded) -> Self {
        let (tx, on_upgrade) = Self::new();
        let _ = tx.send(upgraded);
        on_upgrade
    }
}

/// The connection was not handed over (the answer was not a `101`, or writing it failed).
#[derive(Debug, thiserror::Error)]
#[error("the connection did not switch protocols")]
pub struct NotUpgraded;

impl Future for OnUpgrade {
    type Output = Result<Upgraded, NotUpgraded>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.0.lock();
        let Some(rx) = slot.as_mut() else { return Poll::Ready(Err(NotUpgraded)) };
        let result = ready!(Pin::new(rx).poll(cx));
        *slot = None;
        Poll::Ready(result.map_err(|_| NotUpgraded))
    }
}

/// Strips a request's hop-by-hop headers before it is forwarded, but for `Upgrade` when its
/// client asked to switch protocols (the switch is asked of the instance). Returns that client's
/// connection.
pub fn strip_request(parts: &mut http::request::Parts) -> Option<OnUpgrade> {
    let asked =
        parts.extensions.remove::<OnUpgrade>().map(|on| (on, parts.headers.get(header::UPGRADE).cloned()));
    strip_hop_by_hop(&mut parts.headers);
    let (on_upgrade, protocol) = asked?;
    keep_upgrade(&mut parts.headers, protocol);
    Some(on_upgrade)
}

/// Strips a response's hop-by-hop headers before it is passed back, but for `Upgrade` in a `101`
/// to a request that asked to switch (`client`, from [`strip_request`]). Returns, for that
/// `101`, the client's connection and the upstream's (from the response's extensions).
pub fn strip_response(
    parts: &mut http::response::Parts,
    client: Option<OnUpgrade>,
) -> Option<(OnUpgrade, OnUpgrade)> {
    let switched = match client {
        Some(client) if parts.status == StatusCode::SWITCHING_PROTOCOLS => {
            parts.extensions.remove::<OnUpgrade>().map(|upstream| (client, upstream))
        }
        _ => None,
    };
    let protocol = switched.as_ref().and_then(|_| parts.headers.get(header::UPGRADE).cloned());
    strip_hop_by_hop(&mut parts.headers);
    keep_upgrade(&mut parts.headers, protocol);
    switched
}

/// Puts back the `Upgrade` header stripping took (passed on as it came, or not at all).
fn keep_upgrade(headers: &mut HeaderMap, protocol: Option<HeaderValue>) {
    if let Some(protocol) = protocol {
        headers.insert(header::UPGRADE, protocol);
    }
}
