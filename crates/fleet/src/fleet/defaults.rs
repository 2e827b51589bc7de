//! The fleet's defaults, in one place (the request path's limits are `ikukantai_dataplane::defaults`).

use std::time::Duration;

/// How long an instance's process has between SIGTERM and SIGKILL: its queue proxy has drained
/// it already, so this is only for the process's own cleanup.
pub const TERMINATION_GRACE: Duration = Duration::from_secs(10);

/// How often the control loop runs unasked: what must happen at once (an apply, demand at zero, an
/// instance changing phase) pokes it, so this bounds how late the periodic steps below run. A
/// pass with nothing due and every revision at rest does no work per revision.
pub const RECONCILE_PERIOD: Duration = Duration::from_millis(250);

/// How often instances' and gateways' stats reach the autoscalers: one report for each of the
/// autoscaler's 1 s buckets.
pub const STATS_PERIOD: Duration = Duration::from_secs(1);

/// How often the autoscalers and placements decide unpoked: Knative's autoscaler ticks every 2 s.
pub const DECISION_PERIOD: Duration = Duration::from_secs(2);

/// Added to the longest round trip for an instance's stop grace: the hops on either side of the
/// link, which the round trip does not count.
pub const STOP_GRACE_HOPS: Duration = Duration::from_millis(100);

/// How often every revision is visited, at rest or not: a safety net under the event-driven
/// passes (Knative's informers resync rarely too), not how anything is meant to be noticed.
pub const RESYNC_PERIOD: Duration = Duration::from_secs(60);

/// Instance starts under way at once per class (cold starts, and the rest) for each core: a
/// start is mostly CPU (spawning the process, its own start, readiness probes), so more at once
/// only makes each take longer.
pub const STARTS_PER_CORE: usize = 2;

/// Fewest starts under way at once per class, however few the cores.
pub const MIN_CONCURRENT_STARTS: usize = 4;

/// How long a start holds its slot at most: an instance slower to get ready than this (or never
/// ready) keeps starting, but no longer keeps another from beginning.
pub const START_SLOT_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts under way at once per class on this machine.
pub fn concurrent_starts() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    (cores * STARTS_PER_CORE).max(MIN_CONCURRENT_STARTS)
}
