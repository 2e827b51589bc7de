//! The controller process: watches and stores, the inbox sidecars and gateways push to, the
//! ConfigMaps, and kube's `Controller` running [`crate::controller::reconcile`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use ikukantai_api::config::{CONFIG_AUTOSCALER, CONFIG_IKUKANTAI, ConfigMap as LocalConfigMap, FleetConfig};
use ikukantai_api::service::ObjectMeta;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::ProcessError;
use crate::controller::{Context, Settings, Stores, SystemClock, error_policy, reconcile};
use crate::crd::{KnativeService, MANAGED_BY, MANAGED_BY_LABEL, Placement};
use crate::wire::{DEMAND_PATH, Demand, GatewayReport, InstanceStats, REPORT_PATH, STATS_PATH};

/// Options of `ikukantai controller`.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// Where the inbox listens.
    pub listen: SocketAddr,
    /// Namespace holding `config-autoscaler` and `config-ikukantai`.
    pub system_namespace: String,
    /// Reconcile and pod settings.
    pub settings: Settings,
}

#[derive(Clone)]
struct Inbox {
    ctx: Arc<Context>,
    demand: mpsc::UnboundedSender<ObjectRef<KnativeService>>,
}

/// The inbox: `POST /v1/stats`, `/v1/report`, `/v1/demand`; `GET /healthz`, `/metrics`.
fn inbox(ctx: Arc<Context>, demand: mpsc::UnboundedSender<ObjectRef<KnativeService>>) -> Router {
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
        .with_state(Inbox { ctx, demand })
}

/// Serves the inbox on `listener` (returns when the server stops).
pub async fn serve_inbox(
    listener: TcpListener,
    ctx: Arc<Context>,
    demand: mpsc::UnboundedSender<ObjectRef<KnativeService>>,
) -> std::io::Result<()> {
    axum::serve(listener, inbox(ctx, demand)).await
}

/// The fleet configuration from the two ConfigMaps among `maps` (missing ones = defaults).
/// Errors name the ConfigMap and key; the caller keeps the previous configuration.
pub fn fleet_config<C: std::borrow::Borrow<ConfigMap>>(maps: &[C]) -> Result<FleetConfig, String> {
    let mut config = FleetConfig::new();
    for name in [CONFIG_AUTOSCALER, CONFIG_IKUKANTAI] {
        let Some(cm) = maps.iter().map(C::borrow).find(|c| c.name_any() == name) else { continue };
        let local = LocalConfigMap {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
            data: cm.data.clone().unwrap_or_default(),
        };
        config.apply(&local).map_err(|errors| {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            format!("ConfigMap {name}: {}", list.join("; "))
        })?;
    }
    Ok(config)
}

/// Runs the controller until SIGTERM/Ctrl-C.
pub async fn run(options: ManagerOptions) -> Result<(), ProcessError> {
    let client = Client::try_default().await?;
    let mut settings = options.settings.clone();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    settings.service_monitors = match crds.get_opt("servicemonitors.monitoring.coreos.com").await {
        Ok(found) => found.is_some(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell whether ServiceMonitors exist; not creating them");
            false
        }
    };
    tracing::info!(service_monitors = settings.service_monitors, "starting controller");

    let managed = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let (nodes, node_writer) = reflector::store::<Node>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (placements, placement_writer) = reflector::store::<Placement>();
    let (configs, config_writer) = reflector::store::<ConfigMap>();
    let stores = Stores { nodes: nodes.clone(), pods: pods.clone(), placements: placements.clone() };
    let ctx =
        Arc::new(Context::new(client.clone(), stores, FleetConfig::new(), settings, Arc::new(SystemClock)));

    // Nodes and ConfigMaps only feed stores; ConfigMap changes replace the configuration.
    let node_stream = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(node_writer)
        .for_each(|_| std::future::ready(()));
    tokio::spawn(node_stream);
    let config_ctx = ctx.clone();
    let config_store = configs.clone();
    let config_stream = watcher(
        Api::<ConfigMap>::namespaced(client.clone(), &options.system_namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(config_writer)
    .applied_objects()
    .for_each(move |_| {
        match fleet_config(&config_store.state()) {
            Ok(config) => config_ctx.set_config(config),
            Err(message) => tracing::error!(%message, "configuration rejected; keeping the previous one"),
        }
        std::future::ready(())
    });
    tokio::spawn(config_stream);

    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|source| ProcessError::Listen { addr: options.listen, source })?;
    let (demand_tx, demand_rx) = mpsc::unbounded_channel();
    let inbox_ctx = ctx.clone();
    tokio::spawn(async move {
        if let Err(e) = serve_inbox(listener, inbox_ctx, demand_tx).await {
            tracing::error!(error = %e, "inbox stopped");
        }
    });
    let demand =
        futures_util::stream::unfold(demand_rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });

    let pod_stream = watcher(Api::<Pod>::all(client.clone()), managed.clone())
        .default_backoff()
        .reflect(pod_writer)
        .touched_objects();
    let placement_stream = watcher(Api::<Placement>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(placement_writer)
        .touched_objects();
    // Reconciles wait for the stores so a cold cache never looks like "no pods yet".
    let ready = async move {
        for r in [
            nodes.wait_until_ready().await,
            pods.wait_until_ready().await,
            placements.wait_until_ready().await,
        ] {
            r.ok();
        }
        let _ = configs.wait_until_ready().await;
    };
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        ready.await;
        let _ = go_tx.send(true);
    });
    let gated_ctx = ctx.clone();
    Controller::new(Api::<KnativeService>::all(client.clone()), watcher::Config::default())
        .owns_stream(placement_stream)
        .watches_stream(pod_stream, |pod: Pod| {
            let ns = pod.namespace()?;
            let service = pod.labels().get(ikukantai_api::revision::SERVICE_LABEL)?.clone();
            Some(ObjectRef::new(&service).within(&ns))
        })
        .reconcile_on(demand)
        .shutdown_on_signal()
        .run(
            move |svc, ctx| {
                let mut go = go_rx.clone();
                async move {
                    // Startup only: hold the first reconciles until every store has listed.
                    let _ = tokio::time::timeout(Duration::from_secs(30), go.wait_for(|ready| *ready)).await;
                    reconcile(svc, ctx).await
                }
            },
            error_policy,
            gated_ctx,
        )
        .for_each(|result| {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile error");
            }
            std::future::ready(())
        })
        .await;
    tracing::info!("controller stopped");
    Ok(())
}
