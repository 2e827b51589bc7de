//! Revisions: immutable snapshots of a Service's template, named `<service>-00001`, `-00002`, …
//! A new revision is cut only when the template changes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::service::{Condition, ObjectMeta, RevisionSpec, RevisionTemplate, SERVING_API_VERSION, Service};

/// Label naming a revision's service.
pub const SERVICE_LABEL: &str = "serving.knative.dev/service";
/// Label naming a revision's configuration (same as the service for Services).
pub const CONFIGURATION_LABEL: &str = "serving.knative.dev/configuration";
/// Label carrying the configuration generation a revision was cut from.
pub const CONFIGURATION_GENERATION_LABEL: &str = "serving.knative.dev/configurationGeneration";

/// A Knative Revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    /// `serving.knative.dev/v1`.
    pub api_version: String,
    /// `Revision`.
    pub kind: String,
    /// Name, namespace, the template's labels and annotations plus the service labels.
    pub metadata: ObjectMeta,
    /// The template's spec, frozen.
    pub spec: RevisionSpec,
    /// Observed state.
    #[serde(default)]
    pub status: RevisionStatus,
}

/// A revision's observed state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStatus {
    /// `Ready`, `ResourcesAvailable`, `ContainerHealthy`, `Active`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Instances ready.
    #[serde(default)]
    pub actual_replicas: u32,
    /// Instances wanted.
    #[serde(default)]
    pub desired_replicas: u32,
}

/// A child name like Knative's `kmeta.ChildName`: `parent + suffix`, shortened with a hash when
/// longer than 63 characters.
pub fn child_name(parent: &str, suffix: &str) -> String {
    let name = format!("{parent}{suffix}");
    if name.len() <= 63 {
        return name;
    }
    // FNV-1a of the parent keeps the shortened name stable and distinct.
    let hash = parent
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let keep = 63 - suffix.len() - 9;
    let mut cut = parent[..keep].to_owned();
    while cut.ends_with('-') {
        cut.pop();
    }
    format!("{cut}-{:08x}{suffix}", hash as u32)
}

/// The name of the revision cut at configuration generation `generation`.
pub fn revision_name(service: &str, template: &RevisionTemplate, generation: u64) -> String {
    template.metadata.name.clone().unwrap_or_else(|| child_name(service, &format!("-{generation:05}")))
}

fn user_labels(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| !k.starts_with("serving.knative.dev/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl Revision {
    /// The revision of `svc`'s current template at configuration generation `generation`.
    pub fn from_template(svc: &Service, generation: u64) -> Self {
        Self::new(svc.metadata.name(), svc.metadata.namespace(), &svc.spec.template, generation)
    }

    /// The revision of `template`, cut from Service `service` in `namespace` at configuration
    /// generation `generation`.
    pub fn new(service: &str, namespace: &str, template: &RevisionTemplate, generation: u64) -> Self {
        let mut labels = user_labels(&template.metadata.labels);
        labels.insert(SERVICE_LABEL.into(), service.into());
        labels.insert(CONFIGURATION_LABEL.into(), service.into());
        labels.insert(CONFIGURATION_GENERATION_LABEL.into(), generation.to_string());
        Self {
            api_version: SERVING_API_VERSION.into(),
            kind: "Revision".into(),
            metadata: ObjectMeta {
                name: Some(revision_name(service, template, generation)),
                namespace: Some(namespace.into()),
                labels,
                annotations: template.metadata.annotations.clone(),
                generation: Some(1),
                ..ObjectMeta::default()
            },
            spec: template.spec.clone(),
            status: RevisionStatus::default(),
        }
    }

    /// The name.
    pub fn name(&self) -> &str {
        self.metadata.name()
    }

    /// The configuration generation it was cut from.
    pub fn configuration_generation(&self) -> u64 {
        self.metadata.labels.get(CONFIGURATION_GENERATION_LABEL).and_then(|g| g.parse().ok()).unwrap_or(0)
    }

    /// True when this revision is a snapshot of `template` (so no new revision is needed).
    pub fn matches(&self, template: &RevisionTemplate) -> bool {
        self.spec == template.spec
            && self.metadata.annotations == template.metadata.annotations
            && user_labels(&self.metadata.labels) == user_labels(&template.metadata.labels)
            && template.metadata.name.as_deref().is_none_or(|n| n == self.name())
    }
}

/// The revision to create after `svc` was applied, given the service's existing revisions (any
/// order): `None` when the latest one already matches the template.
pub fn next_revision(svc: &Service, existing: &[Revision]) -> Option<Revision> {
    let latest = existing.iter().max_by_key(|r| r.configuration_generation());
    if latest.is_some_and(|r| r.matches(&svc.spec.template)) {
        return None;
    }
    let generation = latest.map_or(1, |r| r.configuration_generation() + 1);
    Some(Revision::from_template(svc, generation))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::tests::hello_service;

    #[test]
    fn revisions_are_numbered_and_cut_only_on_template_change() {
        let mut svc = hello_service();
        let r1 = next_revision(&svc, &[]).unwrap();
        assert_eq!(r1.name(), "hello-00001");
        assert_eq!(r1.metadata.labels[SERVICE_LABEL], "hello");
        assert_eq!(r1.metadata.namespace(), "default");
        assert!(next_revision(&svc, std::slice::from_ref(&r1)).is_none(), "same template: no new revision");
        // Changing traffic or service labels is not a template change.
        svc.metadata.labels.insert("team".into(), "a".into());
        assert!(next_revision(&svc, std::slice::from_ref(&r1)).is_none());
        // Changing an env var is.
        svc.spec.template.spec.containers[0].env[0].value = Some("Hello".into());
        let r2 = next_revision(&svc, std::slice::from_ref(&r1)).unwrap();
        assert_eq!(r2.name(), "hello-00002");
        // So is an annotation.
        svc.spec.template.metadata.annotations.insert("autoscaling.knative.dev/target".into(), "20".into());
        let r3 = next_revision(&svc, &[r2, r1.clone()]).unwrap();
        assert_eq!(r3.name(), "hello-00003");
        // The frozen snapshot does not follow later edits.
        assert_eq!(r1.spec.containers[0].env[0].value.as_deref(), Some("Konnichiwa"));
    }

    #[test]
    fn template_names_are_used_as_given() {
        let mut svc = hello_service();
        svc.spec.template.metadata.name = Some("hello-blue".into());
        assert_eq!(next_revision(&svc, &[]).unwrap().name(), "hello-blue");
    }

    #[test]
    fn long_names_are_shortened_with_a_hash() {
        let parent = "a".repeat(60);
        let name = child_name(&parent, "-00001");
        assert_eq!(name.len(), 63);
        assert!(name.ends_with("-00001"));
        assert_ne!(child_name(&"b".repeat(60), "-00001"), name);
        assert_eq!(child_name("hello", "-00001"), "hello-00001");
    }
}
