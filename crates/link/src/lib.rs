//! Emulated links between nodes, in user space (the kernel here has no netem).
//!
//! - [`link`]: a link's delay, jitter and bandwidth, applied to every byte crossing it;
//! - [`timer`]: the sub-millisecond timer the links use;
//! - [`connect`]: a node's connector — plain TCP to the local node, through the link to the
//!   others — as the HTTP client's [`ikukantai_http::connect::Connect`], and the RTT probe.

pub mod connect;
pub mod link;
pub mod timer;
