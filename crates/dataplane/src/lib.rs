//! The ikukantai request path, the product on top of the HTTP engine (`ikukantai-http`) and the
//! emulated links (`ikukantai-link`).
//!
//! - [`gateway`]: one per node — routes by host, the activator queue, the balancer, feedback;
//! - [`queue_proxy`]: one per instance — containerConcurrency, readiness, timeouts, drain;
//! - `breaker`, `stats` (private): the concurrency limit and its queue; time-weighted stats;
//! - [`monitor`]: a gateway's latency monitor (probes planned per node, spread over time);
//! - [`metrics`]: Prometheus metrics of both; [`headers`]: what they say to each other;
//! - [`edge`]: what the gateway believes of clients and lets through (upgrades, forwarding
//!   headers, its own response headers, quiet tunnels);
//! - [`defaults`]: the limits both runtimes apply (queue depth, head and body sizes).

mod breaker;
pub mod defaults;
pub mod edge;
pub mod gateway;
pub mod headers;
pub mod metrics;
pub mod monitor;
pub mod queue_proxy;
mod recycling_timer;
mod stats;
mod tunnels;
