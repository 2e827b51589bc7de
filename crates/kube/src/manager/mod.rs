//! The controller process: leader election, watches and stores, the inbox sidecars and gateways
//! push to, the ConfigMaps, and kube's `Controller` running [`crate::controller::reconcile`].
//!
//! Replicas elect a leader through a `Lease`; only the leader watches and reconciles. The
//! controller Service (which gateways and queue proxies push to) has no selector: the leader
//! publishes its own address as the Service's EndpointSlice, so every push reaches the leader (the
//! way Knative's autoscaler points its Service at its leader). A replica that loses the lease exits
//! and comes back as a standby.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ikukantai_api::config::{CONFIG_AUTOSCALER, CONFIG_IKUKANTAI, ConfigMap as LocalConfigMap, FleetConfig};
use ikukantai_api::service::ObjectMeta;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector;
use kube::{Api, Client, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::ProcessError;
use crate::auth::TokenReviewer;
use crate::controller::{Context, Settings, Stores, SystemClock};
use crate::crd::{Placement, ServiceRoute};
use crate::gateway::shutdown_signal;

mod inbox;
mod watches;

pub use watches::gated_reconcile;

pub use inbox::{InboxAuth, serve_inbox};
use watches::{Leader, Writers, reconcile_loop};

/// The Lease the controller replicas compete for, in the system namespace.
pub const LEASE_NAME: &str = "ikukantai-controller";
/// How long a leader's lease lasts without renewal (seconds): the longest a standby waits to take
/// over from a leader that died.
const LEASE_SECONDS: u64 = 15;
/// How long before expiry the leader renews (seconds).
const LEASE_GRACE_SECONDS: u64 = 5;
/// The controller's Service, whose EndpointSlice the leader writes.
pub const SERVICE_NAME: &str = "ikukantai-controller";
/// The inbox port's name in the Service and the EndpointSlice.
const INBOX_PORT_NAME: &str = "inbox";

/// Options of `ikukantai controller`.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// Where the inbox listens.
    pub listen: SocketAddr,
    /// Namespace holding `config-autoscaler` and `config-ikukantai`.
    pub system_namespace: String,
    /// Reconcile and pod settings.
    pub settings: Settings,
    /// This replica's name in the leader election (the Pod's name).
    pub identity: String,
    /// The gateways' service account (in `system_namespace`): only it may push reports and demand.
    pub gateway_account: String,
    /// This replica's Pod IP, published as the controller Service's endpoint while it leads
    /// (`None` outside a cluster: nothing is published).
    pub pod_ip: Option<IpAddr>,
}

/// Runs `work` while this replica leads: waits to be elected (`elected` turning true) unless
/// `stop` comes first, sets `leading` for `/leader`, then runs `work` until it ends (`Ok`) or the
/// election is lost (or its task died): [`ProcessError::LeadershipLost`], so the caller exits
/// rather than reconcile beside a new leader.
pub async fn while_leading<W: Future<Output = Result<(), ProcessError>>>(
    mut elected: watch::Receiver<bool>,
    leading: &AtomicBool,
    lease: &str,
    stop: impl Future<Output = ()>,
    work: impl FnOnce() -> W,
) -> Result<(), ProcessError> {
    let lost = || ProcessError::LeadershipLost(lease.to_owned());
    tokio::select! {
        won = elected.wait_for(|leader| *leader) => { won.map_err(|_| lost())?; }
        () = stop => return Ok(()),
    }
    tracing::info!(lease, "elected leader");
    leading.store(true, Ordering::Release);
    let result = tokio::select! {
        r = work() => r,
        _ = elected.wait_for(|leader| !*leader) => Err(lost()),
    };
    leading.store(false, Ordering::Release);
    result
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

/// A CRD only Knative Serving installs (this platform installs `services.serving.knative.dev`
/// too, so that one proves nothing).
pub const KNATIVE_CRD: &str = "configurations.serving.knative.dev";

/// Refuses to run where Knative Serving is installed: both would reconcile every Knative
/// Service. (Applying `deploy/crds.yaml` there has already replaced Knative's Service CRD; the
/// docs say to check first.)
pub async fn refuse_beside_knative(crds: &Api<CustomResourceDefinition>) -> Result<(), ProcessError> {
    match crds.get_opt(KNATIVE_CRD).await? {
        Some(_) => Err(ProcessError::KnativeInstalled(KNATIVE_CRD.into())),
        None => Ok(()),
    }
}

/// The image of this controller's container (`pod` in `api`'s namespace): what the sidecars
/// run unless configured otherwise. `None` if the Pod cannot be read (not in a cluster).
pub async fn own_image(api: &Api<Pod>, pod: &str) -> Result<Option<String>, kube::Error> {
    let Some(p) = api.get_opt(pod).await? else { return Ok(None) };
    let containers = p.spec.map(|s| s.containers).unwrap_or_default();
    let own = containers.iter().find(|c| c.name == "controller").or(containers.first());
    Ok(own.and_then(|c| c.image.clone()))
}

/// Runs a controller replica until SIGTERM/Ctrl-C: the inbox at once, the reconcile loop while
/// this replica holds the lease.
pub async fn run(options: ManagerOptions) -> Result<(), ProcessError> {
    let client = Client::try_default().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    refuse_beside_knative(&crds).await?;
    let lease = format!("{}/{LEASE_NAME}", options.system_namespace);
    let lease_error = |source| ProcessError::Lease { lease: lease.clone(), source };
    let manager = LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
        .with_namespace(&options.system_namespace)
        .with_identity(&options.identity)
        .with_duration(LEASE_SECONDS)
        .with_grace(LEASE_GRACE_SECONDS)
        .build()
        .await
        .map_err(lease_error)?;
    let (elected, election) = manager.watch().await;
    let leading = Arc::new(AtomicBool::new(false));
    tracing::info!(identity = %options.identity, %lease, "waiting to lead");

    let mut settings = options.settings.clone();
    match own_image(&Api::namespaced(client.clone(), &options.system_namespace), &options.identity).await {
        Ok(Some(image)) => settings.sidecar_image = image,
        Ok(None) => {
            tracing::warn!(pod = %options.identity, image = %settings.sidecar_image, "own Pod not found; sidecars use the default image")
        }
        Err(e) => {
            tracing::warn!(error = %e, image = %settings.sidecar_image, "cannot read the own Pod; sidecars use the default image")
        }
    }
    settings.service_monitors = match crds.get_opt("servicemonitors.monitoring.coreos.com").await {
        Ok(found) => found.is_some(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell whether ServiceMonitors exist; not creating them");
            false
        }
    };
    tracing::info!(service_monitors = settings.service_monitors, "controller settings");
    let (nodes, node_writer) = reflector::store::<Node>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (placements, placement_writer) = reflector::store::<Placement>();
    let (routes, route_writer) = reflector::store::<ServiceRoute>();
    let (configs, config_writer) = reflector::store::<ConfigMap>();
    let stores = Stores { nodes, pods, placements, routes };
    let ctx = Arc::new(Context::new(
        client.clone(),
        stores.clone(),
        FleetConfig::new(),
        settings,
        Arc::new(SystemClock),
    ));

    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|source| ProcessError::Listen { addr: options.listen, source })?;
    let (demand_tx, demand_rx) = mpsc::unbounded_channel();
    let inbox_ctx = ctx.clone();
    let inbox_leading = leading.clone();
    let inbox_auth = InboxAuth {
        authenticator: Arc::new(TokenReviewer::new(client.clone())),
        gateway_account: (options.system_namespace.clone(), options.gateway_account.clone()),
    };
    tokio::spawn(async move {
        if let Err(e) = serve_inbox(listener, inbox_ctx, demand_tx, inbox_leading, inbox_auth).await {
            tracing::error!(error = %e, "inbox stopped");
        }
    });

    let leader = Leader {
        client,
        ctx,
        system_namespace: options.system_namespace.clone(),
        demand_rx,
        stores,
        configs,
        writers: Writers {
            nodes: node_writer,
            pods: pod_writer,
            placements: placement_writer,
            routes: route_writer,
            configs: config_writer,
        },
    };
    let endpoint = options.pod_ip.map(|ip| (ip, options.identity.clone(), options.listen.port()));
    let result = while_leading(elected, &leading, &lease, shutdown_signal(), || async move {
        match endpoint {
            Some((ip, pod, port)) => {
                let endpoints = Api::namespaced(leader.client.clone(), &leader.system_namespace);
                tokio::spawn(async move {
                    let slice = leader_endpoint_slice(&pod, ip, port);
                    while let Err(e) = publish_leader(&endpoints, &slice).await {
                        tracing::error!(error = %e, "cannot point the controller Service at this leader; retrying");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    tracing::info!(%ip, "the controller Service points at this leader");
                });
            }
            None => tracing::warn!("no POD_IP: the controller Service is not pointed at this leader"),
        }
        reconcile_loop(leader).await
    })
    .await;
    // Dropping the last receiver makes the election task release the lease, so a standby takes
    // over at once instead of after the lease expires.
    match tokio::time::timeout(Duration::from_secs(5), election).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "lease not released"),
        Err(_) => tracing::warn!("lease not released within 5 s"),
        _ => {}
    }
    tracing::info!("controller stopped");
    result
}

/// The controller Service's EndpointSlice naming this leader (`pod` at `ip:port`).
pub fn leader_endpoint_slice(pod: &str, ip: IpAddr, port: u16) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": SERVICE_NAME,
            "labels": {
                "kubernetes.io/service-name": SERVICE_NAME,
                "endpointslice.kubernetes.io/managed-by": "ikukantai.dev-controller",
            },
        },
        "addressType": if ip.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{
            "addresses": [ip.to_string()],
            "conditions": {"ready": true},
            "targetRef": {"kind": "Pod", "name": pod},
        }],
        "ports": [{"name": INBOX_PORT_NAME, "port": port, "protocol": "TCP"}],
    })
}

/// Server-side applies `slice` (from [`leader_endpoint_slice`]), replacing the previous leader's
/// address.
pub async fn publish_leader(
    api: &Api<k8s_openapi::api::discovery::v1::EndpointSlice>,
    slice: &serde_json::Value,
) -> Result<(), kube::Error> {
    let params = PatchParams::apply("ikukantai-controller").force();
    api.patch(SERVICE_NAME, &params, &Patch::Apply(slice)).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `while_leading` on a channel the test drives, with work that reports it started and then
    /// waits for `finish`.
    async fn lead(
        elected: watch::Receiver<bool>,
        leading: Arc<AtomicBool>,
        stop: tokio::sync::oneshot::Receiver<()>,
        started: tokio::sync::oneshot::Sender<()>,
        finish: tokio::sync::oneshot::Receiver<()>,
    ) -> Result<(), ProcessError> {
        let stop = async move {
            let _ = stop.await;
        };
        while_leading(elected, &leading, "ikukantai-system/ikukantai-controller", stop, move || async move {
            let _ = started.send(());
            let _ = finish.await;
            Ok(())
        })
        .await
    }

    struct Harness {
        elect: watch::Sender<bool>,
        leading: Arc<AtomicBool>,
        stop: tokio::sync::oneshot::Sender<()>,
        started: tokio::sync::oneshot::Receiver<()>,
        finish: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<Result<(), ProcessError>>,
    }

    fn harness() -> Harness {
        let (elect, elected) = watch::channel(false);
        let leading = Arc::new(AtomicBool::new(false));
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (finish, finish_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(lead(elected, leading.clone(), stop_rx, started_tx, finish_rx));
        Harness { elect, leading, stop, started, finish, task }
    }

    #[tokio::test]
    async fn a_standby_stops_without_ever_reconciling() {
        let mut h = harness();
        tokio::task::yield_now().await;
        assert!(!h.leading.load(Ordering::Acquire));
        h.stop.send(()).unwrap();
        h.task.await.unwrap().unwrap();
        assert!(h.started.try_recv().is_err(), "work never started");
    }

    #[tokio::test]
    async fn the_leader_reconciles_until_it_loses_the_lease() {
        let mut h = harness();
        h.elect.send(true).unwrap();
        (&mut h.started).await.unwrap();
        assert!(h.leading.load(Ordering::Acquire), "/ready says leading");
        h.elect.send(false).unwrap();
        let err = h.task.await.unwrap().unwrap_err();
        assert!(matches!(err, ProcessError::LeadershipLost(_)), "{err}");
        assert!(!h.leading.load(Ordering::Acquire));
        drop(h.finish);
    }

    #[tokio::test]
    async fn the_leader_ends_cleanly_when_its_work_ends() {
        let mut h = harness();
        h.elect.send(true).unwrap();
        (&mut h.started).await.unwrap();
        h.finish.send(()).unwrap();
        h.task.await.unwrap().unwrap();
        assert!(!h.leading.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn a_dead_election_task_counts_as_lost() {
        let h = harness();
        drop(h.elect);
        let err = h.task.await.unwrap().unwrap_err();
        assert!(matches!(err, ProcessError::LeadershipLost(_)), "{err}");
        drop((h.stop, h.finish));
    }
}
