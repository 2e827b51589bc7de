//! Shared pieces of forwarding HTTP: hop-by-hop headers, origin-form requests, detached heads.

use bytes::{Bytes, BytesMut};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri, header};

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

/// The position of `name` in [`HOP_BY_HOP`]. A match on the name's text compiles to a switch on
/// its length and one comparison, where comparing with each `HeaderName` in turn took seven.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "te" => Some(3),
        "trailer" => Some(4),
        "transfer-encoding" => Some(5),
        "upgrade" => Some(6),
        _ => None,
    }
}

/// Fields a `Connection` listing must not remove: the message is meaningless without them (a
/// client listing `Host` would otherwise have the next hop see an address of the proxy's
/// choosing, RFC 9110 §7.6.1 forbids listing them).
fn essential(token: &str) -> bool {
    ["host", "content-length", "content-type"].iter().any(|e| e.eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers, including those the `Connection` header names (but for the
/// essential ones: Host, Content-Length, Content-Type).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass of comparisons over the names present (no hashing): which fixed ones to remove.
    let mut present = 0u8;
    for k in headers.keys() {
        if let Some(i) = hop_by_hop_index(k) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        // Names can only be listed in a `Connection` header, which would have been found.
        return;
    }
    // `HOP_BY_HOP[0]` is `Connection`. Its usual tokens (`keep-alive`, `close`) name nothing
    // else present, so this allocates only when it lists a header the message really carries.
    let mut listed: Vec<String> = Vec::new();
    if present & 1 != 0 {
        for v in headers.get_all(header::CONNECTION) {
            for token in v.to_str().unwrap_or_default().split(',').map(str::trim) {
                let fixed = HOP_BY_HOP.iter().any(|h| h.as_str().eq_ignore_ascii_case(token));
                if !token.is_empty() && !fixed && !essential(token) && headers.contains_key(token) {
                    listed.push(token.to_owned());
                }
            }
        }
    }
    for name in &listed {
        headers.remove(name.as_str());
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
}

/// Gives a waiting request's head storage of its own. A head is parsed into slices of the
/// connection's read buffer (8 KiB), which would so stay allocated as long as the request waits
/// in the activator queue. Copying the URI and the header values (all values in one allocation)
/// lets it go, once the connection lets go of it too
/// ([`crate::h1::RequestBody::release_read_buffer`]). Only for requests that wait; the fast path
/// never pays for it.
pub fn detach_head<B>(req: Request<B>) -> Request<B> {
    let (mut parts, body) = req.into_parts();
    if let Ok(uri) = Uri::from_maybe_shared(Bytes::from(parts.uri.to_string())) {
        parts.uri = uri;
    }
    let total = parts.headers.values().map(HeaderValue::len).sum();
    let mut store = BytesMut::with_capacity(total);
    for v in parts.headers.values() {
        store.extend_from_slice(v.as_bytes());
    }
    let store = store.freeze();
    let mut at = 0;
    for v in parts.headers.values_mut() {
        let len = v.len();
        // A value hyper accepted is a valid value; should one not be, it keeps its old storage.
        if let Ok(mut copy) = HeaderValue::from_maybe_shared(store.slice(at..at + len)) {
            copy.set_sensitive(v.is_sensitive());
            *v = copy;
        }
        at += len;
    }
    Request::from_parts(parts, body)
}

/// Makes `req` an HTTP/1.1 request in origin form (`/path?query`), as sent to an upstream over a
/// connection to it. The host the client asked for stays in `Host`; a request that named it only
/// in its URI (HTTP/2's `:authority`) gets it as `Host`. Returns whether the request has a `Host`.
pub fn origin_form<B>(req: &mut Request<B>) -> bool {
    let mut has_host = req.headers().contains_key(header::HOST);
    if !has_host
        && let Some(host) = req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(header::HOST, host);
        has_host = true;
    }
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let path = req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
    }
    *req.version_mut() = http::Version::HTTP_11;
    has_host
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (HeaderName::from_static(k), http::HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn a_connection_listing_cannot_remove_host_or_the_body_s_length_and_type() {
        // Review F13: `Connection: host` made the instance see the queue proxy's address as Host.
        let mut h = map(&[
            ("host", "hello.default"),
            ("connection", "Host, content-length, Content-Type, x-gone"),
            ("content-length", "5"),
            ("content-type", "text/plain"),
            ("x-gone", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "content-type", "host"]);
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
    fn a_detached_head_keeps_its_values_and_lets_the_read_buffer_go() {
        let read_buffer = Bytes::from(b"GET /p?q=1 HTTP/1.1|hello.default|Bearer x|a|b".to_vec());
        let part = |range: std::ops::Range<usize>| read_buffer.slice(range);
        let mut secret = HeaderValue::from_maybe_shared(part(34..42)).unwrap();
        secret.set_sensitive(true);
        let req = Request::builder()
            .uri(Uri::from_maybe_shared(part(4..10)).unwrap())
            .header("host", HeaderValue::from_maybe_shared(part(20..33)).unwrap())
            .header("authorization", secret)
            .header("x-many", HeaderValue::from_maybe_shared(part(43..44)).unwrap())
            .header("x-many", HeaderValue::from_maybe_shared(part(45..46)).unwrap())
            .body(())
            .unwrap();
        let req = detach_head(req);
        assert!(read_buffer.is_unique(), "the head still points into the read buffer");
        assert_eq!(req.uri(), "/p?q=1");
        assert_eq!(req.headers()["host"], "hello.default");
        assert_eq!(req.headers()["authorization"], "Bearer x");
        assert_eq!(req.headers().get_all("x-many").iter().collect::<Vec<_>>(), ["a", "b"]);
        assert!(req.headers()["authorization"].is_sensitive());
    }

    #[test]
    fn connection_tokens_match_names_in_any_case_and_only_what_is_present_goes() {
        assert_eq!(HOP_BY_HOP[0], header::CONNECTION, "strip_hop_by_hop relies on the order");
        let mut h = map(&[
            ("host", "hello.default"),
            ("connection", "Keep-Alive, X-Trace, x-absent"),
            ("x-trace", "1"),
            ("x-request-id", "42"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, vec!["host", "x-request-id"]);
    }

    #[test]
    fn the_name_match_and_the_table_agree() {
        for (i, h) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(h), Some(i), "{h}");
        }
        for other in [header::HOST, header::CONTENT_LENGTH, HeaderName::from_static("x-upgrade")] {
            assert_eq!(hop_by_hop_index(&other), None, "{other}");
        }
    }

    #[test]
    fn messages_without_hop_by_hop_headers_are_left_alone() {
        let mut h = map(&[("host", "hello.default"), ("x-session", "abc"), ("content-length", "2")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }
}
