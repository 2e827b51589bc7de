//! What the API shows of the fleet: nodes, services, revisions, instances, placements, latency.

use std::time::Instant;

use ikukantai_api::service::Service;
use ikukantai_api::status::service_status;
use ikukantai_policy::estimate::RttSource;

use super::{Fleet, ServiceRecord, State, ready_count, revision_states, traffic_split};
use crate::agent::Phase;
use crate::view::{InstanceView, LatencyView, NodeView, PlacementView, RevisionView};

impl Fleet {
    /// Node views.
    pub fn nodes(&self) -> Vec<NodeView> {
        let state = self.state.lock();
        self.options
            .topology
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeView {
                name: n.name.clone(),
                labels: n.labels.clone(),
                capacity: n.capacity,
                instances: state.instances.values().filter(|r| r.node == i).count() as u32,
                gateway: self.gateways[i].addr(),
                admin: self.gateways[i].admin_addr(),
            })
            .collect()
    }

    /// Every service with its status.
    pub fn services(&self) -> Vec<Service> {
        let state = self.state.lock();
        state.services.values().map(|r| with_status(r, &self.options.config.domain, &state)).collect()
    }

    /// One service.
    pub fn service(&self, namespace: &str, name: &str) -> Option<Service> {
        let state = self.state.lock();
        state
            .services
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|r| with_status(r, &self.options.config.domain, &state))
    }

    /// Every revision.
    pub fn revisions(&self) -> Vec<RevisionView> {
        let state = self.state.lock();
        let mut out = Vec::new();
        for s in state.services.values() {
            let split = traffic_split(s);
            for r in &s.revisions {
                let (ns, name) = (r.revision.metadata.namespace(), r.revision.name());
                out.push(RevisionView {
                    namespace: ns.to_owned(),
                    service: s.service.metadata.name().to_owned(),
                    name: name.to_owned(),
                    generation: r.revision.configuration_generation(),
                    ready: ready_count(&state.instances, ns, name),
                    desired: r.desired.iter().sum(),
                    traffic: split.iter().filter(|t| t.revision == name).map(|t| t.percent).sum(),
                    balancer: r.balancer.clone(),
                    placement: r.scaler.placement_name().to_owned(),
                    queue: r.queue.clone(),
                });
            }
        }
        out
    }

    /// Every instance.
    pub fn instances(&self) -> Vec<InstanceView> {
        let state = self.state.lock();
        let running = state.instances.values().map(|r| (r, false));
        running
            .chain(state.stopping.values().map(|r| (r, true)))
            .map(|(r, stopping)| {
                let phase = r.instance.phase();
                // One out of the routes is being stopped, though its process still drains.
                let phase = if stopping && phase != Phase::Stopped { Phase::Terminating } else { phase };
                InstanceView {
                    name: r.instance.name.clone(),
                    namespace: r.namespace.clone(),
                    service: r.service.clone(),
                    revision: r.revision.clone(),
                    node: self.options.topology.nodes[r.node].name.clone(),
                    state: phase.name().to_owned(),
                    message: phase.message(),
                    restarts: r.instance.restarts(),
                    queue_proxy: r.instance.queue_proxy,
                    address: r.instance.address,
                    pid: r.instance.pid(),
                }
            })
            .collect()
    }

    /// Desired and ready instances per node, per revision.
    pub fn placements(&self) -> Vec<PlacementView> {
        let state = self.state.lock();
        let nodes: Vec<String> = self.options.topology.nodes.iter().map(|n| n.name.clone()).collect();
        let now = Instant::now();
        let mut out = Vec::new();
        for s in state.services.values() {
            for r in &s.revisions {
                let (ns, name) = (r.revision.metadata.namespace(), r.revision.name());
                let ready = (0..nodes.len())
                    .map(|i| {
                        state
                            .instances
                            .values()
                            .filter(|x| {
                                x.namespace == ns
                                    && x.revision == name
                                    && x.node == i
                                    && x.instance.phase() == Phase::Ready
                            })
                            .count() as u32
                    })
                    .collect();
                let mut demand = r.scaler.autoscaler.demand_by_origin(now);
                demand.resize(nodes.len(), 0.0);
                out.push(PlacementView {
                    namespace: ns.to_owned(),
                    service: s.service.metadata.name().to_owned(),
                    revision: name.to_owned(),
                    nodes: nodes.clone(),
                    ready,
                    desired: r.desired.clone(),
                    demand,
                });
            }
        }
        out
    }

    /// Measured, estimated and configured latencies, and what decisions use.
    pub fn latency(&self) -> LatencyView {
        let state = self.state.lock();
        let n = self.options.topology.nodes.len();
        let now = std::time::Instant::now();
        let rtt = &state.rtt;
        let matrix = |f: &dyn Fn(usize, usize) -> f64| -> Vec<Vec<f64>> {
            (0..n).map(|i| (0..n).map(|j| f(i, j)).collect()).collect()
        };
        let pairs = |f: &dyn Fn(usize, usize) -> Option<f64>| -> Vec<Vec<Option<f64>>> {
            (0..n).map(|i| (0..n).map(|j| if i == j { None } else { f(i, j) }).collect()).collect()
        };
        LatencyView {
            nodes: self.options.topology.nodes.iter().map(|x| x.name.clone()).collect(),
            measured: pairs(&|i, j| rtt.sample(i, j).filter(|_| rtt.is_fresh(i, j, now)).map(|s| s.0)),
            estimated: pairs(&|i, j| rtt.estimate(i, j, now).map(|(ms, _)| ms)),
            used: matrix(&|i, j| rtt.get(i, j, now)),
            source: (0..n)
                .map(|i| {
                    (0..n)
                        .map(|j| {
                            match rtt.lookup(i, j, now).source {
                                RttSource::Local => "local",
                                RttSource::Measured => "measured",
                                RttSource::Estimated { .. } => "estimated",
                                RttSource::Prior => "configured",
                            }
                            .to_owned()
                        })
                        .collect()
                })
                .collect(),
            configured: matrix(&|i, j| self.links.link(i, j).rtt.as_secs_f64() * 1e3),
            coordinate_error: (0..n).map(|i| rtt.coordinate(i).map(|(c, _)| c.error)).collect(),
        }
    }
}

fn with_status(s: &ServiceRecord, domain: &str, state: &State) -> Service {
    let mut svc = s.service.clone();
    let (ns, name) = (svc.metadata.namespace().to_owned(), svc.metadata.name().to_owned());
    let serving: Vec<String> = traffic_split(s).into_iter().map(|t| t.revision).collect();
    let failing: Vec<String> = state
        .instances
        .values()
        .filter(|x| {
            x.namespace == ns
                && x.service == name
                && serving.contains(&x.revision)
                && matches!(x.instance.phase(), Phase::Failed(_) | Phase::CrashLoopBackOff(_))
        })
        .map(|x| format!("{}: {}", x.instance.name, x.instance.phase().message().unwrap_or_default()))
        .collect();
    svc.status = Some(service_status(&svc, &revision_states(s), &failing, domain));
    svc
}
