//! The policy core of ikukantai: pure, IO-free, deterministic algorithms.
//!
//! Nothing in this crate reads a clock, touches the network or the disk, or draws unseeded
//! randomness: time comes in as an argument (`now: Instant`), randomness from a seed. The same code
//! runs in the gateway, the controller and the benchmarks, and is unit- and property-tested.
//!
//! - [`autoscaler`]: Knative's KPA, plus demand per origin node;
//! - [`balance`]: load balancers (`even`, `faast`, `ert`);
//! - [`placement`]: instances per node (`spread`, `yukari`, `nearest`);
//! - [`queue`]: queue disciplines (`fifo`, `priority`, `edf`);
//! - [`estimate`]: EWMA, peak-EWMA, the RTT matrix and Vivaldi network coordinates;
//! - [`probe`]: which peers a node probes, and when;
//! - [`gateway`]: a gateway's view of a revision's instances, its pick and its feedback;
//! - [`stats`]: time-weighted request statistics, what the autoscaler is fed;
//! - [`occupancy`]: a revision's instances and room per node;
//! - [`registry`]: policies by name.

pub mod autoscaler;
pub mod balance;
pub mod estimate;
pub mod gateway;
pub mod occupancy;
pub mod placement;
pub mod probe;
pub mod queue;
pub mod registry;
pub mod scaler;
pub mod stats;
