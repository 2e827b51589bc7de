//! The activator: picks an instance through the revision's balancer, and when none has room
//! keeps the request in the revision's bounded queue until one does (or its timeout ends).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Request;
use ikukantai_http::h1::RequestBody;
use ikukantai_http::pool::Upstream;
use ikukantai_policy::balance::PickContext;
use ikukantai_policy::estimate::NodeIndex;
use ikukantai_policy::gateway;
use ikukantai_policy::queue::RequestMeta;
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout_at};

use super::hosts::host_of;
use super::routes::{InstanceState, RevisionInner, RevisionRoute, RevisionState};
use super::{GatewayConfig, Shared};
use crate::headers::HeaderView;
use crate::metrics::RevisionLabels;

/// How often a waiting request re-checks for capacity (a safety net beside the wake-ups).
const RECHECK: Duration = Duration::from_millis(50);

/// A picked instance: where to send, and who to tell when done.
pub(super) struct Picked {
    pub(super) id: u64,
    pub(super) name: Arc<str>,
    pub(super) node: NodeIndex,
    pub(super) upstream: Arc<Upstream>,
}

impl Picked {
    pub(super) fn of(i: &InstanceState) -> Self {
        Self { id: i.load.id, name: i.name.clone(), node: i.load.node, upstream: i.upstream.clone() }
    }
}

/// `queued`: a new request and how many wait ahead of it; `None` for the head of the queue.
pub(super) fn pick(
    shared: &Shared,
    inner: &mut RevisionInner,
    queued: Option<u32>,
    now: Instant,
) -> Option<Picked> {
    let RevisionInner { route, instances, shortlist, scratch, balancer, .. } = inner;
    let rtt = shared.rtt.read();
    let ctx = PickContext {
        origin: shared.config.node,
        rtt: &rtt,
        now: now.into_std(),
        target_concurrency: route.target_concurrency,
        queued: queued.unwrap_or(0),
        fresh: queued.is_some(),
    };
    let cc = route.container_concurrency;
    let i = gateway::pick(balancer.as_mut(), &ctx, cc, instances, shortlist, scratch)?;
    Some(Picked::of(&instances[i]))
}

/// Hands free capacity to waiting requests, in queue order.
pub(super) fn dispatch(shared: &Shared, rev: &RevisionState) {
    dispatch_locked(shared, rev, &mut rev.inner.lock());
}

/// [`dispatch`] with the revision already locked.
pub(super) fn dispatch_locked(shared: &Shared, rev: &RevisionState, inner: &mut RevisionInner) {
    if inner.waiting.is_empty() {
        return;
    }
    let now = Instant::now();
    while !inner.waiting.is_empty() {
        let Some(p) = pick(shared, inner, None, now) else { break };
        let mut delivered = false;
        while let Some(waiter) = inner.waiting.pop() {
            if waiter.send(p.id).is_ok() {
                delivered = true;
                break;
            }
        }
        if !delivered {
            // Everyone had given up: undo the reservation.
            if let Some(i) = inner.instances.iter_mut().find(|x| x.load.id == p.id) {
                i.load.in_flight = i.load.in_flight.saturating_sub(1);
            }
        }
    }
    rev.buffered_gauge.set(inner.waiting.len() as i64);
}

/// The answer to a request for a revision that failed to start.
pub(super) fn cannot_start(revision: &str, route: &RevisionRoute) -> String {
    format!("revision {revision} cannot start: {}", route.failure.as_deref().unwrap_or("it failed"))
}

/// A request's place in its revision's activator queue, until it is handed an instance or gives
/// up. Dropped without [`Waiter::taken`] (timeout, failure, or the client went away), it leaves
/// the queue, so that the queue counts only live waiters; an instance dispatched to it in the
/// meantime (its id arrived as it gave up) is given back, and goes to the next waiter.
pub(super) struct Waiter<'a> {
    shared: &'a Shared,
    rev: &'a RevisionState,
    id: u64,
    rx: oneshot::Receiver<u64>,
    taken: bool,
}

impl Waiter<'_> {
    /// The request got its instance: nothing to give back.
    pub(super) fn taken(mut self) {
        self.taken = true;
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        // Under the revision's lock dispatch cannot run: either the waiter is still queued, or
        // dispatch popped it and sent an instance, which is then in `rx`.
        let mut inner = self.rev.inner.lock();
        if inner.waiting.remove(self.id).is_none() {
            self.rx.close();
            if let Ok(instance) = self.rx.try_recv() {
                if let Some(i) = inner.instances.iter_mut().find(|x| x.load.id == instance) {
                    i.load.in_flight = i.load.in_flight.saturating_sub(1);
                }
                dispatch_locked(self.shared, self.rev, &mut inner);
            }
        }
        self.rev.buffered_gauge.set(inner.waiting.len() as i64);
    }
}

/// Puts a request that found no instance with room into the revision's activator queue, and
/// tells the control plane about demand at this node if the revision has no instance at all.
pub(super) fn enqueue<'a>(
    shared: &'a Shared,
    rev: &'a RevisionState,
    inner: &mut RevisionInner,
    req: &Request<RequestBody>,
    source: &str,
    arrival: Instant,
    deadline: Instant,
) -> Waiter<'a> {
    let (tx, rx) = oneshot::channel();
    let headers = HeaderView(req.headers());
    let host = host_of(req).unwrap_or_default();
    let id = shared.ids.fetch_add(1, Ordering::Relaxed);
    let meta = RequestMeta {
        id,
        source: Some(source),
        host: &host,
        path: req.uri().path(),
        method: req.method().as_str(),
        headers: &headers,
        arrival: arrival.into_std(),
        deadline: Some(deadline.into_std()),
    };
    inner.waiting.push(&meta, tx);
    rev.buffered_gauge.set(inner.waiting.len() as i64);
    if inner.instances.is_empty() {
        let RevisionLabels { namespace, revision, .. } = &rev.labels;
        shared.events.demand(namespace, revision, shared.config.node);
    }
    Waiter { shared, rev, id, rx, taken: false }
}

/// Gives freed memory back to the system for an HTTP/1.x request that parks behind `ahead`
/// others (after its head was detached), if the queue is deep enough to be worth the cost.
pub(super) fn release_memory<B>(config: &GatewayConfig, req: &Request<B>, ahead: u32) {
    if let Some(m) = config.memory_release
        && ahead as usize >= m.from_depth
        && req.version() <= http::Version::HTTP_11
    {
        (m.release)();
    }
}

/// Waits for the activator queue to hand this request an instance (its id), re-dispatching
/// every `RECHECK` in case capacity appeared without a wake-up; `None` at the deadline.
pub(super) async fn wait_for_instance(waiter: &mut Waiter<'_>, deadline: Instant) -> Option<u64> {
    let Waiter { shared, rev, rx, .. } = waiter;
    loop {
        let wake = (Instant::now() + RECHECK).min(deadline);
        match timeout_at(wake, &mut *rx).await {
            Ok(Ok(id)) => return Some(id),
            Ok(Err(_)) => return None,
            Err(_) if Instant::now() >= deadline => return None,
            Err(_) => dispatch(shared, rev),
        }
    }
}
