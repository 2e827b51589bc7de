//! What the control loop has to do: the revisions that are not at rest, the ones something
//! happened to, and the timers that are due. Everything else costs nothing per pass.
//!
//! A revision is **at rest** when its autoscaler decided zero with empty windows
//! ([`Autoscaler::is_at_rest`](ikukantai_policy::autoscaler::Autoscaler::is_at_rest)) and it has no
//! instance, starting or running: deciding it again, or feeding it the zeros its idle sources
//! would report, changes nothing. Such a revision leaves the active set and is visited again
//! only when something happens to it: an apply or delete of its service, a gateway's poke for
//! demand at zero, stats that say it had requests, one of its instances changing state, a
//! change of its service's routing, or the rare full resync. On the way back it is told that
//! the quiet seconds were zeros (`record_idle_until`), so it decides exactly as if it had been
//! fed all along.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use ikukantai_api::revision::Revision;
use ikukantai_api::service::Service;

use super::State;
use super::starts::RevisionKey;
use crate::store::RevisionRecordStatus;

/// The control loop's to-do list.
#[derive(Debug)]
pub(super) struct Work {
    /// Revisions not at rest: fed every stats period, decided every decision period, converged
    /// every pass.
    pub(super) active: BTreeSet<RevisionKey>,
    /// Revisions something happened to since the last pass: observed and converged in the next.
    pub(super) dirty: BTreeSet<RevisionKey>,
    /// Decide in the next pass whatever the time since the last decision (apply, delete,
    /// demand at zero), as Knative's autoscaler ticks at once on a poke.
    pub(super) decide_now: bool,
    /// The routes may differ from the gateways': rebuild and compare them in the next pass.
    pub(super) routes: bool,
    /// When every revision was last visited.
    pub(super) last_resync: Instant,
    /// Services whose stored state changed, to write once the books are unlocked.
    pub(super) saves: Vec<(Service, Vec<Revision>, BTreeMap<String, RevisionRecordStatus>)>,
    /// Revision visits by the pass's phases so far (one per revision observed, fed, decided or
    /// converged): what idle costs.
    pub(super) visits: u64,
    /// Which revisions were visited (tests reset it to see what a pass touches).
    #[cfg(test)]
    pub(super) visited: BTreeSet<RevisionKey>,
}

impl Work {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            active: BTreeSet::new(),
            dirty: BTreeSet::new(),
            decide_now: true,
            routes: true,
            last_resync: now,
            saves: Vec::new(),
            visits: 0,
            #[cfg(test)]
            visited: BTreeSet::new(),
        }
    }

    /// A phase of the pass looked at `key`.
    pub(super) fn visit(&mut self, key: &RevisionKey) {
        self.visits += 1;
        #[cfg(test)]
        self.visited.insert(key.clone());
        #[cfg(not(test))]
        let _ = key;
    }
}

impl State {
    /// Something happened to `key`: it is visited in the next pass and stays active until a
    /// decision finds it at rest again. A revision that was at rest first counts its quiet
    /// seconds as zeros.
    pub(super) fn wake(&mut self, key: &RevisionKey, now: Instant, nodes: usize) {
        if !self.work.active.contains(key) {
            if let Some(r) = self.revision_mut(key) {
                r.scaler.autoscaler.record_idle_until(now, nodes);
            }
            self.work.active.insert(key.clone());
        }
        self.work.dirty.insert(key.clone());
    }

    /// Wakes every revision of the service `(namespace, name)` (its routing changed).
    pub(super) fn wake_service(&mut self, service: &(String, String), now: Instant, nodes: usize) {
        let keys: Vec<RevisionKey> = self
            .services
            .get(service)
            .map(|s| s.revisions.iter().map(|r| (service.0.clone(), r.revision.name().to_owned())).collect())
            .unwrap_or_default();
        for key in &keys {
            self.wake(key, now, nodes);
        }
    }
}
