//! Prometheus metrics of the gateway and the queue proxy (text format at `/metrics` on their admin
//! listeners). Names and labels are documented in `docs/metrics.md`.

use std::sync::atomic::AtomicU64;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Latency buckets: 0.25 ms to ~8 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// Tunnel lifetime buckets: 0.1 s to ~7 h, quadrupling (WebSocket sessions last minutes to hours).
fn tunnel_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 4.0, 10))
}

/// Metrics of the tunnels a proxy splices (connections that switched protocols, such as
/// WebSockets), by `L`. A tunnel's `101` is counted with the requests, with the time to the
/// `101`; what happens after it is counted here, so that hour-long sessions do not land in the
/// request latency histogram.
#[derive(Debug)]
pub struct TunnelMetrics<L> {
    /// `…_open_tunnels`.
    pub open: Family<L, Gauge>,
    /// `…_tunnel_duration_seconds`: from the `101` to the tunnel's end.
    pub duration: Family<L, Histogram>,
    /// `…_tunnel_from_client_bytes_total`.
    pub from_client: Family<L, Counter>,
    /// `…_tunnel_to_client_bytes_total`.
    pub to_client: Family<L, Counter>,
}

impl<L> TunnelMetrics<L>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    fn new() -> Self {
        Self {
            open: Family::default(),
            duration: Family::new_with_constructor(tunnel_histogram),
            from_client: Family::default(),
            to_client: Family::default(),
        }
    }

    fn register(&self, r: &mut Registry) {
        r.register("open_tunnels", "Connections that switched protocols and are open now", self.open.clone());
        r.register(
            "tunnel_duration_seconds",
            "Time from a tunnel's 101 answer to its end",
            self.duration.clone(),
        );
        r.register("tunnel_from_client_bytes", "Bytes tunnelled from clients", self.from_client.clone());
        r.register("tunnel_to_client_bytes", "Bytes tunnelled to clients", self.to_client.clone());
    }

    /// The handles one tunnel with `labels` updates.
    pub fn meter(&self, labels: &L) -> TunnelMeter {
        TunnelMeter {
            open: self.open.get_or_create(labels).clone(),
            duration: self.duration.get_or_create(labels).clone(),
            from_client: self.from_client.get_or_create(labels).clone(),
            to_client: self.to_client.get_or_create(labels).clone(),
        }
    }
}

/// The metric handles of one tunnel ([`TunnelMetrics::meter`]).
#[derive(Debug, Clone)]
pub struct TunnelMeter {
    pub(crate) open: Gauge,
    pub(crate) duration: Histogram,
    pub(crate) from_client: Counter,
    pub(crate) to_client: Counter,
}

impl Default for TunnelMeter {
    /// Handles registered nowhere.
    fn default() -> Self {
        Self {
            open: Gauge::default(),
            duration: tunnel_histogram(),
            from_client: Counter::default(),
            to_client: Counter::default(),
        }
    }
}

/// Labels of a request seen by a gateway.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Service namespace.
    pub namespace: String,
    /// Service name.
    pub service: String,
    /// Revision name.
    pub revision: String,
    /// Node the request entered at.
    pub origin_node: String,
    /// Node that served it ("" when it was not served).
    pub serving_node: String,
    /// HTTP status code.
    pub code: u16,
}

/// Labels of a revision at a gateway.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionLabels {
    /// Service namespace.
    pub namespace: String,
    /// Service name.
    pub service: String,
    /// Revision name.
    pub revision: String,
}

/// Labels of a request the gateway or queue proxy answered itself with an error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// Service namespace ("" if unknown).
    pub namespace: String,
    /// Service name ("" if unknown).
    pub service: String,
    /// `queue_full` (503), `timeout` (504), `no_route` (404), `too_large` (413), `upstream` (502),
    /// `draining` (503).
    pub reason: &'static str,
}

/// Gateway metrics.
#[derive(Debug)]
pub struct GatewayMetrics {
    /// `ikukantai_gateway_requests_total`.
    pub requests: Family<RequestLabels, Counter>,
    /// `ikukantai_gateway_request_duration_seconds`.
    pub duration: Family<RequestLabels, Histogram>,
    /// `ikukantai_gateway_in_flight_requests`.
    pub in_flight: Family<RevisionLabels, Gauge>,
    /// `ikukantai_gateway_buffered_requests`: waiting in the activator queue now.
    pub buffered: Family<RevisionLabels, Gauge>,
    /// `ikukantai_gateway_activator_requests_total`: requests that had to wait (activator path).
    pub buffered_total: Family<RevisionLabels, Counter>,
    /// `ikukantai_gateway_rejected_requests_total`.
    pub rejected: Family<RejectLabels, Counter>,
    /// `latency_between_nodes{from,to}`: the latest RTT this gateway measured, in milliseconds
    /// (the original monlat's name, so its dashboards keep working).
    pub latency: Family<LinkLabels, Gauge<f64, AtomicU64>>,
    /// `ikukantai_gateway_open_tunnels` and the other tunnel metrics, by revision.
    pub tunnels: TunnelMetrics<RevisionLabels>,
    /// `ikukantai_gateway_ambiguous_hosts`: hosts two routes claim, routed to neither.
    pub ambiguous_hosts: Gauge,
    /// `ikukantai_gateway_coordinate_error`: this node's network coordinate's own estimate of
    /// its relative error (0.1: estimates from it tend to be 10 % off).
    pub coordinate_error: Gauge<f64, AtomicU64>,
    /// `ikukantai_gateway_probes_total{reason}`: RTT probes planned, by why.
    pub probes: Family<ProbeLabels, Counter>,
}

/// Labels of a probe.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    /// `new`, `stale` or `explore` ([`ikukantai_policy::probe::ProbeReason`]).
    pub reason: &'static str,
}

impl ProbeLabels {
    /// The label of `reason`.
    pub fn of(reason: ikukantai_policy::probe::ProbeReason) -> Self {
        use ikukantai_policy::probe::ProbeReason::*;
        Self {
            reason: match reason {
                New => "new",
                Stale => "stale",
                Explore => "explore",
            },
        }
    }
}

/// Labels of a node pair.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkLabels {
    /// Measuring node.
    pub from: String,
    /// Measured node.
    pub to: String,
}

impl GatewayMetrics {
    /// Creates the metrics and registers them.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
            buffered: Family::default(),
            buffered_total: Family::default(),
            rejected: Family::default(),
            latency: Family::default(),
            tunnels: TunnelMetrics::new(),
            ambiguous_hosts: Gauge::default(),
            coordinate_error: Gauge::default(),
            probes: Family::default(),
        };
        m.coordinate_error.set(ikukantai_policy::estimate::VivaldiParams::default().error_max);
        registry.register(
            "latency_between_nodes",
            "Round-trip time from this node's gateway to a peer gateway, in milliseconds",
            m.latency.clone(),
        );
        let r = registry.sub_registry_with_prefix("ikukantai_gateway");
        r.register(
            "requests",
            "Requests answered, by revision, origin and serving node, and status code",
            m.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from request arrival to the end of the response (to the 101 for a tunnel)",
            m.duration.clone(),
        );
        r.register("in_flight_requests", "Requests being forwarded now", m.in_flight.clone());
        r.register(
            "buffered_requests",
            "Requests waiting for an instance with room (activator queue)",
            m.buffered.clone(),
        );
        r.register(
            "activator_requests",
            "Requests that waited in the activator queue",
            m.buffered_total.clone(),
        );
        r.register(
            "rejected_requests",
            "Requests the gateway answered itself with an error, by reason",
            m.rejected.clone(),
        );
        r.register(
            "ambiguous_hosts",
            "Hosts claimed by more than one route (a tag's and another Service's), routed to neither",
            m.ambiguous_hosts.clone(),
        );
        r.register(
            "coordinate_error",
            "This node's network coordinate's estimate of its own relative error (0.1 = about 10 % off)",
            m.coordinate_error.clone(),
        );
        r.register("probes", "RTT probes planned, by reason: new, stale, explore", m.probes.clone());
        m.tunnels.register(r);
        m
    }
}

/// Labels of a queue proxy's instance.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
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
}

/// Labels of a request at a queue proxy.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceRequestLabels {
    /// The instance.
    #[prometheus(flatten)]
    pub instance: InstanceLabels,
    /// HTTP status code.
    pub code: u16,
}

/// Labels of a request a queue proxy sent to its instance again.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResentLabels {
    /// The instance.
    #[prometheus(flatten)]
    pub instance: InstanceLabels,
    /// `unreachable` (no connection could be opened: it never reached the process) or `lost`
    /// (the connection closed before any byte of an answer).
    pub reason: &'static str,
}

/// Queue proxy metrics.
#[derive(Debug)]
pub struct QueueMetrics {
    /// `ikukantai_queue_requests_total`.
    pub requests: Family<InstanceRequestLabels, Counter>,
    /// `ikukantai_queue_request_duration_seconds`.
    pub duration: Family<InstanceRequestLabels, Histogram>,
    /// `ikukantai_queue_in_flight_requests`.
    pub in_flight: Family<InstanceLabels, Gauge>,
    /// `ikukantai_queue_waiting_requests`.
    pub waiting: Family<InstanceLabels, Gauge>,
    /// `ikukantai_queue_rejected_requests_total`.
    pub rejected: Family<RejectLabels, Counter>,
    /// `ikukantai_queue_open_tunnels` and the other tunnel metrics.
    pub tunnels: TunnelMetrics<InstanceLabels>,
    /// `ikukantai_queue_resent_requests_total`: requests sent to the instance again once it was
    /// ready after its process had gone.
    pub resent: Family<ResentLabels, Counter>,
}

impl QueueMetrics {
    /// Creates the metrics and registers them.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
            waiting: Family::default(),
            rejected: Family::default(),
            tunnels: TunnelMetrics::new(),
            resent: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("ikukantai_queue");
        r.register("requests", "Requests answered by the instance, by status code", m.requests.clone());
        r.register(
            "request_duration_seconds",
            "Time from arrival at the queue proxy to the end of the response (to the 101 for a tunnel)",
            m.duration.clone(),
        );
        r.register("in_flight_requests", "Requests at the instance now", m.in_flight.clone());
        r.register("waiting_requests", "Requests waiting for a containerConcurrency slot", m.waiting.clone());
        r.register(
            "rejected_requests",
            "Requests the queue proxy answered itself with an error, by reason",
            m.rejected.clone(),
        );
        r.register(
            "resent_requests",
            "Requests sent to the instance again once it was ready after its process had gone, by reason",
            m.resent.clone(),
        );
        m.tunnels.register(r);
        m
    }
}

/// A request counter and duration histogram per outcome, resolved from their families once per
/// outcome and then found in a short list: a handful of outcomes (status codes, serving nodes)
/// per revision or instance, where hashing the labels on every request cost thousands of
/// instructions.
#[derive(Debug)]
pub struct OutcomeHandles<K>(Mutex<Vec<(K, Counter, Histogram)>>);

impl<K> Default for OutcomeHandles<K> {
    fn default() -> Self {
        Self(Mutex::new(Vec::new()))
    }
}

impl<K: PartialEq> OutcomeHandles<K> {
    /// Counts one request with outcome `key` that took `seconds`; `resolve` gives the handles
    /// the first time `key` is seen.
    pub fn record(&self, key: K, seconds: f64, resolve: impl FnOnce() -> (Counter, Histogram)) {
        let mut list = self.0.lock();
        let at = match list.iter().position(|(k, ..)| *k == key) {
            Some(at) => at,
            None => {
                let (count, duration) = resolve();
                list.push((key, count, duration));
                list.len() - 1
            }
        };
        let (_, count, duration) = &list[at];
        count.inc();
        duration.observe(seconds);
    }
}

/// Renders a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// The `/metrics` response for a registry.
pub fn metrics_response(registry: &Registry) -> http::Response<ikukantai_http::body::Body> {
    let mut r = http::Response::new(ikukantai_http::body::full(render(registry)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_handles_are_resolved_once_per_key() {
        let handles = OutcomeHandles::default();
        let mut resolved = 0;
        for code in [200u16, 200, 503, 200] {
            handles.record(code, 0.5, || {
                resolved += 1;
                (Counter::default(), latency_histogram())
            });
        }
        assert_eq!(resolved, 2);
        let list = handles.0.lock();
        let counts: Vec<(u16, u64)> = list.iter().map(|(k, c, _)| (*k, c.get())).collect();
        assert_eq!(counts, vec![(200, 3), (503, 1)]);
    }
}
