//! The simulated fleet's instance events, kept as it decides: one push per start, readiness and
//! stop, so recording costs nothing a large run would notice. The driver hands them to the
//! report level by level, on the samples' clock.

use ikukantai_eval::trace::{Change, InstanceEvent};

use crate::events::Time;

/// Instance events not yet handed over.
#[derive(Debug, Default)]
pub(crate) struct Trace(Vec<(Time, u32, u32, Change)>);

impl Trace {
    /// Instance of revision `rev` at `node` changed at `at`.
    pub(crate) fn push(&mut self, at: Time, rev: u32, node: u32, change: Change) {
        self.0.push((at, rev, node, change));
    }

    /// Everything recorded so far, as seconds since `began`; the trace starts empty again.
    pub(crate) fn take(&mut self, began: Time) -> Vec<InstanceEvent> {
        std::mem::take(&mut self.0)
            .into_iter()
            .map(|(at, rev, node, change)| InstanceEvent {
                at: (at as f64 - began as f64) / 1e9,
                function: rev as usize,
                node: node as usize,
                change,
            })
            .collect()
    }
}
