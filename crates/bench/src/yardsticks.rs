//! Yardsticks, not products: the least reverse proxy hyper allows (`hyper-floor`) and the least
//! one tokio and httparse allow (`raw-floor`), to tell their costs from ours.

use std::net::SocketAddr;
use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::harness::serve_each;

pub(crate) async fn hyper_floor(listen: SocketAddr, backend: SocketAddr) -> anyhow::Result<()> {
    serve_each(listen, move |stream| async move {
        let Ok(upstream) = tokio::net::TcpStream::connect(backend).await else { return };
        let _ = upstream.set_nodelay(true);
        let Ok((sender, conn)) =
            hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(upstream)).await
        else {
            return;
        };
        tokio::spawn(conn);
        // HTTP/1.1 serves one request at a time per connection: the lock is never contended.
        let sender = Arc::new(tokio::sync::Mutex::new(sender));
        let svc = service_fn(move |req: Request<Incoming>| {
            let sender = sender.clone();
            async move {
                let mut sender = sender.lock().await;
                sender.ready().await?;
                sender.send_request(req).await
            }
        });
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
    })
    .await
}

pub(crate) async fn raw_floor(listen: SocketAddr, backend: SocketAddr) -> anyhow::Result<()> {
    serve_each(listen, move |client| async move {
        // Clients that leave (wrk at the end of a run) reset their connections: not news.
        if let Err(e) = raw_pair(client, backend).await
            && e.kind() == std::io::ErrorKind::InvalidData
        {
            eprintln!("{e}");
        }
    })
    .await
}

/// Reads from `stream` into `buf`; false at end of stream.
pub(crate) async fn read_more(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    use tokio::io::AsyncReadExt;
    buf.reserve(8192);
    Ok(stream.read_buf(buf).await? > 0)
}

fn unsupported(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("raw floor: {what}"))
}

/// One client connection and its upstream connection, request by request.
async fn raw_pair(mut client: tokio::net::TcpStream, backend: SocketAddr) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut upstream = tokio::net::TcpStream::connect(backend).await?;
    upstream.set_nodelay(true)?;
    let (mut request, mut response) = (Vec::new(), Vec::new());
    loop {
        let head = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            if let httparse::Status::Complete(n) =
                req.parse(&request).map_err(|e| unsupported(&e.to_string()))?
            {
                let has_body = req.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("transfer-encoding")
                        || (h.name.eq_ignore_ascii_case("content-length") && h.value != b"0")
                });
                if has_body {
                    return Err(unsupported("request bodies"));
                }
                break n;
            }
            if !read_more(&mut client, &mut request).await? {
                return Ok(());
            }
        };
        upstream.write_all(&request[..head]).await?;
        request.drain(..head);
        let whole = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) =
                resp.parse(&response).map_err(|e| unsupported(&e.to_string()))?
            {
                let length = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                    .ok_or_else(|| unsupported("responses without a Content-Length"))?;
                break n + length;
            }
            if !read_more(&mut upstream, &mut response).await? {
                return Err(unsupported("the backend closed mid-response"));
            }
        };
        while response.len() < whole {
            if !read_more(&mut upstream, &mut response).await? {
                return Err(unsupported("the backend closed mid-body"));
            }
        }
        client.write_all(&response[..whole]).await?;
        response.drain(..whole);
    }
}
