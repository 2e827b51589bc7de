//! The leader's watches, the stores they fill, and kube's `Controller` over them.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;

use super::fleet_config;
use crate::controller::{Context, Stores, error_policy, reconcile};
use crate::crd::{KnativeService, MANAGED_BY, MANAGED_BY_LABEL, Placement};

/// The reflector writers the leader's watches feed.
pub(super) struct Writers {
    pub(super) nodes: reflector::store::Writer<Node>,
    pub(super) pods: reflector::store::Writer<Pod>,
    pub(super) placements: reflector::store::Writer<Placement>,
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

/// The leader's reconcile loop: watches feed the stores and kube's `Controller` runs
/// [`reconcile`] until SIGTERM/Ctrl-C.
pub(super) async fn reconcile_loop(leader: Leader) {
    let Leader { client, ctx, system_namespace, demand_rx, stores, configs, writers } = leader;
    let Stores { nodes, pods, placements } = stores;
    let managed = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    // Nodes and ConfigMaps only feed stores; ConfigMap changes replace the configuration.
    let node_stream = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(writers.nodes)
        .for_each(|_| std::future::ready(()));
    tokio::spawn(node_stream);
    let config_ctx = ctx.clone();
    let config_store = configs.clone();
    let config_stream =
        watcher(Api::<ConfigMap>::namespaced(client.clone(), &system_namespace), watcher::Config::default())
            .default_backoff()
            .reflect(writers.configs)
            .applied_objects()
            .for_each(move |_| {
                match fleet_config(&config_store.state()) {
                    Ok(config) => config_ctx.set_config(config),
                    Err(message) => {
                        tracing::error!(%message, "configuration rejected; keeping the previous one")
                    }
                }
                std::future::ready(())
            });
    tokio::spawn(config_stream);

    let demand =
        futures_util::stream::unfold(demand_rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });

    let pod_stream = watcher(Api::<Pod>::all(client.clone()), managed.clone())
        .default_backoff()
        .reflect(writers.pods)
        .touched_objects();
    let placement_stream = watcher(Api::<Placement>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(writers.placements)
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
}
