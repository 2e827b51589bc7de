//! The inbox gateways and queue proxies push to, and the leader's health endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use kube::runtime::reflector::ObjectRef;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::controller::Context;
use crate::crd::KnativeService;
use crate::wire::{DEMAND_PATH, Demand, GatewayReport, InstanceStats, REPORT_PATH, STATS_PATH};

#[derive(Clone)]
struct Inbox {
    ctx: Arc<Context>,
    demand: mpsc::UnboundedSender<ObjectRef<KnativeService>>,
    leading: Arc<AtomicBool>,
}

/// The inbox: `POST /v1/stats`, `/v1/report`, `/v1/demand`; `GET /healthz` (alive), `/leader`
/// (200 while this replica leads, else 503; not a readiness probe: standbys are ready too),
/// `/metrics`.
fn inbox(
    ctx: Arc<Context>,
    demand: mpsc::UnboundedSender<ObjectRef<KnativeService>>,
    leading: Arc<AtomicBool>,
) -> Router {
    Router::new()
        .route(
            STATS_PATH,
            post(|State(i): State<Inbox>, Json(s): Json<InstanceStats>| async move {
                i.ctx.record_stats(&s);
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            REPORT_PATH,
            post(|State(i): State<Inbox>, Json(r): Json<GatewayReport>| async move {
                i.ctx.record_report(&r);
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            DEMAND_PATH,
            post(|State(i): State<Inbox>, Json(d): Json<Demand>| async move {
                tracing::info!(revision = %d.revision, node = %d.node, "demand at zero");
                let _ = i.demand.send(i.ctx.record_demand(&d));
                StatusCode::NO_CONTENT
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
        .with_state(Inbox { ctx, demand, leading })
}

/// Serves the inbox on `listener` (returns when the server stops); `leading` answers `/leader`.
pub async fn serve_inbox(
    listener: TcpListener,
    ctx: Arc<Context>,
    demand: mpsc::UnboundedSender<ObjectRef<KnativeService>>,
    leading: Arc<AtomicBool>,
) -> std::io::Result<()> {
    axum::serve(listener, inbox(ctx, demand, leading)).await
}
