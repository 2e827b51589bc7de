//! Instance events — when an instance of a function started, became ready and stopped, and on
//! which node — as both runtimes record them (the simulator as it decides, `ikukantai bench` by
//! reading its fleet's instances every [`POLL_PERIOD`]), and what they add up to: instances per
//! node over time, and moves.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often `ikukantai bench` reads its fleet's instances: often enough to place a scale event
/// within a control period, rarely enough to cost the measured fleet nothing it would notice.
pub const POLL_PERIOD: Duration = Duration::from_millis(500);

/// The window within which a stop at one node and a start at another make a move: a placement
/// moves an instance by starting the new one in one decision and stopping the old one in the
/// next, once that is ready, so a decision period apart; plus a read period, which the bench's
/// events may be late by.
pub const MOVE_WINDOW: Duration =
    ikukantai_fleet::fleet::defaults::DECISION_PERIOD.saturating_add(POLL_PERIOD);

/// What happened to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Its start began (it holds its node's room from now on).
    Started,
    /// It answers and is routed to.
    Ready,
    /// It was taken out of the routes to be stopped (it finishes what it has, then goes).
    Stopped,
}

/// One instance's change.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InstanceEvent {
    /// Seconds since the set's load began (the samples' clock).
    pub at: f64,
    /// The function's index in the scenario (one revision per function).
    pub function: usize,
    /// The node's index in the topology.
    pub node: usize,
    /// What happened.
    pub change: Change,
}

/// An instance of a function stopped at one node while another started elsewhere within
/// [`MOVE_WINDOW`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Move {
    /// When the old instance stopped.
    pub at: f64,
    /// The function.
    pub function: usize,
    /// Where it stopped.
    pub from: usize,
    /// Where the other started.
    pub to: usize,
}

/// The moves in `events` (in time order): each stop paired with the nearest start of the same
/// function at another node within `window` seconds, each start used once.
pub fn moves(events: &[InstanceEvent], window: f64) -> Vec<Move> {
    let mut used = vec![false; events.len()];
    let mut out = Vec::new();
    for stop in events.iter().filter(|e| e.change == Change::Stopped) {
        let nearest = events
            .iter()
            .enumerate()
            .filter(|(j, e)| {
                !used[*j]
                    && e.change == Change::Started
                    && e.function == stop.function
                    && e.node != stop.node
                    && (e.at - stop.at).abs() <= window
            })
            .min_by(|a, b| (a.1.at - stop.at).abs().total_cmp(&(b.1.at - stop.at).abs()).then(a.0.cmp(&b.0)));
        if let Some((j, start)) = nearest {
            used[j] = true;
            out.push(Move { at: stop.at, function: stop.function, from: stop.node, to: start.node });
        }
    }
    out
}

/// Instances per node over time (started and not yet stopped, every function), as the steps
/// where each node's count changes: `(at, count after)`, per node in topology order.
pub fn counts(events: &[InstanceEvent], nodes: usize) -> Vec<Vec<(f64, u32)>> {
    let mut now = vec![0i64; nodes];
    let mut steps = vec![Vec::new(); nodes];
    for e in events.iter().filter(|e| e.node < nodes) {
        let delta = match e.change {
            Change::Started => 1,
            Change::Stopped => -1,
            Change::Ready => continue,
        };
        now[e.node] = (now[e.node] + delta).max(0);
        steps[e.node].push((e.at, now[e.node] as u32));
    }
    steps
}

/// One instance as a runtime lists it: its name, function, node, and whether it is ready or
/// being stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its name (unique over the run).
    pub name: String,
    /// The function's index.
    pub function: usize,
    /// The node's index.
    pub node: usize,
    /// Answering and routed.
    pub ready: bool,
    /// Out of the routes, being stopped.
    pub stopping: bool,
}

/// What a listing said of an instance last time.
#[derive(Debug, Clone, Copy)]
struct Known {
    function: usize,
    node: usize,
    ready: bool,
    stopped: bool,
}

/// Turns successive listings of a fleet's instances into events: a name first seen started
/// (and ready, if it already is), a ready one ready, one being stopped or gone stopped. What
/// started and stopped between two listings is not seen.
#[derive(Debug, Default)]
pub struct Tracker {
    known: BTreeMap<String, Known>,
}

impl Tracker {
    /// The events between the last listing and `listed`, seen at `at`.
    pub fn observe(&mut self, at: f64, listed: &[Listed]) -> Vec<InstanceEvent> {
        let mut out = Vec::new();
        let event = |k: &Known, change| InstanceEvent { at, function: k.function, node: k.node, change };
        let mut seen = BTreeMap::new();
        for l in listed {
            let known = self.known.remove(&l.name);
            if known.is_none() && l.stopping {
                continue; // never seen alive
            }
            let mut k =
                known.unwrap_or(Known { function: l.function, node: l.node, ready: false, stopped: false });
            if known.is_none() {
                out.push(event(&k, Change::Started));
            }
            if l.ready && !k.ready && !k.stopped {
                k.ready = true;
                out.push(event(&k, Change::Ready));
            }
            if l.stopping && !k.stopped {
                k.stopped = true;
                out.push(event(&k, Change::Stopped));
            }
            seen.insert(l.name.clone(), k);
        }
        // Whatever is no longer listed is gone.
        for k in self.known.values().filter(|k| !k.stopped) {
            out.push(event(k, Change::Stopped));
        }
        self.known = seen;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(at: f64, node: usize, change: Change) -> InstanceEvent {
        InstanceEvent { at, function: 0, node, change }
    }

    #[test]
    fn a_stop_and_a_start_elsewhere_within_the_window_are_a_move() {
        let events = [
            ev(1.0, 0, Change::Started),
            ev(5.0, 1, Change::Started),
            ev(5.1, 1, Change::Ready),
            ev(5.6, 0, Change::Stopped),
            // A stop with no start near it, and one whose only start is on its own node.
            ev(20.0, 2, Change::Stopped),
            ev(30.0, 1, Change::Started),
            ev(30.5, 1, Change::Stopped),
        ];
        assert_eq!(moves(&events, 2.0), [Move { at: 5.6, function: 0, from: 0, to: 1 }]);
        assert!(moves(&events, 0.5).is_empty(), "0.6 s apart");
        let other = InstanceEvent { function: 1, ..events[1] };
        assert!(moves(&[events[0], other, events[3]], 2.0).is_empty(), "another function");
    }

    #[test]
    fn each_start_makes_one_move_at_most() {
        let events = [ev(1.0, 2, Change::Started), ev(1.5, 0, Change::Stopped), ev(1.6, 1, Change::Stopped)];
        assert_eq!(moves(&events, 2.0).len(), 1);
    }

    #[test]
    fn counts_step_up_on_starts_and_down_on_stops() {
        let events = [
            ev(1.0, 0, Change::Started),
            ev(1.2, 0, Change::Ready),
            ev(2.0, 0, Change::Started),
            ev(3.0, 1, Change::Started),
            ev(4.0, 0, Change::Stopped),
        ];
        assert_eq!(counts(&events, 2), [vec![(1.0, 1), (2.0, 2), (4.0, 1)], vec![(3.0, 1)]]);
    }

    fn listed(name: &str, node: usize, ready: bool, stopping: bool) -> Listed {
        Listed { name: name.into(), function: 0, node, ready, stopping }
    }

    #[test]
    fn listings_become_events() {
        let mut t = Tracker::default();
        let changes = |e: Vec<InstanceEvent>| e.into_iter().map(|e| (e.node, e.change)).collect::<Vec<_>>();
        assert_eq!(changes(t.observe(0.0, &[listed("a", 0, false, false)])), [(0, Change::Started)]);
        // Seen first when already ready: started and ready at once.
        let now = [listed("a", 0, true, false), listed("b", 1, true, false)];
        assert_eq!(
            changes(t.observe(0.5, &now)),
            [(0, Change::Ready), (1, Change::Started), (1, Change::Ready)]
        );
        assert!(t.observe(1.0, &now).is_empty(), "nothing changed");
        // One taken out of the routes, the other gone without being seen stopping; one that
        // started and was already stopping when first seen is not an event.
        let now = [listed("a", 0, true, true), listed("c", 2, false, true)];
        assert_eq!(changes(t.observe(1.5, &now)), [(0, Change::Stopped), (1, Change::Stopped)]);
        assert!(t.observe(2.0, &[]).is_empty(), "a stopped one going is not a second stop");
    }
}
