//! How the client reaches an upstream: a [`Connect`] opens a [`Stream`] to an address, directly
//! ([`Direct`]) or however its owner likes (the data plane's emulated links). TCP connections get
//! keepalive, as accepted ones do.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::TcpStream;

/// A connection to an upstream.
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// An in-process pipe whose other end someone carries on (e.g. across an emulated link).
    Pipe(DuplexStream),
}

/// A future that opens a [`Stream`].
pub type Connecting<'a> = Pin<Box<dyn Future<Output = io::Result<Stream>> + Send + 'a>>;

/// Opens connections to upstream addresses. Called once per new connection, not per request.
pub trait Connect: std::fmt::Debug + Send + Sync + 'static {
    /// Opens a stream to `addr`.
    fn connect(&self, addr: SocketAddr) -> Connecting<'_>;
}

/// Plain TCP, with `TCP_NODELAY` (requests and responses are written whole).
#[derive(Debug, Clone, Copy, Default)]
pub struct Direct;

impl Direct {
    /// Connects to `addr` over TCP, with keepalive ([`crate::server::tune`]).
    pub async fn tcp(addr: SocketAddr) -> io::Result<Stream> {
        let s = TcpStream::connect(addr).await?;
        crate::server::tune(&s);
        Ok(Stream::Tcp(s))
    }
}

impl Connect for Direct {
    fn connect(&self, addr: SocketAddr) -> Connecting<'_> {
        Box::pin(Self::tcp(addr))
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Pipe(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Pipe(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Pipe(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Pipe(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_opened_to_upstreams_have_tcp_keepalive() {
        // A tunnel's upstream side must notice a peer that vanished, as its client side does.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let Stream::Tcp(s) = Direct::tcp(listener.local_addr().unwrap()).await.unwrap() else {
            panic!("TCP")
        };
        assert!(socket2::SockRef::from(&s).keepalive().unwrap());
        assert!(s.nodelay().unwrap());
    }
}
