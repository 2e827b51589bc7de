//! End to end on a real cluster (kind, k3d, or any): ignored by default. See docs/kubernetes.md:
//!
//! ```sh
//! kubectl apply -k deploy/            # with the image loaded into the cluster
//! IKUKANTAI_E2E_NODE=<node> cargo test -p ikukantai-kube --test e2e -- --ignored --nocapture
//! ```
//!
//! It deploys `deploy/examples/hello.yaml`, sends a request into the chosen node's gateway
//! (`http://<node InternalIP>:30080`, the gateways' node-local NodePort, or
//! `IKUKANTAI_E2E_GATEWAY=host:port`), expects "Konnichiwa from hello-… in <node>", checks the
//! Service's Ready condition, the Placement, the ServiceRoute gateways route by and that the
//! controller Service points at the replica holding the lease, then deletes the Service and
//! waits for garbage collection to take its Pods.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use ikukantai_kube::crd::{KnativeService, Placement, ServiceRoute};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with deploy/ applied; see docs/kubernetes.md"]
async fn hello_is_served_on_the_node_the_request_enters() {
    let client = Client::try_default().await.expect("a kube context");
    let nodes: Vec<Node> = Api::<Node>::all(client.clone()).list(&ListParams::default()).await.unwrap().items;
    let node_name = std::env::var("IKUKANTAI_E2E_NODE").unwrap_or_else(|_| nodes[nodes.len() - 1].name_any());
    let node = nodes.iter().find(|n| n.name_any() == node_name).expect("IKUKANTAI_E2E_NODE is a node");
    let gateway = std::env::var("IKUKANTAI_E2E_GATEWAY").unwrap_or_else(|_| {
        let ip = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address.clone())
            .expect("the node has an InternalIP");
        format!("{ip}:30080")
    });

    let text = std::fs::read_to_string(repo_root().join("deploy/examples/hello.yaml")).unwrap();
    let svc: KnativeService = serde_saphyr::from_str(&text).unwrap();
    let services: Api<KnativeService> = Api::namespaced(client.clone(), "default");
    services.patch("hello", &PatchParams::apply("ikukantai-e2e").force(), &Patch::Apply(&svc)).await.unwrap();

    // Scale from zero: the first request waits in the gateway until the instance is ready.
    let http = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let body = until("hello to answer", Duration::from_secs(180), || {
        let http = http.clone();
        let gateway = gateway.clone();
        async move {
            let req = http::Request::get(format!("http://{gateway}/"))
                .header("host", "hello.default.example.com")
                .body(Empty::new())
                .unwrap();
            let resp = tokio::time::timeout(Duration::from_secs(60), http.request(req)).await.ok()?.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            let bytes = resp.into_body().collect().await.ok()?.to_bytes();
            Some(String::from_utf8_lossy(&bytes).into_owned())
        }
    })
    .await;
    println!("{body}");
    assert!(body.starts_with("Konnichiwa from hello-"), "{body}");
    assert!(body.trim_end().ends_with(&format!("in {node_name}")), "served where it entered: {body}");

    // Knative's status: Ready once the revision is, with the time it became so.
    let ksvc = until("the Service to be Ready", Duration::from_secs(60), || {
        let services = services.clone();
        async move {
            let s = services.get("hello").await.ok()?;
            let ready = s.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")?.clone();
            (ready.status == "True").then_some(ready)
        }
    })
    .await;
    assert!(ksvc.last_transition_time.is_some(), "{ksvc:?}");
    let routes: Api<ServiceRoute> = Api::namespaced(client.clone(), "default");
    let route = routes.get("hello").await.expect("the ServiceRoute gateways route by");
    assert!(
        route.spec.revisions.iter().any(|r| r.instances.iter().any(|i| i.node == node_name)),
        "{route:?}"
    );

    let placements: Api<Placement> = Api::namespaced(client.clone(), "default");
    let p = placements.get("hello-00001").await.unwrap();
    assert_eq!(p.spec.nodes.get(&node_name), Some(&1), "{:?}", p.spec.nodes);
    println!("placement {}", p.status.map(|s| s.summary).unwrap_or_default());

    // One controller replica leads, and the controller Service points at it.
    let system = "ikukantai-system";
    let lease = Api::<Lease>::namespaced(client.clone(), system).get("ikukantai-controller").await.unwrap();
    let holder = lease.spec.and_then(|s| s.holder_identity).expect("a leader holds the lease");
    let slice =
        Api::<EndpointSlice>::namespaced(client.clone(), system).get("ikukantai-controller").await.unwrap();
    let target = slice.endpoints.first().and_then(|e| e.target_ref.as_ref()).and_then(|r| r.name.clone());
    assert_eq!(target.as_deref(), Some(holder.as_str()), "the Service points at the lease holder");
    println!("controller leader {holder}");

    services.delete("hello", &DeleteParams::default()).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    until("the instances to go", Duration::from_secs(120), || {
        let pods = pods.clone();
        async move {
            let left =
                pods.list(&ListParams::default().labels("serving.knative.dev/service=hello")).await.ok()?;
            left.items.is_empty().then_some(())
        }
    })
    .await;
}

/// The repository's root, looked up when the test runs: `env!` would give the path the test was
/// compiled at, stale when one target dir serves several clones (as `.ci/run`'s does).
fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../..")
}
