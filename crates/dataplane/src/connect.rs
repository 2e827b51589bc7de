//! Connecting to instances on a given node: plain TCP for the local node, through the emulated
//! link for the others.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::TcpStream;

use crate::body::Body;
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

impl Connection for NodeStream {
    fn connected(&self) -> Connected {
        Connected::new()
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

impl tower_service::Service<Uri> for NodeConnector {
    type Response = TokioIo<NodeStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<NodeStream>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let addr: SocketAddr =
                uri.authority().and_then(|a| a.as_str().parse().ok()).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("not an ip:port address: {uri}"))
                })?;
            this.connect(addr).await.map(TokioIo::new)
        })
    }
}

/// A pooled HTTP/1.1 client for the instances of one node.
pub fn node_client(link: Option<Link>) -> Client<NodeConnector, Body> {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .build(NodeConnector::new(link))
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
