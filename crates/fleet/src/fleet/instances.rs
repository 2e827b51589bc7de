//! Starting and stopping instances: a start is queued with its slot reserved in the books, begins
//! when the pacing (`starts`) allows, and reports every change of its instance's phase to the
//! control loop; a stop waits out the grace the gateways need to let go of the instance.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ikukantai_dataplane::defaults::MAX_HEADER_BYTES;
use ikukantai_dataplane::queue_proxy::{QueueProxyConfig, Readiness};

use super::defaults::{STOP_GRACE_HOPS, TERMINATION_GRACE};
use super::starts::{Queued, RevisionKey};
use super::{Fleet, InstanceRecord, Poke, RevisionRecord, ServiceRecord, State, error_chain};
use crate::agent::{Instance, InstanceSpec};
use crate::lifetime::FLEET_ENV;

impl Fleet {
    /// Queues one start of revision `key` on `node`, its slot reserved in the books at once (so
    /// placement counts it); it begins when the pacing allows.
    pub(super) fn start_instance(&self, state: &mut State, key: &RevisionKey, node: usize) {
        let Some(service) = state.owners.get(key).cloned() else { return };
        let service_key = (key.0.clone(), service);
        let Some(svc) = state.services.get(&service_key) else { return };
        let Some(record) = svc.revisions.iter().find(|r| r.revision.name() == key.1) else { return };
        state.counter += 1;
        let node_name = &self.options.topology.nodes[node].name;
        // Unique across restarts of the fleet too (log files are named after instances).
        let nonce = self.options.seed
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        let name = format!("{}-{}-{}", svc.service.metadata.name(), node_name, suffix(nonce, state.counter));
        let spec = self.instance_spec(&name, node, svc, record);
        let cold = record.waiting;
        state.pending.insert(name.clone(), (key.0.clone(), key.1.clone(), node));
        let queued = Queued { name, service: service_key, revision: key.clone(), node, job: spec };
        state.starts.push(queued, cold);
    }

    /// Begins the starts the pacing handed out: each instance enters the books once its
    /// listeners exist, and every change of its phase pokes the control loop (routes, the
    /// revision's state, the start's slot).
    pub(super) fn begin_starts(self: &Arc<Self>, starts: Vec<Queued<InstanceSpec>>) {
        for q in starts {
            let fleet = self.clone();
            tokio::spawn(async move {
                let Queued { name, service, revision, node, job: spec } = q;
                let instance = match Instance::start(spec).await {
                    Ok(instance) => Arc::new(instance),
                    Err(e) => {
                        tracing::error!(instance = %name, error = %error_chain(&e), "cannot start instance");
                        let mut state = fleet.state.lock();
                        state.pending.remove(&name);
                        state.starts.finished(&name);
                        // Tried again in the next periodic pass, not at once: the cause may last.
                        state.work.dirty.insert(revision);
                        return;
                    }
                };
                let mut watch = instance.watch();
                {
                    let mut state = fleet.state.lock();
                    state.pending.remove(&name);
                    let (namespace, revision) = revision.clone();
                    state.instances.insert(
                        name.clone(),
                        InstanceRecord { instance, namespace, service: service.1, revision, node },
                    );
                }
                let poke = || Poke::Instance {
                    namespace: revision.0.clone(),
                    revision: revision.1.clone(),
                    name: name.clone(),
                };
                // Its phase may have moved on before the watch began: looked at once now.
                let _ = fleet.poke.send(poke());
                while watch.changed().await.is_ok() {
                    if fleet.poke.send(poke()).is_err() {
                        return;
                    }
                }
            });
        }
    }

    /// Stops instances taken out of the routes, after the stop grace.
    pub(super) fn stop_after_grace(self: &Arc<Self>, stopped: Vec<Arc<Instance>>) {
        // A request a gateway sent just before its routes changed may still be crossing a link:
        // the instance drains (refusing new work) only once it has had time to arrive.
        let grace = if stopped.is_empty() { Duration::ZERO } else { self.stop_grace() };
        for instance in stopped {
            let fleet = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                instance.stop().await;
                fleet.prune_logs();
                // Its room on the node is free.
                let _ = fleet.poke.send(Poke::Stopped);
            });
        }
    }

    fn instance_spec(
        &self,
        name: &str,
        node: usize,
        svc: &ServiceRecord,
        record: &RevisionRecord,
    ) -> InstanceSpec {
        let rev = &record.revision;
        let container = rev.spec.container().cloned().unwrap_or_default();
        let node_name = self.options.topology.nodes[node].name.clone();
        let service = svc.service.metadata.name().to_owned();
        let mut env: Vec<(String, String)> =
            container.env.iter().filter_map(|e| Some((e.name.clone(), e.value.clone()?))).collect();
        env.push(("K_SERVICE".into(), service.clone()));
        env.push(("K_CONFIGURATION".into(), service.clone()));
        env.push(("K_REVISION".into(), rev.name().to_owned()));
        env.push(("NODENAME".into(), node_name.clone()));
        env.push(("PODNAME".into(), name.to_owned()));
        env.push((FLEET_ENV.into(), self.state_dir.display().to_string()));
        let mut command = container.command.clone();
        command.extend(container.args.iter().cloned());
        let secs = |s: Option<u64>| s.filter(|x| *x > 0).map(Duration::from_secs);
        InstanceSpec {
            name: name.to_owned(),
            node: node_name.clone(),
            command,
            working_dir: container.working_dir.clone(),
            env,
            log: self.logs.join(format!("{name}.log")),
            grace: TERMINATION_GRACE,
            queue_proxy: QueueProxyConfig {
                namespace: rev.metadata.namespace().to_owned(),
                service,
                revision: rev.name().to_owned(),
                instance: name.to_owned(),
                node: node_name,
                app: SocketAddr::from(([127, 0, 0, 1], 0)),
                container_concurrency: rev.spec.container_concurrency(),
                queue_depth: None,
                queue: record.queue.clone(),
                priority_rules: record.settings.priority_rules.clone(),
                timeout: Duration::from_secs(rev.spec.timeout_seconds()),
                response_start_timeout: secs(rev.spec.response_start_timeout_seconds),
                idle_timeout: secs(rev.spec.idle_timeout_seconds),
                readiness: Readiness::from_probe(container.readiness_probe.as_ref()),
                max_header_bytes: MAX_HEADER_BYTES,
                upgrades: ikukantai_dataplane::edge::default_upgrades(),
            },
        }
    }

    /// How long an instance taken out of the routes keeps serving before it drains: the longest
    /// round trip between two nodes (a request picked just before is at most one way out) and
    /// [`STOP_GRACE_HOPS`] more for the hops on either side.
    fn stop_grace(&self) -> Duration {
        self.links.longest_rtt() + STOP_GRACE_HOPS
    }
}

fn suffix(seed: u64, counter: u64) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut x = (seed ^ counter.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (0..5)
        .map(|_| {
            let c = ALPHABET[(x % 36) as usize] as char;
            x /= 36;
            c
        })
        .collect()
}
