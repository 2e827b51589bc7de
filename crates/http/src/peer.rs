//! The client end of a server connection.

use std::net::SocketAddr;

use bytes::Bytes;
use http::HeaderValue;

/// The client end of a connection, made once per connection and shared by its requests: what
/// handlers derive from the address is not derived again for every request.
#[derive(Debug, Clone)]
pub struct Peer {
    addr: SocketAddr,
    addr_text: Box<str>,
    ip_header: HeaderValue,
}

impl Peer {
    /// The client at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        // Over `Bytes`, so that each request's copy is a reference count.
        let ip_header = HeaderValue::from_maybe_shared(Bytes::from(addr.ip().to_string()))
            .expect("an IP address is a valid header value");
        Self { addr, addr_text: addr.to_string().into(), ip_header }
    }

    /// The client's address and port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The client's address and port as text (what queue disciplines see as the source).
    pub fn addr_text(&self) -> &str {
        &self.addr_text
    }

    /// The client's IP address as a header value (for `X-Forwarded-For`).
    pub fn ip_header(&self) -> &HeaderValue {
        &self.ip_header
    }
}
