//! The fleet's HTTP API (loopback by default), used by the CLI.
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/api/v1/nodes`, `/services`, `/revisions`, `/instances`, `/placements`, `/latency` | lists (JSON) |
//! | GET | `/api/v1/services/{namespace}/{name}` | one service with status |
//! | POST | `/api/v1/apply` | `{"sources": [["file", "text"], …]}` |
//! | DELETE | `/api/v1/services/{namespace}/{name}` | delete |
//! | GET | `/api/v1/logs/{instance}?tail=N` | the instance's log (text) |
//! | GET | `/metrics` | `latency_between_nodes{from,to}` (ms, measured pairs), `ikukantai_coordinate_error{node}` |
//!
//! With a token configured every request needs `Authorization: Bearer <token>`.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use std::sync::atomic::AtomicU64;

use crate::fleet::{Fleet, FleetError, error_chain};
use crate::view::ErrorBody;

#[derive(Clone)]
struct App {
    fleet: Arc<Fleet>,
    token: Option<Arc<str>>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody { error: message.into() })).into_response()
}

impl IntoResponse for FleetError {
    fn into_response(self) -> Response {
        let status = match &self {
            FleetError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            FleetError::NotFound(_) => StatusCode::NOT_FOUND,
            FleetError::Io { .. }
            | FleetError::Store(_)
            | FleetError::Gateway { .. }
            | FleetError::Locked(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        error(status, error_chain(&self))
    }
}

async fn auth(State(app): State<App>, headers: HeaderMap, req: Request, next: Next) -> Response {
    if let Some(token) = &app.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_ref()) {
            return error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (set IKUKANTAI_TOKEN or --token)",
            );
        }
    }
    next.run(req).await
}

#[derive(Debug, Deserialize)]
struct ApplyBody {
    sources: Vec<(String, String)>,
}

#[derive(Debug, Deserialize)]
struct Tail {
    tail: Option<usize>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Pair {
    from: String,
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

fn metrics(fleet: &Fleet) -> String {
    let mut registry = Registry::default();
    let family = Family::<Pair, Gauge<f64, AtomicU64>>::default();
    registry.register(
        "latency_between_nodes",
        "Measured round-trip time between nodes, in milliseconds",
        family.clone(),
    );
    let errors = Family::<NodeLabel, Gauge<f64, AtomicU64>>::default();
    registry.register(
        "ikukantai_coordinate_error",
        "A node's network coordinate's estimate of its own relative error (0.1 = about 10 % off)",
        errors.clone(),
    );
    let l = fleet.latency();
    for (i, row) in l.measured.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            if let Some(ms) = v {
                family.get_or_create(&Pair { from: l.nodes[i].clone(), to: l.nodes[j].clone() }).set(*ms);
            }
        }
        if let Some(e) = l.coordinate_error[i] {
            errors.get_or_create(&NodeLabel { node: l.nodes[i].clone() }).set(e);
        }
    }
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// The API router.
pub fn router(fleet: Arc<Fleet>, token: Option<String>) -> Router {
    let app = App { fleet, token: token.map(Into::into) };
    Router::new()
        .route("/api/v1/nodes", get(|State(a): State<App>| async move { Json(a.fleet.nodes()) }))
        .route("/api/v1/services", get(|State(a): State<App>| async move { Json(a.fleet.services()) }))
        .route(
            "/api/v1/services/{namespace}/{name}",
            get(|State(a): State<App>, Path((ns, name)): Path<(String, String)>| async move {
                a.fleet
                    .service(&ns, &name)
                    .map(Json)
                    .ok_or_else(|| FleetError::NotFound(format!("service {ns}/{name} not found")))
            })
            .delete(
                |State(a): State<App>, Path((ns, name)): Path<(String, String)>| async move {
                    a.fleet
                        .delete(&ns, &name)
                        .map(|()| Json(serde_json::json!({"deleted": format!("{ns}/{name}")})))
                },
            ),
        )
        .route("/api/v1/revisions", get(|State(a): State<App>| async move { Json(a.fleet.revisions()) }))
        .route("/api/v1/instances", get(|State(a): State<App>| async move { Json(a.fleet.instances()) }))
        .route("/api/v1/placements", get(|State(a): State<App>| async move { Json(a.fleet.placements()) }))
        .route("/api/v1/latency", get(|State(a): State<App>| async move { Json(a.fleet.latency()) }))
        .route(
            "/api/v1/apply",
            post(|State(a): State<App>, Json(body): Json<ApplyBody>| async move {
                a.fleet.apply(&body.sources).map(Json)
            }),
        )
        .route(
            "/api/v1/logs/{instance}",
            get(|State(a): State<App>, Path(instance): Path<String>, Query(q): Query<Tail>| async move {
                let Some(path) = a.fleet.log_path(&instance) else {
                    return error(StatusCode::NOT_FOUND, format!("no log for instance {instance:?}"));
                };
                match std::fs::read_to_string(&path) {
                    Ok(text) => {
                        let lines: Vec<&str> = text.lines().collect();
                        let skip = q.tail.map_or(0, |t| lines.len().saturating_sub(t));
                        let mut out = lines[skip..].join("\n");
                        out.push('\n');
                        out.into_response()
                    }
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{}: {e}", path.display())),
                }
            }),
        )
        .route("/metrics", get(|State(a): State<App>| async move { metrics(&a.fleet) }))
        .route("/healthz", get(|| async { "ok" }))
        .layer(middleware::from_fn_with_state(app.clone(), auth))
        .with_state(app)
}
