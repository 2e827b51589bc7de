//! The peers the benchmarks measure against: a trivial backend, our gateway in front of it, and a
//! queue proxy alone (`backend`, `gateway`, `queue-proxy`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ikukantai_dataplane::gateway::{
    Gateway, GatewayConfig, InstanceRoute, MemoryRelease, NoEvents, RevisionRoute, RouteTarget, Routes,
    ServiceRoute,
};
use ikukantai_dataplane::queue_proxy::{QueueProxyConfig, QueueProxyHandle, Readiness};

use crate::harness::serve_each;

pub(crate) async fn backend(listen: SocketAddr) -> anyhow::Result<()> {
    serve_each(listen, |stream| async move {
        let svc = service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
    })
    .await
}

pub(crate) async fn gateway(
    listen: SocketAddr,
    admin: SocketAddr,
    backend: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let mut config = GatewayConfig::single("node1");
    config.queue_depth = 100_000;
    // The memory benchmark holds 10 000 client connections: more than the default cap allows
    // under this machine's open-files limit.
    config.max_connections = 1_000_000;
    config.memory_release = Some(MemoryRelease::new(ikukantai_alloc::release_freed));
    let gw = Gateway::start(
        config,
        tokio::net::TcpListener::bind(listen).await?,
        tokio::net::TcpListener::bind(admin).await?,
        Arc::new(NoEvents),
    )?;
    let instances =
        backend.map(|addr| InstanceRoute { name: "backend".into(), node: 0, addr }).into_iter().collect();
    gw.set_routes(&Routes {
        services: vec![ServiceRoute {
            namespace: "default".into(),
            name: "hello".into(),
            traffic: vec![RouteTarget { revision: "hello-00001".into(), percent: 100, tag: None }],
        }],
        revisions: vec![RevisionRoute {
            namespace: "default".into(),
            service: "hello".into(),
            revision: "hello-00001".into(),
            container_concurrency: 0,
            target_concurrency: 100.0,
            timeout: Duration::from_secs(600),
            balancer: ikukantai_policy::registry::DEFAULT_BALANCER.into(),
            queue: "fifo".into(),
            priority_rules: Vec::new(),
            instances,
            failure: None,
        }],
    })?;
    std::future::pending::<()>().await;
    Ok(())
}

pub(crate) async fn queue_proxy(
    listen: SocketAddr,
    admin: SocketAddr,
    app: SocketAddr,
    cc: u32,
) -> anyhow::Result<()> {
    let config = QueueProxyConfig {
        namespace: "default".into(),
        service: "hello".into(),
        revision: "hello-00001".into(),
        instance: "hello-00001-bench".into(),
        node: "node1".into(),
        app,
        container_concurrency: cc,
        queue_depth: None,
        queue: "fifo".into(),
        priority_rules: Vec::new(),
        timeout: Duration::from_secs(300),
        response_start_timeout: None,
        idle_timeout: None,
        readiness: Readiness::from_probe(None),
        max_header_bytes: ikukantai_dataplane::defaults::MAX_HEADER_BYTES,
        upgrades: ikukantai_dataplane::edge::default_upgrades(),
    };
    let _proxy: QueueProxyHandle = QueueProxyHandle::start(
        config,
        tokio::net::TcpListener::bind(listen).await?,
        tokio::net::TcpListener::bind(admin).await?,
    )?;
    std::future::pending::<()>().await;
    Ok(())
}
