//! The status and route a plan leads to. The API server's answers are the one input a plan cannot
//! know: a Pod create it refuses fails a revision that was never ready, like its Pods' own errors.
//! So these are functions of the plan and of what converging learnt ([`Converged`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use ikukantai_api::config::FleetConfig;
use ikukantai_api::revision::{Revision, SERVICE_LABEL};
use ikukantai_api::service::ServiceStatus;
use ikukantai_api::status::{RevisionState, resolve_traffic, service_status};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::{Observed, Plan, RevisionPlan, starts_at_zero};
use crate::controller::routes::route_spec;
use crate::crd::{Placement, PlacementStatus, ServiceRouteSpec, summary};

/// What converging one revision's plan learnt from the API server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Converged {
    /// Why its Pods cannot be created: the API server refused one (now, or within the backoff),
    /// or one cannot be built.
    pub(crate) refusal: Option<String>,
    /// Its Placement, as applied, says it has been ready.
    pub(crate) ever_ready: bool,
}

/// What the Service's reconcile writes last.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome {
    /// The Knative Service's status (before transition times and `NotOwned`).
    pub(crate) status: ServiceStatus,
    /// The ServiceRoute gateways route by.
    pub(crate) route: ServiceRouteSpec,
}

/// What routing needs to know of each revision: ready (ever, or starting at zero without a
/// failure) and its failure.
pub(super) fn revision_states<'a>(
    revisions: &'a [(Revision, Option<Arc<Placement>>)],
    ever_ready: &[bool],
    failures: &'a [Option<String>],
    config: &FleetConfig,
) -> Vec<RevisionState<'a>> {
    revisions
        .iter()
        .zip(ever_ready.iter().zip(failures))
        .map(|((r, _), (&ever_ready, failure))| RevisionState {
            name: r.name(),
            ready: ever_ready || (failure.is_none() && starts_at_zero(r, config)),
            failure: failure.as_deref(),
        })
        .collect()
}

/// Whether `p` is one of the Service's Pods (any revision, any phase).
pub(super) fn of_service(observed: &Observed, p: &Pod) -> bool {
    p.namespace().as_deref() == Some(observed.namespace())
        && p.labels().get(SERVICE_LABEL).map(String::as_str) == Some(observed.name())
}

impl RevisionPlan {
    /// Why the revision failed: as observed, or (never ready) because its Pods were refused.
    pub(crate) fn failure(&self, converged: &Converged) -> Option<String> {
        self.failure
            .clone()
            .or_else(|| converged.refusal.clone().filter(|_| !converged.ever_ready && !self.can_serve))
    }

    /// The Placement's status: ready and desired per node of `nodes` (the cluster's, in name
    /// order), and its failure while it has no ready instance.
    pub(crate) fn placement_status(&self, nodes: &[String], converged: &Converged) -> PlacementStatus {
        PlacementStatus {
            summary: summary(nodes, &self.ready, &self.desired),
            ever_ready: converged.ever_ready || !self.ready.is_empty(),
            failure: if self.ready.is_empty() { self.failure(converged) } else { None },
            ready: self.ready.clone(),
        }
    }
}

impl<'a> Plan<'a> {
    /// The configuration the plan was made under.
    pub(crate) fn config(&self) -> &'a FleetConfig {
        self.config
    }

    /// The cluster's node names, in name order.
    pub(crate) fn node_names(&self) -> Vec<String> {
        self.observed.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// The Service's status and route once [`Plan::scaled`] converged as `converged` says (one
    /// entry each, in order).
    pub(crate) fn outcome(&self, converged: &[Converged]) -> Outcome {
        let mut refused: BTreeMap<&str, String> = BTreeMap::new();
        let mut failing = Vec::new();
        for (plan, c) in self.scaled.iter().zip(converged) {
            let rev = plan.revision.name();
            if plan.routed {
                failing.extend(plan.problems.iter().cloned());
                failing.extend(c.refusal.iter().map(|r| format!("{rev}: {r}")));
            }
            if let Some(f) = plan.failure(c) {
                refused.insert(rev, f);
            }
        }
        // A revision whose Pods were refused has failed, unless it has been ready.
        let failures: Vec<Option<String>> = self
            .revisions
            .iter()
            .zip(&self.failures)
            .zip(&self.ever_ready)
            .map(|(((r, _), f), &ready)| {
                f.clone().or_else(|| refused.get(r.name()).filter(|_| !ready).cloned())
            })
            .collect();
        let states = revision_states(&self.revisions, &self.ever_ready, &failures, self.config);
        let svc = &self.observed.service;
        let status = service_status(svc, &states, &failing, &self.config.domain);
        let split = resolve_traffic(&svc.spec, &states);
        let routed: Vec<(&Revision, Option<&str>)> =
            self.revisions.iter().zip(&failures).map(|((r, _), f)| (r, f.as_deref())).collect();
        let pods: Vec<Arc<Pod>> =
            self.observed.pods.iter().filter(|p| of_service(self.observed, p)).cloned().collect();
        Outcome { status, route: route_spec(&split, &routed, &pods, self.config) }
    }
}
