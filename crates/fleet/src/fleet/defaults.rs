//! The fleet's defaults, in one place (the request path's limits are `ikukantai_dataplane::defaults`).

use std::time::Duration;

/// How long an instance's process has between SIGTERM and SIGKILL: its queue proxy has drained
/// it already, so this is only for the process's own cleanup.
pub const TERMINATION_GRACE: Duration = Duration::from_secs(10);

/// How often the control loop runs unasked: what must happen at once (an apply, demand at zero, an
/// instance changing phase) pokes it, so this bounds how late the periodic steps below run.
pub const RECONCILE_PERIOD: Duration = Duration::from_millis(250);

/// How often instances' and gateways' stats reach the autoscalers: one report for each of the
/// autoscaler's 1 s buckets.
pub const STATS_PERIOD: Duration = Duration::from_secs(1);

/// How often the autoscalers and placements decide unpoked: Knative's autoscaler ticks every 2 s.
pub const DECISION_PERIOD: Duration = Duration::from_secs(2);

/// Added to the longest round trip for an instance's stop grace: the hops on either side of the
/// link, which the round trip does not count.
pub const STOP_GRACE_HOPS: Duration = Duration::from_millis(100);
