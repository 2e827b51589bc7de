//! The gateway against what clients send: raw bytes in, exact answers out (issue #23's
//! product-level rows; the review's findings are named F<n>).

mod common;

use std::sync::Arc;

use common::*;
use ikukantai_dataplane::gateway::{GatewayConfig, NoEvents};
use tokio::io::AsyncWriteExt;

const HOST: &str = "hello.default.example.com";
const BUFFERED: &str = "ikukantai_gateway_buffered_requests{";

/// F4: clients that send a request for a cold revision and hang up leave its activator queue, so
/// that its depth counts only live waiters and later requests are not refused as `queue_full`.
#[tokio::test]
async fn clients_that_hang_up_while_the_revision_is_cold_leave_the_activator_queue() {
    let mut config = GatewayConfig::single("node1");
    config.queue_depth = 2;
    let gw = gateway(config, Arc::new(NoEvents)).await;
    gw.set_routes(&hello_routes(vec![revision("hello-00001", 0, vec![])], all_to("hello-00001"))).unwrap();
    let (addr, admin) = (gw.addr(), gw.admin_addr());
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    // Ten clients, two at a time (the queue's depth): each sends and hangs up.
    for _ in 0..5 {
        let mut clients = Vec::new();
        for _ in 0..2 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            clients.push(s);
        }
        until_gauge(admin, BUFFERED, 2, "both wait").await;
        drop(clients);
        until_gauge(admin, BUFFERED, 0, "clients that hung up still count as waiting").await;
    }
    // A later request waits rather than being refused, and is served once an instance is ready.
    let later = tokio::spawn(async move {
        raw(addr, format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes()).await
    });
    until_gauge(admin, BUFFERED, 1, "the later request waits").await;
    let i = instance("cold-a", "node1", "hello-00001", 0).await;
    gw.set_routes(&hello_routes(
        vec![revision("hello-00001", 0, vec![route("cold-a", 0, i.qp.addr())])],
        all_to("hello-00001"),
    ))
    .unwrap();
    let answer = later.await.unwrap();
    assert_eq!(status_and_body(&answer), ("HTTP/1.1 200 OK", "Konnichiwa from cold-a"), "{answer}");
    until_gauge(admin, BUFFERED, 0, "served").await;
}
