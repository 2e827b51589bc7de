//! Request heads: where one ends, what it says, and the heads that are refused.

use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version, header};

use crate::wire::{BodyFraming, FieldSpan, MAX_HEADERS, add_content_length, lists, section_end, span, work};

/// How far a request head that arrives in pieces has been looked at.
#[derive(Debug, Default)]
pub(crate) struct HeadScan {
    scanned: usize,
}

/// A request head that cannot be served, and the answer it gets.
#[derive(Debug, PartialEq)]
pub(crate) struct Refused {
    pub(crate) status: StatusCode,
    pub(crate) why: String,
}

impl Refused {
    pub(crate) fn new(status: StatusCode, why: impl Into<String>) -> Self {
        Self { status, why: why.into() }
    }
}

/// A parsed request head.
pub(crate) struct Head {
    pub(crate) parts: http::request::Parts,
    pub(crate) framing: BodyFraming,
    pub(crate) keep_alive: bool,
    pub(crate) expect_continue: bool,
    /// The client asks to switch protocols (`Connection: upgrade` and an `Upgrade` header, in
    /// HTTP/1.1).
    pub(crate) upgrade: bool,
}

/// Parses the request head at the start of `buf` once it has all come, taking it out of the
/// buffer (and any empty lines before it, RFC 9112 §2.2). `None` while it is not complete. `scan`
/// remembers how far the head was looked at, so that a head arriving in pieces is scanned once
/// and parsed once (parsing it at every piece would be quadratic in its size); `spans` is scratch
/// room, kept across requests.
pub(crate) fn parse_head(
    buf: &mut BytesMut,
    scan: &mut HeadScan,
    spans: &mut Vec<FieldSpan>,
    max_head: usize,
) -> Result<Option<Head>, Refused> {
    let bad = |why: &str| Refused::new(StatusCode::BAD_REQUEST, why);
    while buf.starts_with(b"\r\n") {
        buf.advance(2);
        scan.scanned = 0;
    }
    // httparse takes a bare LF for a line end; a proxy in front may not (a field of its own for
    // us, part of a value for it): refused.
    let end =
        section_end(buf, &mut scan.scanned).map_err(|why| bad(&format!("invalid request head: {why}")))?;
    let Some(end) = end.filter(|&end| end <= max_head) else {
        if end.is_some() || buf.len() > max_head {
            let why = format!("request head larger than {max_head} bytes");
            return Err(Refused::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, why));
        }
        return Ok(None);
    };
    work::add(end);
    let (len, method, target, version) = {
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut []);
        let status = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut parsed,
            &buf[..end],
            &mut headers,
        ) {
            Ok(status) => status,
            Err(httparse::Error::TooManyHeaders) => {
                let why = format!("request head has more than {MAX_HEADERS} header fields");
                return Err(Refused::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, why));
            }
            Err(httparse::Error::Version) => {
                return Err(Refused::new(
                    StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                    "only HTTP/1.0 and 1.1 are served",
                ));
            }
            Err(e) => return Err(bad(&format!("invalid request head: {e}"))),
        };
        // Complete, as its empty line has come (a head with a bare CR in it ends earlier).
        let httparse::Status::Complete(len) = status else { return Err(bad("invalid request head")) };
        let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
            return Err(bad("invalid request line"));
        };
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| bad("invalid method"))?;
        FieldSpan::record(buf, parsed.headers, spans);
        let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        (len, method, span(buf, path.as_bytes()), version)
    };
    // Header values and the target keep pointing into the frozen head: no copy.
    let head = buf.split_to(len).freeze();
    let uri =
        Uri::from_maybe_shared(head.slice(target.0..target.1)).map_err(|_| bad("invalid request target"))?;
    let mut headers = HeaderMap::with_capacity(spans.len());
    let (mut length, mut transfer_encoding) = (None, false);
    let (mut close, mut keep_alive_asked) = (false, false);
    let mut expect_continue = false;
    let (mut upgrade_named, mut upgrade_header) = (false, false);
    for field in spans.iter() {
        let (name, value) = field.field(&head).map_err(bad)?;
        if name == header::CONTENT_LENGTH {
            add_content_length(&mut length, &value).map_err(bad)?;
        } else if name == header::TRANSFER_ENCODING {
            // Only `chunked`, once, and last: anything else would change the body's bytes (which
            // the proxy does not undo) or leave its end unknown.
            if transfer_encoding {
                return Err(bad("more than one Transfer-Encoding header"));
            }
            transfer_encoding = true;
            let codings: Vec<&[u8]> =
                value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii).collect();
            match codings[..] {
                [coding] if coding.eq_ignore_ascii_case(b"chunked") => {}
                _ if codings.last().is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")) => {
                    return Err(Refused::new(
                        StatusCode::NOT_IMPLEMENTED,
                        "only the chunked transfer coding is served",
                    ));
                }
                _ => return Err(bad("Transfer-Encoding whose last coding is not chunked")),
            }
        } else if name == header::HOST && headers.contains_key(header::HOST) {
            // Which one routes the request and which one the instance sees must not differ.
            return Err(bad("more than one Host header"));
        } else if name == header::CONNECTION {
            // Once any asks to close, no later `keep-alive` undoes it.
            close |= lists(&value, "close");
            keep_alive_asked |= lists(&value, "keep-alive");
            upgrade_named |= lists(&value, "upgrade");
        } else if name == header::UPGRADE {
            upgrade_header = true;
        } else if name == header::EXPECT {
            expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        }
        headers.append(name, value);
    }
    let framing = if transfer_encoding {
        if version == Version::HTTP_10 {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if length.is_some() {
            return Err(bad("both Transfer-Encoding and Content-Length"));
        }
        BodyFraming::CHUNKED
    } else {
        BodyFraming::Length(length.unwrap_or(0))
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    let (parts, ()) = request.into_parts();
    let keep_alive = !close && (version == Version::HTTP_11 || keep_alive_asked);
    let expect_continue = expect_continue && version == Version::HTTP_11 && !framing.is_done();
    let upgrade = upgrade_named && upgrade_header && version == Version::HTTP_11;
    Ok(Some(Head { parts, framing, keep_alive, expect_continue, upgrade }))
}
