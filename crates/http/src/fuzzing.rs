//! The parsers, reachable by fuzz targets (`crates/http/fuzz`) and property tests, and by nothing
//! else: not an API. Each entry point parses its input whole and in pieces, and panics if the
//! two disagree or an invariant breaks; a fuzzer finds inputs that make it panic.

use bytes::BytesMut;

use crate::h1::head::{HeadScan, parse_head};
use crate::wire::mem::{MemSource, decode_all};
use crate::wire::{BodyFraming, FieldSpan};

/// The size of the pieces an input arrives in, from its first byte, and the rest of it.
fn split(data: &[u8]) -> (usize, &[u8]) {
    match data.split_first() {
        Some((&b, rest)) => (usize::from(b % 32) + 1, rest),
        None => (1, data),
    }
}

/// What parsing a request head gave: `Err(status)`, or the head and how much of the input it
/// took.
type HeadOutcome = Result<Option<(String, usize)>, u16>;

/// Parses a request head from `data` (all of it, or until a head is complete or refused) as it
/// arrives in pieces of `step` bytes.
fn request_head_in(data: &[u8], step: usize) -> HeadOutcome {
    let (mut buf, mut scan, mut spans) = (BytesMut::new(), HeadScan::default(), Vec::new());
    let mut fed = 0;
    for piece in data.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        fed += piece.len();
        match parse_head(&mut buf, &mut scan, &mut spans, 8192) {
            Ok(None) => {}
            Ok(Some(head)) => {
                let summary = format!(
                    "{} {} {:?} {:?} keep-alive={} continue={} upgrade={}",
                    head.parts.method,
                    head.parts.uri,
                    head.parts.headers,
                    head.framing,
                    head.keep_alive,
                    head.expect_continue,
                    head.upgrade
                );
                return Ok(Some((summary, fed - buf.len())));
            }
            Err(refused) => return Err(refused.status.as_u16()),
        }
    }
    Ok(None)
}

/// Fuzz target: the server's request-head parser, whole and in pieces.
pub fn request_head(data: &[u8]) {
    let (step, data) = split(data);
    let whole = request_head_in(data, data.len());
    let pieces = request_head_in(data, step);
    // The same head and the same bytes taken, the same refusal, or incomplete both ways.
    assert_eq!(whole, pieces, "{data:?} in pieces of {step}");
}

/// Fuzz target: the chunked body decoder (both directions use it), whole and in pieces.
pub fn chunked_body(data: &[u8]) {
    let (step, data) = split(data);
    let whole = decode_all(&mut MemSource::new(data, usize::MAX), BodyFraming::CHUNKED);
    let pieces = decode_all(&mut MemSource::new(data, step), BodyFraming::CHUNKED);
    match (&whole, &pieces) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "{data:?} in pieces of {step}");
            assert!(a.0.len() <= data.len());
            for name in a.1.iter().flat_map(|t| t.keys()) {
                assert!(crate::wire::trailer_allowed(name), "{name} passed as a trailer");
            }
        }
        (Err(_), Err(_)) => {}
        _ => panic!("{data:?}: whole {whole:?}, in pieces of {step} {pieces:?}"),
    }
}

/// Parses a response head from `data` as it arrives in pieces of `step` bytes.
fn response_head_in(
    data: &[u8],
    step: usize,
    head_request: bool,
    upgrade: bool,
) -> Result<Option<String>, String> {
    let (mut buf, mut spans) = (BytesMut::new(), Vec::<FieldSpan>::new());
    let mut fed = 0;
    for piece in data.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        fed += piece.len();
        match crate::pool::head::parse_head(&mut buf, &mut spans, head_request, upgrade) {
            Ok(None) => {}
            Ok(Some(head)) => {
                let taken = fed - buf.len();
                return Ok(Some(format!(
                    "{:?} {:?} {} {taken}",
                    head.response, head.framing, head.keep_alive
                )));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(None)
}

/// Fuzz target: the client's response-head parser, whole and in pieces.
pub fn response_head(data: &[u8]) {
    let (step, data) = split(data);
    let (head_request, upgrade) = (step % 2 == 0, step % 3 == 0);
    let whole = response_head_in(data, data.len(), head_request, upgrade);
    let pieces = response_head_in(data, step, head_request, upgrade);
    match (&whole, &pieces) {
        (Err(_), Err(_)) => {}
        _ => assert_eq!(whole, pieces, "{data:?} in pieces of {step}"),
    }
}
