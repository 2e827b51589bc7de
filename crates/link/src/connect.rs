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

/// A peer gateway's answer to a probe.
#[derive(Debug, Clone)]
pub struct ProbeReply {
    /// Request to response, in milliseconds.
    pub rtt_ms: f64,
    /// The answer's headers (a gateway's carry its network coordinate).
    pub headers: http::HeaderMap,
}

/// A connection to a peer gateway's admin listener, kept for its next probe: a probe on it is
/// one request and its response across the link, where a new connection costs a TCP connect, a
/// handshake across the link, four pump tasks and both FINs across it.
#[derive(Debug)]
pub struct ProbeConnection(hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>);

/// Measures the round trip to a peer gateway: opens a connection (through the link, if any),
/// then times one `GET /healthz` request/response on it, so the handshake is not counted.
/// `None` if the peer did not answer within 5 s.
pub async fn probe(connector: &NodeConnector, admin: SocketAddr) -> Option<ProbeReply> {
    probe_with(None, connector, admin).await.map(|(reply, _)| reply)
}

/// [`probe`] on `kept` if it is still open (once more on a new connection if it closed under
/// the request), returning the connection for the next probe.
pub async fn probe_with(
    kept: Option<ProbeConnection>,
    connector: &NodeConnector,
    admin: SocketAddr,
) -> Option<(ProbeReply, ProbeConnection)> {
    if let Some(ProbeConnection(mut sender)) = kept.filter(|k| k.0.is_ready())
        && let Some(reply) = exchange(&mut sender).await
    {
        return Some((reply, ProbeConnection(sender)));
    }
    let stream = tokio::time::timeout(Duration::from_secs(5), connector.connect(admin)).await.ok()?.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    let reply = exchange(&mut sender).await?;
    Some((reply, ProbeConnection(sender)))
}

/// One timed `GET /healthz`.
async fn exchange(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
) -> Option<ProbeReply> {
    use http_body_util::{BodyExt, Empty};
    let req =
        http::Request::get("/healthz").header("host", "monitor").body(Empty::<bytes::Bytes>::new()).ok()?;
    let started = std::time::Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req)).await.ok()?.ok()?;
    let (parts, body) = resp.into_parts();
    body.collect().await.ok()?;
    Some(ProbeReply { rtt_ms: started.elapsed().as_secs_f64() * 1e3, headers: parts.headers })
}

/// [`probe`]'s round trip alone.
pub async fn probe_rtt(connector: &NodeConnector, admin: SocketAddr) -> Option<f64> {
    probe(connector, admin).await.map(|r| r.rtt_ms)
}
