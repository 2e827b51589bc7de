//! TCP keepalive on the connections the data plane opens (gateway → queue proxy, queue proxy →
//! instance), so that a peer that vanished without a FIN or RST (a NAT or a node gone) is found
//! out: a tunnel over such a connection would otherwise hold its containerConcurrency slot for
//! ever. The client's side of a tunnel is the HTTP engine's socket (see docs/dataplane.md).

use std::net::SocketAddr;
use std::time::Duration;

use ikukantai_http::connect::{Connect, Connecting, Stream};
use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Quiet time before the first probe, and between probes: Go's `net.Dialer` defaults (15 s,
/// 15 s, 9 probes), which Knative's activator and queue proxy run with.
const IDLE: Duration = Duration::from_secs(15);
const INTERVAL: Duration = Duration::from_secs(15);
const RETRIES: u32 = 9;

/// A connector whose TCP connections have keepalive on (best effort: a socket that refuses it
/// is used as it is).
#[derive(Debug, Clone)]
pub(crate) struct KeepAlive<C>(pub(crate) C);

impl<C: Connect> Connect for KeepAlive<C> {
    fn connect(&self, addr: SocketAddr) -> Connecting<'_> {
        Box::pin(async move {
            let stream = self.0.connect(addr).await?;
            if let Stream::Tcp(s) = &stream {
                set(s);
            }
            Ok(stream)
        })
    }
}

fn set(s: &TcpStream) {
    let params = TcpKeepalive::new().with_time(IDLE).with_interval(INTERVAL).with_retries(RETRIES);
    if let Err(e) = SockRef::from(s).set_tcp_keepalive(&params) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
}

#[cfg(test)]
mod tests {
    use ikukantai_http::connect::Direct;
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn connections_opened_have_keepalive_on() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = KeepAlive(Direct).connect(listener.local_addr().unwrap()).await.unwrap();
        let Stream::Tcp(s) = stream else { panic!("a TCP stream") };
        let sock = SockRef::from(&s);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), IDLE);
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), INTERVAL);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), RETRIES);
    }
}
