//! Host matching: the name a request is routed by, from its Host header (or its URI).

use std::borrow::Cow;

use http::{Request, header};

/// The request's host, without port or trailing dot, lowercase (borrowed when already so).
pub(super) fn host_of<B>(req: &Request<B>) -> Option<Cow<'_, str>> {
    let header = req.headers().get(header::HOST).and_then(|h| host_parts(h.as_bytes()));
    let (host, upper) = header.or_else(|| host_parts(req.uri().host()?.as_bytes()))?;
    Some(if upper { Cow::Owned(host.to_ascii_lowercase()) } else { Cow::Borrowed(host) })
}

/// A Host value without a numeric port and trailing dots, and whether it holds an uppercase
/// letter; `None` if it is not UTF-8. (A non-ASCII host is looked up like any other, and no
/// service answers to it.) Port and dots are found from the end, without searching the name.
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
    // Only ASCII was cut off, so the rest is UTF-8 exactly when the whole value is.
    let host = &raw[..end];
    // No early exit, so that it runs over whole vectors.
    let upper = host.iter().fold(false, |upper, b| upper | b.is_ascii_uppercase());
    Some((std::str::from_utf8(host).ok()?, upper))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

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
            "a\tb",
            "Café.default:80",
        ];
        for raw in cases {
            let req = Request::builder().header(header::HOST, raw).body(()).unwrap();
            assert_eq!(host_of(&req).as_deref(), Some(reference(raw).as_str()), "{raw:?}");
            let already_lower = raw == raw.to_ascii_lowercase();
            assert_eq!(
                matches!(host_of(&req), Some(Cow::Borrowed(_))),
                already_lower,
                "{raw:?} allocates only when it has uppercase"
            );
        }
        // Not UTF-8: the URI's host instead, else nothing.
        let bad = HeaderValue::from_bytes(b"caf\xe9.default").unwrap();
        let req = Request::builder()
            .uri("http://Hello.Default/")
            .header(header::HOST, bad.clone())
            .body(())
            .unwrap();
        assert_eq!(host_of(&req).as_deref(), Some("hello.default"));
        let req = Request::builder().header(header::HOST, bad).body(()).unwrap();
        assert_eq!(host_of(&req), None);
        let req = Request::builder().uri("/").body(()).unwrap();
        assert_eq!(host_of(&req), None);
    }
}
