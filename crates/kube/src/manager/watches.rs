//! The leader's watches, the stores they fill, and kube's `Controller` over them.

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;

use super::fleet_config;
use crate::ProcessError;
use crate::controller::{Context, Stores, error_policy, reconcile};
use crate::crd::{KnativeService, MANAGED_BY, MANAGED_BY_LABEL, Placement, ServiceRoute};

/// The reflector writers the leader's watches feed.
pub(super) struct Writers {
    pub(super) nodes: reflector::store::Writer<Node>,
    pub(super) pods: reflector::store::Writer<Pod>,
    pub(super) placements: reflector::store::Writer<Placement>,
    pub(super) routes: reflector::store::Writer<ServiceRoute>,
    pub(super) configs: reflector::store::Writer<ConfigMap>,
}

/// What the leader's reconcile loop needs.
pub(super) struct Leader {
    pub(super) client: Client,
    pub(super) ctx: Arc<Context>,
    pub(super) system_namespace: String,
    pub(super) demand_rx: mpsc::UnboundedReceiver<ObjectRef<KnativeService>>,
    pub(super) stores: Stores,
    pub(super) configs: reflector::Store<ConfigMap>,
    pub(super) writers: Writers,
}

/// Logs a watch's errors (a 403 from RBAC, objects that no longer decode after an upgrade):
/// the watch retries with backoff, and until it lists once nothing is reconciled, so the cause
/// must be visible.
fn logged<T, S>(what: &'static str, stream: S) -> impl futures_util::Stream<Item = Result<T, watcher::Error>>
where
    S: futures_util::Stream<Item = Result<T, watcher::Error>>,
{
    stream.inspect(move |r| {
        if let Err(e) = r {
            tracing::error!(watch = what, error = %e, "watch failed; retrying (check RBAC and that the CRDs match this version)");
        }
    })
}

/// Runs `reconcile` once the caches have listed (`synced` turned true). Never before, however
/// long that takes: a reconcile from an empty cache sees no Placements and no Pods, and would
/// cut a revision again over a frozen one and create Pods that exist.
pub async fn gated_reconcile(
    mut synced: tokio::sync::watch::Receiver<bool>,
    ksvc: Arc<KnativeService>,
    ctx: Arc<Context>,
) -> Result<kube::runtime::controller::Action, crate::controller::Error> {
    synced.wait_for(|synced| *synced).await.map_err(|_| crate::controller::Error::NotSynced)?;
    reconcile(ksvc, ctx).await
}

/// The leader's reconcile loop: watches feed the stores and kube's `Controller` runs
/// [`reconcile`] until SIGTERM/Ctrl-C. Fails if a store's watch ended before it ever listed.
pub(super) async fn reconcile_loop(leader: Leader) -> Result<(), ProcessError> {
    let Leader { client, ctx, system_namespace, demand_rx, stores, configs, writers } = leader;
    let Stores { nodes, pods, placements, routes } = stores;
    let managed = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    // Nodes and ConfigMaps only feed stores; ConfigMap changes replace the configuration.
    let node_stream = logged("nodes", watcher(Api::<Node>::all(client.clone()), watcher::Config::default()))
        .default_backoff()
        .reflect(writers.nodes)
        .for_each(|_| std::future::ready(()));
    tokio::spawn(node_stream);
    // ConfigMap changes replace the configuration, and every Service is reconciled under it
    // (defaults reach the ServiceRoutes; idle Services are otherwise not reconciled).
    let config_ctx = ctx.clone();
    let config_store = configs.clone();
    let (reconcile_all_tx, reconcile_all_rx) = mpsc::unbounded_channel::<()>();
    let config_stream = logged(
        "configmaps",
        watcher(Api::<ConfigMap>::namespaced(client.clone(), &system_namespace), watcher::Config::default()),
    )
    .default_backoff()
    .reflect(writers.configs)
    .applied_objects()
    .for_each(move |_| {
        match fleet_config(&config_store.state()) {
            Ok(config) => {
                config_ctx.set_config(config);
                let _ = reconcile_all_tx.send(());
            }
            Err(message) => {
                tracing::error!(%message, "configuration rejected; keeping the previous one")
            }
        }
        std::future::ready(())
    });
    tokio::spawn(config_stream);
    let reconcile_all =
        futures_util::stream::unfold(
            reconcile_all_rx,
            |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
        );

    let demand =
        futures_util::stream::unfold(demand_rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });

    let pod_stream = logged("pods", watcher(Api::<Pod>::all(client.clone()), managed.clone()))
        .default_backoff()
        .reflect(writers.pods)
        .touched_objects();
    let placement_stream =
        logged("placements", watcher(Api::<Placement>::all(client.clone()), watcher::Config::default()))
            .default_backoff()
            .reflect(writers.placements)
            .touched_objects();
    let route_stream =
        logged("serviceroutes", watcher(Api::<ServiceRoute>::all(client.clone()), managed.clone()))
            .default_backoff()
            .reflect(writers.routes)
            .touched_objects();
    // Reconciles wait until every store has listed once.
    let (synced_tx, synced_rx) = tokio::sync::watch::channel(false);
    let synced = async move {
        nodes.wait_until_ready().await?;
        pods.wait_until_ready().await?;
        placements.wait_until_ready().await?;
        routes.wait_until_ready().await?;
        configs.wait_until_ready().await?;
        tracing::info!("caches synced; reconciling");
        let _ = synced_tx.send(true);
        // Held open: a dropped sender would fail the gate.
        std::future::pending::<Result<(), reflector::store::WriterDropped>>().await
    };
    let gated_ctx = ctx.clone();
    let controller = Controller::new(Api::<KnativeService>::all(client.clone()), watcher::Config::default())
        .owns_stream(placement_stream)
        .owns_stream(route_stream)
        .watches_stream(pod_stream, |pod: Pod| {
            let ns = pod.namespace()?;
            let service = pod.labels().get(ikukantai_api::revision::SERVICE_LABEL)?.clone();
            Some(ObjectRef::new(&service).within(&ns))
        })
        .reconcile_on(demand)
        .reconcile_all_on(reconcile_all)
        .shutdown_on_signal()
        .run(move |svc, ctx| gated_reconcile(synced_rx.clone(), svc, ctx), error_policy, gated_ctx)
        .for_each(|result| {
            match result {
                Ok(_) => {}
                // Logged by error_policy.
                Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                Err(e) => tracing::error!(error = %e, "controller"),
            }
            std::future::ready(())
        });
    tokio::select! {
        () = controller => Ok(()),
        Err(e) = synced => Err(ProcessError::NotSynced(e.to_string())),
    }
}
