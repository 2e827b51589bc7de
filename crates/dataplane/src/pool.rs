//! Reused HTTP/1.1 connections to one upstream: an instance (from a gateway) or the process behind
//! a queue proxy.
//!
//! Built on hyper's connection API (`hyper::client::conn::http1`) rather than hyper-util's legacy
//! client: an upstream is one address, so the legacy client's per-request work — hashing the
//! scheme and authority into its pool map twice, converting the URI, and spawning a task per
//! request to return the connection — is all overhead here (about 7 000 of a proxied request's
//! 44 500 instructions, measured with callgrind; `docs/benchmarks.md`).
//!
//! A connection goes back to the pool when its response body has been read to the end, and is
//! dropped when the body is abandoned half-way (it cannot carry another request). The most
//! recently used idle connection is taken first, so under light load few stay warm; those idle
//! for longer than [`IDLE_TIMEOUT`] are closed. A request that could not be written on a reused
//! connection (the upstream closed it while idle) is retried once on a new one; nothing is
//! retried once it may have reached the upstream.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::body::Body;
use crate::connect::NodeConnector;
use crate::proxy::origin_form;

/// Idle connections older than this are closed instead of reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// At most this many idle connections are kept per upstream.
pub const MAX_IDLE: usize = 1024;

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be opened.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The upstream.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The connection opened but the HTTP/1.1 handshake failed.
    #[error("HTTP/1.1 handshake with {addr}: {source}")]
    Handshake {
        /// The upstream.
        addr: SocketAddr,
        /// The error.
        source: hyper::Error,
    },
    /// Sending the request or reading the response head failed.
    #[error("{source}")]
    Exchange {
        /// The error (its source says more, e.g. a request body over the limit).
        source: hyper::Error,
    },
}

struct Idle {
    since: Instant,
    sender: SendRequest<Body>,
}

type IdleList = Mutex<Vec<Idle>>;

/// The connections to one upstream address.
pub struct Upstream {
    addr: SocketAddr,
    connector: NodeConnector,
    idle: Arc<IdleList>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Upstream {
    /// Connections to `addr`, opened with `connector` (directly or through an emulated link).
    pub fn new(addr: SocketAddr, connector: NodeConnector) -> Self {
        Self { addr, connector, idle: Arc::default() }
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
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<PooledBody>, UpstreamError> {
        if !origin_form(&mut req)
            && let Ok(host) = HeaderValue::try_from(self.addr.to_string())
        {
            req.headers_mut().insert(header::HOST, host);
        }
        let (mut sender, reused) = match self.take_idle() {
            Some(s) => (s, true),
            None => (self.connect().await?, false),
        };
        let response = match sender.try_send_request(req).await {
            Ok(r) => r,
            Err(mut e) => match e.take_message() {
                // Not written: the idle connection had been closed. Once more, on a new one.
                Some(req) if reused => {
                    sender = self.connect().await?;
                    sender.send_request(req).await.map_err(|source| UpstreamError::Exchange { source })?
                }
                _ => return Err(UpstreamError::Exchange { source: e.into_error() }),
            },
        };
        let (parts, body) = response.into_parts();
        let back = ReturnTo { sender: Some(sender), idle: Arc::downgrade(&self.idle) };
        Ok(Response::from_parts(parts, PooledBody { inner: body, back }))
    }

    /// The most recently returned idle connection that can take a request now.
    fn take_idle(&self) -> Option<SendRequest<Body>> {
        let mut idle = lock(&self.idle);
        while let Some(i) = idle.pop() {
            if i.sender.is_ready() && i.since.elapsed() < IDLE_TIMEOUT {
                return Some(i.sender);
            }
        }
        None
    }

    async fn connect(&self) -> Result<SendRequest<Body>, UpstreamError> {
        let addr = self.addr;
        let stream =
            self.connector.connect(addr).await.map_err(|source| UpstreamError::Connect { addr, source })?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

fn lock(idle: &IdleList) -> std::sync::MutexGuard<'_, Vec<Idle>> {
    idle.lock().unwrap_or_else(|e| e.into_inner())
}

/// Puts a connection back into its pool (if the pool still exists).
struct ReturnTo {
    sender: Option<SendRequest<Body>>,
    idle: Weak<IdleList>,
}

impl ReturnTo {
    fn give_back(&mut self) {
        let Some(sender) = self.sender.take() else { return };
        let Some(idle) = self.idle.upgrade() else { return };
        if sender.is_ready() {
            put(&idle, sender);
        } else if !sender.is_closed() {
            // The connection task has not yet seen the end of the exchange; wait for it.
            let idle = Arc::downgrade(&idle);
            tokio::spawn(async move {
                let mut sender = sender;
                if sender.ready().await.is_ok()
                    && let Some(idle) = idle.upgrade()
                {
                    put(&idle, sender);
                }
            });
        }
    }
}

fn put(idle: &IdleList, sender: SendRequest<Body>) {
    let now = Instant::now();
    let mut idle = lock(idle);
    // The oldest are at the front: drop those past the idle timeout, and make room.
    let stale = idle.iter().take_while(|i| now - i.since >= IDLE_TIMEOUT).count();
    let excess = (idle.len() - stale + 1).saturating_sub(MAX_IDLE);
    idle.drain(..stale + excess);
    idle.push(Idle { since: now, sender });
}

pin_project! {
    /// A response body from a pooled connection: when it has been read to the end, the
    /// connection goes back to the pool; dropped earlier, the connection is closed.
    pub struct PooledBody {
        #[pin]
        inner: Incoming,
        back: ReturnTo,
    }

    impl PinnedDrop for PooledBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.inner.is_end_stream() {
                this.back.give_back();
            }
        }
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let frame = this.inner.as_mut().poll_frame(cx);
        match &frame {
            Poll::Ready(None) => this.back.give_back(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.back.give_back(),
            Poll::Ready(Some(Err(_))) => drop(this.back.sender.take()),
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;
    use crate::body::full;

    /// A backend that counts its connections; `/close` answers and closes the connection, `/slow`
    /// streams two chunks 50 ms apart.
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
        let up = Upstream::new(addr, NodeConnector::new(None));
        for _ in 0..5 {
            assert_eq!(text(up.send(get("/a")).await.unwrap()).await, "/a Some(\"svc.test\")");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(up.idle_count(), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_open_connections_which_are_then_reused() {
        let (addr, accepted) = backend().await;
        let up = Upstream::new(addr, NodeConnector::new(None));
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
        let up = Arc::new(Upstream::new(addr, NodeConnector::new(None)));
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
        let up = Upstream::new(addr, NodeConnector::new(None));
        let resp = up.send(get("/slow")).await.unwrap();
        drop(resp);
        assert_eq!(up.idle_count(), 0);
        text(up.send(get("/a")).await.unwrap()).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_reused() {
        let (addr, accepted) = backend().await;
        let up = Upstream::new(addr, NodeConnector::new(None));
        text(up.send(get("/close")).await.unwrap()).await;
        // Whether it was pooled before hyper saw the close or not, the next request must work.
        assert_eq!(text(up.send(get("/a")).await.unwrap()).await, "/a Some(\"svc.test\")");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_request_without_host_gets_the_upstream_address() {
        let (addr, _) = backend().await;
        let up = Upstream::new(addr, NodeConnector::new(None));
        let req = Request::get("/h").body(full("")).unwrap();
        assert_eq!(text(up.send(req).await.unwrap()).await, format!("/h Some({:?})", addr.to_string()));
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error_naming_the_address() {
        let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let up = Upstream::new(addr, NodeConnector::new(None));
        let err = up.send(get("/a")).await.unwrap_err();
        assert!(matches!(err, UpstreamError::Connect { .. }), "{err}");
        assert!(err.to_string().starts_with(&format!("connecting to {addr}: ")), "{err}");
    }
}
