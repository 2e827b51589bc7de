//! Connecting to instances on a given node: plain TCP for the local node, through the emulated
//! link for the others.

use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use ikukantai_http::connect::{Connect, Connecting, Direct, Stream};

use crate::link::Link;

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
}

impl Connect for NodeConnector {
    fn connect(&self, addr: SocketAddr) -> Connecting<'_> {
        Box::pin(async move {
            match &self.link {
                Some(link) => link.connect(addr).await.map(Stream::Pipe),
                None => Direct::tcp(addr).await,
            }
        })
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
