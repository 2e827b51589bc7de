//! The ikukantai request path.
//!
//! - [`link`]: user-space emulated links between nodes (delay, jitter, bandwidth);
//! - [`timer`]: the sub-millisecond timer the links use.

pub mod body;
pub mod breaker;
pub mod connect;
pub mod gateway;
pub mod h1;
pub mod link;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod queue_proxy;
mod recycling_timer;
pub mod server;
pub mod stats;
pub mod timer;
pub mod upgrade;
mod wire;
