//! ikukantai's HTTP/1.1 engine, the riskiest code the platform owns: everything a client sends
//! is parsed here. It knows nothing of services, policies or metrics.
//!
//! - [`server`]: a listener that tells HTTP/1.1 from h2c by the first bytes, serves HTTP/1.1
//!   with [`h1`] and h2c with hyper, and drains gracefully;
//! - [`h1`]: one HTTP/1.1 server connection and the [`h1::Handler`] its requests go to;
//! - [`pool`]: reused connections to one upstream and our HTTP/1.1 client over them, reaching
//!   the upstream through a [`connect::Connect`];
//! - [`upgrade`]: the hand-over of connections that switch protocols;
//! - [`body`], [`proxy`], [`peer`]: bodies, limits and deadlines; what a proxy does to heads;
//!   the client end of a connection;
//! - [`error`]: an error with its causes on one line.
//!
//! The wire format both directions share (framing, the chunked decoder, the writer) is private.

pub mod body;
pub mod connect;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod h1;
pub mod peer;
pub mod pool;
pub mod proxy;
pub mod server;
pub mod upgrade;
mod wire;
