//! What a Service's route resolves to and the status it reports, the same on every runtime.

use crate::service::{Addressable, Condition, Service, ServiceSpec, ServiceStatus, TrafficTarget};

/// A revision as routing sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevisionState<'a> {
    /// Revision name.
    pub name: &'a str,
    /// It has had a ready instance at least once.
    pub ever_ready: bool,
}

/// One traffic target resolved to a revision name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTarget {
    /// Revision name.
    pub revision: String,
    /// Share in percent.
    pub percent: u32,
    /// Tag, reachable at `TAG-SVC.NS…`.
    pub tag: Option<String>,
}

/// The service's traffic resolved to revision names. `revisions` are oldest first;
/// `latestRevision` means the latest revision that ever became ready — except that a brand-new
/// revision that has not become ready yet takes over (it has not failed, it is starting).
pub fn resolve_traffic(spec: &ServiceSpec, revisions: &[RevisionState<'_>]) -> Vec<ResolvedTarget> {
    let latest_ready = revisions.iter().rev().find(|r| r.ever_ready).or(revisions.last());
    let latest = match (revisions.last(), latest_ready) {
        (Some(c), _) if !c.ever_ready => Some(c),
        (_, r) => r,
    };
    if spec.traffic.is_empty() {
        return latest
            .map(|r| vec![ResolvedTarget { revision: r.name.to_owned(), percent: 100, tag: None }])
            .unwrap_or_default();
    }
    spec.traffic
        .iter()
        .filter_map(|t| {
            let revision = if t.latest_revision == Some(true) {
                latest?.name.to_owned()
            } else {
                t.revision_name.clone()?
            };
            Some(ResolvedTarget { revision, percent: t.percent.unwrap_or(0), tag: t.tag.clone() })
        })
        .collect()
}

fn condition(type_: &str, ok: bool, reason: &str, message: Option<String>) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "Unknown" }.into(),
        reason: (!ok).then(|| reason.to_owned()),
        message: if ok { None } else { message },
        last_transition_time: None,
    }
}

/// Knative-shaped status: Ready / ConfigurationsReady / RoutesReady, url, address, latest
/// created and ready revisions, resolved traffic. `failing` lists instance problems
/// (`name: message`) of the latest revision.
pub fn service_status(
    svc: &Service,
    revisions: &[RevisionState<'_>],
    failing: &[String],
    domain: &str,
) -> ServiceStatus {
    let ns = svc.metadata.namespace();
    let name = svc.metadata.name();
    let split = resolve_traffic(&svc.spec, revisions);
    let latest_ready = revisions.iter().rev().find(|r| r.ever_ready).map(|r| r.name.to_owned());
    let latest_created = revisions.last().map(|r| r.name.to_owned());
    let missing: Vec<&String> = split
        .iter()
        .map(|t| &t.revision)
        .filter(|r| !revisions.iter().any(|x| x.name == r.as_str()))
        .collect();
    let missing_message = missing.first().map(|m| format!("revision {m} does not exist"));
    let config_ok = latest_created.is_some() && failing.is_empty();
    let routes_ok = missing.is_empty() && !split.is_empty();
    ServiceStatus {
        observed_generation: svc.metadata.generation,
        conditions: vec![
            condition("ConfigurationsReady", config_ok, "RevisionFailed", failing.first().cloned()),
            condition(
                "Ready",
                config_ok && routes_ok,
                if routes_ok { "RevisionFailed" } else { "RevisionMissing" },
                failing.first().cloned().or_else(|| missing_message.clone()),
            ),
            condition("RoutesReady", routes_ok, "RevisionMissing", missing_message),
        ],
        url: Some(format!("http://{name}.{ns}.{domain}")),
        address: Some(Addressable { url: format!("http://{name}.{ns}.svc.cluster.local") }),
        latest_ready_revision_name: latest_ready,
        latest_created_revision_name: latest_created,
        traffic: split
            .iter()
            .map(|t| TrafficTarget {
                tag: t.tag.clone(),
                revision_name: Some(t.revision.clone()),
                percent: Some(t.percent),
                url: t.tag.as_ref().map(|tag| format!("http://{tag}-{name}.{ns}.{domain}")),
                ..TrafficTarget::default()
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::tests::hello_service;

    fn rs(name: &str, ever_ready: bool) -> RevisionState<'_> {
        RevisionState { name, ever_ready }
    }

    #[test]
    fn latest_is_the_new_revision_while_it_starts_else_the_last_ready() {
        let svc = hello_service();
        let t = resolve_traffic(&svc.spec, &[rs("hello-00001", true), rs("hello-00002", false)]);
        assert_eq!(t, vec![ResolvedTarget { revision: "hello-00002".into(), percent: 100, tag: None }]);
        assert!(resolve_traffic(&svc.spec, &[]).is_empty());
    }

    #[test]
    fn status_reports_a_missing_named_revision() {
        let mut svc = hello_service();
        svc.spec.traffic = vec![TrafficTarget {
            revision_name: Some("hello-00009".into()),
            percent: Some(100),
            ..TrafficTarget::default()
        }];
        let s = service_status(&svc, &[rs("hello-00001", true)], &[], "example.com");
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "Unknown");
        assert_eq!(ready.reason.as_deref(), Some("RevisionMissing"));
        assert_eq!(s.url.as_deref(), Some("http://hello.default.example.com"));
        assert_eq!(s.latest_ready_revision_name.as_deref(), Some("hello-00001"));
    }
}
