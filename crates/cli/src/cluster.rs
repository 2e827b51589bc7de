//! Subcommands that run the platform on Kubernetes: `crds`, `controller`, `gateway`,
//! `queue-proxy`.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use ikukantai_dataplane::gateway::MemoryRelease;
use ikukantai_kube::controller::Settings;
use ikukantai_kube::gateway::{GatewayOptions, shutdown_signal};
use ikukantai_kube::manager::ManagerOptions;
use ikukantai_kube::sidecar::SidecarConfig;

use crate::commands::init_logs;

/// Options of `ikukantai controller`.
#[derive(Debug, clap::Args)]
pub(crate) struct ControllerArgs {
    /// Where gateways and queue proxies push stats.
    #[arg(long, default_value = "0.0.0.0:9090")]
    listen: SocketAddr,
    /// Namespace of the platform (ConfigMaps `config-autoscaler`, `config-ikukantai`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "ikukantai-system")]
    system_namespace: String,
    /// URL of this controller as sidecars reach it.
    #[arg(
        long,
        env = "IKUKANTAI_CONTROLLER_URL",
        default_value = "http://ikukantai-controller.ikukantai-system.svc:9090"
    )]
    controller_url: String,
    /// DNS name of the gateways' Service (Knative Services' `NAME.NAMESPACE.svc` points there).
    #[arg(
        long,
        env = "IKUKANTAI_GATEWAY_HOST",
        default_value = "ikukantai-gateway.ikukantai-system.svc.cluster.local"
    )]
    gateway_host: String,
    /// Seed of the policies' random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// This replica's name in the leader election (default: the Pod's name from `POD_NAME`, else
    /// `HOSTNAME`).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// This replica's Pod IP: while it leads, the controller Service points there.
    #[arg(long, env = "POD_IP")]
    pod_ip: Option<std::net::IpAddr>,
    /// The gateways' service account (in the system namespace): the only one whose pushes of
    /// load, RTTs and demand are taken.
    #[arg(long, default_value = "ikukantai-gateway")]
    gateway_service_account: String,
}

/// Options of `ikukantai gateway`.
#[derive(Debug, clap::Args)]
pub(crate) struct GatewayArgs {
    /// This node's name (from the downward API's `spec.nodeName`).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// Traffic listener.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Admin listener (`/metrics`, `/healthz`; peers probe it for RTT).
    #[arg(long, default_value = "0.0.0.0:9091")]
    admin: SocketAddr,
    /// Namespace of the platform.
    #[arg(long, env = "POD_NAMESPACE", default_value = "ikukantai-system")]
    system_namespace: String,
    /// Label selector of the gateways' EndpointSlices (their Service's), to find the peers to probe.
    #[arg(long, default_value = "kubernetes.io/service-name=ikukantai-gateway")]
    peer_selector: String,
    /// Where to push reports and demand.
    #[arg(
        long,
        env = "IKUKANTAI_CONTROLLER_URL",
        default_value = "http://ikukantai-controller.ikukantai-system.svc:9090"
    )]
    controller_url: String,
    #[command(flatten)]
    edge: crate::commands::EdgeArgs,
    /// The token its pushes carry (projected by the kubelet for the controller's audience).
    #[arg(long, env = "IKUKANTAI_TOKEN_FILE", default_value = ikukantai_kube::auth::TOKEN_FILE)]
    token_file: std::path::PathBuf,
}

/// Prints the CRDs (or writes them to `out`).
pub(crate) fn crds(out: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let yaml = ikukantai_kube::crd::crds_yaml().context("cannot render the CRDs")?;
    match out {
        Some(path) => {
            std::fs::write(path, yaml).with_context(|| format!("cannot write {}", path.display()))?
        }
        None => crate::out::out!("{yaml}"),
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn controller(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    init_logs("info");
    let identity = args
        .identity
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .context("no replica identity: set --identity or POD_NAME (the Pod's name)")?;
    ikukantai_kube::manager::run(ManagerOptions {
        identity,
        pod_ip: args.pod_ip,
        gateway_account: args.gateway_service_account,
        listen: args.listen,
        system_namespace: args.system_namespace,
        settings: Settings {
            controller_url: args.controller_url,
            seed: args.seed,
            service_monitors: false,
            gateway_host: args.gateway_host,
            // Replaced by the controller's own image when its Pod can be read.
            sidecar_image: format!("ikukantai:{}", env!("CARGO_PKG_VERSION")),
        },
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn gateway(args: GatewayArgs) -> anyhow::Result<ExitCode> {
    init_logs("info");
    ikukantai_kube::gateway::run(GatewayOptions {
        node: args.node,
        listen: args.listen,
        admin: args.admin,
        system_namespace: args.system_namespace,
        peer_selector: args.peer_selector,
        controller_url: args.controller_url,
        memory_release: Some(MemoryRelease::new(ikukantai_alloc::release_freed)),
        edge: args.edge.policy(false),
        token_file: Some(args.token_file),
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn queue_proxy() -> anyhow::Result<ExitCode> {
    init_logs("info");
    let config = SidecarConfig::from_env(|k| std::env::var(k).ok())?;
    ikukantai_kube::sidecar::run(config, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
