//! `rss`: the gateway's resident memory, idle and with requests buffered in its activator queue.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::bail;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::harness::{HOST, Procs, free_port, me, rss_kib, sample, scrape, wait_for};

pub(crate) fn rss(buffered: usize, h2_connections: Option<usize>) -> anyhow::Result<()> {
    let listen = free_port()?;
    let admin = free_port()?;
    let mut procs = Procs(Vec::new());
    procs.0.push(
        Command::new(me()?)
            .args([
                "gateway",
                "--listen",
                &listen.to_string(),
                "--admin",
                &admin.to_string(),
                "--threads",
                "1",
            ])
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_for(listen)?;
    let pid = procs.0[0].id();
    std::thread::sleep(Duration::from_millis(300));
    let idle = rss_kib(pid)?;
    // Open the requests; none can be served (no instance), so all wait in the activator queue.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let waiting = rt.block_on(async {
        let mut held = Vec::with_capacity(buffered);
        match h2_connections {
            None => {
                for _ in 0..buffered {
                    let stream = tokio::net::TcpStream::connect(listen).await?;
                    let (mut sender, conn) =
                        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                    tokio::spawn(conn);
                    let req = Request::get("/").header("host", HOST).body(Full::new(Bytes::new()))?;
                    held.push(tokio::spawn(async move { sender.send_request(req).await.map(drop) }));
                }
            }
            Some(connections) => {
                let per = buffered.div_ceil(connections.max(1));
                for c in 0..connections {
                    let stream = tokio::net::TcpStream::connect(listen).await?;
                    let (sender, conn) =
                        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                            .await?;
                    tokio::spawn(conn);
                    for _ in 0..per.min(buffered - c * per) {
                        let mut sender = sender.clone();
                        let req = Request::get(format!("http://{HOST}/")).body(Full::new(Bytes::new()))?;
                        held.push(tokio::spawn(async move { sender.send_request(req).await.map(drop) }));
                    }
                }
            }
        }
        // Wait until the gateway reports them all buffered.
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build::<_, Full<Bytes>>(hyper_util::client::legacy::connect::HttpConnector::new());
        for _ in 0..600 {
            let text = scrape(&client, admin).await?;
            let n = sample(&text, "ikukantai_gateway_buffered_requests").unwrap_or(0.0) as usize;
            if n >= buffered {
                return Ok::<_, anyhow::Error>((held, n));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the gateway never reported {buffered} buffered requests")
    })?;
    let loaded = rss_kib(pid)?;
    println!("| state | gateway RSS |");
    println!("|---|---|");
    println!("| idle | {:.1} MiB |", idle as f64 / 1024.0);
    let how = h2_connections.map_or_else(
        || "one HTTP/1.1 connection each".to_owned(),
        |c| format!("h2c streams over {c} connections"),
    );
    println!("| {} requests buffered, {how} | {:.1} MiB |", waiting.1, loaded as f64 / 1024.0);
    drop(waiting);
    Ok(())
}
