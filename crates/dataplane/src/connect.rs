//! Connecting to instances on a given node: plain TCP for the local node, through the emulated
//! link for the others.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::TcpStream;

use crate::link::Link;

/// A connection to an instance.
#[derive(Debug)]
pub enum NodeStream {
    /// Same node.
    Tcp(TcpStream),
    /// Across an emulated link.
    Link(DuplexStream),
}

impl AsyncRead for NodeStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Link(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NodeStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Link(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Link(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Link(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Connects to addresses on one node.
#[derive(Debug, Clone)]
pub struct NodeConnector {
    link: Option<Link>,
}

impl NodeConnector {
    /// Through `link`, or directly with `None`.
    pub fn new(link: Option<Link>) -> Self {
        Self { link }
    }

    /// Opens a stream to `addr`.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<NodeStream> {
        match &self.link {
            Some(link) => link.connect(addr).await.map(NodeStream::Link),
            None => {
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                Ok(NodeStream::Tcp(s))
            }
        }
    }
}

/// Measures the round trip to a peer gateway: opens a connection (through the link, if any),
/// then times one `GET /healthz` request/response on it, so the handshake is not counted.
/// `None` if the peer did not answer within 5 s.
pub async fn probe_rtt(connector: &NodeConnector, admin: SocketAddr) -> Option<f64> {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::time::timeout(Duration::from_secs(5), connector.connect(admin)).await.ok()?.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    let req =
        http::Request::get("/healthz").header("host", "monitor").body(Empty::<bytes::Bytes>::new()).ok()?;
    let started = std::time::Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req)).await.ok()?.ok()?;
    let _ = resp.into_body().collect().await;
    Some(started.elapsed().as_secs_f64() * 1e3)
}
