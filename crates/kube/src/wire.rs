//! What queue-proxy sidecars and gateways push to the controller (JSON over HTTP), and a small
//! client to push it. Pushed, once a second, instead of the original's 2 s Prometheus queries.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ikukantai_policy::autoscaler::Stat;
use serde::{Deserialize, Serialize};

/// `POST` path for [`InstanceStats`].
pub const STATS_PATH: &str = "/v1/stats";
/// `POST` path for [`GatewayReport`].
pub const REPORT_PATH: &str = "/v1/report";
/// `POST` path for [`Demand`].
pub const DEMAND_PATH: &str = "/v1/demand";

/// One period's load, as [`Stat`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireStat {
    /// Time-weighted average in-flight requests.
    pub concurrency: f64,
    /// Part of `concurrency` that came through a gateway's activator queue.
    pub proxied_concurrency: f64,
    /// Requests per second.
    pub requests: f64,
    /// Part of `requests` that came through a gateway's activator queue.
    pub proxied_requests: f64,
}

impl From<Stat> for WireStat {
    fn from(s: Stat) -> Self {
        Self {
            concurrency: s.concurrency,
            proxied_concurrency: s.proxied_concurrency,
            requests: s.requests,
            proxied_requests: s.proxied_requests,
        }
    }
}

impl From<WireStat> for Stat {
    fn from(s: WireStat) -> Self {
        Self {
            concurrency: s.concurrency,
            proxied_concurrency: s.proxied_concurrency,
            requests: s.requests,
            proxied_requests: s.proxied_requests,
        }
    }
}

/// A queue proxy's stats for the last second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStats {
    /// Namespace.
    pub namespace: String,
    /// Revision.
    pub revision: String,
    /// Pod name.
    pub instance: String,
    /// Node name.
    pub node: String,
    /// The load.
    pub stat: WireStat,
}

/// One revision's requests seen by a gateway in the last second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionLoad {
    /// Namespace.
    pub namespace: String,
    /// Revision.
    pub revision: String,
    /// Requests that waited in the activator queue.
    pub activator: WireStat,
    /// Every request that entered at this node.
    pub origin: WireStat,
}

/// A gateway's report for the last second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayReport {
    /// The gateway's node.
    pub node: String,
    /// Load by revision.
    #[serde(default)]
    pub revisions: Vec<RevisionLoad>,
    /// Latest RTT measured to each peer node, in milliseconds.
    #[serde(default)]
    pub rtt_ms: BTreeMap<String, f64>,
    /// The node's network coordinate (`x1,…;height;adjustment;error`, ms), sent with the RTTs:
    /// placement estimates the pairs nobody measured from everyone's coordinates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinate: Option<String>,
}

/// A request for a revision with no instance arrived at `node`: scale it up now, here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Demand {
    /// Namespace.
    pub namespace: String,
    /// Knative Service.
    pub service: String,
    /// Revision.
    pub revision: String,
    /// Node the request entered at.
    pub node: String,
}

/// A push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Could not reach the controller.
    #[error("controller at {uri}: {message}")]
    Unreachable {
        /// Target.
        uri: String,
        /// What happened.
        message: String,
    },
    /// The controller answered with an error.
    #[error("controller at {uri} answered {status}")]
    Status {
        /// Target.
        uri: String,
        /// Status code.
        status: http::StatusCode,
    },
}

/// Pushes JSON to the controller.
#[derive(Debug, Clone)]
pub struct Pusher {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    /// The projected token to send ([`crate::auth`]), read again for each push.
    token_file: Option<std::path::PathBuf>,
}

impl Pusher {
    /// A pusher to `base` (`http://ikukantai-controller.ikukantai-system:9090`).
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            token_file: None,
        }
    }

    /// Sends the token in `path` with every push (the kubelet keeps the file fresh).
    pub fn with_token_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.token_file = Some(path.into());
        self
    }

    /// `POST base+path` with `body` as JSON; gives up after 2 s.
    pub async fn push<T: Serialize>(&self, path: &str, body: &T) -> Result<(), PushError> {
        let uri = format!("{}{path}", self.base);
        let unreachable = |message: String| PushError::Unreachable { uri: uri.clone(), message };
        let target: Uri = uri.parse().map_err(|e: http::uri::InvalidUri| unreachable(e.to_string()))?;
        let json = serde_json::to_vec(body).map_err(|e| unreachable(e.to_string()))?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(target)
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(token) = self.token_file.as_deref().and_then(crate::auth::read_token) {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req.body(Full::new(Bytes::from(json))).map_err(|e| unreachable(e.to_string()))?;
        let response = tokio::time::timeout(Duration::from_secs(2), self.client.request(req))
            .await
            .map_err(|_| unreachable("timed out after 2s".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(PushError::Status { uri, status: response.status() })
        }
    }
}
