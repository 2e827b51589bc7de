//! ikukantai on Kubernetes: the same policy core and data plane, with Kubernetes as the engine.
//!
//! - [`crd`]: Knative's `Service` CRD generated from the local model's types, and our `Placement`.
//! - [`controller`]: reconciles Services into Placements and Pods (autoscaler + placement).
//! - [`gateway`]: the per-node gateway (DaemonSet) that discovers instances by watching Pods.
//! - [`sidecar`]: the queue proxy as a sidecar container, pushing stats to the controller.
//! - [`wire`]: what gateways and sidecars tell the controller.

pub mod controller;
pub mod crd;
pub mod gateway;
pub mod manager;
pub mod pod;
pub mod sidecar;
pub mod wire;
