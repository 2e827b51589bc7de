//! The gateway's watches against an API server: a watch RBAC forbids is logged, not dropped
//! (the gateway then stays unready without saying why), and Nodes are watched metadata-only (500
//! gateways watching full Nodes, status and images included, load the API server and WAN links).

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ikukantai_kube::gateway::{GatewayOptions, run_with};
use support::{Call, Harness, node};

/// The gateway of `node1`, in a cluster of `node1`, against the harness's fake API server.
fn gateway(h: &Harness) -> tokio::task::JoinHandle<()> {
    h.api.put("/api/v1/nodes/node1", serde_json::to_value(node("node1")).unwrap());
    let options = GatewayOptions {
        node: "node1".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        system_namespace: "ikukantai-system".into(),
        peer_selector: "app=ikukantai-gateway".into(),
        controller_url: "http://127.0.0.1:9".into(),
        memory_release: None,
        edge: Default::default(),
        token_file: None,
    };
    let client = h.client.clone();
    tokio::spawn(async move { run_with(client, options).await.unwrap() })
}

/// Waits (up to 10 s) until `done` holds.
async fn eventually(mut done: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("in time");
}

/// Log lines, shared with the subscriber that writes them.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn a_watch_the_api_server_refuses_is_logged() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let h = Harness::new(&[]);
    // RBAC without `list serviceroutes`: the watch fails, retries, and the gateway stays unready.
    h.api.forbid("/apis/ikukantai.dev/v1alpha1/serviceroutes");
    let gw = gateway(&h);
    let failed = |l: &str| l.contains("ERROR") && l.contains("watch failed") && l.contains("serviceroutes");
    eventually(|| logs.text().lines().any(failed)).await;
    let text = logs.text();
    let line = text.lines().find(|l| failed(l)).unwrap();
    assert!(line.contains("403") || line.contains("forbidden"), "the API server's reason: {line}");
    gw.abort();
}

#[tokio::test]
async fn the_gateway_lists_and_watches_nodes_metadata_only() {
    let h = Harness::new(&[]);
    let gw = gateway(&h);
    let nodes = |h: &Harness| -> Vec<Call> {
        h.api.calls.lock().unwrap().iter().filter(|c| c.path == "/api/v1/nodes").cloned().collect()
    };
    // The first list, the watch's list, and the watch itself.
    eventually(|| nodes(&h).iter().any(Call::is_watch)).await;
    let calls = nodes(&h);
    assert!(calls.len() >= 3, "{calls:#?}");
    for c in &calls {
        assert!(
            c.accept.contains("as=PartialObjectMetadata") && c.accept.contains("g=meta.k8s.io"),
            "a full Node request: {c:#?}"
        );
    }
    gw.abort();
}
