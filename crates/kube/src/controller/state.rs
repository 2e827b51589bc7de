//! What the controller remembers between reconciles: node indices, scalers, RTTs, and how long
//! to hold off after failures.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ikukantai_policy::estimate::RttMatrix;
use ikukantai_policy::scaler::RevisionScaler;

/// How long to wait before trying again after `failures` failures in a row: 2 s, doubling, at
/// most 5 min (like a workqueue's per-item backoff).
pub(super) fn retry_delay(failures: u32) -> Duration {
    let secs = 2u64.saturating_mul(1 << failures.saturating_sub(1).min(16));
    Duration::from_secs(secs.min(300))
}

/// How long a node the scheduler found full for a revision takes none of its new instances.
pub(super) const FULL_NODE_HOLD: Duration = Duration::from_secs(60);

/// How long the scaling state of a revision whose Placement is gone is kept (its Service was
/// deleted, and garbage collection took the rest).
pub(super) const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Demand at zero remembered for revisions without a scaler yet (a new leader's first seconds).
const POKES_KEPT: Duration = Duration::from_secs(60);
/// At most this many revisions' pending demand is kept.
const MAX_POKED: usize = 10_000;

/// Pod creates of one revision the API server refused (admission, quota, validation): the
/// message, and no new attempt before `until`.
#[derive(Debug, Clone)]
pub(super) struct Refused {
    pub(super) failures: u32,
    pub(super) until: Instant,
    pub(super) message: String,
}

/// The RTT assumed between two nodes until measured (ms): on a cluster, nodes are close until
/// measured otherwise.
const PRIOR_RTT_MS: f64 = 1.0;
/// How long a measured RTT stays in use without a newer one.
const RTT_MAX_AGE: Duration = Duration::from_secs(30);

/// Scaling state that lives between reconciles.
#[derive(Debug)]
pub(super) struct ControlState {
    /// Node names by index. An index stays a node's while the autoscalers may hold demand for
    /// it; one gone for [`FORGET_AFTER`] frees its index for the next node that joins, so node
    /// churn (autoscaled or spot pools) does not grow the list, or the RTT matrix, for ever.
    pub(super) nodes: Vec<Option<String>>,
    /// Index → since when its node is gone from the cluster.
    pub(super) gone_since: HashMap<usize, Instant>,
    /// (namespace, revision) → scaler.
    pub(super) scalers: HashMap<(String, String), RevisionScaler>,
    /// RTTs between nodes by index, kept up to date as reports arrive (not rebuilt per
    /// reconcile: n² entries).
    pub(super) rtt: RttMatrix,
    /// (namespace, name) → generation whose Kubernetes Services were applied.
    pub(super) routed: HashMap<(String, String), Option<i64>>,
    /// (namespace, revision) → its last refused Pod create.
    pub(super) refused: HashMap<(String, String), Refused>,
    /// (namespace, revision, node) → until when the node is full for the revision (the
    /// scheduler said so of one of its Pods there).
    pub(super) full: HashMap<(String, String, String), Instant>,
    /// (namespace, revision) → when its scaler last decided.
    pub(super) decided: HashMap<(String, String), Instant>,
    /// (namespace, revision) → demand at zero that arrived before its scaler existed: when, at
    /// which node index.
    pub(super) pokes: HashMap<(String, String), Vec<(Instant, usize)>>,
    /// (namespace, name) → reconciles that failed in a row.
    pub(super) failures: HashMap<(String, String), u32>,
}

impl Default for ControlState {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            gone_since: HashMap::new(),
            scalers: HashMap::new(),
            rtt: RttMatrix::new(0, PRIOR_RTT_MS, RTT_MAX_AGE),
            routed: HashMap::new(),
            refused: HashMap::new(),
            full: HashMap::new(),
            decided: HashMap::new(),
            pokes: HashMap::new(),
            failures: HashMap::new(),
        }
    }
}

impl ControlState {
    /// The index of node `name` (one of the cluster's), taking a free one if it has none yet.
    /// A reused index may keep its old node's RTT samples until they age out (30 s).
    pub(super) fn node_index(&mut self, name: &str) -> usize {
        if let Some(i) = self.index_of(name) {
            return i;
        }
        if let Some(i) = self.nodes.iter().position(Option::is_none) {
            self.nodes[i] = Some(name.to_owned());
            return i;
        }
        self.nodes.push(Some(name.to_owned()));
        self.rtt.grow(self.nodes.len(), PRIOR_RTT_MS);
        self.nodes.len() - 1
    }

    /// The index of node `name`, if it has one.
    pub(super) fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.as_deref() == Some(name))
    }

    /// Notes which nodes are in the cluster (`present`) at `now`; frees the indices of nodes gone
    /// for [`FORGET_AFTER`].
    pub(super) fn sweep_nodes(&mut self, present: &[String], now: Instant) {
        for (i, slot) in self.nodes.iter_mut().enumerate() {
            match slot {
                Some(name) if !present.contains(name) => {
                    let since = *self.gone_since.entry(i).or_insert(now);
                    if now.saturating_duration_since(since) >= FORGET_AFTER {
                        tracing::info!(node = %name, index = i, "forgetting a node that left");
                        *slot = None;
                        self.gone_since.remove(&i);
                    }
                }
                _ => {
                    self.gone_since.remove(&i);
                }
            }
        }
    }
}

impl ControlState {
    /// The refusal still holding `key`'s creates back at `now`, if any.
    pub(super) fn refusal(&self, key: &(String, String), now: Instant) -> Option<&Refused> {
        self.refused.get(key).filter(|r| r.until > now)
    }

    /// Remembers a refused create of `key`'s Pods; returns the refusal (message and when to try
    /// again).
    pub(super) fn refuse(&mut self, key: (String, String), message: String, now: Instant) -> Refused {
        let failures = self.refused.get(&key).map_or(0, |r| r.failures) + 1;
        let refused = Refused { failures, until: now + retry_delay(failures), message };
        self.refused.insert(key, refused.clone());
        refused
    }
}

impl ControlState {
    /// Remembers demand for a revision that has no scaler yet, for the scaler to come.
    pub(super) fn remember_poke(&mut self, key: (String, String), at: Instant, origin: usize) {
        self.pokes.retain(|_, p| p.iter().any(|(t, _)| at.saturating_duration_since(*t) < POKES_KEPT));
        if self.pokes.len() < MAX_POKED || self.pokes.contains_key(&key) {
            self.pokes.entry(key).or_default().push((at, origin));
        }
    }

    /// Drops the scaling state of revisions not decided for [`FORGET_AFTER`] and for which
    /// `exists` (their Placement is in the store) says no; returns them.
    pub(super) fn forget_gone(
        &mut self,
        now: Instant,
        exists: impl Fn(&(String, String)) -> bool,
    ) -> Vec<(String, String)> {
        let gone: Vec<(String, String)> = self
            .scalers
            .keys()
            .filter(|k| !exists(k))
            .filter(|k| self.decided.get(*k).is_none_or(|t| now.saturating_duration_since(*t) > FORGET_AFTER))
            .cloned()
            .collect();
        for k in &gone {
            self.scalers.remove(k);
            self.decided.remove(k);
            self.refused.remove(k);
        }
        gone
    }

    /// A deleted Service's routing state.
    pub(super) fn forget_service(&mut self, namespace: &str, name: &str) {
        self.routed.remove(&(namespace.to_owned(), name.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_that_left_free_their_index_after_a_while() {
        let mut s = ControlState::default();
        let t0 = Instant::now();
        let (a, b) = (s.node_index("spot-a"), s.node_index("spot-b"));
        s.sweep_nodes(&["spot-b".to_owned()], t0);
        assert_eq!(s.index_of("spot-a"), Some(a), "kept for a while");
        s.sweep_nodes(&["spot-b".to_owned()], t0 + FORGET_AFTER);
        assert_eq!(s.index_of("spot-a"), None);
        assert_eq!(s.node_index("spot-c"), a, "the next node takes the free index");
        assert_eq!(s.index_of("spot-b"), Some(b));
        assert_eq!(s.nodes.len(), 2);
        assert_eq!(s.rtt.len(), 2, "nor does the RTT matrix grow");
    }

    #[test]
    fn retries_back_off_exponentially_to_five_minutes() {
        let delays: Vec<u64> = (1..=10).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, vec![2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(retry_delay(u32::MAX).as_secs(), 300);
    }
}
