//! The ikukantai control plane and its local runtime: `ikukantai up` runs a whole edge–cloud fleet
//! on one machine.
//!
//! - [`fleet`]: the control plane (services → revisions → autoscaler → placement → instances →
//!   routes) and one gateway per node;
//! - [`agent`]: instances as OS processes with their queue proxies, restarts, logs;
//! - [`lifetime`]: one fleet per state directory; instances die with their fleet, and what a
//!   crashed fleet left running is reaped by the next;
//! - [`monitor`]: RTT between nodes through the emulated links;
//! - [`store`]: atomic persistence under the state directory;
//! - [`api`]: the HTTP API the CLI talks to;
//! - [`view`]: what the API returns.

pub mod agent;
pub mod api;
pub mod fleet;
pub mod lifetime;
pub mod monitor;
pub mod store;
pub mod view;
