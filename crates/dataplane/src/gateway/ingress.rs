//! The ingress: takes a request from a client and serves it in three phases — route (host →
//! service → revision), admit (an instance now, or a wait in the activator queue) and forward
//! (to the instance, and its response back) — accounting for it in drop guards however it ends.
//! A phase that cannot go on ends the request with a [`Rejection`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use ikukantai_http::body::{Body, Guarded, Limited, boxed, error_response, is_too_large};
use ikukantai_http::error::chain;
use ikukantai_http::h1::{Handler, RequestBody};
use ikukantai_http::peer::Peer;
use ikukantai_http::pool::{Forwarding, PooledBody, Upstream, UpstreamError};
use ikukantai_http::proxy::detach_head;
use ikukantai_http::upgrade::{OnUpgrade, strip_response};
use ikukantai_policy::estimate::NodeIndex;
use ikukantai_policy::gateway::{self as decisions, feed_back};
use rand::RngExt;
use tokio::time::Instant;

use super::Shared;
use super::activator::{
    Picked, Waiter, cannot_start, dispatch_locked, enqueue, pick, release_memory, wait_for_instance,
};
use super::hosts::{host_from_target, host_of};
use super::routes::{RevisionState, ServiceState, Target};
use crate::edge::{client_body_failed, forwarded_for, strip_at_edge};
use crate::headers::{
    FORWARDED, INSTANCE_HEADER, INSTANCE_NAME, LOAD_HEADER, LOAD_NAME, NODE_HEADER, NODE_NAME, ORIGIN_NAME,
    PROBE_NAME, PROXY_NAME, SERVICE_TIME_HEADER, SERVICE_TIME_NAME, X_FORWARDED_FOR, X_FORWARDED_HOST,
    X_FORWARDED_PROTO, X_REAL_IP,
};
use crate::metrics::{RejectLabels, RequestLabels, RevisionLabels};

/// What a 405 says is served: any method but CONNECT (the instance decides the rest).
static ALLOWED: HeaderValue = HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE");

pub(super) struct Ingress(pub(super) Arc<Shared>);

/// A request the gateway answers itself rather than forward: the answer, and the labels it is
/// counted under in `ikukantai_gateway_rejected_requests_total`.
struct Rejection {
    status: StatusCode,
    /// The service's namespace and name; empty when no service answers to the host.
    namespace: String,
    service: String,
    /// The metric's `reason` label.
    reason: &'static str,
    message: String,
}

impl Rejection {
    fn new(status: StatusCode, service: &ServiceState, reason: &'static str, message: String) -> Self {
        let (namespace, service) = (service.namespace.clone(), service.name.clone());
        Self { status, namespace, service, reason, message }
    }

    /// A request whose host names no service.
    fn no_route(status: StatusCode, message: String) -> Self {
        Self { status, namespace: String::new(), service: String::new(), reason: "no_route", message }
    }

    /// A request the client got wrong, before it was routed.
    fn bad_request(message: String) -> Self {
        let (namespace, service) = (String::new(), String::new());
        Self { status: StatusCode::BAD_REQUEST, namespace, service, reason: "bad_request", message }
    }

    /// A CONNECT request: never forwarded.
    fn connect() -> Self {
        let (namespace, service) = (String::new(), String::new());
        let message = "CONNECT is not served: the gateway is no forward proxy".into();
        Self { status: StatusCode::METHOD_NOT_ALLOWED, namespace, service, reason: "method", message }
    }

    /// The only way a rejection reaches a client: counted, then answered.
    fn answer(self, shared: &Shared) -> Response<Body> {
        let Self { status, namespace, service, reason, message } = self;
        shared.metrics.rejected.get_or_create(&RejectLabels { namespace, service, reason }).inc();
        let mut response = error_response(status, message);
        if status == StatusCode::METHOD_NOT_ALLOWED {
            response.headers_mut().insert(header::ALLOW, ALLOWED.clone());
        }
        response
    }
}

/// A routed request's service (named by its host) and revision (chosen by the traffic split).
struct Routed {
    service: Arc<ServiceState>,
    rev: Arc<RevisionState>,
}

/// What the admit phase did with a request.
enum Admission<'a> {
    /// An instance had room.
    Now(Admitted),
    /// None had: the request is in the activator queue.
    Queued(Queued<'a>),
}

/// A request in the activator queue.
struct Queued<'a> {
    waiter: Waiter<'a>,
    /// Requests that were waiting before it.
    ahead: u32,
    entered: Entered<'a>,
    timeout: Duration,
    deadline: Instant,
}

/// A request with an instance. Its slot is taken ([`pick`] counted it in flight), so it
/// becomes a [`Forwarded`] guard before any `.await`.
struct Admitted {
    picked: Picked,
    /// It waited in the activator queue.
    buffered: bool,
    timeout: Duration,
    deadline: Instant,
}

/// Counts a request as entered at this node until dropped (covers cancellation while waiting).
struct Entered<'a> {
    rev: &'a RevisionState,
    buffered: bool,
    handed_over: bool,
}

impl Entered<'_> {
    /// From now on a [`Forwarded`] guard accounts for the request. A request that waited leaves
    /// the activator's count here: its instance counts it from now on, so the time it spends on a
    /// link counts nowhere (the autoscaler sizes instances, not links).
    fn hand_over(mut self) {
        self.handed_over = true;
        if self.buffered {
            self.rev.activator.request_out(std::time::Instant::now(), false);
        }
    }
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

/// Finishes a forwarded request however it ends: frees the slot, feeds back, records metrics.
struct Forwarded {
    shared: Arc<Shared>,
    rev: Arc<RevisionState>,
    id: u64,
    node: NodeIndex,
    arrival: Instant,
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

    /// Ends the request with the gateway's own answer, counted under its status here too.
    fn rejected(mut self, rejection: Rejection) -> Rejection {
        self.code = rejection.status.as_u16();
        rejection
    }
}

impl Drop for Forwarded {
    fn drop(&mut self) {
        let shared = &self.shared;
        {
            let mut inner = self.rev.inner.lock();
            if let Some(i) = inner.instances.iter_mut().find(|x| x.load.id == self.id) {
                i.load.in_flight = i.load.in_flight.saturating_sub(1);
            }
            dispatch_locked(shared, &self.rev, &mut inner);
        }
        let now = Instant::now();
        self.rev.origin.request_out(now.into_std(), false);
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
    fn handle(
        self: Arc<Self>,
        req: Request<RequestBody>,
        peer: Arc<Peer>,
    ) -> impl Future<Output = Response<Body>> + Send {
        Answer { shared: self.0.clone(), serve: self.serve(req, peer) }
    }
}

pin_project_lite::pin_project! {
    /// A request's response: what [`Ingress::serve`] answers, or its rejection. A future of its
    /// own: an `async` block awaiting `serve` would keep room for the request twice.
    struct Answer<F> {
        shared: Arc<Shared>,
        #[pin]
        serve: F,
    }
}

impl<F: Future<Output = Result<Response<Body>, Rejection>>> Future for Answer<F> {
    type Output = Response<Body>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response<Body>> {
        let this = self.project();
        this.serve.poll(cx).map(|served| served.unwrap_or_else(|rejection| rejection.answer(this.shared)))
    }
}

impl Ingress {
    /// Serves a request: route, admit, forward.
    // Not an `async fn`: that would store the arguments twice in the future, which the
    // connection holds for every request and which lives as long as a request waits. For the
    // same reason the phases that need no `.await` are plain functions, whose locals take no
    // room in it.
    #[expect(clippy::manual_async_fn, reason = "an async fn stores its arguments twice")]
    fn serve(
        self: Arc<Self>,
        mut req: Request<RequestBody>,
        peer: Arc<Peer>,
    ) -> impl Future<Output = Result<Response<Body>, Rejection>> + Send {
        async move {
            // One clock reading serves the arrival, the stats, the pick and (for requests that
            // do not wait) the start of the upstream exchange.
            let arrival = Instant::now();
            let routed = self.route(&req)?;
            // A `let`, not the `match`'s scrutinee, whose temporaries the future would keep across
            // the wait; in a block, so that its borrow of `routed` ends before `forward` takes it.
            let admitted = {
                let admission = self.admit(&routed, &req, &peer, arrival)?;
                match admission {
                    Admission::Now(admitted) => admitted,
                    Admission::Queued(queued) => {
                        // Its head is copied out, so that the connection can let go of its buffer.
                        req = detach_head(req);
                        self.wait(&routed, queued, &req).await?
                    }
                }
            };
            self.forward(routed, admitted, req, &peer, arrival).await
        }
    }

    /// Route: the service the host names, the body's declared size against the limit, and the
    /// revision the traffic split (or the host's tag) chooses.
    fn route(&self, req: &Request<RequestBody>) -> Result<Routed, Rejection> {
        let shared = &self.0;
        if req.method() == Method::CONNECT {
            // A tunnel to wherever the client names is a forward proxy's job, not ours; forwarded,
            // an instance's 2xx would read as a tunnel to whoever stands in front (RFC 9110 §9.3.6).
            return Err(Rejection::connect());
        }
        let (service, tagged) = {
            let host = host_of(req).map_err(|why| Rejection::bad_request(why.into()))?;
            let table = shared.table.read();
            match table.hosts.get(host.as_ref()) {
                Some(found) => found.clone(),
                None => {
                    let message = match table.ambiguous.get(host.as_ref()) {
                        Some(who) => format!("host {host:?} is claimed by {who}, so it routes to neither"),
                        None => format!("no service answers to host {host:?}"),
                    };
                    return Err(Rejection::no_route(StatusCode::NOT_FOUND, message));
                }
            }
        };
        let limit = shared.config.max_body_bytes;
        // The declared length, as the server read it (no header lookup).
        if let Some(len) = http_body::Body::size_hint(req.body()).exact()
            && len > limit
        {
            let message = format!("request body of {len} bytes is larger than the {limit}-byte limit");
            return Err(Rejection::new(StatusCode::PAYLOAD_TOO_LARGE, &service, "too_large", message));
        }
        let (ns, svc) = (&service.namespace, &service.name);
        let rev = match tagged.or_else(|| self.choose(&service)) {
            Some(Ok(rev)) => rev,
            Some(Err(revision)) => {
                let message = format!("revision {revision} of {ns}/{svc} is not ready");
                return Err(Rejection::new(StatusCode::SERVICE_UNAVAILABLE, &service, "no_route", message));
            }
            None => {
                let message = format!("service {ns}/{svc} routes no traffic");
                return Err(Rejection::new(StatusCode::SERVICE_UNAVAILABLE, &service, "no_route", message));
            }
        };
        Ok(Routed { service, rev })
    }

    fn choose(&self, service: &ServiceState) -> Option<Target> {
        match service.split.as_slice() {
            [] => None,
            [(_, only)] => Some(only.clone()),
            split => {
                let total: u32 = split.iter().map(|(p, _)| p).sum();
                let mut draw = self.0.rng.lock().random_range(0..total);
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

    /// Admit: an instance with room now, else a place in the activator queue; at once 503 for a
    /// revision that cannot start, or when the queue is full.
    fn admit<'a>(
        &'a self,
        routed: &'a Routed,
        req: &Request<RequestBody>,
        peer: &Peer,
        arrival: Instant,
    ) -> Result<Admission<'a>, Rejection> {
        let shared = &self.0;
        let Routed { service, rev } = routed;
        rev.origin.request_in(arrival.into_std(), false);
        let entered = Entered { rev, buffered: false, handed_over: false };
        let mut inner = rev.inner.lock();
        let timeout = inner.route.timeout;
        let deadline = arrival + timeout;
        let ahead = inner.waiting.len() as u32;
        if let Some(picked) = pick(shared, &mut inner, Some(ahead), arrival) {
            entered.hand_over();
            return Ok(Admission::Now(Admitted { picked, buffered: false, timeout, deadline }));
        }
        let revision = rev.labels.revision.as_str();
        if inner.instances.is_empty() && inner.route.failure.is_some() {
            let message = cannot_start(revision, &inner.route);
            drop(inner);
            // Still demand: the control plane may try the revision again.
            shared.events.demand(&service.namespace, revision, shared.config.node);
            return Err(Rejection::new(StatusCode::SERVICE_UNAVAILABLE, service, "failed", message));
        }
        let depth = shared.config.queue_depth;
        if inner.waiting.len() >= depth {
            drop(inner);
            let message =
                format!("revision {revision} has no capacity and {depth} requests are already waiting");
            return Err(Rejection::new(StatusCode::SERVICE_UNAVAILABLE, service, "queue_full", message));
        }
        let waiter = enqueue(shared, rev, &mut inner, req, peer.addr_text(), arrival, deadline);
        Ok(Admission::Queued(Queued { waiter, ahead, entered, timeout, deadline }))
    }

    /// The waiting part of admit: until the activator queue hands the request an instance, the
    /// revision turns out unable to start, or the request timeout ends (504).
    fn wait<'a>(
        &'a self,
        routed: &'a Routed,
        queued: Queued<'a>,
        req: &Request<RequestBody>,
    ) -> impl Future<Output = Result<Admitted, Rejection>> + Send + 'a {
        let shared = &self.0;
        let Routed { service, rev } = routed;
        let Queued { mut waiter, ahead, mut entered, timeout, deadline } = queued;
        entered.buffered = true;
        req.body().release_read_buffer();
        release_memory(&shared.config, req, ahead);
        rev.activator.request_in(std::time::Instant::now(), false);
        rev.buffered_counter.inc();
        async move {
            // Boxed: the wait's timer and channel then take room only in requests that wait.
            let id = Box::pin(wait_for_instance(&mut waiter, deadline)).await;
            let revision = rev.labels.revision.as_str();
            let (found, failure, none_ready) = {
                let inner = rev.inner.lock();
                let found =
                    id.and_then(|id| inner.instances.iter().find(|x| x.load.id == id).map(Picked::of));
                let failure = inner.route.failure.is_some().then(|| cannot_start(revision, &inner.route));
                (found, failure, inner.instances.is_empty())
            };
            match (found, failure) {
                (Some(picked), _) => {
                    waiter.taken();
                    entered.hand_over();
                    Ok(Admitted { picked, buffered: true, timeout, deadline })
                }
                (None, Some(message)) if none_ready => {
                    Err(Rejection::new(StatusCode::SERVICE_UNAVAILABLE, service, "failed", message))
                }
                (None, _) => {
                    // Leaves the queue, giving back an instance dispatched to it meanwhile.
                    drop(waiter);
                    let message = if none_ready {
                        format!(
                            "no instance of revision {revision} became ready within the {timeout:?} request timeout"
                        )
                    } else {
                        format!(
                            "every instance of revision {revision} stayed busy for the {timeout:?} request timeout"
                        )
                    };
                    Err(Rejection::new(StatusCode::GATEWAY_TIMEOUT, service, "timeout", message))
                }
            }
        }
    }

    /// Forward: sends the request to its instance (under a [`Forwarded`] guard from here on) and
    /// answers with the instance's response, a tunnel to it, or why there is none.
    fn forward<'a>(
        &'a self,
        routed: Routed,
        admitted: Admitted,
        req: Request<RequestBody>,
        peer: &'a Peer,
        arrival: Instant,
    ) -> impl Future<Output = Result<Response<Body>, Rejection>> + Send + 'a {
        let shared = &self.0;
        let Routed { service, rev } = routed;
        let Admitted { picked: Picked { id, name, node, upstream }, buffered, timeout, deadline } = admitted;
        rev.in_flight_gauge.inc();
        let done = Forwarded { shared: shared.clone(), rev, id, node, arrival, code: 0, recorded: false };
        let edge = &shared.config.edge;
        let (mut parts, body) = req.into_parts();
        host_from_target(&mut parts);
        let client_upgrade = strip_at_edge(&mut parts, &edge.upgrades);
        // A trusted proxy's forwarding headers go on, its X-Forwarded-For extended in one field;
        // anyone else's are replaced by what the gateway saw (no copy: the peer's value is shared).
        let trusted = edge.trusts(peer.addr().ip());
        let client = Client {
            forwarded_for: if trusted {
                forwarded_for(&parts.headers, peer.ip_header())
            } else {
                peer.ip_header().clone()
            },
            trusted,
            proto_given: trusted && parts.headers.contains_key(&X_FORWARDED_PROTO),
        };
        let req = Request::from_parts(parts, boxed(Limited::new(body, shared.config.max_body_bytes)));
        let origin = shared.origin_value.as_ref();
        let request = send(upstream, req, client, origin, client_upgrade.is_some());
        let sent = if buffered { Instant::now() } else { arrival };
        async move {
            let rejection = match shared.timers.timeout_at(deadline, request).await {
                Some(Ok(response)) => return Ok(respond(shared, response, done, client_upgrade, sent)),
                Some(Err(e)) if std::error::Error::source(&e).is_some_and(is_too_large) => {
                    let limit = shared.config.max_body_bytes;
                    let message = format!("request body is larger than the {limit}-byte limit");
                    Rejection::new(StatusCode::PAYLOAD_TOO_LARGE, &service, "too_large", message)
                }
                // The client's body broke its framing (or ended early): the client's fault, not
                // the instance's.
                Some(Err(e)) if client_body_failed(&e) => {
                    Rejection::new(StatusCode::BAD_REQUEST, &service, "bad_request", chain(&e))
                }
                Some(Err(e)) => {
                    let message = format!(
                        "instance {name} on {} did not answer: {}",
                        shared.nodes().names[done.node],
                        chain(&e)
                    );
                    Rejection::new(StatusCode::BAD_GATEWAY, &service, "upstream", message)
                }
                None => {
                    let message =
                        format!("instance {name} did not answer within the {timeout:?} request timeout");
                    Rejection::new(StatusCode::GATEWAY_TIMEOUT, &service, "timeout", message)
                }
            };
            Err(done.rejected(rejection))
        }
    }
}

/// The client's response to an instance's: fed back to the balancer, its body guarded by
/// `done`, or a tunnel if the instance switched protocols.
fn respond(
    shared: &Shared,
    response: Response<PooledBody>,
    mut done: Forwarded,
    client_upgrade: Option<OnUpgrade>,
    sent: Instant,
) -> Response<Body> {
    let now = Instant::now();
    let (mut parts, body) = response.into_parts();
    let switched = strip_response(&mut parts, client_upgrade);
    done.code = parts.status.as_u16();
    let internal = feedback(&done, &parts.headers, now, now - sent, parts.status.is_server_error());
    if internal && !shared.config.edge.internal_headers {
        // Read for feedback; where and how loaded it was served is not the client's business.
        for name in [&INSTANCE_NAME, &NODE_NAME, &LOAD_NAME, &SERVICE_TIME_NAME] {
            parts.headers.remove(name);
        }
    }
    if let Some((client, upstream)) = switched {
        // Counted as a request now, with the time to its 101 (the tunnel has metrics of its
        // own), and in flight until the tunnel closes, or goes quiet for the idle timeout.
        done.record(now);
        let meter = shared.metrics.tunnels.meter(&done.rev.labels);
        shared.tunnels.open(client, upstream, shared.config.edge.tunnel_idle_timeout, done, meter);
        return Response::from_parts(parts, boxed(http_body_util::Empty::new()));
    }
    Response::from_parts(parts, boxed(Guarded::new(body, done)))
}

/// Headers a client never gets through: the gateway's own (written by it alone, so a client
/// cannot pose as another node or as the activator), the queue proxy's probe, and the
/// forwarding headers the gateway writes itself.
static PLATFORM: [&HeaderName; 4] = [&ORIGIN_NAME, &PROXY_NAME, &PROBE_NAME, &X_FORWARDED_FOR];
/// [`PLATFORM`], and what an untrusted client says of the hops before the gateway.
static UNTRUSTED: [&HeaderName; 8] = [
    &ORIGIN_NAME,
    &PROXY_NAME,
    &PROBE_NAME,
    &X_FORWARDED_FOR,
    &FORWARDED,
    &X_REAL_IP,
    &X_FORWARDED_PROTO,
    &X_FORWARDED_HOST,
];
/// The gateway serves plain HTTP.
static HTTP: HeaderValue = HeaderValue::from_static("http");

/// What the forwarding headers say of the client.
struct Client {
    /// `X-Forwarded-For`, the client's IP last.
    forwarded_for: HeaderValue,
    /// The client is a trusted proxy: its own forwarding headers go on.
    trusted: bool,
    /// It said `X-Forwarded-Proto` itself.
    proto_given: bool,
}

/// Sends `req` to `to` with the gateway's own headers, written straight into the forwarded head:
/// the origin header (`origin`) replaces whatever the client sent under that name, and so do
/// `X-Forwarded-For` and `-Proto` ([`Client`]); `upgrade` says the request
/// asks to switch protocols. Boxed: the request's future, whose size every waiting request pays,
/// holds a pointer rather than the forward's state.
fn send<'a>(
    to: Arc<Upstream>,
    req: Request<Body>,
    client: Client,
    origin: Option<&'a HeaderValue>,
    upgrade: bool,
) -> Pin<Box<impl Future<Output = Result<Response<PooledBody>, UpstreamError>> + Send + 'a>> {
    Box::pin(async move {
        let mut added = [(&X_FORWARDED_FOR, &client.forwarded_for); 3];
        let mut count = 1;
        if !client.proto_given {
            added[count] = (&X_FORWARDED_PROTO, &HTTP);
            count += 1;
        }
        if let Some(v) = origin {
            added[count] = (&ORIGIN_NAME, v);
            count += 1;
        }
        let remove: &[&HeaderName] = if client.trusted { &PLATFORM } else { &UNTRUSTED };
        let forwarding = Forwarding { remove, add: &added[..count], upgrade };
        to.forward(req, forwarding).await
    })
}

/// Feeds a response's timing and the instance's piggybacked load back into the instance's
/// estimates and the revision's balancer. Returns whether the response carries the queue
/// proxy's headers.
fn feedback(
    done: &Forwarded,
    headers: &http::HeaderMap,
    now: Instant,
    latency: Duration,
    failed: bool,
) -> bool {
    // A number the estimates can take: finite, not negative.
    let number = |v: &HeaderValue| {
        v.to_str().ok().and_then(|v| v.parse::<f64>().ok()).filter(|x| x.is_finite() && *x >= 0.0)
    };
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
    let origin = done.shared.config.node;
    let response = decisions::Response {
        latency,
        service_ms,
        from_queue_proxy: instance && node,
        reported_in_flight: load,
        success: !failed,
        // Only a success teaches the estimates: no lookup for a failure.
        rtt_ms: (!failed).then(|| done.shared.rtt.read().get(origin, done.node, now.into_std())),
    };
    let inner = &mut *done.rev.inner.lock();
    let instance_load = inner.instances.iter_mut().find(|x| x.load.id == done.id).map(|x| &mut x.load);
    let key = (done.id, done.node, origin);
    feed_back(inner.balancer.as_mut(), instance_load, key, &response, now.into_std());
    instance || node || load.is_some() || service_ms.is_some()
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
    /// waits in the activator queue: its size is paid once per waiting request. To see what it
    /// keeps across each `.await`: `RUSTC_BOOTSTRAP=1 cargo rustc -p ikukantai-dataplane --lib --
    /// -Zprint-type-sizes` (a local moved after it was borrowed keeps its room until its scope ends).
    #[test]
    fn the_request_future_stays_small() {
        let size = future_size(<Ingress as Handler>::handle);
        assert!(size <= 600, "the gateway's request future grew to {size} bytes");
    }
}
