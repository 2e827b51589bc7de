//! Tests of the module above.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;
use crate::body::full;

/// A backend that counts its connections; `/close` answers and closes the connection, `/slow`
/// streams two chunks 50 ms apart, `/late` answers after 80 ms.
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
                    if path == "/late" {
                        tokio::time::sleep(Duration::from_millis(80)).await;
                    }
                    if path == "/echo" {
                        // The request's framing and body, back.
                        let framing = format!(
                            "{:?} {:?} ",
                            req.headers().get(header::CONTENT_LENGTH),
                            req.headers().get(header::TRANSFER_ENCODING)
                        );
                        let collected = req.into_body().collect().await.unwrap();
                        let trailers = collected.trailers().map(|t| format!(" {t:?}")).unwrap_or_default();
                        let mut text = framing.into_bytes();
                        text.extend_from_slice(&collected.to_bytes());
                        text.extend_from_slice(trailers.as_bytes());
                        return Ok(Response::new(
                            http_body_util::Full::new(Bytes::from(text))
                                .map_err(|never| match never {})
                                .boxed(),
                        ));
                    }
                    let mut resp = match path.as_str() {
                        "/slow" => {
                            let chunks = futures_util::stream::iter([b"a".as_slice(), b"b".as_slice()]).then(
                                |c| async move {
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                    Ok::<_, Infallible>(Frame::data(Bytes::from_static(c)))
                                },
                            );
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
    let up = Upstream::direct(addr);
    for _ in 0..5 {
        assert_eq!(text(up.send(get("/a")).await.unwrap()).await, "/a Some(\"svc.test\")");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(up.idle_count(), 1);
}

#[tokio::test]
async fn concurrent_requests_open_connections_which_are_then_reused() {
    let (addr, accepted) = backend().await;
    let up = Upstream::direct(addr);
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
    let up = Arc::new(Upstream::direct(addr));
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
    let up = Upstream::direct(addr);
    let resp = up.send(get("/slow")).await.unwrap();
    drop(resp);
    assert_eq!(up.idle_count(), 0);
    text(up.send(get("/a")).await.unwrap()).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_not_reused() {
    let (addr, accepted) = backend().await;
    let up = Upstream::direct(addr);
    text(up.send(get("/close")).await.unwrap()).await;
    // Whether it was pooled before hyper saw the close or not, the next request must work.
    assert_eq!(text(up.send(get("/a")).await.unwrap()).await, "/a Some(\"svc.test\")");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_request_without_host_gets_the_upstream_address() {
    let (addr, _) = backend().await;
    let up = Upstream::direct(addr);
    let req = Request::get("/h").body(full("")).unwrap();
    assert_eq!(text(up.send(req).await.unwrap()).await, format!("/h Some({:?})", addr.to_string()));
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error_naming_the_address() {
    let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let up = Upstream::direct(addr);
    let err = up.send(get("/a")).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Connect { .. }), "{err}");
    // The address in the message, the reason (connection refused) once, as its source.
    assert_eq!(err.to_string(), format!("connecting to {addr}"));
    let chain = crate::error::chain(&err);
    assert!(
        chain.starts_with(&format!("connecting to {addr}: ")) && chain.matches(':').count() == 2,
        "{chain}"
    );
}

#[tokio::test]
async fn a_request_that_can_go_again_is_handed_back_whole() {
    // Nothing listening: it never left, body and all.
    let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let up = Upstream::direct(addr);
    let post = Request::post("/").header("host", "svc.test").body(full("payload")).unwrap();
    let back = up.forward_again(post, Forwarding::default()).await.unwrap_err();
    assert!(matches!(back.error, UpstreamError::Connect { .. }), "{:?}", back.error);
    let body = back.request.expect("handed back").into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "payload");
    // Closed before any answer: only a request without a body comes back.
    let (addr, accepted) = scripted(64, |_, _, _| None).await;
    let up = Upstream::direct(addr);
    let back = up.forward_again(get("/"), Forwarding::default()).await.unwrap_err();
    assert!(matches!(back.error, UpstreamError::Exchange { .. }), "{:?}", back.error);
    assert!(back.request.is_some_and(|r| r.method() == Method::GET && r.body().is_end_stream()));
    let post = Request::post("/").header("host", "svc.test").body(full("x")).unwrap();
    assert!(up.forward_again(post, Forwarding::default()).await.unwrap_err().request.is_none());
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "neither was sent twice");
}

/// An upstream that answers from a script: `answer(connection, request on it, request head)`
/// gives the bytes to send back (written `piece` bytes at a time, to split them across
/// reads), or `None` to close the connection instead. Request bodies are read by their
/// Content-Length. Counts connections.
async fn scripted<F>(piece: usize, answer: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(usize, usize, &str) -> Option<Vec<u8>> + Send + Sync + 'static,
{
    scripted_with(piece, false, answer).await
}

/// [`scripted`], closing each connection after its first answer if `once`.
async fn scripted_with<F>(piece: usize, once: bool, answer: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(usize, usize, &str) -> Option<Vec<u8>> + Send + Sync + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let connection = count.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for request in 0.. {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut more = [0u8; 4096];
                        match stream.read(&mut more).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&more[..n]),
                        }
                    };
                    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |n| n.trim().parse::<usize>().unwrap());
                    while buf.len() < end + length {
                        let mut more = [0u8; 4096];
                        match stream.read(&mut more).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&more[..n]),
                        }
                    }
                    buf.drain(..end + length);
                    let Some(reply) = answer(connection, request, &head) else { return };
                    for part in reply.chunks(piece.max(1)) {
                        if stream.write_all(part).await.is_err() {
                            return;
                        }
                        if piece < reply.len() {
                            tokio::task::yield_now().await;
                        }
                    }
                    if once {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// An upstream that answers the first request on each connection with `reply` and closes it.
/// Counts connections.
async fn answer_and_close(reply: &'static [u8]) -> (SocketAddr, Arc<AtomicUsize>) {
    scripted_with(64, true, move |_, _, _| Some(reply.to_vec())).await
}

/// All of a response: its data, and its trailers if any.
async fn frames(resp: Response<PooledBody>) -> Result<(Vec<u8>, Option<HeaderMap>), ExchangeError> {
    let collected = resp.into_body().collect().await?;
    let trailers = collected.trailers().cloned();
    Ok((collected.to_bytes().to_vec(), trailers))
}

#[tokio::test]
async fn chunked_responses_with_extensions_and_trailers_are_decoded_byte_by_byte() {
    let reply = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
        4\r\nWiki\r\n5;name=value\r\npedia\r\nE \r\n in\r\n\r\nchunks.\r\n0\r\nserver-timing: 23\r\n\r\n";
    let (addr, accepted) = scripted(1, move |_, _, _| Some(reply.to_vec())).await;
    let up = Upstream::direct(addr);
    for _ in 0..2 {
        let (data, trailers) = frames(up.send(get("/")).await.unwrap()).await.unwrap();
        assert_eq!(data, b"Wikipedia in\r\n\r\nchunks.");
        assert_eq!(trailers.unwrap()["server-timing"], "23");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "the connection is reused after a chunked body");
}

#[tokio::test]
async fn random_chunkings_and_read_splits_decode_to_the_same_body() {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    for case in 0..40 {
        let body: Vec<u8> = (0..rng.random_range(0..3000)).map(|i| (i % 251) as u8).collect();
        let mut wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec();
        let mut rest = body.as_slice();
        while !rest.is_empty() {
            let n = rng.random_range(1..=rest.len().min(700));
            let ext = if rng.random_bool(0.3) { ";x=y" } else { "" };
            wire.extend_from_slice(format!("{n:X}{ext}\r\n").as_bytes());
            wire.extend_from_slice(&rest[..n]);
            wire.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let piece = rng.random_range(1..64);
        let (addr, _) = scripted(piece, move |_, _, _| Some(wire.clone())).await;
        let up = Upstream::direct(addr);
        let (data, trailers) = frames(up.send(get("/")).await.unwrap()).await.unwrap();
        assert_eq!(data, body, "case {case}, pieces of {piece}");
        assert!(trailers.is_none());
        assert_eq!(up.idle_count(), 1, "case {case}");
    }
}

#[tokio::test]
async fn a_body_up_to_the_close_is_read_whole_and_its_connection_not_kept() {
    let (addr, _) =
        answer_and_close(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end").await;
    let up = Upstream::direct(addr);
    let resp = up.send(get("/")).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_10);
    assert_eq!(frames(resp).await.unwrap().0, b"until the end");
    assert_eq!(up.idle_count(), 0);
}

#[tokio::test]
async fn bodiless_responses_end_at_their_head_and_interim_responses_are_skipped() {
    let (addr, accepted) = scripted(5, |_, request, _| {
        Some(match request {
            // HEAD: the length it would have, no body.
            0 => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".to_vec(),
            1 => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            2 => b"HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n".to_vec(),
            _ => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
                   HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"
                .to_vec(),
        })
    })
    .await;
    let up = Upstream::direct(addr);
    let head = Request::head("/").header("host", "svc.test").body(full("")).unwrap();
    let resp = up.send(head).await.unwrap();
    assert_eq!(resp.headers()["content-length"], "5");
    assert!(resp.body().is_end_stream());
    assert_eq!(frames(resp).await.unwrap().0, b"");
    for status in [204, 304] {
        let resp = up.send(get("/")).await.unwrap();
        assert_eq!(resp.status(), status);
        assert_eq!(frames(resp).await.unwrap().0, b"");
    }
    let resp = up.send(get("/")).await.unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(frames(resp).await.unwrap().0, b"ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_request_that_asks_to_switch_protocols_gets_the_connection_with_the_101() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    // One byte at a time, with the new protocol's first bytes right behind the 101's head.
    let (addr, accepted) = scripted(1, move |_, request, head| {
        seen.lock().push(head.to_owned());
        Some(match request {
            0 => b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\nhi;"
                .to_vec(),
            _ => b"pong".to_vec(),
        })
    })
    .await;
    let up = Upstream::direct(addr);
    let mut req = get("/ws");
    req.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("echo"));
    let resp = up.forward(req, Forwarding { upgrade: true, ..Forwarding::default() }).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()[header::UPGRADE], "echo");
    let head = heads.lock()[0].clone();
    assert!(head.contains("\r\nupgrade: echo\r\n") && head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    let on_upgrade = resp.extensions().get::<OnUpgrade>().cloned().expect("the connection");
    let mut io = on_upgrade.await.unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        let mut b = [0u8; 8];
        let n = io.read(&mut b).await.unwrap();
        got.extend_from_slice(&b[..n]);
    }
    assert_eq!(got, b"hi;", "bytes behind the head are not lost");
    // The connection is ours now (the script takes this for a second head).
    io.write_all(b"ping\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    while got.len() < 4 {
        let mut b = [0u8; 8];
        let n = io.read(&mut b).await.unwrap();
        got.extend_from_slice(&b[..n]);
    }
    assert_eq!(got, b"pong");
    // It never went back to the pool.
    assert_eq!((up.idle_count(), accepted.load(Ordering::SeqCst)), (0, 1));
}

#[tokio::test]
async fn broken_responses_are_errors_that_say_what_broke() {
    let (addr, _) = scripted(64, |_, _, head| {
        let path = head.split(' ').nth(1).unwrap();
        Some(
            match path {
                "/short" => "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
                "/garbage" => "HTTP/1.1 2OO OK\r\n\r\n",
                "/two-lengths" => "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
                "/bad-size" => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "/overlong-chunk" => {
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\n"
                }
                "/switch" => "HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
                _ => return None,
            }
            .as_bytes()
            .to_vec(),
        )
    })
    .await;
    let up = Upstream::direct(addr);
    // The head is fine, the body is not: the error comes with the body, after the data.
    let short = up.send(get("/short")).await.unwrap();
    let mut body = short.into_body();
    assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "abc");
    drop(body);
    for (path, expected) in [
        ("/garbage", "invalid response head: invalid response status"),
        ("/two-lengths", "invalid response head: Content-Length headers that disagree"),
        ("/switch", "invalid response head: 101 Switching Protocols, but no upgrade was asked for"),
        ("/closed", "the upstream closed the connection before a complete response head"),
    ] {
        let err = up.send(get(path)).await.unwrap_err();
        assert_eq!(err.to_string(), expected, "{path}");
    }
    for (path, expected) in [
        ("/bad-size", "response body: invalid chunk size line"),
        ("/overlong-chunk", "response body: chunk data not followed by CRLF"),
    ] {
        let err = frames(up.send(get(path)).await.unwrap()).await.unwrap_err();
        assert_eq!(err.to_string(), expected, "{path}");
    }
}

/// I4 and I1: a 204's length is not passed on; a `close` is not undone by a later `keep-alive`.
#[tokio::test]
async fn a_204_has_no_length_and_a_later_keep_alive_does_not_undo_a_close() {
    let (addr, accepted) = scripted(64, |_, request, _| {
        Some(match request {
            0 => b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n".to_vec(),
            _ => b"HTTP/1.0 200 OK\r\nconnection: close\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok"
                .to_vec(),
        })
    })
    .await;
    let up = Upstream::direct(addr);
    let resp = up.send(get("/")).await.unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.headers().get(header::CONTENT_LENGTH).is_none(), "{:?}", resp.headers());
    assert!(resp.headers().get(header::TRANSFER_ENCODING).is_none(), "{:?}", resp.headers());
    assert_eq!(frames(resp).await.unwrap().0, b"");
    assert_eq!(up.idle_count(), 1, "a 204 ends at its head");
    assert_eq!(frames(up.send(get("/")).await.unwrap()).await.unwrap().0, b"ok");
    assert_eq!(up.idle_count(), 0, "the connection asked to close");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// I3: a request body that fails is the caller's side failing, not the upstream: told apart.
#[tokio::test]
async fn a_failing_request_body_is_its_own_error_not_the_upstreams() {
    let (addr, _) = backend().await;
    let up = Upstream::direct(addr);
    let frames_sent = [
        Ok(Frame::data(Bytes::from_static(b"start"))),
        Err::<Frame<Bytes>, BoxError>("request body: invalid chunk size line".into()),
    ];
    let body = BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames_sent)));
    let err = up.send(Request::post("/echo").body(body).unwrap()).await.unwrap_err();
    assert!(matches!(err, UpstreamError::RequestBody { .. }), "{err:?}");
    assert_eq!(crate::error::chain(&err), "request body: request body: invalid chunk size line");
    // A length the body does not keep to is the caller's too.
    let short = Request::post("/echo").body(crate::body::boxed(LyingLength)).unwrap();
    let err = up.send(short).await.unwrap_err();
    assert!(matches!(err, UpstreamError::RequestBody { .. }), "{err:?}");
    // Over a limit: still found in its source chain.
    let body = crate::body::boxed(crate::body::Limited::new(full("too long"), 3));
    let err = up.send(Request::post("/echo").body(body).unwrap()).await.unwrap_err();
    assert!(matches!(err, UpstreamError::RequestBody { .. }) && crate::body::is_too_large(&err), "{err}");
}

/// A body that says it has 10 bytes and ends after 2.
struct LyingLength;

impl HttpBody for LyingLength {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(None)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(10)
    }
}

#[tokio::test]
async fn a_chunked_body_that_also_claims_a_length_is_read_as_chunked_and_its_connection_dropped() {
    let (addr, accepted) = scripted(64, |_, _, _| {
        Some(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec())
    })
    .await;
    let up = Upstream::direct(addr);
    for _ in 0..2 {
        let resp = up.send(get("/")).await.unwrap();
        assert_eq!(resp.headers().get(header::CONTENT_LENGTH), None);
        assert_eq!(frames(resp).await.unwrap().0, b"hello");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_cut_short_by_the_close_is_an_error() {
    let (addr, _) = answer_and_close(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc").await;
    let up = Upstream::direct(addr);
    let err = frames(up.send(get("/")).await.unwrap()).await.unwrap_err();
    assert_eq!(err.to_string(), "response body: the upstream closed the connection before the body's end");
    assert_eq!(up.idle_count(), 0);
}

#[tokio::test]
async fn request_bodies_go_with_their_length_or_chunked_and_arrive_whole() {
    let (addr, accepted) = backend().await;
    let up = Upstream::direct(addr);
    let post = |body: Body| Request::post("/echo").header("host", "svc.test").body(body).unwrap();
    // Known length (small: one write with the head).
    let (data, _) = frames(up.send(post(full("hello"))).await.unwrap()).await.unwrap();
    assert_eq!(String::from_utf8(data).unwrap(), "Some(\"5\") None hello");
    // Known length, larger than what is copied next to the head.
    let (data, _) = frames(up.send(post(full(vec![b'y'; 50_000]))).await.unwrap()).await.unwrap();
    assert_eq!(data.len(), "Some(\"50000\") None ".len() + 50_000);
    assert!(data.starts_with(b"Some(\"50000\") None yyy") && data.ends_with(b"yyy"));
    // Empty, on a method that defines a body: says so.
    let (data, _) = frames(up.send(post(full(""))).await.unwrap()).await.unwrap();
    assert_eq!(String::from_utf8(data).unwrap(), "Some(\"0\") None ");
    // Unknown length, with a frame large enough to be written on its own in the middle.
    let large = vec![b'x'; 100_000];
    let mut sum = HeaderMap::new();
    sum.insert("x-sum", HeaderValue::from_static("7"));
    sum.insert("server-timing", HeaderValue::from_static("7"));
    let frames_sent = vec![
        Frame::data(Bytes::from_static(b"a")),
        Frame::data(Bytes::from(large.clone())),
        Frame::data(Bytes::from_static(b"z")),
        Frame::trailers(sum),
    ];
    let stream = futures_util::stream::iter(frames_sent.into_iter().map(Ok::<_, BoxError>));
    let (data, _) =
        frames(up.send(post(BodyExt::boxed(StreamBody::new(stream)))).await.unwrap()).await.unwrap();
    let mut expected = b"None Some(\"chunked\") a".to_vec();
    expected.extend_from_slice(&large);
    // Only a field allowed in trailers is sent in them.
    expected.extend_from_slice(b"z {\"server-timing\": \"7\"}");
    assert_eq!(data, expected);
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for all four");
}

#[tokio::test]
async fn a_request_body_over_its_limit_fails_the_exchange_with_that_reason() {
    let (addr, _) = backend().await;
    let up = Upstream::direct(addr);
    let body = crate::body::boxed(crate::body::Limited::new(full("too long"), 3));
    let err = up.send(Request::post("/echo").body(body).unwrap()).await.unwrap_err();
    assert!(crate::body::is_too_large(&err), "{err}");
}

#[tokio::test]
async fn an_upstream_answering_before_the_request_body_ends_is_heard_and_the_connection_not_kept() {
    let (addr, _) =
        scripted(64, |_, _, _| Some(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly".to_vec())).await;
    let up = Upstream::direct(addr);
    // A body with a first frame and then nothing more for as long as the test lasts.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    tx.send(Ok(Frame::data(Bytes::from_static(b"start")))).await.unwrap();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    // No length: the script reads the head (no content-length) and answers at once.
    let req = Request::post("/").body(BodyExt::boxed(StreamBody::new(stream))).unwrap();
    let resp = up.send(req).await.unwrap();
    assert_eq!(frames(resp).await.unwrap().0, b"early");
    assert_eq!(up.idle_count(), 0, "the rest of the request body would be read as the next request");
    drop(tx);
}

#[tokio::test]
async fn a_101_before_the_request_body_is_sent_is_an_error() {
    let (addr, _) = scripted(64, |_, _, _| {
        Some(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n".to_vec())
    })
    .await;
    let up = Upstream::direct(addr);
    // A body that never ends: the script answers after the head.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    tx.send(Ok(Frame::data(Bytes::from_static(b"start")))).await.unwrap();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    let mut req = Request::post("/").body(BodyExt::boxed(StreamBody::new(stream))).unwrap();
    req.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("echo"));
    let err = up.forward(req, Forwarding { upgrade: true, ..Forwarding::default() }).await.unwrap_err();
    assert!(err.to_string().contains("before the request body was sent"), "{err}");
    drop(tx);
}

#[tokio::test]
async fn a_connection_closed_while_idle_is_noticed_before_it_is_used() {
    // Answers, then closes without saying so: the close arrives while the connection idles.
    let (addr, accepted) = answer_and_close(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let up = Upstream::direct(addr);
    assert_eq!(frames(up.send(get("/")).await.unwrap()).await.unwrap().0, b"ok");
    tokio::time::sleep(Duration::from_millis(80)).await;
    // Not idempotent, so never sent twice: it must go out on a new connection at once.
    let post = Request::post("/").header("host", "svc.test").body(full("x")).unwrap();
    assert_eq!(frames(up.send(post).await.unwrap()).await.unwrap().0, b"ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_reused_connection_closed_as_the_request_goes_out_is_retried_only_if_idempotent() {
    // Answers a connection's first request; closes on its second without answering.
    let (addr, accepted) = scripted(64, |_, request, _| {
        (request == 0).then(|| b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec())
    })
    .await;
    let up = Upstream::direct(addr);
    assert_eq!(frames(up.send(get("/")).await.unwrap()).await.unwrap().0, b"ok");
    assert_eq!(frames(up.send(get("/")).await.unwrap()).await.unwrap().0, b"ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "the GET went again on a new connection");
    let post = Request::post("/").header("host", "svc.test").body(full("x")).unwrap();
    let err = up.send(post).await.unwrap_err();
    assert_eq!(err.to_string(), "the upstream closed the connection before a complete response head");
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "the POST was not sent twice");
}
