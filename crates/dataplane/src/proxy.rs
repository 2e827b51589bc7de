//! Shared pieces of forwarding HTTP: hop-by-hop headers, the upstream client.

use std::net::SocketAddr;
use std::time::Duration;

use http::uri::{self, Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, Request, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::body::Body;

/// Headers that describe one connection, not the message; never forwarded.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// A request's headers as the queue disciplines see them (no copy).
#[derive(Debug, Clone, Copy)]
pub struct HeaderView<'a>(pub &'a HeaderMap);

impl ikukantai_policy::queue::HeaderLookup for HeaderView<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.get(name)?.to_str().ok()
    }
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names present (no hashing, no parsing of the names `Connection` lists),
    // then remove only what was found: most messages carry none.
    let connection = headers.get_all(header::CONNECTION);
    let listed = |name: &HeaderName| {
        connection
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
    };
    let present: Vec<HeaderName> =
        headers.keys().filter(|k| HOP_BY_HOP.contains(k) || listed(k)).cloned().collect();
    for h in &present {
        headers.remove(h);
    }
}

/// The URI authority of a socket address (computed once per upstream, not per request).
pub fn authority(addr: SocketAddr) -> Authority {
    Authority::try_from(addr.to_string().as_str()).expect("a socket address is a valid authority")
}

/// Points `req` at `authority` over plain HTTP/1.1, keeping path and query.
pub fn retarget(req: &mut Request<Body>, authority: &Authority) {
    let mut parts = uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority.clone());
    parts.path_and_query =
        Some(req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
    if let Ok(u) = Uri::from_parts(parts) {
        *req.uri_mut() = u;
    }
    *req.version_mut() = http::Version::HTTP_11;
}

/// An HTTP/1.1 client over plain TCP with a connection pool.
pub fn plain_client() -> Client<HttpConnector, Body> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(60)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .build(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (HeaderName::from_static(k), http::HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_stripped() {
        let mut h = map(&[
            ("host", "hello.default"),
            ("connection", "close, x-session"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-session", "abc"),
            ("x-request-id", "42"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, vec!["host", "x-request-id"]);
    }

    #[test]
    fn messages_without_hop_by_hop_headers_are_left_alone() {
        let mut h = map(&[("host", "hello.default"), ("x-session", "abc"), ("content-length", "2")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }
}
