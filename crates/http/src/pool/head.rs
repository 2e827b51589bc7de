//! Response heads from an upstream: interim responses skipped, framing decided (RFC 9112 §6.3).

use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::{HeaderMap, Response, StatusCode, Version, header};

use super::{ExchangeError, MAX_RESPONSE_HEAD};
use crate::wire::{BodyFraming, FieldSpan, MAX_HEADERS, add_content_length, lists};

/// A parsed response head and what follows it.
pub(crate) struct Head {
    pub(crate) response: Response<()>,
    pub(crate) framing: BodyFraming,
    pub(crate) keep_alive: bool,
}

/// Parses the response head at the start of the read buffer (skipping 1xx interim responses; a
/// `101` is final when `upgrade` says the request asked for it). `None` if it is not complete
/// yet.
pub(crate) fn parse_head(
    read: &mut BytesMut,
    spans: &mut Vec<FieldSpan>,
    head_request: bool,
    upgrade: bool,
) -> Result<Option<Head>, ExchangeError> {
    let bad = |why: &str| ExchangeError::Head(why.to_owned());
    let (len, code, version) = loop {
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let status = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut parsed, read, &mut headers)
            .map_err(|e| ExchangeError::Head(e.to_string()))?;
        let seen = match status {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => read.len(),
        };
        if seen > MAX_RESPONSE_HEAD {
            return Err(ExchangeError::Head(format!("larger than {MAX_RESPONSE_HEAD} bytes")));
        }
        let httparse::Status::Complete(len) = status else { return Ok(None) };
        let code = parsed.code.unwrap_or_default();
        let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        if code == 101 && !upgrade {
            return Err(bad("101 Switching Protocols, but no upgrade was asked for"));
        }
        if (100..200).contains(&code) && code != 101 {
            // Interim (`100 Continue`, `103 Early Hints`): the final response follows.
            read.advance(len);
            if read.is_empty() {
                return Ok(None);
            }
            continue;
        }
        FieldSpan::record(read, parsed.headers, spans);
        break (len, code, version);
    };
    let status = StatusCode::from_u16(code).map_err(|_| bad("invalid status code"))?;
    // Header values keep pointing into the frozen head: no copy.
    let head = read.split_to(len).freeze();
    // Room for the few headers the proxies add to a response (they would grow a full map).
    let mut headers = HeaderMap::with_capacity(spans.len() + 4);
    let (mut length, mut transfer_encoding, mut chunked) = (None, false, false);
    let (mut close, mut keep_alive_asked) = (false, false);
    // 1xx and 204 have no body and say nothing of a length (RFC 9110 §8.6, RFC 9112 §6.1).
    let lengthless = code < 200 || code == 204;
    for span in spans.iter() {
        let (name, value) = span.field(&head).map_err(bad)?;
        if lengthless && (name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING) {
            continue;
        }
        if name == header::CONTENT_LENGTH {
            add_content_length(&mut length, &value).map_err(bad)?;
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = true;
            // Chunked only if it is the last coding of the last such header.
            chunked = value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONNECTION {
            // Once any asks to close, no later `keep-alive` undoes it.
            close |= lists(&value, "close");
            keep_alive_asked |= lists(&value, "keep-alive");
        }
        headers.append(name, value);
    }
    let mut keep_alive = !close && (version == Version::HTTP_11 || keep_alive_asked);
    // RFC 9112 §6.3, in its order.
    let framing = if code == 101 {
        // What follows is the other protocol's, and the connection is not HTTP's any more.
        keep_alive = false;
        BodyFraming::Length(0)
    } else if head_request || code == 204 || code == 304 {
        BodyFraming::Length(0)
    } else if transfer_encoding {
        // With a Content-Length beside it, the length is wrong (not sent on) and the connection
        // cannot be trusted for another message.
        if length.is_some() {
            headers.remove(header::CONTENT_LENGTH);
            keep_alive = false;
        }
        if chunked { BodyFraming::CHUNKED } else { BodyFraming::Close }
    } else if let Some(n) = length {
        BodyFraming::Length(n)
    } else {
        BodyFraming::Close
    };
    if framing == BodyFraming::Close {
        keep_alive = false;
    }
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Some(Head { response, framing, keep_alive }))
}
