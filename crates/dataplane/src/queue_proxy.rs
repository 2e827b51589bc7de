//! The queue proxy: one in front of every instance.
//!
//! - enforces containerConcurrency: `cc` requests at once, up to `10 × cc` waiting (ordered by the
//!   revision's queue discipline), 503 beyond; no limit when `cc = 0`;
//! - probes the instance (its readinessProbe, by default TCP on its port; when `periodSeconds` is 0
//!   aggressively until first ready — from 1 ms backing off to Knative's 50 ms) and reports ready
//!   only when it answers;
//! - applies `timeoutSeconds` (504 if no response in time, the stream cut if it runs past),
//!   `responseStartTimeoutSeconds` and `idleTimeoutSeconds`;
//! - keeps time-weighted concurrency and request-rate stats for the autoscaler, counting requests
//!   a Knative activator marks as its own (`K-Proxy-Request: activator`) separately (ikukantai's
//!   gateway does not: it counts a request only while it waits, and strips a client's mark);
//! - tells every response where it was served and how loaded the instance is
//!   (`x-ikukantai-instance`, `x-ikukantai-node`, `x-ikukantai-load`, `x-ikukantai-service-time`);
//! - tunnels connections that switch protocols (WebSocket, `tunnels`): a tunnel holds
//!   its containerConcurrency slot while open, and is cut after `idleTimeoutSeconds` without a
//!   byte and when the drain starts;
//! - waits out a restart of the instance's process: a request that finds it gone waits, unready,
//!   for it to be back and goes again if that cannot repeat it (module `app`);
//! - drains on stop: refuses new work, finishes what it has, then exits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};
use ikukantai_api::service::Probe;
use ikukantai_policy::autoscaler::Stat;
use ikukantai_policy::queue::{PriorityRule, RequestMeta};
use ikukantai_policy::registry::{self, PolicyParams};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, timeout_at};

use crate::breaker::{Breaker, Permit};
use crate::edge::{client_body_failed, strip_at_edge};
use crate::headers::{
    HeaderView, INSTANCE_NAME, LOAD_NAME, NODE_NAME, PROBE_NAME, PROXY_NAME, SERVICE_TIME_NAME,
};
use crate::metrics::{
    InstanceLabels, InstanceRequestLabels, OutcomeHandles, QueueMetrics, RejectLabels, metrics_response,
};
use crate::recycling_timer::RecyclingTimer;
use crate::stats::RequestStats;
use ikukantai_http::body::{Body, Deadlines, Guarded, boxed, error_response, full};
use ikukantai_http::error::chain;
use ikukantai_http::h1::{Handler, RequestBody};
use ikukantai_http::peer::Peer;
use ikukantai_http::pool::{Forwarding, Upstream};
use ikukantai_http::server::{ServerHandle, serve};
use ikukantai_http::upgrade::strip_response;

use crate::tunnels::Tunnels;

mod app;

/// Milliseconds with three decimals (`12.345`) from microseconds, as a header value. Written by
/// hand: formatting an `f64` cost more than a thousand instructions per request.
fn millis_value(micros: u64) -> HeaderValue {
    let mut buf = [0u8; 24];
    let mut at = buf.len();
    let mut put = |digit: u64| {
        at -= 1;
        buf[at] = b'0' + (digit % 10) as u8;
    };
    let fraction = micros % 1000;
    put(fraction);
    put(fraction / 10);
    put(fraction / 100);
    at -= 1;
    buf[at] = b'.';
    let mut whole = micros / 1000;
    loop {
        at -= 1;
        buf[at] = b'0' + (whole % 10) as u8;
        whole /= 10;
        if whole == 0 {
            break;
        }
    }
    HeaderValue::from_bytes(&buf[at..]).expect("digits and a dot are a valid header value")
}

/// How the instance's readiness is checked.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeAction {
    /// A TCP connection to the instance's port succeeds.
    Tcp,
    /// `GET path` answers 2xx or 3xx.
    Http {
        /// Path.
        path: String,
        /// Extra headers.
        headers: Vec<(String, String)>,
    },
}

/// The readiness probe, with Kubernetes' defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Readiness {
    /// What is checked.
    pub action: ProbeAction,
    /// Wait before the first check.
    pub initial_delay: Duration,
    /// Between checks; zero = aggressive (from 1 ms backing off to 50 ms until ready, then every
    /// second).
    pub period: Duration,
    /// Per-check time-out.
    pub timeout: Duration,
    /// Consecutive failures before not ready.
    pub failure_threshold: u32,
    /// Consecutive successes before ready.
    pub success_threshold: u32,
}

impl Readiness {
    /// The probe a container asks for (or the default TCP probe).
    pub fn from_probe(probe: Option<&Probe>) -> Self {
        let action = match probe.and_then(|p| p.http_get.as_ref()) {
            Some(h) => ProbeAction::Http {
                path: h.path.clone().unwrap_or_else(|| "/".into()),
                headers: h.http_headers.iter().map(|x| (x.name.clone(), x.value.clone())).collect(),
            },
            None => ProbeAction::Tcp,
        };
        let secs = |v: Option<u32>, default: u64| Duration::from_secs(v.map_or(default, u64::from));
        Self {
            action,
            initial_delay: secs(probe.and_then(|p| p.initial_delay_seconds), 0),
            period: secs(probe.and_then(|p| p.period_seconds), 0),
            timeout: secs(probe.and_then(|p| p.timeout_seconds), 1),
            failure_threshold: probe.and_then(|p| p.failure_threshold).unwrap_or(3).max(1),
            success_threshold: probe.and_then(|p| p.success_threshold).unwrap_or(1).max(1),
        }
    }
}

/// Everything a queue proxy needs to know.
#[derive(Debug, Clone)]
pub struct QueueProxyConfig {
    /// Service namespace.
    pub namespace: String,
    /// Service name.
    pub service: String,
    /// Revision name.
    pub revision: String,
    /// Instance name.
    pub instance: String,
    /// Node name.
    pub node: String,
    /// Where the instance listens.
    pub app: SocketAddr,
    /// containerConcurrency (0 = unlimited).
    pub container_concurrency: u32,
    /// Waiting requests allowed (default 10 × cc).
    pub queue_depth: Option<usize>,
    /// Queue discipline name.
    pub queue: String,
    /// Rules of the `priority` discipline.
    pub priority_rules: Vec<PriorityRule>,
    /// `timeoutSeconds`.
    pub timeout: Duration,
    /// `responseStartTimeoutSeconds`.
    pub response_start_timeout: Option<Duration>,
    /// `idleTimeoutSeconds` (None or zero = none).
    pub idle_timeout: Option<Duration>,
    /// Readiness probe.
    pub readiness: Readiness,
    /// Largest accepted request head.
    pub max_header_bytes: usize,
    /// Protocols a request may ask to switch to ([`crate::edge::upgrade_allowed`]); a request
    /// asking for another is served as a plain one. Default: [`crate::edge::default_upgrades`]
    /// (`websocket`).
    pub upgrades: Vec<String>,
}

/// Invalid queue proxy configuration.
#[derive(Debug, thiserror::Error)]
pub enum QueueProxyError {
    /// Unknown queue discipline.
    #[error(transparent)]
    Policy(#[from] ikukantai_policy::registry::UnknownPolicy),
    /// Listener problem.
    #[error("queue proxy listener")]
    Io(#[from] std::io::Error),
}

struct Inner {
    config: QueueProxyConfig,
    labels: InstanceLabels,
    /// The instance's and node's names as header values (`None` if not valid as one).
    instance_value: Option<HeaderValue>,
    node_value: Option<HeaderValue>,
    /// Metric handles resolved once, not hashed from the labels on every request.
    in_flight_gauge: Gauge,
    waiting_gauge: Gauge,
    /// Requests and durations by status code.
    outcomes: OutcomeHandles<u16>,
    /// Sleeps for the response-start timeout, reused from request to request.
    timers: RecyclingTimer,
    breaker: Arc<Breaker>,
    /// The instance's process, and the pooled connections to it.
    app: Upstream,
    stats: RequestStats,
    ready: watch::Sender<bool>,
    /// Wakes the probe loop when a request finds the process gone ([`app`]).
    reprobe: Notify,
    draining: AtomicBool,
    /// Woken as `draining` turns true: requests waiting for the process give up.
    drain_started: Notify,
    /// True once a drain has finished the requests in flight (`/wait-for-drain` waits for it).
    drained: watch::Sender<bool>,
    metrics: QueueMetrics,
    registry: Registry,
    /// Connections that switched protocols, spliced to the instance.
    tunnels: Tunnels,
}

/// A running queue proxy.
#[derive(Debug)]
pub struct QueueProxyHandle {
    inner: Arc<InnerRef>,
    server: ServerHandle,
    admin: ServerHandle,
    prober: tokio::task::JoinHandle<()>,
}

/// Opaque shared state (kept private; `Debug` for the handle).
pub struct InnerRef(Inner);

impl std::fmt::Debug for InnerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueProxy").field("instance", &self.0.config.instance).finish_non_exhaustive()
    }
}

impl QueueProxyHandle {
    /// Starts a queue proxy serving on `listener` (requests) and `admin` (`/metrics`).
    pub fn start(
        config: QueueProxyConfig,
        listener: TcpListener,
        admin: TcpListener,
    ) -> Result<Self, QueueProxyError> {
        let params =
            PolicyParams { priority_rules: config.priority_rules.clone(), ..PolicyParams::default() };
        let discipline = registry::queue(&config.queue, &params)?;
        let cc = config.container_concurrency;
        let depth = config.queue_depth.unwrap_or(10 * cc as usize);
        let mut registry = Registry::default();
        let metrics = QueueMetrics::new(&mut registry);
        let labels = InstanceLabels {
            namespace: config.namespace.clone(),
            service: config.service.clone(),
            revision: config.revision.clone(),
            instance: config.instance.clone(),
            node: config.node.clone(),
        };
        let (ready, _) = watch::channel(false);
        let max_header = config.max_header_bytes;
        let in_flight_gauge = metrics.in_flight.get_or_create(&labels).clone();
        let waiting_gauge = metrics.waiting.get_or_create(&labels).clone();
        let inner = Arc::new(InnerRef(Inner {
            instance_value: HeaderValue::from_str(&config.instance).ok(),
            node_value: HeaderValue::from_str(&config.node).ok(),
            in_flight_gauge,
            waiting_gauge,
            outcomes: OutcomeHandles::default(),
            timers: RecyclingTimer::default(),
            breaker: Breaker::new(cc, depth, discipline),
            stats: RequestStats::new(std::time::Instant::now()),
            ready,
            reprobe: Notify::new(),
            draining: AtomicBool::new(false),
            drain_started: Notify::new(),
            drained: watch::channel(false).0,
            tunnels: Tunnels::default(),
            metrics,
            registry,
            labels,
            app: Upstream::direct(config.app),
            config,
        }));
        let prober = tokio::spawn(app::probe_loop(inner.clone()));
        let server = serve(listener, inner.clone(), max_header)?;
        let admin = serve(admin, Arc::new(Admin(inner.clone())), 8192)?;
        Ok(Self { inner, server, admin, prober })
    }

    /// Where requests go.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Where `/metrics` is served.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.addr()
    }

    /// Follows readiness.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.inner.0.ready.subscribe()
    }

    /// Requests in flight (including those waiting for a slot).
    pub fn in_flight(&self) -> u32 {
        self.inner.0.stats.in_flight()
    }

    /// Cuts the stats for the period since the last call (call it every second).
    pub fn report(&self) -> Stat {
        self.inner.0.stats.report(std::time::Instant::now())
    }

    /// Graceful stop: new requests get 503, the ones in flight finish, tunnels (connections that
    /// switched protocols) are cut, then the servers stop.
    pub async fn drain(self) {
        self.drain_after(Duration::ZERO).await;
    }

    /// [`drain`](Self::drain) after a notice period: readiness fails at once, so that whoever
    /// routes here lets go of the instance, while requests are still served for `notice` (those
    /// routed here before that was seen). Callers of the admin path `/wait-for-drain` (the
    /// instance container's preStop hook on Kubernetes) are answered once the requests in flight
    /// have finished, so the instance is not told to stop while it still has work.
    pub async fn drain_after(self, notice: Duration) {
        let inner = &self.inner.0;
        inner.ready.send_replace(false);
        self.prober.abort();
        if !notice.is_zero() {
            tokio::time::sleep(notice).await;
        }
        inner.draining.store(true, Ordering::SeqCst);
        inner.drain_started.notify_waiters();
        inner.tunnels.close();
        while inner.stats.in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        inner.drained.send_replace(true);
        self.server.shutdown().await;
        self.admin.shutdown().await;
    }
}

/// Counts a request in the waiting gauge while it lives.
struct Waiting<'a>(&'a Gauge);

impl<'a> Waiting<'a> {
    fn start(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Decrements stats and gauges when a request ends, however it ends.
struct InFlight {
    inner: Arc<InnerRef>,
    proxied: bool,
    arrival: Instant,
    code: u16,
    /// Counted among the requests already (a tunnel's `101`, when it was passed on).
    recorded: bool,
    _permit: Option<Permit>,
}

impl InFlight {
    /// Counts the request now, as answered at `now` with its `code`, rather than when it ends.
    fn record(&mut self, now: Instant) {
        let inner = &self.inner.0;
        inner.outcomes.record(self.code, (now - self.arrival).as_secs_f64(), || {
            let labels = InstanceRequestLabels { instance: inner.labels.clone(), code: self.code };
            (
                inner.metrics.requests.get_or_create(&labels).clone(),
                inner.metrics.duration.get_or_create(&labels).clone(),
            )
        });
        self.recorded = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = Instant::now();
        self.inner.0.stats.request_out(now.into_std(), self.proxied);
        self.inner.0.in_flight_gauge.dec();
        if !self.recorded {
            self.record(now);
        }
    }
}

impl InnerRef {
    fn reject(&self, status: StatusCode, reason: &'static str, message: String) -> Response<Body> {
        let labels = RejectLabels {
            namespace: self.0.config.namespace.clone(),
            service: self.0.config.service.clone(),
            reason,
        };
        self.0.metrics.rejected.get_or_create(&labels).inc();
        self.stamp(error_response(status, message))
    }

    fn stamp(&self, mut resp: Response<Body>) -> Response<Body> {
        let inner = &self.0;
        let h = resp.headers_mut();
        for (name, value) in [(&INSTANCE_NAME, &inner.instance_value), (&NODE_NAME, &inner.node_value)] {
            if let Some(v) = value {
                h.insert(name.clone(), v.clone());
            }
        }
        let load = inner.breaker.in_flight() as usize + inner.breaker.waiting();
        h.insert(LOAD_NAME.clone(), HeaderValue::from(load));
        resp
    }
}

impl Handler for InnerRef {
    async fn handle(self: Arc<Self>, req: Request<RequestBody>, peer: Arc<Peer>) -> Response<Body> {
        let arrival = Instant::now();
        let inner = &self.0;
        let config = &inner.config;
        if inner.draining.load(Ordering::SeqCst) {
            return self.reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                format!("instance {} is draining", config.instance),
            );
        }
        let proxied = req.headers().get(&PROXY_NAME).is_some_and(|v| v == "activator");
        inner.stats.request_in(arrival.into_std(), proxied);
        inner.in_flight_gauge.inc();
        let mut guard =
            InFlight { inner: self.clone(), proxied, arrival, code: 0, recorded: false, _permit: None };
        let deadline = arrival + config.timeout;

        let ticket = {
            let headers = HeaderView(req.headers());
            let source = peer.addr_text();
            let host = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
            let meta = RequestMeta {
                id: 0,
                source: Some(source),
                host,
                path: req.uri().path(),
                method: req.method().as_str(),
                headers: &headers,
                arrival: arrival.into_std(),
                deadline: Some(deadline.into_std()),
            };
            inner.breaker.enter(&meta)
        };
        let ticket = match ticket {
            Ok(t) => t,
            Err(full) => {
                guard.code = 503;
                return self.reject(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "queue_full",
                    format!("instance {} is at capacity: {full}", config.instance),
                );
            }
        };
        let permit = if ticket.queued() {
            // Counted as waiting until the wait ends, also when the client leaves during it.
            let _waiting = Waiting::start(&inner.waiting_gauge);
            timeout_at(deadline, ticket.wait()).await.ok()
        } else {
            // Granted at once: no timer to arm.
            Some(ticket.wait().await)
        };
        let Some(permit) = permit else {
            guard.code = 504;
            return self.reject(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!(
                    "no containerConcurrency slot on instance {} within the {:?} request timeout",
                    config.instance, config.timeout
                ),
            );
        };
        guard._permit = Some(permit);

        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        let client_upgrade = strip_at_edge(&mut parts, &config.upgrades);
        let upstream = Request::from_parts(parts, boxed(body));
        // The activator's mark is for this proxy's stats, not for the instance; probes of this
        // proxy are answered on its admin listener only, never by (or passed to) the instance.
        let forwarding =
            Forwarding { remove: &[&PROXY_NAME, &PROBE_NAME], add: &[], upgrade: client_upgrade.is_some() };
        let start_deadline = config.response_start_timeout.map_or(deadline, |t| (arrival + t).min(deadline));
        let mut waited = false;
        let send = app::forward(inner, upstream, forwarding, &mut waited);
        let sent = inner.timers.timeout_at(start_deadline, send).await;
        let response = match sent {
            Some(Ok(r)) => r,
            Some(Err(app::Failure::Upstream(e))) if client_body_failed(&e) => {
                guard.code = 400;
                return self.reject(StatusCode::BAD_REQUEST, "bad_request", chain(&e));
            }
            Some(Err(app::Failure::Upstream(e))) => {
                guard.code = 502;
                return self.reject(
                    StatusCode::BAD_GATEWAY,
                    "upstream",
                    format!("instance {} did not answer: {}", config.instance, chain(&e)),
                );
            }
            Some(Err(app::Failure::Draining)) => {
                guard.code = 503;
                return self.reject(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "draining",
                    format!("instance {} is draining; its process was gone", config.instance),
                );
            }
            None => {
                guard.code = 504;
                let which =
                    if start_deadline < deadline { "responseStartTimeoutSeconds" } else { "timeoutSeconds" };
                let gone = if waited { "; its process was gone and not ready again in time" } else { "" };
                return self.reject(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    format!(
                        "instance {} did not start responding within {:?} ({which}){gone}",
                        config.instance,
                        start_deadline - arrival
                    ),
                );
            }
        };
        let service_micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let (mut parts, body) = response.into_parts();
        let switched = strip_response(&mut parts, client_upgrade);
        guard.code = parts.status.as_u16();
        parts.headers.insert(SERVICE_TIME_NAME.clone(), millis_value(service_micros));
        let idle = config.idle_timeout.filter(|d| !d.is_zero());
        if let Some((client, upstream)) = switched {
            // Counted as a request now, with the time to its 101 (the tunnel has metrics of its
            // own); in flight, holding its containerConcurrency slot, until the tunnel closes;
            // cut after idleTimeoutSeconds without a byte either way.
            guard.record(Instant::now());
            let meter = inner.metrics.tunnels.meter(&inner.labels);
            inner.tunnels.open(client, upstream, idle, guard, meter);
            return self.stamp(Response::from_parts(parts, boxed(http_body_util::Empty::new())));
        }
        let body = Deadlines::new(body, idle, deadline, config.timeout);
        let body = Guarded::new(body, guard);
        self.stamp(Response::from_parts(parts, boxed(body)))
    }
}

struct Admin(Arc<InnerRef>);

impl Handler for Admin {
    async fn handle(self: Arc<Self>, req: Request<RequestBody>, _peer: Arc<Peer>) -> Response<Body> {
        // Knative's probe of the queue proxy itself, on any path: only here, where the platform
        // reaches it, so that no client can bypass the instance or fake its latency.
        if req.headers().get(&PROBE_NAME).is_some_and(|v| v == "queue") {
            let inner = &self.0.0;
            return if *inner.ready.borrow() && !inner.draining.load(Ordering::SeqCst) {
                Response::new(full("queue"))
            } else {
                error_response(StatusCode::SERVICE_UNAVAILABLE, "not ready")
            };
        }
        match req.uri().path() {
            "/metrics" => metrics_response(&self.0.0.registry),
            "/healthz" => Response::new(full("ok")),
            // Readiness for Kubernetes: the instance answers its probe and no drain started.
            "/ready" if *self.0.0.ready.borrow() => Response::new(full("ready")),
            "/ready" => error_response(StatusCode::SERVICE_UNAVAILABLE, "not ready"),
            "/wait-for-drain" => {
                let _ = self.0.0.drained.subscribe().wait_for(|drained| *drained).await;
                Response::new(full("drained"))
            }
            other => error_response(
                StatusCode::NOT_FOUND,
                format!("no such admin path {other:?}; try /metrics, /ready, /wait-for-drain"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_times_are_milliseconds_with_three_decimals() {
        for (micros, text) in [
            (0, "0.000"),
            (7, "0.007"),
            (1_000, "1.000"),
            (12_345, "12.345"),
            (100_050, "100.050"),
            (u64::MAX, "18446744073709551.615"),
        ] {
            assert_eq!(millis_value(micros), text, "{micros} µs");
        }
    }
}
