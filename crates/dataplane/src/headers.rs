//! The headers the gateway and the queue proxy speak between them (and to instances), in one
//! place, and a request's headers as the queue disciplines see them.

use http::{HeaderMap, HeaderName};

/// Header naming the instance that served a response.
pub const INSTANCE_HEADER: &str = "x-ikukantai-instance";
/// Header naming the node that served a response.
pub const NODE_HEADER: &str = "x-ikukantai-node";
/// Header carrying the instance's load when it answered: requests in flight plus waiting.
pub const LOAD_HEADER: &str = "x-ikukantai-load";
/// Header carrying the processing time until the response started, in milliseconds.
pub const SERVICE_TIME_HEADER: &str = "x-ikukantai-service-time";
/// Request header marking requests that came through the gateway's buffering path (Knative's).
pub const PROXY_HEADER: &str = "k-proxy-request";
/// Request header of Knative-style readiness probes of the queue proxy itself.
pub const PROBE_HEADER: &str = "k-network-probe";
/// Request header telling the instance where the request entered the fleet.
pub const ORIGIN_HEADER: &str = "x-ikukantai-origin";
/// Header of a gateway's `/healthz` answer carrying its network coordinate (for the prober's).
pub const COORDINATE_HEADER: &str = "x-ikukantai-coordinate";

// The names as `HeaderName`s: looking a header up by `&str` parses and validates the name first.
pub(crate) static INSTANCE_NAME: HeaderName = HeaderName::from_static(INSTANCE_HEADER);
pub(crate) static NODE_NAME: HeaderName = HeaderName::from_static(NODE_HEADER);
pub(crate) static LOAD_NAME: HeaderName = HeaderName::from_static(LOAD_HEADER);
pub(crate) static SERVICE_TIME_NAME: HeaderName = HeaderName::from_static(SERVICE_TIME_HEADER);
pub(crate) static PROXY_NAME: HeaderName = HeaderName::from_static(PROXY_HEADER);
pub(crate) static PROBE_NAME: HeaderName = HeaderName::from_static(PROBE_HEADER);
pub(crate) static ORIGIN_NAME: HeaderName = HeaderName::from_static(ORIGIN_HEADER);
pub(crate) static COORDINATE_NAME: HeaderName = HeaderName::from_static(COORDINATE_HEADER);
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub(crate) static FORWARDED: HeaderName = http::header::FORWARDED;

/// A request's headers as the queue disciplines see them (no copy).
#[derive(Debug, Clone, Copy)]
pub struct HeaderView<'a>(pub &'a HeaderMap);

impl ikukantai_policy::queue::HeaderLookup for HeaderView<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.get(name)?.to_str().ok()
    }
}
