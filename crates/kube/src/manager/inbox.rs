//! The inbox gateways and queue proxies push to, and the leader's health endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use kube::runtime::reflector::ObjectRef;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::auth::{AuthError, Authenticator, Identity};
use crate::controller::Context;
use crate::crd::KnativeService;
use crate::wire::{DEMAND_PATH, Demand, GatewayReport, InstanceStats, REPORT_PATH, STATS_PATH};

/// Who may push what: tokens are checked by `authenticator`; gateways are the service account
/// `gateway_account` (namespace, name).
#[derive(Debug, Clone)]
pub struct InboxAuth {
    /// Tells who a token belongs to.
    pub authenticator: Arc<dyn Authenticator>,
    /// The gateways' service account: (namespace, name).
    pub gateway_account: (String, String),
}

#[derive(Clone)]
struct Inbox {
    ctx: Arc<Context>,
    demand: mpsc::UnboundedSender<ObjectRef<KnativeService>>,
    leading: Arc<AtomicBool>,
    auth: InboxAuth,
}

type Refusal = (StatusCode, String);

impl Inbox {
    /// The pusher's identity from its bearer token.
    async fn who(&self, headers: &HeaderMap) -> Result<Identity, Refusal> {
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| (StatusCode::UNAUTHORIZED, "a bearer token is required\n".to_owned()))?;
        match self.auth.authenticator.authenticate(token.trim()).await {
            Ok(id) => Ok(id),
            Err(e @ AuthError::Unauthenticated(_)) => Err((StatusCode::UNAUTHORIZED, format!("{e}\n"))),
            Err(e @ AuthError::Unavailable(_)) => Err((StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))),
        }
    }

    /// A gateway, pushing for its own node.
    fn gateway_of(&self, id: &Identity, node: &str) -> Result<(), Refusal> {
        let (ns, account) = &self.auth.gateway_account;
        if id.namespace != *ns || id.service_account != *account {
            return Err(forbidden(&format!("{}/{} is not a gateway", id.namespace, id.service_account)));
        }
        if id.node.as_deref() != Some(node) {
            return Err(forbidden(&format!("the gateway on {:?} cannot speak for node {node:?}", id.node)));
        }
        Ok(())
    }

    /// An instance, pushing its own stats.
    fn instance_of(&self, id: &Identity, s: &InstanceStats) -> Result<(), Refusal> {
        if id.namespace != s.namespace || id.pod.as_deref() != Some(s.instance.as_str()) {
            return Err(forbidden(&format!(
                "{:?} in {} cannot report for {}/{}",
                id.pod, id.namespace, s.namespace, s.instance
            )));
        }
        match self.ctx.instance(&s.namespace, &s.instance) {
            Some((revision, node))
                if revision == s.revision && node.as_ref().is_none_or(|n| *n == s.node) =>
            {
                Ok(())
            }
            _ => Err(forbidden(&format!(
                "{}/{} is no instance of {} on {}",
                s.namespace, s.instance, s.revision, s.node
            ))),
        }
    }
}

fn forbidden(why: &str) -> Refusal {
    tracing::warn!(%why, "push refused");
    (StatusCode::FORBIDDEN, format!("{why}\n"))
}

/// The inbox: `POST /v1/stats`, `/v1/report`, `/v1/demand` (each authenticated, see
/// [`crate::auth`]); `GET /healthz` (alive), `/leader` (200 while this replica leads, else 503;
/// not a readiness probe: standbys are ready too), `/metrics`.
fn inbox(
    ctx: Arc<Context>,
    demand: mpsc::UnboundedSender<ObjectRef<KnativeService>>,
    leading: Arc<AtomicBool>,
    auth: InboxAuth,
) -> Router {
    Router::new()
        .route(
            STATS_PATH,
            post(|State(i): State<Inbox>, headers: HeaderMap, Json(s): Json<InstanceStats>| async move {
                let id = i.who(&headers).await?;
                i.instance_of(&id, &s)?;
                i.ctx.record_stats(&s);
                Ok::<_, Refusal>(StatusCode::NO_CONTENT)
            }),
        )
        .route(
            REPORT_PATH,
            post(|State(i): State<Inbox>, headers: HeaderMap, Json(r): Json<GatewayReport>| async move {
                let id = i.who(&headers).await?;
                i.gateway_of(&id, &r.node)?;
                i.ctx.record_report(&r);
                Ok::<_, Refusal>(StatusCode::NO_CONTENT)
            }),
        )
        .route(
            DEMAND_PATH,
            post(|State(i): State<Inbox>, headers: HeaderMap, Json(d): Json<Demand>| async move {
                let id = i.who(&headers).await?;
                i.gateway_of(&id, &d.node)?;
                tracing::info!(revision = %d.revision, node = %d.node, "demand at zero");
                let _ = i.demand.send(i.ctx.record_demand(&d));
                Ok::<_, Refusal>(StatusCode::NO_CONTENT)
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/leader",
            get(|State(i): State<Inbox>| async move {
                if i.leading.load(Ordering::Acquire) {
                    (StatusCode::OK, "leading\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "standby: another replica leads\n")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(i): State<Inbox>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    i.ctx.metrics_text(),
                )
            }),
        )
        .with_state(Inbox { ctx, demand, leading, auth })
}

/// Serves the inbox on `listener` (returns when the server stops); `leading` answers `/leader`.
pub async fn serve_inbox(
    listener: TcpListener,
    ctx: Arc<Context>,
    demand: mpsc::UnboundedSender<ObjectRef<KnativeService>>,
    leading: Arc<AtomicBool>,
    auth: InboxAuth,
) -> std::io::Result<()> {
    axum::serve(listener, inbox(ctx, demand, leading, auth)).await
}
