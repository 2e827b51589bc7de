//! The ingress: takes a request from a client, routes it, has the activator find it an
//! instance, forwards it, and accounts for it in drop guards however it ends.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};
use ikukantai_http::body::{Body, Guarded, Limited, boxed, error_response, is_too_large};
use ikukantai_http::h1::{Handler, RequestBody};
use ikukantai_http::peer::Peer;
use ikukantai_http::pool::{Forwarding, PooledBody, Upstream, UpstreamError};
use ikukantai_http::proxy::detach_head;
use ikukantai_http::upgrade::{strip_request, strip_response};
use ikukantai_policy::balance::Completion;
use ikukantai_policy::estimate::NodeIndex;
use rand::RngExt;
use tokio::time::Instant;

use super::Shared;
use super::activator::{
    Picked, cannot_start, dispatch, dispatch_locked, enqueue, pick, release_memory, wait_for_instance,
};
use super::hosts::host_of;
use super::routes::{RevisionState, ServiceState, Target};
use crate::headers::{
    INSTANCE_HEADER, LOAD_HEADER, NODE_HEADER, ORIGIN_NAME, PROXY_NAME, SERVICE_TIME_HEADER, X_FORWARDED_FOR,
};
use crate::metrics::{RejectLabels, RequestLabels, RevisionLabels};

/// The proxy header's value on a request that waited in the activator queue.
static ACTIVATOR: HeaderValue = HeaderValue::from_static("activator");

pub(super) struct Ingress(pub(super) Arc<Shared>);

/// Counts a request as entered at this node until dropped (covers cancellation while waiting).
struct Entered<'a> {
    rev: &'a RevisionState,
    buffered: bool,
    handed_over: bool,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        if !self.handed_over {
            let now = std::time::Instant::now();
            self.rev.origin.request_out(now, false);
            if self.buffered {
                self.rev.activator.request_out(now, false);
            }
        }
    }
}

impl Ingress {
    fn reject(
        &self,
        status: StatusCode,
        namespace: &str,
        service: &str,
        reason: &'static str,
        message: String,
    ) -> Response<Body> {
        let labels = RejectLabels { namespace: namespace.to_owned(), service: service.to_owned(), reason };
        self.0.metrics.rejected.get_or_create(&labels).inc();
        error_response(status, message)
    }

    fn choose(&self, service: &ServiceState) -> Option<Target> {
        match service.split.as_slice() {
            [] => None,
            [(_, only)] => Some(only.clone()),
            split => {
                let total: u32 = split.iter().map(|(p, _)| p).sum();
                let mut draw = Shared::lock(&self.0.rng).random_range(0..total);
                for (percent, target) in split {
                    if draw < *percent {
                        return Some(target.clone());
                    }
                    draw -= percent;
                }
                None
            }
        }
    }
}

/// Finishes a forwarded request however it ends: frees the slot, feeds back, records metrics.
struct Forwarded {
    shared: Arc<Shared>,
    rev: Arc<RevisionState>,
    id: u64,
    node: NodeIndex,
    arrival: Instant,
    buffered: bool,
    code: u16,
    /// Counted among the requests already (a tunnel's `101`, when it was passed on).
    recorded: bool,
}

impl Forwarded {
    /// Counts the request now, as answered at `now` with its `code`, rather than when it ends.
    fn record(&mut self, now: Instant) {
        record_outcome(&self.shared, &self.rev, Some(self.node), self.code, now - self.arrival);
        self.recorded = true;
    }
}

impl Drop for Forwarded {
    fn drop(&mut self) {
        let shared = &self.shared;
        {
            let mut inner = Shared::lock(&self.rev.inner);
            if let Some(i) = inner.instances.iter_mut().find(|x| x.id == self.id) {
                i.in_flight = i.in_flight.saturating_sub(1);
            }
            dispatch_locked(shared, &self.rev, &mut inner);
        }
        let now = Instant::now();
        self.rev.origin.request_out(now.into_std(), false);
        if self.buffered {
            self.rev.activator.request_out(now.into_std(), false);
        }
        self.rev.in_flight_gauge.dec();
        if !self.recorded {
            record_outcome(shared, &self.rev, Some(self.node), self.code, now - self.arrival);
        }
    }
}

/// Counts a finished request and its duration, with cached metric handles.
fn record_outcome(
    shared: &Shared,
    rev: &RevisionState,
    serving: Option<NodeIndex>,
    code: u16,
    elapsed: Duration,
) {
    rev.outcomes.record((serving, code), elapsed.as_secs_f64(), || {
        let labels = request_labels(shared, &rev.labels, serving, code);
        (
            shared.metrics.requests.get_or_create(&labels).clone(),
            shared.metrics.duration.get_or_create(&labels).clone(),
        )
    });
}

fn request_labels(
    shared: &Shared,
    rev: &RevisionLabels,
    serving: Option<NodeIndex>,
    code: u16,
) -> RequestLabels {
    RequestLabels {
        namespace: rev.namespace.clone(),
        service: rev.service.clone(),
        revision: rev.revision.clone(),
        origin_node: shared.node_name().to_owned(),
        serving_node: serving.map_or_else(String::new, |n| shared.nodes().names[n].clone()),
        code,
    }
}

impl Handler for Ingress {
    // Not an `async fn`: that would store the arguments twice in the future, which the
    // connection holds for every request and which lives as long as a request waits. For the same reason values
    // that are gone before an `.await` live in blocks that end before it.
    #[expect(clippy::manual_async_fn, reason = "an async fn stores its arguments twice")]
    fn handle(
        self: Arc<Self>,
        mut req: Request<RequestBody>,
        peer: Arc<Peer>,
    ) -> impl Future<Output = Response<Body>> + Send {
        async move {
            let arrival = Instant::now();
            let shared = &self.0;
            // Locals that are gone before the upstream `.await` live in blocks (or are never
            // named), so that the future does not keep room for them while a request waits.
            let (service, tagged) = {
                let Some(host) = host_of(&req) else {
                    return self.reject(
                        StatusCode::BAD_REQUEST,
                        "",
                        "",
                        "no_route",
                        "request has no Host header".into(),
                    );
                };
                let found =
                    shared.table.read().unwrap_or_else(|e| e.into_inner()).hosts.get(host.as_ref()).cloned();
                let Some(found) = found else {
                    return self.reject(
                        StatusCode::NOT_FOUND,
                        "",
                        "",
                        "no_route",
                        format!("no service answers to host {host:?}"),
                    );
                };
                found
            };
            let (ns, svc) = (service.namespace.as_str(), service.name.as_str());
            let limit = shared.config.max_body_bytes;
            // The declared length, as the server read it (no header lookup).
            if let Some(len) = http_body::Body::size_hint(req.body()).exact()
                && len > limit
            {
                return self.reject(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ns,
                    svc,
                    "too_large",
                    format!("request body of {len} bytes is larger than the {limit}-byte limit"),
                );
            }
            let rev = match tagged.or_else(|| self.choose(&service)) {
                Some(Ok(rev)) => rev,
                Some(Err(revision)) => {
                    return self.reject(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ns,
                        svc,
                        "no_route",
                        format!("revision {revision} of {ns}/{svc} is not ready"),
                    );
                }
                None => {
                    return self.reject(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ns,
                        svc,
                        "no_route",
                        format!("service {ns}/{svc} routes no traffic"),
                    );
                }
            };
            let revision = rev.labels.revision.as_str();

            // One clock reading serves the arrival, the stats, the pick and (for requests that do
            // not wait) the start of the upstream exchange.
            rev.origin.request_in(arrival.into_std(), false);
            // Take an instance now, or wait in the activator queue.
            let timeout;
            let deadline;
            let (picked, buffered) = {
                let mut entered = Entered { rev: &rev, buffered: false, handed_over: false };
                let waiting = {
                    let mut inner = Shared::lock(&rev.inner);
                    timeout = inner.route.timeout;
                    deadline = arrival + timeout;
                    let queued = inner.waiting.len() as u32;
                    match pick(shared, &mut inner, queued, arrival) {
                        Some(p) => Ok(p),
                        None if inner.instances.is_empty() && inner.route.failure.is_some() => {
                            let message = cannot_start(revision, &inner.route);
                            drop(inner);
                            // Still demand: the control plane may try the revision again.
                            shared.events.demand(ns, revision, shared.config.node);
                            return self.reject(StatusCode::SERVICE_UNAVAILABLE, ns, svc, "failed", message);
                        }
                        None => {
                            let depth = shared.config.queue_depth;
                            if inner.waiting.len() >= depth {
                                drop(inner);
                                let message = format!(
                                    "revision {revision} has no capacity and {depth} requests are already waiting"
                                );
                                return self.reject(
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    ns,
                                    svc,
                                    "queue_full",
                                    message,
                                );
                            }
                            Err((
                                enqueue(shared, &rev, &mut inner, &req, peer.addr_text(), arrival, deadline),
                                queued,
                            ))
                        }
                    }
                };
                let picked = match waiting {
                    Ok(p) => p,
                    Err((mut rx, ahead)) => {
                        entered.buffered = true;
                        req = detach_head(req);
                        req.body().release_read_buffer();
                        release_memory(&shared.config, &req, ahead);
                        rev.activator.request_in(std::time::Instant::now(), false);
                        rev.buffered_counter.inc();
                        // Boxed: the wait's timer and channel then take room only in requests that wait.
                        let id = Box::pin(wait_for_instance(shared, &rev, &mut rx, deadline)).await;
                        let (found, failure, none_ready) = {
                            let inner = Shared::lock(&rev.inner);
                            let found =
                                id.and_then(|id| inner.instances.iter().find(|x| x.id == id).map(Picked::of));
                            let failure =
                                inner.route.failure.is_some().then(|| cannot_start(revision, &inner.route));
                            (found, failure, inner.instances.is_empty())
                        };
                        match (found, failure) {
                            (Some(p), _) => p,
                            (None, Some(message)) if none_ready => {
                                return self.reject(
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    ns,
                                    svc,
                                    "failed",
                                    message,
                                );
                            }
                            (None, _) => {
                                drop(rx);
                                dispatch(shared, &rev);
                                let message = if none_ready {
                                    format!(
                                        "no instance of revision {revision} became ready within the {timeout:?} request timeout"
                                    )
                                } else {
                                    format!(
                                        "every instance of revision {revision} stayed busy for the {timeout:?} request timeout"
                                    )
                                };
                                return self.reject(StatusCode::GATEWAY_TIMEOUT, ns, svc, "timeout", message);
                            }
                        }
                    }
                };
                entered.handed_over = true;
                (picked, entered.buffered)
            };
            rev.in_flight_gauge.inc();
            let mut done = Forwarded {
                shared: shared.clone(),
                rev: rev.clone(),
                id: picked.id,
                node: picked.node,
                arrival,
                buffered,
                code: 0,
                recorded: false,
            };

            // In a block: a moved-from local still takes room in the future until its scope ends.
            let (request, client_upgrade) = {
                let (mut parts, body) = req.into_parts();
                let client_upgrade = strip_request(&mut parts);
                let upstream = Request::from_parts(parts, boxed(Limited::new(body, limit)));
                let (ip, origin) = (peer.ip_header(), shared.origin_value.as_ref());
                let upgrade = client_upgrade.is_some();
                (forward(&picked.upstream, upstream, ip, origin, buffered, upgrade), client_upgrade)
            };
            let sent = if buffered { Instant::now() } else { arrival };
            let response = match shared.timers.timeout_at(deadline, request).await {
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    let too_large = std::error::Error::source(&e).is_some_and(is_too_large);
                    let (status, reason, message) = if too_large {
                        (
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "too_large",
                            format!("request body is larger than the {limit}-byte limit"),
                        )
                    } else {
                        (
                            StatusCode::BAD_GATEWAY,
                            "upstream",
                            format!(
                                "instance {} on {} did not answer: {e}",
                                picked.name,
                                shared.nodes().names[picked.node]
                            ),
                        )
                    };
                    done.code = status.as_u16();
                    return self.reject(status, ns, svc, reason, message);
                }
                None => {
                    done.code = 504;
                    return self.reject(
                        StatusCode::GATEWAY_TIMEOUT,
                        ns,
                        svc,
                        "timeout",
                        format!(
                            "instance {} did not answer within the {timeout:?} request timeout",
                            picked.name
                        ),
                    );
                }
            };
            let now = Instant::now();
            let (mut parts, body) = response.into_parts();
            let switched = strip_response(&mut parts, client_upgrade);
            done.code = parts.status.as_u16();
            feedback(shared, &rev, &picked, &parts.headers, now, now - sent, parts.status.is_server_error());
            if let Some((client, upstream)) = switched {
                // Counted as a request now, with the time to its 101 (the tunnel has metrics of
                // its own), and in flight until the tunnel closes.
                done.record(now);
                let meter = shared.metrics.tunnels.meter(&rev.labels);
                shared.tunnels.open(client, upstream, None, done, meter);
                return Response::from_parts(parts, boxed(http_body_util::Empty::new()));
            }
            let body = Guarded::new(body, done);
            Response::from_parts(parts, boxed(body))
        }
    }
}

/// Sends `req` to `to` with the gateway's own headers, written straight into the forwarded head:
/// the origin (`origin`) and proxy (`buffered`) headers replace whatever the client sent under
/// those names; X-Forwarded-For (`ip`) appends; `upgrade` says the request asks to switch
/// protocols. Boxed: the request's future, whose size every waiting request pays, holds a pointer
/// rather than the forward's state.
fn forward<'a>(
    to: &'a Upstream,
    req: Request<Body>,
    ip: &'a HeaderValue,
    origin: Option<&'a HeaderValue>,
    buffered: bool,
    upgrade: bool,
) -> std::pin::Pin<Box<impl Future<Output = Result<Response<PooledBody>, UpstreamError>> + Send + 'a>> {
    Box::pin(async move {
        let mut added = [(&X_FORWARDED_FOR, ip); 3];
        let mut count = 1;
        if let Some(v) = origin {
            added[count] = (&ORIGIN_NAME, v);
            count += 1;
        }
        if buffered {
            added[count] = (&PROXY_NAME, &ACTIVATOR);
            count += 1;
        }
        let forwarding = Forwarding { remove: &[&ORIGIN_NAME, &PROXY_NAME], add: &added[..count], upgrade };
        to.forward(req, forwarding).await
    })
}

fn feedback(
    shared: &Shared,
    rev: &RevisionState,
    picked: &Picked,
    headers: &http::HeaderMap,
    now: Instant,
    latency: Duration,
    failed: bool,
) {
    let number = |v: &HeaderValue| v.to_str().ok().and_then(|v| v.parse::<f64>().ok());
    // One pass over the response's few headers, rather than a hashed lookup per name.
    let (mut service_ms, mut load, mut instance, mut node) = (None, None, false, false);
    for (name, value) in headers {
        match name.as_str() {
            SERVICE_TIME_HEADER => service_ms = number(value),
            LOAD_HEADER => load = number(value).map(|l| l as u32),
            INSTANCE_HEADER => instance = true,
            NODE_HEADER => node = true,
            _ => {}
        }
    }
    let served_by_queue_proxy = instance && node;
    let mut inner = Shared::lock(&rev.inner);
    if !failed && let Some(i) = inner.instances.iter_mut().find(|x| x.id == picked.id) {
        let held = latency.as_secs_f64() * 1e3;
        i.service_ms.observe(now.into_std(), service_ms.unwrap_or(held));
        i.held_ms.observe(now.into_std(), held);
    }
    let done = Completion {
        id: picked.id,
        node: picked.node,
        origin: shared.config.node,
        latency,
        service_time: service_ms
            .filter(|_| served_by_queue_proxy)
            .map(|ms| Duration::from_secs_f64(ms / 1e3)),
        reported_in_flight: load,
        success: !failed,
        now: now.into_std(),
    };
    inner.balancer.observe(&done);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<F, Fut>(_: F) -> usize
    where
        F: Fn(Arc<Ingress>, Request<RequestBody>, Arc<Peer>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// The connection holds this future for every request, and it lives as long as the request
    /// waits in the activator queue: its size is paid once per buffered request (it was 1,616 bytes
    /// before the arguments stopped being stored twice and the forwarding temporaries moved into
    /// blocks; 552 with rustc 1.95). 6518465 moved the request's parts out of their block, and
    /// the future grew to 784 bytes (2.3 MiB more for 10 000 waiting requests) until they went
    /// back into it (`-Zprint-type-sizes` showed the moved-from `parts` stored across the
    /// forward's `.await`).
    #[test]
    fn the_request_future_stays_small() {
        let size = future_size(<Ingress as Handler>::handle);
        assert!(size <= 600, "the gateway's request future grew to {size} bytes");
    }
}
