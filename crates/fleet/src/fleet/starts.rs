//! Instance starts, paced and served fairly.
//!
//! A start (spawning the process, then waiting for it to be ready) costs CPU on the machine every
//! other instance shares: 300 started at once each get a three-hundredth of it, and a cold start
//! among them (a request waiting at zero) takes as long as the whole burst. So at most `limit`
//! starts run at once in each of two classes: **cold** starts (the revision has requests waiting
//! for its first instance) and the rest (initial scale, scale-ups). A burst of the second kind
//! never holds a slot a cold start needs. Within a class, services take turns, one start each,
//! so one service's hundred starts do not make another's single start wait behind them all.
//!
//! A start holds its slot until its instance leaves `Starting` (ready, failed, crashed, stopped)
//! or for `timeout` at most, so a process that never gets ready cannot block the others. Pure
//! bookkeeping: the fleet spawns what [`StartQueue::take`] hands out.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// A revision: (namespace, name).
pub(super) type RevisionKey = (String, String);

/// One start waiting for its turn.
#[derive(Debug)]
pub(super) struct Queued<T> {
    /// The instance's name.
    pub(super) name: String,
    /// Its service, (namespace, name): the unit of turns.
    pub(super) service: (String, String),
    /// Its revision.
    pub(super) revision: RevisionKey,
    /// Its node.
    pub(super) node: usize,
    /// What the fleet needs to start it.
    pub(super) job: T,
}

/// The starts of one class: a queue per service and the order of their turns.
#[derive(Debug)]
struct Class<T> {
    queues: BTreeMap<(String, String), VecDeque<Queued<T>>>,
    /// Services with something queued, in turn order (each at most once).
    turns: VecDeque<(String, String)>,
    /// Starts of this class under way: name → when it was handed out.
    running: BTreeMap<String, Instant>,
}

impl<T> Default for Class<T> {
    fn default() -> Self {
        Self { queues: BTreeMap::new(), turns: VecDeque::new(), running: BTreeMap::new() }
    }
}

impl<T> Class<T> {
    fn push(&mut self, q: Queued<T>) {
        let queue = self.queues.entry(q.service.clone()).or_default();
        if queue.is_empty() {
            self.turns.push_back(q.service.clone());
        }
        queue.push_back(q);
    }

    /// The next service's oldest start, that service going to the back of the turns.
    fn pop(&mut self) -> Option<Queued<T>> {
        let service = self.turns.pop_front()?;
        let queue = self.queues.get_mut(&service)?;
        let q = queue.pop_front();
        if queue.is_empty() {
            self.queues.remove(&service);
        } else {
            self.turns.push_back(service);
        }
        q
    }

    /// Removes the queued starts `pick` selects, newest first, at most `count`.
    fn remove(&mut self, count: usize, pick: impl Fn(&Queued<T>) -> bool) -> Vec<Queued<T>> {
        let mut out = Vec::new();
        for queue in self.queues.values_mut() {
            let mut i = queue.len();
            while i > 0 && out.len() < count {
                i -= 1;
                if pick(&queue[i]) {
                    out.extend(queue.remove(i));
                }
            }
        }
        self.queues.retain(|_, q| !q.is_empty());
        let queues = &self.queues;
        self.turns.retain(|s| queues.contains_key(s));
        out
    }
}

/// Starts waiting and under way, in two classes (cold first).
#[derive(Debug)]
pub(super) struct StartQueue<T> {
    limit: usize,
    timeout: Duration,
    cold: Class<T>,
    warm: Class<T>,
}

impl<T> StartQueue<T> {
    /// At most `limit` starts at once per class, each holding its slot for `timeout` at most.
    pub(super) fn new(limit: usize, timeout: Duration) -> Self {
        Self { limit: limit.max(1), timeout, cold: Class::default(), warm: Class::default() }
    }

    /// Queues a start; `cold` when its revision has requests waiting for a first instance.
    pub(super) fn push(&mut self, q: Queued<T>, cold: bool) {
        if cold { self.cold.push(q) } else { self.warm.push(q) }
    }

    /// Requests now wait for `revision`: its queued starts become cold ones.
    pub(super) fn promote(&mut self, revision: &RevisionKey) {
        for q in self.warm.remove(usize::MAX, |q| &q.revision == revision).into_iter().rev() {
            self.cold.push(q);
        }
    }

    /// The starts that may begin now, cold ones first, services taking turns; each is counted
    /// under way until [`StartQueue::finished`] or its timeout.
    pub(super) fn take(&mut self, now: Instant) -> Vec<Queued<T>> {
        let mut out = Vec::new();
        for class in [&mut self.cold, &mut self.warm] {
            let timeout = self.timeout;
            class.running.retain(|_, since| now.saturating_duration_since(*since) < timeout);
            while class.running.len() < self.limit {
                let Some(q) = class.pop() else { break };
                class.running.insert(q.name.clone(), now);
                out.push(q);
            }
        }
        out
    }

    /// The instance `name` left `Starting` (or never got going): its slot is free.
    pub(super) fn finished(&mut self, name: &str) {
        self.cold.running.remove(name);
        self.warm.running.remove(name);
    }

    /// Whether `name` holds a slot.
    #[cfg(test)]
    pub(super) fn is_running(&self, name: &str) -> bool {
        self.cold.running.contains_key(name) || self.warm.running.contains_key(name)
    }

    /// Drops up to `count` queued (not yet begun) starts of `revision` on `node`, newest first;
    /// returns their names.
    pub(super) fn cancel(&mut self, revision: &RevisionKey, node: usize, count: usize) -> Vec<String> {
        let pick = |q: &Queued<T>| &q.revision == revision && q.node == node;
        let mut names: Vec<String> = self.warm.remove(count, pick).into_iter().map(|q| q.name).collect();
        let rest = count - names.len();
        names.extend(self.cold.remove(rest, pick).into_iter().map(|q| q.name));
        names
    }

    /// Starts queued (not begun) of `revision` on `node`.
    #[cfg(test)]
    pub(super) fn queued(&self, revision: &RevisionKey, node: usize) -> usize {
        [&self.cold, &self.warm]
            .iter()
            .flat_map(|c| c.queues.values().flatten())
            .filter(|q| &q.revision == revision && q.node == node)
            .count()
    }

    /// Nothing queued and nothing under way.
    #[cfg(test)]
    pub(super) fn is_idle(&self) -> bool {
        [&self.cold, &self.warm].iter().all(|c| c.queues.is_empty() && c.running.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(service: &str, i: usize) -> Queued<()> {
        let ns = "default".to_owned();
        Queued {
            name: format!("{service}-{i}"),
            service: (ns.clone(), service.to_owned()),
            revision: (ns, format!("{service}-00001")),
            node: 0,
            job: (),
        }
    }

    fn names(v: &[Queued<()>]) -> Vec<&str> {
        v.iter().map(|q| q.name.as_str()).collect()
    }

    #[test]
    fn a_cold_start_is_not_queued_behind_another_services_burst() {
        let t0 = Instant::now();
        let mut q = StartQueue::new(4, Duration::from_secs(5));
        for i in 0..300 {
            q.push(start("burst", i), false);
        }
        assert_eq!(names(&q.take(t0)), ["burst-0", "burst-1", "burst-2", "burst-3"]);
        assert!(q.take(t0).is_empty(), "four under way: the burst waits");
        // A request waits at zero for another service: its start begins at once.
        q.push(start("cold", 0), true);
        assert_eq!(names(&q.take(t0)), ["cold-0"]);
        // The burst goes on as its starts finish, one slot each.
        q.finished("burst-0");
        assert_eq!(names(&q.take(t0)), ["burst-4"]);
    }

    #[test]
    fn services_take_turns_one_start_each() {
        let t0 = Instant::now();
        let mut q = StartQueue::new(1, Duration::from_secs(5));
        for i in 0..3 {
            q.push(start("a", i), false);
        }
        q.push(start("b", 0), false);
        q.push(start("c", 0), false);
        let mut order = Vec::new();
        while !q.is_idle() {
            let got = q.take(t0);
            order.extend(got.iter().map(|s| s.name.clone()));
            for s in got {
                q.finished(&s.name);
            }
        }
        assert_eq!(order, ["a-0", "b-0", "c-0", "a-1", "a-2"]);
    }

    #[test]
    fn waiting_requests_promote_a_revisions_queued_starts() {
        let t0 = Instant::now();
        let mut q = StartQueue::new(1, Duration::from_secs(5));
        for i in 0..3 {
            q.push(start("burst", i), false);
        }
        q.push(start("late", 0), false);
        assert_eq!(names(&q.take(t0)), ["burst-0"]);
        // A request arrives for `late`, queued behind the burst: it goes next, as a cold start.
        q.promote(&("default".into(), "late-00001".into()));
        assert_eq!(names(&q.take(t0)), ["late-0"]);
    }

    #[test]
    fn a_start_that_never_gets_ready_frees_its_slot_after_the_timeout() {
        let t0 = Instant::now();
        let mut q = StartQueue::new(1, Duration::from_secs(5));
        q.push(start("a", 0), false);
        q.push(start("a", 1), false);
        assert_eq!(names(&q.take(t0)), ["a-0"]);
        assert!(q.take(t0 + Duration::from_secs(4)).is_empty());
        assert!(q.is_running("a-0"));
        assert_eq!(names(&q.take(t0 + Duration::from_secs(5))), ["a-1"]);
        assert!(!q.is_running("a-0"));
    }

    #[test]
    fn cancelling_drops_queued_starts_newest_first_and_keeps_turns_right() {
        let t0 = Instant::now();
        let mut q = StartQueue::new(1, Duration::from_secs(5));
        for i in 0..3 {
            q.push(start("a", i), false);
        }
        q.push(start("b", 0), false);
        let a = ("default".to_owned(), "a-00001".to_owned());
        assert_eq!(q.queued(&a, 0), 3);
        assert_eq!(q.cancel(&a, 0, 2), ["a-2", "a-1"]);
        assert_eq!(q.cancel(&a, 1, 5), Vec::<String>::new(), "another node");
        assert_eq!(q.queued(&a, 0), 1);
        assert_eq!(names(&q.take(t0)), ["a-0"]);
        q.finished("a-0");
        assert_eq!(names(&q.take(t0)), ["b-0"]);
        q.finished("b-0");
        assert!(q.is_idle());
    }
}
