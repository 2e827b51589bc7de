//! Reading a body off the wire: by length, up to the close, or chunked (RFC 9112 §7.1), with its
//! trailer section.
//!
//! The chunked grammar is taken strictly: every line ends with CRLF (a bare LF could end a line
//! for us and not for a proxy in front, or the other way round: that is how requests are smuggled
//! through chunk extensions), extensions are `*( BWS ";" BWS token [ BWS "=" BWS ( token /
//! quoted-string ) ] )` and nothing else, and their bytes are capped per line and per body. A line
//! or trailer section that arrives in pieces is scanned once, from where the last look stopped.

use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;

use super::{Fill, MAX_HEADERS, READ_MAX, ReadError, work};

/// Largest trailer section of a chunked body (hyper allows 16 KiB; we stay under it).
pub(crate) const MAX_TRAILERS: usize = 8 * 1024;
/// Longest chunk-size line (size and extensions).
pub(crate) const MAX_CHUNK_LINE: usize = 4096;
/// Most chunk-extension bytes in one body: what comes after the sizes is not body, and would
/// otherwise go unbounded past every body limit (CVE-2023-39326).
pub(crate) const MAX_CHUNK_EXTS: usize = 8 * 1024;

/// How an incoming body (a response's or a request's) is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum BodyFraming {
    /// This many bytes still to come.
    Length(u64),
    /// Chunked, in this state.
    Chunked(Chunked),
    /// Up to the end of the stream.
    Close,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Chunk {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk, with this many bytes left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk, at the trailer section.
    Trailers,
    /// Past the end.
    Done,
}

/// A chunked body's decoder state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Chunked {
    pub(crate) at: Chunk,
    /// How many bytes of the line or trailer section being waited for were already scanned for
    /// its end (a piece that arrives is scanned, not what came before it).
    scanned: u32,
    /// Chunk-extension bytes in the body so far.
    exts: u32,
}

impl BodyFraming {
    /// A chunked body, from its start.
    pub(crate) const CHUNKED: Self = Self::Chunked(Chunked { at: Chunk::Size, scanned: 0, exts: 0 });

    pub(crate) fn is_done(self) -> bool {
        matches!(self, Self::Length(0) | Self::Chunked(Chunked { at: Chunk::Done, .. }))
    }
}

/// Whether `b` may be in a token (RFC 9110 §5.6.2).
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A chunk-size line without its LF (`1a;name="v"\r`): the size and how many bytes of
/// extensions (everything after the digits) it has, if the line is valid.
pub(crate) fn chunk_line(line: &[u8]) -> Option<(u64, usize)> {
    let line = line.strip_suffix(b"\r")?;
    let digits = line.iter().position(|b| !b.is_ascii_hexdigit()).unwrap_or(line.len());
    if digits == 0 || digits > 16 {
        return None;
    }
    let size = line[..digits]
        .iter()
        .try_fold(0u64, |n, &b| Some(n << 4 | u64::from(char::from(b).to_digit(16)?)))?;
    let exts = &line[digits..];
    valid_extensions(exts).then_some((size, exts.len()))
}

/// `*( BWS ";" BWS name [ BWS "=" BWS value ] ) BWS`. The trailing BWS is not RFC 9112's, but
/// hyper, nginx and Go take it, and it cannot move where a chunk ends.
fn valid_extensions(s: &[u8]) -> bool {
    let ws = |i: &mut usize| {
        while s.get(*i).is_some_and(|&b| b == b' ' || b == b'\t') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while s.get(*i).copied().is_some_and(is_tchar) {
            *i += 1;
        }
        *i > start
    };
    let mut i = 0;
    loop {
        ws(&mut i);
        match s.get(i) {
            None => return true,
            Some(b';') => i += 1,
            Some(_) => return false,
        }
        ws(&mut i);
        if !token(&mut i) {
            return false;
        }
        ws(&mut i);
        if s.get(i) != Some(&b'=') {
            continue;
        }
        i += 1;
        ws(&mut i);
        if s.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match s.get(i) {
                    Some(b'"') => break,
                    // quoted-pair: HTAB / SP / VCHAR / obs-text after the backslash.
                    Some(b'\\') if s.get(i + 1).is_some_and(|&b| b == b'\t' || b >= b' ' && b != 0x7f) => {
                        i += 1
                    }
                    // qdtext: HTAB / SP / VCHAR but `"` and `\` / obs-text.
                    Some(&b) if b == b'\t' || (b >= b' ' && b != 0x7f && b != b'\\') => {}
                    _ => return false,
                }
                i += 1;
            }
            i += 1;
        } else if !token(&mut i) {
            return false;
        }
    }
}

/// Trailer fields passed on; any other is dropped. An allow-list, not a deny-list: a trailer is
/// sent after the head every hop has checked, so a field that routes, frames, authenticates or
/// that a proxy reserves for itself (which this engine cannot know) must never get in that way.
/// These are the fields whose definitions allow them as trailers.
pub(crate) fn trailer_allowed(name: &HeaderName) -> bool {
    matches!(name.as_str(), "content-digest" | "repr-digest" | "digest" | "server-timing")
}

/// Where the section of header lines at the start of `buf` ends (past its empty line), looking
/// only at what follows the first `*scanned` bytes (then all of them). Every line must end with
/// CRLF. `Ok(None)`: not yet complete.
pub(crate) fn section_end(buf: &[u8], scanned: &mut usize) -> Result<Option<usize>, &'static str> {
    let from = *scanned;
    *scanned = buf.len();
    work::add(buf.len() - from);
    for i in memchr::memchr_iter(b'\n', &buf[from..]) {
        let lf = from + i;
        if lf == 0 || buf[lf - 1] != b'\r' {
            return Err("a line ends with a bare LF");
        }
        // An empty line: the section's first, or one right after the previous line's end.
        if lf == 1 || buf[lf - 2] == b'\n' {
            return Ok(Some(lf + 1));
        }
    }
    Ok(None)
}

/// Reads more, failing with `early` at the end of the stream.
fn more<S: Fill>(
    src: &mut S,
    cx: &mut Context<'_>,
    want: u64,
    early: &'static str,
) -> Poll<Result<(), ReadError>> {
    let n = ready!(src.poll_fill(cx, usize::try_from(want).unwrap_or(usize::MAX))).map_err(ReadError::Io)?;
    Poll::Ready(if n == 0 { Err(ReadError::Framing(early)) } else { Ok(()) })
}

/// Decodes the next frame of a body from `src`. `None` at its end.
pub(crate) fn decode<S: Fill>(
    src: &mut S,
    framing: &mut BodyFraming,
    cx: &mut Context<'_>,
) -> Poll<Result<Option<Frame<Bytes>>, ReadError>> {
    loop {
        match framing {
            BodyFraming::Length(0) | BodyFraming::Chunked(Chunked { at: Chunk::Done, .. }) => {
                return Poll::Ready(Ok(None));
            }
            BodyFraming::Length(left) | BodyFraming::Chunked(Chunked { at: Chunk::Data(left), .. }) => {
                if src.buffer().is_empty() {
                    ready!(more(src, cx, *left, S::EARLY))?;
                }
                let take = src.buffer().len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= take as u64;
                if let BodyFraming::Chunked(c @ Chunked { at: Chunk::Data(0), .. }) = framing {
                    c.at = Chunk::DataEnd;
                }
                return Poll::Ready(Ok(Some(Frame::data(src.buffer().split_to(take).freeze()))));
            }
            BodyFraming::Close => {
                if src.buffer().is_empty() {
                    let n = ready!(src.poll_fill(cx, READ_MAX)).map_err(ReadError::Io)?;
                    if n == 0 {
                        return Poll::Ready(Ok(None));
                    }
                }
                return Poll::Ready(Ok(Some(Frame::data(src.buffer().split().freeze()))));
            }
            BodyFraming::Chunked(c) => {
                if let Some(frame) = ready!(chunked_step(src, c, cx))? {
                    return Poll::Ready(Ok(Some(frame)));
                }
            }
        }
    }
}

/// One step of a chunked body outside its data: a size line, the CRLF after data, the trailer
/// section (whose fields come back as a frame).
fn chunked_step<S: Fill>(
    src: &mut S,
    c: &mut Chunked,
    cx: &mut Context<'_>,
) -> Poll<Result<Option<Frame<Bytes>>, ReadError>> {
    let bad = |why| Poll::Ready(Err(ReadError::Framing(why)));
    match c.at {
        Chunk::Size => {
            let buf = src.buffer();
            let from = c.scanned as usize;
            work::add(buf.len() - from);
            let Some(lf) = memchr::memchr(b'\n', &buf[from..]).map(|i| from + i) else {
                if buf.len() > MAX_CHUNK_LINE {
                    return bad("chunk size line too long");
                }
                c.scanned = buf.len() as u32;
                ready!(more(src, cx, 0, S::EARLY))?;
                return Poll::Ready(Ok(None));
            };
            if lf > MAX_CHUNK_LINE {
                return bad("chunk size line too long");
            }
            let Some((size, exts)) = chunk_line(&buf[..lf]) else { return bad("invalid chunk size line") };
            c.exts += exts as u32;
            if c.exts as usize > MAX_CHUNK_EXTS {
                return bad("too many chunk extension bytes");
            }
            buf.advance(lf + 1);
            c.scanned = 0;
            c.at = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
        }
        Chunk::DataEnd => {
            let buf = src.buffer();
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                c.at = Chunk::Size;
            } else if buf.is_empty() || buf[..] == *b"\r" {
                ready!(more(src, cx, 0, S::EARLY))?;
            } else {
                return bad("chunk data not followed by CRLF");
            }
        }
        Chunk::Trailers => {
            let buf = src.buffer();
            let mut scanned = c.scanned as usize;
            let end =
                section_end(buf, &mut scanned).map_err(|_| ReadError::Framing("invalid trailer section"))?;
            c.scanned = scanned as u32;
            let Some(end) = end.filter(|&end| end <= MAX_TRAILERS) else {
                if end.is_some() || buf.len() > MAX_TRAILERS {
                    return bad("trailer section too large");
                }
                ready!(more(src, cx, 0, S::EARLY))?;
                return Poll::Ready(Ok(None));
            };
            let trailers = parse_trailers(&buf[..end])?;
            buf.advance(end);
            c.at = Chunk::Done;
            return Poll::Ready(Ok(trailers.map(Frame::trailers)));
        }
        Chunk::Data(_) | Chunk::Done => unreachable!("decode handles data and the end"),
    }
    Poll::Ready(Ok(None))
}

/// The allowed fields of a complete trailer section ([`trailer_allowed`]); `None` if none is.
fn parse_trailers(section: &[u8]) -> Result<Option<HeaderMap>, ReadError> {
    let invalid = ReadError::Framing("invalid trailer section");
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    work::add(section.len());
    let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(section, &mut fields) else {
        return Err(invalid);
    };
    let mut trailers: Option<HeaderMap> = None;
    for f in fields {
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(f.name.as_bytes()), HeaderValue::from_bytes(f.value))
        else {
            return Err(ReadError::Framing("invalid trailer field"));
        };
        if trailer_allowed(&name) {
            trailers.get_or_insert_default().append(name, value);
        } else {
            tracing::debug!(%name, "trailer field dropped");
        }
    }
    Ok(trailers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::mem::{Decoded, MemSource, decode_all};
    use crate::wire::work;

    /// Decodes `body` arriving whole, and byte by byte: both give the same, which is returned
    /// (an error as its message).
    fn decoded(body: &[u8]) -> Result<Decoded, String> {
        let whole = decode_all(&mut MemSource::new(body, usize::MAX), BodyFraming::CHUNKED);
        let bytes = decode_all(&mut MemSource::new(body, 1), BodyFraming::CHUNKED);
        let (whole, bytes) = (whole.map_err(|e| e.to_string()), bytes.map_err(|e| e.to_string()));
        assert_eq!(whole, bytes, "{:?}", String::from_utf8_lossy(body));
        whole
    }

    fn data(body: &[u8]) -> Result<String, String> {
        decoded(body).map(|(data, _)| String::from_utf8(data).unwrap())
    }

    #[test]
    fn chunk_lines_follow_rfc_9112s_grammar() {
        for (line, parsed) in [
            (&b"0\r"[..], Some((0, 0))),
            (b"1a\r", Some((26, 0))),
            (b"FFFF;ext=\"v\"\r", Some((65535, 8))),
            (b"10 ;x\r", Some((16, 3))),
            (b"5 ; a = b ; c ;d=\"q \\\" \\\\\"\r", Some((5, 25))),
            (b"5;a=\"\"\r", Some((5, 5))),
            (b"5;!#$%&'*+-.^_`|~09azAZ\r", Some((5, 22))),
            (b"5;a=\"\x80\xff\"\r", Some((5, 7))),
            // Whitespace after the size or an extension: tolerated (hyper, nginx, Go).
            (b"5 \r", Some((5, 1))),
            (b"ffffffffffffffff\r", Some((u64::MAX, 0))),
            (b"1ffffffffffffffff\r", None),
            (b"00000000000000001\r", None),
            (b"\r", None),
            (b"-1\r", None),
            (b"1x\r", None),
            (b"0x10\r", None),
            // Without its CR.
            (b"5", None),
            (b"5;a", None),
            // F6: what may follow the size is only BWS ";" and an extension.
            (b"5 xyz\r", None),
            (b"5 6\r", None),
            (b"5;a\rb\r", None),
            (b"5;\0\r", None),
            (b"5;a=\"\x01\r", None),
            (b"5;a=\"unclosed\r", None),
            (b"5;a=\"x\\\x01\"\r", None),
            (b"5;\r", None),
            (b"5;a=\r", None),
            (b"5;a=b c\r", None),
            (b"5;a@b\r", None),
            (b"5,a\r", None),
        ] {
            assert_eq!(chunk_line(line), parsed, "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_allowed_trailers() {
        assert_eq!(data(b"5\r\nhello\r\n0\r\n\r\n"), Ok("hello".into()));
        assert_eq!(data(b"3;x=y\r\nabc\r\n2 ; q=\"a;b\"\r\nde\r\n0\r\n\r\n"), Ok("abcde".into()));
        let (body, trailers) = decoded(b"1\r\na\r\n0\r\nserver-timing: db;dur=5\r\n\r\n").unwrap();
        assert_eq!((body, trailers.unwrap()["server-timing"].to_str().unwrap()), (b"a".to_vec(), "db;dur=5"));
        assert_eq!(decoded(b"0\r\n\r\n"), Ok((Vec::new(), None)));
    }

    /// F6: the review's proofs of concept, and their kin: a line ended by a bare LF, or an
    /// extension that is not one, is refused.
    #[test]
    fn a_bare_lf_or_an_invalid_extension_is_refused() {
        // EXT.TERM: a front end that takes `;\n` for the start of an extension sees one request.
        let smuggled = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a\r\ncontent-length: 7\r\n\r\n";
        let mut ext_term = format!("{:x};\n", smuggled.len()).into_bytes();
        ext_term.extend(std::iter::repeat_n(b'x', smuggled.len()));
        ext_term.extend_from_slice(b"\r\n");
        ext_term.extend_from_slice(smuggled);
        ext_term.extend_from_slice(b"\r\n0\r\n\r\n");
        for (body, why) in [
            (&ext_term[..], "invalid chunk size line"),
            (b"5\nhello\n0\n\n", "invalid chunk size line"),
            (b"5\r\nhello\n0\r\n\r\n", "chunk data not followed by CRLF"),
            (b"5\r\nhello\rX0\r\n\r\n", "chunk data not followed by CRLF"),
            (b"5\r\nhelloX\r\n0\r\n\r\n", "chunk data not followed by CRLF"),
            (b"5 xyz\r\nhello\r\n0\r\n\r\n", "invalid chunk size line"),
            (b"5 6\r\nhello\r\n0\r\n\r\n", "invalid chunk size line"),
            (b"5;a\rb\r\nhello\r\n0\r\n\r\n", "invalid chunk size line"),
            (b"5;\0\r\nhello\r\n0\r\n\r\n", "invalid chunk size line"),
            (b"5;a=\"\x01\r\nhello\r\n0\r\n\r\n", "invalid chunk size line"),
            (b"0\n\r\n", "invalid chunk size line"),
            // In the trailer section too.
            (b"0\r\nserver-timing: a\n\r\n", "invalid trailer section"),
            (b"0\r\n\n", "invalid trailer section"),
            (b"0\r\nserver-timing: a\r\n\n", "invalid trailer section"),
            (b"0\r\nbad trailer\r\n\r\n", "invalid trailer section"),
            (b"5\r\nhel", "the input ended before the body's end"),
        ] {
            assert_eq!(data(body), Err(why.into()), "{:?}", String::from_utf8_lossy(body));
        }
    }

    /// F11: a trailer is sent after the head every hop checked; only fields whose definitions
    /// allow them as trailers pass.
    #[test]
    fn trailer_fields_that_frame_route_or_authenticate_are_dropped() {
        let body =
            b"5\r\nhello\r\n0\r\ncontent-length: 999\r\ntransfer-encoding: chunked\r\nhost: evil.example\r\n\
            k-proxy-request: activator\r\nx-ikukantai-origin: forged\r\nauthorization: Bearer x\r\n\
            cookie: a=b\r\nconnection: close\r\ntrailer: x\r\ncontent-type: text/evil\r\n\
            content-digest: sha-256=:x:\r\n\r\n";
        let (data, trailers) = decoded(body).unwrap();
        assert_eq!(data, b"hello");
        let names: Vec<&str> = trailers.iter().flat_map(|t| t.keys()).map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-digest"]);
        // Nothing allowed: no trailers frame at all.
        assert_eq!(decoded(b"0\r\nhost: evil\r\nx-any: 1\r\n\r\n"), Ok((Vec::new(), None)));
    }

    /// F9: extension bytes are capped per line and per body; trailers per body.
    #[test]
    fn extensions_and_trailers_are_bounded() {
        let long_line = format!("1;{}\r\na\r\n0\r\n\r\n", "a".repeat(MAX_CHUNK_LINE));
        assert_eq!(data(long_line.as_bytes()), Err("chunk size line too long".into()));
        // Many 1-byte chunks, each with 1000 bytes of extension: the body may carry 8 KiB of them.
        let chunk = format!("1;{}\r\nA\r\n", "a".repeat(998));
        let under = format!("{}0\r\n\r\n", chunk.repeat(MAX_CHUNK_EXTS / 1000));
        assert_eq!(data(under.as_bytes()), Ok("A".repeat(MAX_CHUNK_EXTS / 1000)));
        let over = format!("{}0\r\n\r\n", chunk.repeat(MAX_CHUNK_EXTS / 1000 + 1));
        assert_eq!(data(over.as_bytes()), Err("too many chunk extension bytes".into()));
        let trailers = format!("0\r\nserver-timing: {}\r\n\r\n", "a".repeat(MAX_TRAILERS));
        assert_eq!(data(trailers.as_bytes()), Err("trailer section too large".into()));
        // Trickled, without its end: refused once past the limit, not waited for.
        let trickled = format!("0\r\nserver-timing: {}", "a".repeat(MAX_TRAILERS));
        let result = decode_all(&mut MemSource::new(trickled.as_bytes(), 1), BodyFraming::CHUNKED);
        assert_eq!(result.unwrap_err().to_string(), "trailer section too large");
    }

    /// F10 (b): a trailer section (or a size line) that comes a byte at a time used to be parsed
    /// again from its start at every byte (about 32 million bytes looked at for this one).
    #[test]
    fn trickled_lines_and_trailers_cost_work_linear_in_their_size() {
        let mut body = format!("1;{}\r\nA\r\n0\r\n", "e".repeat(MAX_CHUNK_LINE - 10)).into_bytes();
        body.extend_from_slice(
            format!("server-timing: {}\r\n\r\n", "a".repeat(MAX_TRAILERS - 40)).as_bytes(),
        );
        work::take();
        let (data, trailers) = decode_all(&mut MemSource::new(&body, 1), BodyFraming::CHUNKED).unwrap();
        assert_eq!((data, trailers.is_some()), (b"A".to_vec(), true));
        let work = work::take();
        assert!(work <= 2 * body.len(), "{work} bytes looked at for {}", body.len());
    }

    #[test]
    fn random_chunkings_and_splits_decode_to_the_body() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        for case in 0..200 {
            let body: Vec<u8> = (0..rng.random_range(0..2000)).map(|i| (i % 251) as u8).collect();
            let mut wire = Vec::new();
            for piece in body.chunks(rng.random_range(1..300)) {
                let ext = ["", ";x=y", " ; a=\"b c\"", "\t;k"][rng.random_range(0..4)];
                wire.extend_from_slice(format!("{:x}{ext}\r\n", piece.len()).as_bytes());
                wire.extend_from_slice(piece);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let step = rng.random_range(1..40);
            let got = decode_all(&mut MemSource::new(&wire, step), BodyFraming::CHUNKED).unwrap();
            assert_eq!(got, (body, None), "case {case}, pieces of {step}");
        }
    }
}
