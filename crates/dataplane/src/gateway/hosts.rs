//! Host matching: the name a request is routed by, from its target's authority or its Host
//! header, and the Host it is forwarded with.

use std::borrow::Cow;

use http::{HeaderValue, Request, Version, header};

/// Why a request names no host it can be routed by (a 400).
pub(super) type NoHost = &'static str;

/// The request's host, without port or trailing dot, lowercase (borrowed when already so).
///
/// RFC 9112 §3.2.2: an absolute-form target's authority wins over Host (the request is then
/// forwarded with it as Host, [`host_from_target`]); so does HTTP/2's `:authority`, which is in
/// the URI too. An HTTP/1.1 request without Host, and any with an invalid one (not a valid
/// URI host, e.g. not ASCII, or holding spaces, `@` or `/`), is refused (RFC 9112 §3.2), never
/// routed by something else while the bad Host goes on.
pub(super) fn host_of<B>(req: &Request<B>) -> Result<Cow<'_, str>, NoHost> {
    let header = match req.headers().get(header::HOST) {
        Some(h) => Some(host_parts(h.as_bytes()).ok_or("the Host header is not a valid host")?),
        None => None,
    };
    let (host, upper) = match (header, req.uri().authority()) {
        (None, _) if req.version() == Version::HTTP_11 => return Err("request has no Host header"),
        (_, Some(authority)) => host_parts(authority.as_str().as_bytes())
            .ok_or("the request target's host is not a valid host")?,
        (Some(header), None) => header,
        (None, None) => return Err("request names no host"),
    };
    Ok(if upper { Cow::Owned(host.to_ascii_lowercase()) } else { Cow::Borrowed(host) })
}

/// Gives a request whose target names its host (absolute form, or HTTP/2's `:authority`) that
/// host as its Host, as RFC 9112 §3.2.2 asks of a proxy. Copies only when they differ.
pub(super) fn host_from_target(parts: &mut http::request::Parts) {
    if let Some(authority) = parts.uri.authority()
        && parts.headers.get(header::HOST).is_some_and(|h| h.as_bytes() != authority.as_str().as_bytes())
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, host);
    }
}

/// Bytes a URI host (with its port) may hold: RFC 3986's unreserved, sub-delims, `%` of
/// percent-encoding, `:` and the brackets of an IP literal.
const HOST_BYTES: [bool; 256] = {
    let mut ok = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        ok[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
                    | b':'
                    | b'['
                    | b']'
            );
        b += 1;
    }
    ok
};

/// A Host value without a numeric port and trailing dots, and whether it holds an uppercase
/// letter; `None` if it holds a byte no URI host may. Port and dots are found from the end,
/// without searching the name.
fn host_parts(raw: &[u8]) -> Option<(&str, bool)> {
    let mut end = raw.len();
    let mut digits = end;
    while digits > 0 && raw[digits - 1].is_ascii_digit() {
        digits -= 1;
    }
    if digits > 0 && raw[digits - 1] == b':' {
        end = digits - 1;
    }
    while end > 0 && raw[end - 1] == b'.' {
        end -= 1;
    }
    let host = &raw[..end];
    // No early exit, so that it runs over whole vectors.
    let (upper, valid) = host.iter().fold((false, true), |(upper, valid), b| {
        (upper | b.is_ascii_uppercase(), valid & HOST_BYTES[*b as usize])
    });
    // Valid bytes are ASCII, so UTF-8.
    if !valid {
        return None;
    }
    Some((std::str::from_utf8(host).ok()?, upper))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_port_and_trailing_dots_and_are_lowercased() {
        // What the gateway did with `str` methods before `host_parts`: the reference.
        fn reference(raw: &str) -> String {
            let host = match raw.rsplit_once(':') {
                Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
                _ => raw,
            };
            host.trim_end_matches('.').to_ascii_lowercase()
        }
        let cases = [
            "hello.default.example.com",
            "Hello.Default.Example.COM:8080",
            "hello.default.:80",
            "hello.default..",
            "hello:",
            "hello:8a",
            "Hello:X",
            "[::1]:8080",
            "[::1]",
            "127.0.0.1:19101",
            ":80",
            "",
        ];
        for raw in cases {
            let req = Request::builder().header(header::HOST, raw).body(()).unwrap();
            assert_eq!(host_of(&req).as_deref(), Ok(reference(raw).as_str()), "{raw:?}");
            let already_lower = raw == raw.to_ascii_lowercase();
            assert_eq!(
                matches!(host_of(&req), Ok(Cow::Borrowed(_))),
                already_lower,
                "{raw:?} allocates only when it has uppercase"
            );
        }
        // Not a valid host: refused, never routed by the URI's host instead.
        let bad = |raw: &'static [u8]| HeaderValue::from_bytes(raw).unwrap();
        for raw in
            [&b"caf\xe9.default"[..], b"Caf\xc3\xa9.default:80", b"a\tb", b"a b", b"u@hello.default", b"a/b"]
        {
            let req = Request::builder()
                .uri("http://Hello.Default/")
                .header(header::HOST, bad(raw))
                .body(())
                .unwrap();
            assert_eq!(host_of(&req), Err("the Host header is not a valid host"), "{raw:?}");
        }
        // An absolute-form target's host wins over Host; HTTP/1.1 needs a Host all the same.
        let req =
            Request::builder().uri("http://A.default/x").header(header::HOST, "b.default").body(()).unwrap();
        assert_eq!(host_of(&req).as_deref(), Ok("a.default"));
        let req = Request::builder().uri("http://a.default/").body(()).unwrap();
        assert_eq!(host_of(&req), Err("request has no Host header"));
        let req = Request::builder().version(Version::HTTP_2).uri("http://a.default/").body(()).unwrap();
        assert_eq!(host_of(&req).as_deref(), Ok("a.default"), ":authority alone");
        let req =
            Request::builder().uri("http://u@a.default/").header(header::HOST, "a.default").body(()).unwrap();
        assert_eq!(host_of(&req), Err("the request target's host is not a valid host"));
        let req = Request::builder().version(Version::HTTP_10).uri("/").body(()).unwrap();
        assert_eq!(host_of(&req), Err("request names no host"));
    }
}
