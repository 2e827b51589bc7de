//! What a gateway reads from its watches: the routing table from the controller's ServiceRoutes,
//! and its peers from the gateways' EndpointSlices.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ikukantai_dataplane::gateway::{InstanceRoute, RouteTarget, Routes, ServiceRoute};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use crate::crd::ServiceRoute as Published;
use crate::pod::QUEUE_PORT;

/// The cluster as a gateway sees it, from its stores.
#[derive(Debug)]
pub struct ClusterView<'a> {
    /// Node names by index (the gateway's order).
    pub nodes: &'a [String],
    /// The ServiceRoutes the controller published.
    pub routes: &'a [Arc<Published>],
}

/// The routing table: each ServiceRoute's traffic, and its revisions with their ready instances
/// on nodes this gateway knows.
pub fn routes(view: &ClusterView<'_>) -> Routes {
    let mut routes = Routes::default();
    for published in view.routes {
        let ns = published.namespace().unwrap_or_else(|| "default".into());
        let service = published.name_any();
        let traffic = published
            .spec
            .traffic
            .iter()
            .map(|t| RouteTarget { revision: t.revision.clone(), percent: t.percent, tag: t.tag.clone() })
            .collect();
        routes.services.push(ServiceRoute { namespace: ns.clone(), name: service.clone(), traffic });
        for r in &published.spec.revisions {
            let instances = r
                .instances
                .iter()
                .filter_map(|i| {
                    let ip: IpAddr = i.ip.parse().ok()?;
                    let node = view.nodes.iter().position(|n| *n == i.node)?;
                    Some(InstanceRoute { name: i.name.clone(), node, addr: SocketAddr::new(ip, QUEUE_PORT) })
                })
                .collect();
            match r.route(&ns, &service, instances) {
                Ok(route) => routes.revisions.push(route),
                Err(error) => {
                    tracing::warn!(revision = %r.name, %error, "priority rules invalid; not routed")
                }
            }
        }
    }
    routes
}

/// The peer gateways to probe: every ready endpoint of the gateways' EndpointSlices on another
/// node, at its admin port.
pub fn peers(slices: &[Arc<EndpointSlice>], me: &str, admin_port: u16) -> Vec<(String, SocketAddr)> {
    let mut out: Vec<(String, SocketAddr)> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .filter_map(|e| {
            let node = e.node_name.clone()?;
            let ip: IpAddr = e.addresses.first()?.parse().ok()?;
            (node != me).then(|| (node, SocketAddr::new(ip, admin_port)))
        })
        .collect();
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    #[test]
    fn routes_come_from_the_published_service_routes() {
        let published: Published = serde_json::from_value(json!({
            "apiVersion": "ikukantai.dev/v1alpha1", "kind": "ServiceRoute",
            "metadata": {"name": "hello", "namespace": "default"},
            "spec": {
                "traffic": [{"revision": "hello-00001", "percent": 100}],
                "revisions": [{"name": "hello-00001", "containerConcurrency": 5, "targetConcurrency": 3.5,
                    "timeoutSeconds": 30, "balancer": "even", "queue": "fifo",
                    "instances": [{"name": "a", "node": "node3", "ip": "10.0.3.7"},
                                  {"name": "b", "node": "gone", "ip": "10.0.9.7"}]},
                  {"name": "hello-00002", "containerConcurrency": 0, "targetConcurrency": 100.0,
                    "timeoutSeconds": 300, "balancer": "ert", "queue": "fifo", "failure": "CrashLoopBackOff"}]
            }
        }))
        .unwrap();
        let nodes = vec!["node1".to_owned(), "node2".to_owned(), "node3".to_owned()];
        let table = routes(&ClusterView { nodes: &nodes, routes: &[Arc::new(published)] });
        assert_eq!(
            table.services[0].traffic,
            vec![RouteTarget { revision: "hello-00001".into(), percent: 100, tag: None }]
        );
        let r = &table.revisions[0];
        assert_eq!((r.service.as_str(), r.container_concurrency, r.balancer.as_str()), ("hello", 5, "even"));
        assert_eq!((r.target_concurrency, r.timeout), (3.5, Duration::from_secs(30)));
        assert_eq!(
            r.instances,
            vec![InstanceRoute { name: "a".into(), node: 2, addr: "10.0.3.7:8012".parse().unwrap() }],
            "on a known node, at the queue proxy's port"
        );
        assert_eq!(table.revisions[1].failure.as_deref(), Some("CrashLoopBackOff"));
    }

    #[test]
    fn peers_are_the_other_nodes_ready_gateways() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "ikukantai-gateway-x", "namespace": "ikukantai-system"},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.1.2"], "nodeName": "node1", "conditions": {"ready": true}},
                {"addresses": ["10.0.2.2"], "nodeName": "node2", "conditions": {"ready": true}},
                {"addresses": ["10.0.3.2"], "nodeName": "node3", "conditions": {"ready": false}}
            ]
        }))
        .unwrap();
        let peers = peers(&[Arc::new(slice)], "node1", 9091);
        assert_eq!(peers, vec![("node2".to_owned(), "10.0.2.2:9091".parse().unwrap())]);
    }
}
