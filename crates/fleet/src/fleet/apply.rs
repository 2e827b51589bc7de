//! Applying and deleting services: everything is validated first, and nothing changes on error.

use std::time::Instant;

use ikukantai_api::parse::{Document, load};
use ikukantai_api::revision::{Revision, next_revision};
use ikukantai_api::service::Service;
use ikukantai_policy::autoscaler::ScalingSpec;
use ikukantai_policy::registry::{self, PolicyParams};
use ikukantai_policy::scaler::RevisionScaler;

use super::names::{self, Origin};
use super::{Fleet, FleetError, Poke, RevisionRecord, ServiceRecord, stored_status};
use crate::store::RevisionRecordStatus;
use crate::view::ApplyResult;

impl Fleet {
    pub(super) fn revision_record(&self, revision: Revision) -> Result<RevisionRecord, FleetError> {
        let config = &self.options.config;
        let settings = ikukantai_api::annotations::revision_settings(
            &revision.metadata.annotations,
            config,
            "spec.template.metadata.annotations",
        )
        .map_err(|e| FleetError::Invalid(e.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")))?;
        let spec = ScalingSpec::resolve(
            &config.autoscaler,
            revision.spec.container_concurrency(),
            &settings.scaling,
        );
        let params = PolicyParams { seed: self.options.seed, ..PolicyParams::default() };
        let placement_name = settings.placement.clone().unwrap_or_else(|| config.policies.placement.clone());
        let placement =
            registry::placement(&placement_name, &params).map_err(|e| FleetError::Invalid(e.to_string()))?;
        Ok(RevisionRecord {
            scaler: RevisionScaler::new(spec, placement, Instant::now(), 0),
            balancer: settings.balancer.clone().unwrap_or_else(|| config.policies.balancer.clone()),
            queue: settings.queue.clone().unwrap_or_else(|| config.policies.queue.clone()),
            desired: vec![0; self.options.topology.nodes.len()],
            status: RevisionRecordStatus::default(),
            waiting: false,
            settings,
            revision,
        })
    }

    /// Applies manifests (`(file, text)` pairs). Everything is validated first; on any error
    /// nothing changes.
    pub fn apply(&self, sources: &[(String, String)]) -> Result<ApplyResult, FleetError> {
        let (docs, _) =
            load(sources, &self.options.config).map_err(|d| FleetError::Invalid(d.to_string()))?;
        if docs.is_empty() {
            let files: Vec<&str> = sources.iter().map(|(f, _)| f.as_str()).collect();
            return Err(FleetError::Invalid(format!(
                "{}: no documents found; nothing applied",
                files.join(", ")
            )));
        }
        let mut problems = Vec::new();
        for d in &docs {
            match &d.document {
                Document::Service(_) => {}
                Document::Config(_) => problems.push(format!("{}: document {}: fleet configuration is read at start: pass it to `ikukantai up --config`", d.file, d.index)),
                Document::Topology(_) => problems.push(format!("{}: document {}: the topology is read at start: pass it to `ikukantai up --topology`", d.file, d.index)),
            }
        }
        if !problems.is_empty() {
            return Err(FleetError::Invalid(problems.join("\n")));
        }
        let mut lines = Vec::new();
        let mut state = self.state.lock();
        // Route names (a Service's, and `TAG-SVC` for its tags) must not collide, with the
        // Services stored or with each other: a gateway could route such a host to only one.
        let applying = docs.iter().filter_map(|d| match &d.document {
            Document::Service(svc) => Some((&**svc, Origin::Applying { file: &d.file, index: d.index })),
            _ => None,
        });
        let stored = state.services.values().map(|r| (&r.service, Origin::Stored));
        let collisions = names::collisions(stored.chain(applying));
        if !collisions.is_empty() {
            return Err(FleetError::Invalid(collisions.join("\n")));
        }
        // Prepare every change first, then commit them all.
        let mut prepared = Vec::new();
        for d in docs {
            let Document::Service(svc) = d.document else { continue };
            // `load` above already checked every Service against the fleet's configuration.
            let mut svc = *svc;
            svc.status = None;
            svc.metadata.namespace = Some(svc.metadata.namespace().to_owned());
            let key = (svc.metadata.namespace().to_owned(), svc.metadata.name().to_owned());
            let existing = state.services.get(&key);
            let revisions: Vec<Revision> = existing
                .map(|r| r.revisions.iter().map(|x| x.revision.clone()).collect())
                .unwrap_or_default();
            let old_generation = existing.and_then(|r| r.service.metadata.generation).unwrap_or(0);
            let unchanged = existing.is_some_and(|r| {
                r.service.spec == svc.spec
                    && r.service.metadata.labels == svc.metadata.labels
                    && r.service.metadata.annotations == svc.metadata.annotations
            });
            svc.metadata.generation = Some(if unchanged { old_generation } else { old_generation + 1 });
            let existing_uid = existing.map(|e| e.service.metadata.uid.clone());
            let existed = existing.is_some();
            let new_revision = next_revision(&svc, &revisions);
            svc.metadata.uid = match existing_uid {
                Some(uid) => uid,
                None => {
                    state.counter += 1;
                    Some(format!(
                        "{:016x}",
                        self.options.seed
                            ^ state.counter.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                            ^ self.started.elapsed().as_nanos() as u64
                    ))
                }
            };
            if let Some(r) = &new_revision
                && revisions.iter().any(|x| x.name() == r.name())
            {
                return Err(FleetError::Invalid(format!(
                    "{}: document {} (Service {}/{}): spec.template.metadata.name: revision {:?} already exists with a different template; change the name with the template",
                    d.file,
                    d.index,
                    key.0,
                    key.1,
                    r.name()
                )));
            }
            let record = new_revision.map(|r| self.revision_record(r)).transpose()?;
            lines.push(match (existed, unchanged && record.is_none()) {
                (false, _) => format!("service/{} created", key.1),
                (true, true) => format!("service/{} unchanged", key.1),
                (true, false) => format!("service/{} configured", key.1),
            });
            if let Some(warning) = local_warning(&svc) {
                lines.push(format!(
                    "warning: {}: document {} (Service {}/{}): {warning}",
                    d.file, d.index, key.0, key.1
                ));
            }
            prepared.push((key, svc, record));
        }
        let now = Instant::now();
        let nodes = self.options.topology.nodes.len();
        let _order = self.store_order.lock();
        for (key, svc, record) in prepared {
            let existing = state.services.get(&key);
            let mut all: Vec<Revision> = existing
                .map(|r| r.revisions.iter().map(|x| x.revision.clone()).collect())
                .unwrap_or_default();
            if let Some(r) = &record {
                all.push(r.revision.clone());
            }
            let status = existing.map(stored_status).unwrap_or_default();
            self.store.save(&svc, &all, &status)?;
            if let Some(r) = &record {
                state.owners.insert((key.0.clone(), r.revision.name().to_owned()), key.1.clone());
            }
            let entry = state
                .services
                .entry(key.clone())
                .or_insert_with(|| ServiceRecord { service: svc.clone(), revisions: Vec::new() });
            entry.service = svc;
            if let Some(r) = record {
                entry.revisions.push(r);
            }
            // Its routing may have changed: every revision of it is decided again.
            state.wake_service(&key, now, nodes);
        }
        state.work.decide_now = true;
        state.work.routes = true;
        drop(state);
        let _ = self.poke.send(Poke::Reconcile);
        Ok(ApplyResult { lines })
    }

    /// Deletes a service, its revisions and instances.
    pub fn delete(&self, namespace: &str, name: &str) -> Result<(), FleetError> {
        let mut state = self.state.lock();
        let Some(removed) = state.services.remove(&(namespace.to_owned(), name.to_owned())) else {
            return Err(FleetError::NotFound(format!("service {namespace}/{name} not found")));
        };
        // Writes of earlier passes end first (later ones wait for the books).
        drop(self.store_order.lock());
        self.store.delete(namespace, name)?;
        // Its revisions are visited once more: with no record, nothing is wanted of them.
        for r in &removed.revisions {
            let key = (namespace.to_owned(), r.revision.name().to_owned());
            state.owners.remove(&key);
            state.work.active.insert(key.clone());
            state.work.dirty.insert(key);
        }
        state.work.decide_now = true;
        state.work.routes = true;
        drop(state);
        let _ = self.poke.send(Poke::Reconcile);
        Ok(())
    }
}

/// What keeps a valid Service from running on the local fleet, which runs processes, not images.
pub fn local_warning(svc: &Service) -> Option<String> {
    let container = svc.spec.template.spec.container()?;
    container.command.is_empty().then(|| {
        "spec.template.spec.containers[0].command: not set: the local fleet runs the command as a process (the image is not pulled), so this revision cannot start here; it runs as is on Kubernetes".to_owned()
    })
}
