//! Queue disciplines for requests waiting for capacity (the original's "nonna" module).
//!
//! A discipline decides which waiting request goes next. It sees the request's metadata once, when
//! the request is pushed, and keeps only an ordering key; the payload `T` is whatever the caller
//! needs to resume the request. Cancelled requests are removed by id.
//!
//! - `fifo`: first come, first served (the default);
//! - `priority`: by rules over headers, path and method (higher first, FIFO within a priority);
//! - `edf`: earliest deadline first (requests without a deadline last, FIFO among them).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

/// Looks up a request header by (case-insensitive) name.
pub trait HeaderLookup {
    /// The first value of header `name`, if present and valid text.
    fn header(&self, name: &str) -> Option<&str>;
}

impl HeaderLookup for Vec<(String, String)> {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What a discipline may look at.
#[derive(Clone, Copy)]
pub struct RequestMeta<'a> {
    /// Unique id of the waiting request (used to remove it).
    pub id: u64,
    /// Where it came from (client address or origin node), if known.
    pub source: Option<&'a str>,
    /// Host header.
    pub host: &'a str,
    /// Request path.
    pub path: &'a str,
    /// HTTP method.
    pub method: &'a str,
    /// Request headers.
    pub headers: &'a dyn HeaderLookup,
    /// When it arrived.
    pub arrival: Instant,
    /// When it must be answered by, if it has a deadline.
    pub deadline: Option<Instant>,
}

impl std::fmt::Debug for RequestMeta<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMeta")
            .field("id", &self.id)
            .field("host", &self.host)
            .field("path", &self.path)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

/// A queue discipline over payloads `T`.
pub trait QueueDiscipline<T>: Send + std::fmt::Debug {
    /// The registered name.
    fn name(&self) -> &'static str;
    /// Adds a waiting request.
    fn push(&mut self, meta: &RequestMeta<'_>, item: T);
    /// Takes the request that should go next.
    fn pop(&mut self) -> Option<T>;
    /// Takes out a request that no longer waits (cancelled, timed out).
    fn remove(&mut self, id: u64) -> Option<T>;
    /// Requests waiting.
    fn len(&self) -> usize;
    /// True when nothing waits.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A min-heap of ids by key, with the payloads aside so removal by id is O(1) (removed ids are
/// skipped lazily when they reach the top, and the heap is compacted when mostly stale).
struct Ordered<K: Ord, T> {
    heap: BinaryHeap<Reverse<(K, u64, u64)>>,
    items: HashMap<u64, T>,
    seq: u64,
}

impl<K: Ord, T> std::fmt::Debug for Ordered<K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("waiting", &self.items.len()).finish_non_exhaustive()
    }
}

impl<K: Ord + Clone, T> Ordered<K, T> {
    fn new() -> Self {
        Self { heap: BinaryHeap::new(), items: HashMap::new(), seq: 0 }
    }

    fn push(&mut self, key: K, id: u64, item: T) {
        self.seq += 1;
        if self.items.insert(id, item).is_some() {
            // Same id pushed again: the old heap entry now points at the new payload; drop it
            // by compaction so the request is queued once, at its new position.
            self.heap.retain(|Reverse((_, _, i))| *i != id);
        }
        self.heap.push(Reverse((key, self.seq, id)));
    }

    fn pop(&mut self) -> Option<T> {
        while let Some(Reverse((_, _, id))) = self.heap.pop() {
            if let Some(item) = self.items.remove(&id) {
                return Some(item);
            }
        }
        None
    }

    fn remove(&mut self, id: u64) -> Option<T> {
        let item = self.items.remove(&id)?;
        if self.heap.len() > 64 && self.heap.len() > 2 * self.items.len() {
            let items = &self.items;
            self.heap.retain(|Reverse((_, _, i))| items.contains_key(i));
        }
        Some(item)
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

/// First in, first out.
pub struct Fifo<T>(Ordered<(), T>);

impl<T> std::fmt::Debug for Fifo<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Fifo").field(&self.0).finish()
    }
}

impl<T> Default for Fifo<T> {
    fn default() -> Self {
        Self(Ordered::new())
    }
}

impl<T: Send> QueueDiscipline<T> for Fifo<T> {
    fn name(&self) -> &'static str {
        "fifo"
    }
    fn push(&mut self, meta: &RequestMeta<'_>, item: T) {
        self.0.push((), meta.id, item);
    }
    fn pop(&mut self) -> Option<T> {
        self.0.pop()
    }
    fn remove(&mut self, id: u64) -> Option<T> {
        self.0.remove(id)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// One rule of the `priority` discipline. Rules are tried in order; the first that applies gives
/// the request's priority; none applying means priority 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PriorityRule {
    /// `header:NAME` — the header's value, read as an integer, is the priority.
    HeaderValue {
        /// Header name.
        name: String,
    },
    /// `header:NAME=VALUE:N` — priority N when the header equals VALUE.
    HeaderEquals {
        /// Header name.
        name: String,
        /// Expected value.
        value: String,
        /// Priority given.
        priority: i64,
    },
    /// `path:PREFIX:N` — priority N when the path starts with PREFIX.
    PathPrefix {
        /// Path prefix.
        prefix: String,
        /// Priority given.
        priority: i64,
    },
    /// `method:METHOD:N` — priority N for that HTTP method.
    Method {
        /// HTTP method (case-insensitive).
        method: String,
        /// Priority given.
        priority: i64,
    },
}

/// A priority rule that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("priority rule {rule:?}: {reason}")]
pub struct PriorityRuleError {
    /// The rule text.
    pub rule: String,
    /// What is wrong.
    pub reason: String,
}

impl PriorityRule {
    /// Parses a comma-separated rule list, e.g.
    /// `header:x-priority, path:/admin:10, header:x-tier=gold:5, method:GET:1`.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, PriorityRuleError> {
        text.split(',').map(str::trim).filter(|r| !r.is_empty()).map(Self::parse).collect()
    }

    fn parse(rule: &str) -> Result<Self, PriorityRuleError> {
        let err = |reason: &str| PriorityRuleError { rule: rule.to_owned(), reason: reason.to_owned() };
        let number = |text: &str| {
            text.trim().parse::<i64>().map_err(|_| err("the priority after the last ':' must be an integer"))
        };
        let (kind, rest) = rule.split_once(':').ok_or_else(|| {
            err("expected header:NAME, header:NAME=VALUE:N, path:PREFIX:N or method:METHOD:N")
        })?;
        match kind.trim() {
            "header" => match rest.split_once('=') {
                None if !rest.trim().is_empty() => Ok(Self::HeaderValue { name: rest.trim().to_owned() }),
                None => Err(err("header name is empty")),
                Some((name, value_priority)) => {
                    let (value, priority) =
                        value_priority.rsplit_once(':').ok_or_else(|| err("expected header:NAME=VALUE:N"))?;
                    if name.trim().is_empty() {
                        return Err(err("header name is empty"));
                    }
                    Ok(Self::HeaderEquals {
                        name: name.trim().to_owned(),
                        value: value.trim().to_owned(),
                        priority: number(priority)?,
                    })
                }
            },
            "path" => {
                let (prefix, priority) =
                    rest.rsplit_once(':').ok_or_else(|| err("expected path:PREFIX:N"))?;
                if !prefix.starts_with('/') {
                    return Err(err("path prefix must start with '/'"));
                }
                Ok(Self::PathPrefix { prefix: prefix.to_owned(), priority: number(priority)? })
            }
            "method" => {
                let (method, priority) =
                    rest.rsplit_once(':').ok_or_else(|| err("expected method:METHOD:N"))?;
                Ok(Self::Method { method: method.trim().to_owned(), priority: number(priority)? })
            }
            other => Err(err(&format!("unknown rule kind {other:?}: use header, path or method"))),
        }
    }

    fn priority_of(&self, meta: &RequestMeta<'_>) -> Option<i64> {
        match self {
            Self::HeaderValue { name } => meta.headers.header(name)?.trim().parse().ok(),
            Self::HeaderEquals { name, value, priority } => {
                (meta.headers.header(name)? == value).then_some(*priority)
            }
            Self::PathPrefix { prefix, priority } => {
                meta.path.starts_with(prefix.as_str()).then_some(*priority)
            }
            Self::Method { method, priority } => {
                meta.method.eq_ignore_ascii_case(method).then_some(*priority)
            }
        }
    }
}

/// Highest priority first; FIFO within a priority.
pub struct Priority<T> {
    rules: Vec<PriorityRule>,
    queue: Ordered<Reverse<i64>, T>,
}

impl<T> std::fmt::Debug for Priority<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Priority").field("rules", &self.rules).field("queue", &self.queue).finish()
    }
}

impl<T> Priority<T> {
    /// A priority queue using `rules`.
    pub fn new(rules: Vec<PriorityRule>) -> Self {
        Self { rules, queue: Ordered::new() }
    }

    /// The priority a request gets.
    pub fn priority_of(&self, meta: &RequestMeta<'_>) -> i64 {
        self.rules.iter().find_map(|r| r.priority_of(meta)).unwrap_or(0)
    }
}

impl<T: Send> QueueDiscipline<T> for Priority<T> {
    fn name(&self) -> &'static str {
        "priority"
    }
    fn push(&mut self, meta: &RequestMeta<'_>, item: T) {
        let p = self.priority_of(meta);
        self.queue.push(Reverse(p), meta.id, item);
    }
    fn pop(&mut self) -> Option<T> {
        self.queue.pop()
    }
    fn remove(&mut self, id: u64) -> Option<T> {
        self.queue.remove(id)
    }
    fn len(&self) -> usize {
        self.queue.len()
    }
}

/// Earliest deadline first; requests without a deadline after all others, FIFO among them.
pub struct Edf<T>(Ordered<(bool, Option<Instant>), T>);

impl<T> std::fmt::Debug for Edf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Edf").field(&self.0).finish()
    }
}

impl<T> Default for Edf<T> {
    fn default() -> Self {
        Self(Ordered::new())
    }
}

impl<T: Send> QueueDiscipline<T> for Edf<T> {
    fn name(&self) -> &'static str {
        "edf"
    }
    fn push(&mut self, meta: &RequestMeta<'_>, item: T) {
        self.0.push((meta.deadline.is_none(), meta.deadline), meta.id, item);
    }
    fn pop(&mut self) -> Option<T> {
        self.0.pop()
    }
    fn remove(&mut self, id: u64) -> Option<T> {
        self.0.remove(id)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn meta<'a>(id: u64, path: &'a str, headers: &'a Vec<(String, String)>, t0: Instant) -> RequestMeta<'a> {
        RequestMeta {
            id,
            source: None,
            host: "hello.default",
            path,
            method: "GET",
            headers,
            arrival: t0,
            deadline: None,
        }
    }

    #[test]
    fn fifo_keeps_arrival_order_and_removes_by_id() {
        let t0 = Instant::now();
        let mut q = Fifo::default();
        for id in 1..=4 {
            q.push(&meta(id, "/", &vec![], t0), id);
        }
        assert_eq!(q.remove(2), Some(2));
        assert_eq!(q.remove(2), None);
        assert_eq!(q.len(), 3);
        assert_eq!((q.pop(), q.pop(), q.pop(), q.pop()), (Some(1), Some(3), Some(4), None));
        assert!(q.is_empty());
    }

    #[test]
    fn priority_rules_parse_and_order() {
        let rules = PriorityRule::parse_list(
            "header:x-priority, path:/admin:10, header:x-tier=gold:5, method:POST:-1",
        )
        .unwrap();
        assert_eq!(rules.len(), 4);
        let t0 = Instant::now();
        let mut q = Priority::new(rules);
        let none: Vec<(String, String)> = vec![];
        let gold = vec![("X-Tier".to_owned(), "gold".to_owned())];
        let explicit = vec![("x-priority".to_owned(), "7".to_owned())];
        q.push(&meta(1, "/", &none, t0), "plain-1");
        q.push(&meta(2, "/admin/x", &none, t0), "admin");
        q.push(&meta(3, "/", &gold, t0), "gold");
        q.push(&meta(4, "/", &explicit, t0), "explicit-7");
        q.push(&meta(5, "/", &none, t0), "plain-2");
        let post = RequestMeta { method: "post", ..meta(6, "/", &none, t0) };
        assert_eq!(q.priority_of(&post), -1);
        q.push(&post, "post");
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, ["admin", "explicit-7", "gold", "plain-1", "plain-2", "post"]);
    }

    #[test]
    fn priority_rule_errors_say_what_is_wrong() {
        for bad in ["header", "path:/x", "path:x:1", "method:GET:high", "cookie:a:1", "header:=v:1"] {
            let e = PriorityRule::parse_list(bad).unwrap_err();
            assert!(!e.reason.is_empty(), "{bad}");
        }
    }

    #[test]
    fn edf_serves_earliest_deadline_first() {
        let t0 = Instant::now();
        let mut q = Edf::default();
        let d = |ms| Some(t0 + Duration::from_millis(ms));
        q.push(&RequestMeta { deadline: d(300), ..meta(1, "/", &vec![], t0) }, 1);
        q.push(&meta(2, "/", &vec![], t0), 2);
        q.push(&RequestMeta { deadline: d(100), ..meta(3, "/", &vec![], t0) }, 3);
        q.push(&RequestMeta { deadline: d(200), ..meta(4, "/", &vec![], t0) }, 4);
        q.push(&meta(5, "/", &vec![], t0), 5);
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, [3, 4, 1, 2, 5]);
    }

    #[test]
    fn many_removals_compact_the_heap() {
        let t0 = Instant::now();
        let mut q = Fifo::default();
        for id in 0..1000 {
            q.push(&meta(id, "/", &vec![], t0), id);
        }
        for id in 0..990 {
            q.remove(id);
        }
        assert!(q.0.heap.len() < 200, "stale entries compacted: {}", q.0.heap.len());
        assert_eq!(std::iter::from_fn(|| q.pop()).count(), 10);
    }
}
