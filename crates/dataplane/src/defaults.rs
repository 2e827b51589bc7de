//! The request path's limits, in one place: both runtimes (the local fleet and the Kubernetes
//! gateway and sidecar) and the benchmarks use these.

/// Requests a gateway's activator queues per revision before it answers 503: Knative's activator
/// allows as many (its breaker queue depth), and the gateway's memory at that depth is measured
/// (`ikukantai-bench rss`).
pub const GATEWAY_QUEUE_DEPTH: usize = 10_000;

/// Largest request head a gateway or queue proxy reads (431 beyond): room for large cookies and
/// tokens, while no client makes either buffer an unbounded head.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Largest request body a gateway forwards (413 beyond): ample for a function's request, while no
/// client streams an unbounded body through the fleet.
pub const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
