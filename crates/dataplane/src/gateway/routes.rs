//! The routing table: the routes the control plane gives a gateway, and the host → service →
//! revision table built from them, which keeps each revision's instances and their state.

use std::borrow::{Borrow, BorrowMut};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ikukantai_api::annotations::RevisionSettings;
use ikukantai_api::config::FleetConfig;
use ikukantai_api::revision::{Revision, SERVICE_LABEL};
use ikukantai_http::pool::Upstream;
use ikukantai_policy::autoscaler::ScalingSpec;
use ikukantai_policy::balance::Balancer;
use ikukantai_policy::estimate::NodeIndex;
use ikukantai_policy::gateway::{InstanceLoad, PickScratch, Shortlist};
use ikukantai_policy::queue::{PriorityRule, QueueDiscipline};
use ikukantai_policy::registry::{self, PolicyParams};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;

use super::{RoutesError, Shared};
use crate::metrics::{OutcomeHandles, RevisionLabels};
use crate::stats::RequestStats;

/// Where a service's traffic goes.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteTarget {
    /// Revision name.
    pub revision: String,
    /// Share in percent.
    pub percent: u32,
    /// Tag, reachable at `TAG-SVC.NS…`.
    pub tag: Option<String>,
}

/// A routable service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRoute {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Traffic split (percent sums to 100; tag-only targets may have 0).
    pub traffic: Vec<RouteTarget>,
}

/// An instance a revision can send to.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRoute {
    /// Unique instance name.
    pub name: String,
    /// Node index.
    pub node: NodeIndex,
    /// Its queue proxy.
    pub addr: SocketAddr,
}

/// A revision and its ready instances.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionRoute {
    /// Namespace.
    pub namespace: String,
    /// Service.
    pub service: String,
    /// Revision name.
    pub revision: String,
    /// containerConcurrency (0 = unlimited).
    pub container_concurrency: u32,
    /// Autoscaler target per instance (balancers use it as a soft limit).
    pub target_concurrency: f64,
    /// Request timeout.
    pub timeout: Duration,
    /// Balancer name.
    pub balancer: String,
    /// Queue discipline of the activator queue.
    pub queue: String,
    /// Rules for the `priority` discipline.
    pub priority_rules: Vec<PriorityRule>,
    /// Ready instances.
    pub instances: Vec<InstanceRoute>,
    /// Why the revision cannot start, if it failed: with no instance, requests for it are
    /// answered at once with this rather than wait for the request timeout.
    pub failure: Option<String>,
}

impl RevisionRoute {
    /// The route of `revision`, with its annotations' `settings` resolved against the fleet's
    /// `config` (policies named by neither take the fleet's defaults) and its scaling `spec`: the
    /// one way both runtimes build it.
    pub fn of(
        revision: &Revision,
        settings: &RevisionSettings,
        config: &FleetConfig,
        spec: &ScalingSpec,
        instances: Vec<InstanceRoute>,
    ) -> Self {
        let service = revision.metadata.labels.get(SERVICE_LABEL).cloned().unwrap_or_default();
        Self {
            namespace: revision.metadata.namespace().to_owned(),
            service,
            revision: revision.name().to_owned(),
            container_concurrency: revision.spec.container_concurrency(),
            target_concurrency: spec.target,
            timeout: Duration::from_secs(revision.spec.timeout_seconds()),
            balancer: settings.balancer.clone().unwrap_or_else(|| config.policies.balancer.clone()),
            queue: settings.queue.clone().unwrap_or_else(|| config.policies.queue.clone()),
            priority_rules: settings.priority_rules.clone(),
            instances,
            failure: None,
        }
    }
}

/// The whole routing table of a gateway.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routes {
    /// Services.
    pub services: Vec<ServiceRoute>,
    /// Revisions.
    pub revisions: Vec<RevisionRoute>,
}

pub(super) struct InstanceState {
    /// What the gateway's decisions see of it: id, node, in flight, estimates.
    pub(super) load: InstanceLoad,
    pub(super) name: Arc<str>,
    /// Its address and the pooled connections to it.
    pub(super) upstream: Arc<Upstream>,
}

impl Borrow<InstanceLoad> for InstanceState {
    fn borrow(&self) -> &InstanceLoad {
        &self.load
    }
}

impl BorrowMut<InstanceLoad> for InstanceState {
    fn borrow_mut(&mut self) -> &mut InstanceLoad {
        &mut self.load
    }
}

pub(super) struct RevisionInner {
    pub(super) route: RevisionRoute,
    pub(super) instances: Vec<InstanceState>,
    pub(super) shortlist: Shortlist,
    pub(super) scratch: PickScratch,
    pub(super) balancer: Box<dyn Balancer>,
    pub(super) waiting: Box<dyn QueueDiscipline<oneshot::Sender<u64>>>,
}

pub(super) struct RevisionState {
    pub(super) labels: RevisionLabels,
    pub(super) inner: Mutex<RevisionInner>,
    pub(super) activator: RequestStats,
    pub(super) origin: RequestStats,
    /// Metric handles, resolved once instead of on every request.
    pub(super) in_flight_gauge: Gauge,
    pub(super) buffered_gauge: Gauge,
    pub(super) buffered_counter: Counter,
    /// A handful of (serving node, code) pairs per revision: a list beats hashing.
    pub(super) outcomes: OutcomeHandles<Outcome>,
}

/// How a forwarded request ended: serving node and status code.
pub(super) type Outcome = (Option<NodeIndex>, u16);

/// A traffic target resolved to its revision (`Err` = named revision not routable yet).
pub(super) type Target = Result<Arc<RevisionState>, String>;

pub(super) struct ServiceState {
    pub(super) namespace: String,
    pub(super) name: String,
    /// (percent, target); percents sum to 100 or the service routes nothing.
    pub(super) split: Vec<(u32, Target)>,
}

#[derive(Default)]
pub(super) struct Table {
    /// Host → service, and the tag's target for tagged hosts. Looked up for every request;
    /// foldhash (seeded per map) hashes a host in a fraction of SipHash's time, and the keys
    /// come from configuration, not from clients.
    pub(super) hosts: foldhash::HashMap<String, (Arc<ServiceState>, Option<Target>)>,
    pub(super) revisions: HashMap<(String, String), Arc<RevisionState>>,
    /// Hosts more than one route claims (a tag's `TAG-SVC` and Service `TAG-SVC`'s own, say),
    /// routed to none of them, with who claims them: which would win must not depend on the
    /// order routes come in.
    pub(super) ambiguous: foldhash::HashMap<String, String>,
}

impl Table {
    /// The table for `routes`. A revision already routed keeps its state ([`RevisionState::update`]);
    /// an instance unknown to the node set is refused before anything changes.
    pub(super) fn build(shared: &Shared, routes: &Routes) -> Result<Self, RoutesError> {
        let known = shared.nodes().names.len();
        for r in &routes.revisions {
            if let Some(i) = r.instances.iter().find(|i| i.node >= known) {
                return Err(RoutesError::UnknownNode {
                    revision: r.revision.clone(),
                    instance: i.name.clone(),
                    node: i.node,
                    known,
                });
            }
        }
        let mut next = Table::default();
        let old = shared.table.read();
        for r in &routes.revisions {
            let key = (r.namespace.clone(), r.revision.clone());
            let state = match old.revisions.get(&key) {
                Some(s) => {
                    s.update(shared, r)?;
                    s.clone()
                }
                None => RevisionState::new(shared, r)?,
            };
            next.revisions.insert(key, state);
        }
        let mut claims: foldhash::HashMap<String, Vec<String>> = foldhash::HashMap::default();
        for s in &routes.services {
            next.add_service(s, &shared.config.domain, &mut claims);
        }
        for (host, mut claimants) in claims.into_iter().filter(|(_, c)| c.len() > 1) {
            next.hosts.remove(&host);
            claimants.sort();
            let who = claimants.join(" and ");
            if !old.ambiguous.contains_key(&host) {
                tracing::warn!(%host, claimed_by = %who, "a host more than one route claims is routed to none");
            }
            next.ambiguous.insert(host, who);
        }
        drop(old);
        shared.metrics.ambiguous_hosts.set(next.ambiguous.len() as i64);
        Ok(next)
    }

    /// Routes `s`'s hosts (and its tags' hosts) to it; its revisions must be in the table already.
    /// Who claims each host is noted in `claims`.
    fn add_service(
        &mut self,
        s: &ServiceRoute,
        domain: &str,
        claims: &mut foldhash::HashMap<String, Vec<String>>,
    ) {
        let resolve = |revision: &String| -> Target {
            self.revisions
                .get(&(s.namespace.clone(), revision.clone()))
                .cloned()
                .ok_or_else(|| revision.clone())
        };
        let state = Arc::new(ServiceState {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            split: s
                .traffic
                .iter()
                .filter(|t| t.percent > 0)
                .map(|t| (t.percent, resolve(&t.revision)))
                .collect(),
        });
        let tagged: Vec<(String, Target)> =
            s.traffic.iter().filter_map(|t| Some((t.tag.clone()?, resolve(&t.revision)))).collect();
        let (ns, name) = (&s.namespace, &s.name);
        let base = [
            format!("{}.{}.{domain}", s.name, s.namespace),
            format!("{}.{}", s.name, s.namespace),
            format!("{}.{}.svc", s.name, s.namespace),
            format!("{}.{}.svc.cluster.local", s.name, s.namespace),
        ];
        for host in &base {
            claims.entry(host.clone()).or_default().push(format!("Service {ns}/{name}"));
            self.hosts.insert(host.clone(), (state.clone(), None));
            for (tag, target) in &tagged {
                let tagged_host = format!("{tag}-{host}");
                claims
                    .entry(tagged_host.clone())
                    .or_default()
                    .push(format!("tag {tag:?} of Service {ns}/{name}"));
                self.hosts.insert(tagged_host, (state.clone(), Some(target.clone())));
            }
        }
    }
}

impl RevisionState {
    /// A revision routed for the first time.
    fn new(shared: &Shared, r: &RevisionRoute) -> Result<Arc<Self>, RoutesError> {
        let params =
            PolicyParams { priority_rules: r.priority_rules.clone(), ..shared.config.policy.clone() };
        let err = |source| RoutesError::Policy { revision: r.revision.clone(), source };
        let mut instances: Vec<_> = r.instances.iter().map(|i| new_instance(shared, i)).collect();
        instances.sort_by_key(|i| i.load.id);
        let now = std::time::Instant::now();
        let labels = RevisionLabels {
            namespace: r.namespace.clone(),
            service: r.service.clone(),
            revision: r.revision.clone(),
        };
        Ok(Arc::new(RevisionState {
            in_flight_gauge: shared.metrics.in_flight.get_or_create(&labels).clone(),
            buffered_gauge: shared.metrics.buffered.get_or_create(&labels).clone(),
            buffered_counter: shared.metrics.buffered_total.get_or_create(&labels).clone(),
            outcomes: OutcomeHandles::default(),
            labels,
            inner: Mutex::new(RevisionInner {
                route: r.clone(),
                instances,
                shortlist: Shortlist::new(params.seed),
                scratch: PickScratch::default(),
                balancer: registry::balancer(&r.balancer, &params).map_err(err)?,
                waiting: registry::queue(&r.queue, &params).map_err(err)?,
            }),
            activator: RequestStats::new(now),
            origin: RequestStats::new(now),
        }))
    }

    /// Takes a revision's new route. Its instances keep their state (in-flight counts,
    /// estimates); a failed revision left without instances lets its waiting requests go.
    fn update(&self, shared: &Shared, r: &RevisionRoute) -> Result<(), RoutesError> {
        let mut inner = self.inner.lock();
        if inner.route.balancer != r.balancer {
            inner.balancer = registry::balancer(&r.balancer, &shared.config.policy)
                .map_err(|source| RoutesError::Policy { revision: r.revision.clone(), source })?;
        }
        let mut previous: HashMap<Arc<str>, InstanceState> =
            inner.instances.drain(..).map(|i| (i.name.clone(), i)).collect();
        inner.instances = r
            .instances
            .iter()
            .map(|i| match previous.remove(i.name.as_str()) {
                Some(mut s) => {
                    if s.upstream.addr() != i.addr || s.load.node != i.node {
                        s.upstream = new_upstream(shared, i);
                    }
                    s.load.node = i.node;
                    s
                }
                None => new_instance(shared, i),
            })
            .collect();
        inner.instances.sort_by_key(|i| i.load.id);
        inner.shortlist.routes_changed();
        inner.route = r.clone();
        if r.failure.is_some() && inner.instances.is_empty() {
            // No instance will come: the waiting requests are answered with the failure.
            while inner.waiting.pop().is_some() {}
            self.buffered_gauge.set(0);
        }
        Ok(())
    }
}

fn new_upstream(shared: &Shared, i: &InstanceRoute) -> Arc<Upstream> {
    Arc::new(Upstream::new(i.addr, Arc::new(shared.route_connector(i.node))))
}

fn new_instance(shared: &Shared, i: &InstanceRoute) -> InstanceState {
    InstanceState {
        load: InstanceLoad::new(shared.instance_id(&i.name), i.node),
        name: i.name.as_str().into(),
        upstream: new_upstream(shared, i),
    }
}

#[cfg(test)]
mod tests {
    use ikukantai_api::annotations::revision_settings;
    use ikukantai_api::parse::{Document, parse_str};
    use ikukantai_api::revision::next_revision;

    use super::*;

    #[test]
    fn a_revision_route_takes_annotations_first_and_the_fleet_defaults_else() {
        let text = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: hello, namespace: team}\n\
                    spec:\n  template:\n    metadata:\n      annotations: {ikukantai.dev/balancer: even}\n    \
                    spec:\n      containerConcurrency: 4\n      timeoutSeconds: 30\n      containers: [{image: x}]\n";
        let Document::Service(svc) = parse_str("hello.yaml", text).unwrap().remove(0).document else {
            panic!("a Service")
        };
        let revision = next_revision(&svc, &[]).unwrap();
        let config = FleetConfig::new();
        let settings = revision_settings(&revision.metadata.annotations, &config, "").unwrap();
        let spec = ScalingSpec::resolve(&config.autoscaler, 4, &settings.scaling);
        let route = RevisionRoute::of(&revision, &settings, &config, &spec, Vec::new());
        assert_eq!((route.namespace.as_str(), route.service.as_str()), ("team", "hello"));
        assert_eq!(route.revision, "hello-00001");
        assert_eq!((route.container_concurrency, route.timeout), (4, Duration::from_secs(30)));
        assert_eq!(route.balancer, "even");
        assert_eq!(route.queue, config.policies.queue);
        assert_eq!(route.target_concurrency, spec.target);
        assert_eq!(route.failure, None);
    }
}
