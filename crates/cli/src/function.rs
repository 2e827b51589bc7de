//! The demo function, like the original's `shuka` app: `/` answers
//! "`$TARGET` from `$PODNAME` in `$NODENAME`" (TARGET defaults to Konnichiwa), `/sleep/<ms>` sleeps
//! (fractions allowed) then answers, `/nodename` answers the node name. Listens on `$PORT` (default 8080) and stops
//! cleanly on SIGTERM.

use std::convert::Infallible;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

async fn hello(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let node = env("NODENAME", "unknown-node");
    let text = if let Some(ms) = path.strip_prefix("/sleep/") {
        match ms.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => {
                tokio::time::sleep(Duration::from_secs_f64(v / 1e3)).await;
                format!("slept {ms}ms in {}\n", env("PODNAME", "hello"))
            }
            _ => {
                let mut r = Response::new(Full::new(Bytes::from(format!(
                    "{ms:?} is not a number of milliseconds\n"
                ))));
                *r.status_mut() = StatusCode::BAD_REQUEST;
                return r;
            }
        }
    } else if path == "/nodename" {
        format!("{node}\n")
    } else {
        format!("{} from {} in {node}\n", env("TARGET", "Konnichiwa"), env("PODNAME", "hello"))
    };
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert("app", http::HeaderValue::from_static("ikukantai-hello"));
    r
}

pub(crate) async fn run(name: &str) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(name == "hello", "unknown function {name:?}; built in: hello");
    let port: u16 = env("PORT", "8080").parse().map_err(|_| anyhow::anyhow!("PORT must be a port number"))?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let svc = service_fn(|req| async move { Ok::<_, Infallible>(hello(req).await) });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
            _ = term.recv() => return Ok(ExitCode::SUCCESS),
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}
