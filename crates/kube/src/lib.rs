//! ikukantai on Kubernetes: the same policy core and data plane, with Kubernetes as the engine.
//!
//! - [`crd`]: Knative's `Service` CRD generated from the local model's types, and our `Placement`.
//! - [`controller`]: reconciles Services into Placements and Pods (autoscaler + placement).
//! - [`gateway`]: the per-node gateway (DaemonSet) that discovers instances by watching Pods.
//! - [`sidecar`]: the queue proxy as a sidecar container, pushing stats to the controller.
//! - [`wire`]: what gateways and sidecars tell the controller.
//! - [`auth`]: who may tell it (service-account tokens, reviewed by the API server).

pub mod auth;
pub mod controller;
pub mod crd;
pub mod gateway;
pub mod manager;
pub mod pod;
pub mod sidecar;
pub mod wire;

use std::net::SocketAddr;

/// The controller or a gateway process failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// No usable kube config (in-cluster or `~/.kube/config`), or the API server refused.
    #[error("kubernetes client: {0}")]
    Client(#[from] kube::Error),
    /// A listener could not be opened.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The leader-election Lease could not be read or written.
    #[error("leader election (Lease {lease}): {source}")]
    Lease {
        /// The Lease's namespace/name.
        lease: String,
        /// Cause.
        source: kube_lease_manager::LeaseManagerError,
    },
    /// The leader lease was lost (another replica took over, or the election task ended): this
    /// replica stops reconciling and exits so it restarts as a standby.
    #[error("lost the leader lease {0}; exiting so this replica restarts as a standby")]
    LeadershipLost(String),
    /// Knative Serving is installed: its `services.serving.knative.dev` CRD is the one this
    /// platform serves, and two controllers would fight over every Service.
    #[error(
        "Knative Serving is installed (CRD {0} exists): ikukantai serves the same services.serving.knative.dev and must not run beside it"
    )]
    KnativeInstalled(String),
    /// A watch ended before its store ever listed: nothing can be reconciled safely.
    #[error("a watch ended before it listed ({0}); exiting rather than reconcile from empty caches")]
    NotSynced(String),
    /// The gateway's node is not among the cluster's nodes.
    #[error("node {0:?} is not a node of this cluster (set NODE_NAME from spec.nodeName)")]
    UnknownNode(String),
}
