//! What a Service's route resolves to and the status it reports, the same on every runtime.

use crate::service::{Addressable, Condition, Service, ServiceSpec, ServiceStatus, TrafficTarget};

/// A revision as routing sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevisionState<'a> {
    /// Revision name.
    pub name: &'a str,
    /// It can take traffic: it has had a ready instance, or it starts at zero (initial scale 0,
    /// ready with no instance, as in Knative) and has not failed.
    pub ready: bool,
    /// Why it cannot start, if it failed before it was ever ready (its instances' own error).
    pub failure: Option<&'a str>,
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

/// The revision `latestRevision: true` means: the latest ready one (Knative's
/// `latestReadyRevisionName`), so a new revision that is starting or has failed never takes the
/// traffic of a ready one; while none is ready, the latest created (requests for it wait for its
/// start, or fail at once with its error).
pub fn latest_revision<'r, 'a>(revisions: &'r [RevisionState<'a>]) -> Option<&'r RevisionState<'a>> {
    revisions.iter().rev().find(|r| r.ready).or(revisions.last())
}

/// The service's traffic resolved to revision names. `revisions` are oldest first.
pub fn resolve_traffic(spec: &ServiceSpec, revisions: &[RevisionState<'_>]) -> Vec<ResolvedTarget> {
    let latest = latest_revision(revisions);
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

/// Whether a revision needs instances even though no route sends it traffic: the latest created
/// one, until it has failed, must start to prove itself ready (Knative's "pending" revision).
pub fn awaits_readiness(revisions: &[RevisionState<'_>], name: &str) -> bool {
    revisions.last().is_some_and(|r| r.name == name && !r.ready && r.failure.is_none())
}

/// A condition's state: `Some(true)` True, `Some(false)` False, `None` Unknown.
fn condition(type_: &str, state: Option<bool>, reason: &str, message: Option<String>) -> Condition {
    let ok = state == Some(true);
    Condition {
        type_: type_.into(),
        status: match state {
            Some(true) => "True",
            Some(false) => "False",
            None => "Unknown",
        }
        .into(),
        reason: (!ok).then(|| reason.to_owned()),
        message: if ok { None } else { message },
        last_transition_time: None,
    }
}

/// Both must hold: False if either is False, Unknown if either is Unknown.
fn and(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    }
}

/// Knative-shaped status: Ready / ConfigurationsReady / RoutesReady, url, address, latest
/// created and ready revisions, resolved traffic. ConfigurationsReady follows the latest created
/// revision (False once it failed, with its error); RoutesReady, the revisions traffic goes to
/// (False for a missing or failed one). `serving_problems` lists instance problems
/// (`name: message`) of revisions that serve traffic: the Service is then not known to be ready.
pub fn service_status(
    svc: &Service,
    revisions: &[RevisionState<'_>],
    serving_problems: &[String],
    domain: &str,
) -> ServiceStatus {
    let ns = svc.metadata.namespace();
    let name = svc.metadata.name();
    let split = resolve_traffic(&svc.spec, revisions);
    let latest_ready = revisions.iter().rev().find(|r| r.ready).map(|r| r.name.to_owned());
    let latest_created = revisions.last();
    let (config_ok, config_reason, config_message) = match latest_created {
        None => (None, "RevisionMissing", Some("no revision has been created yet".to_owned())),
        Some(r) if r.ready => (Some(true), "", None),
        Some(r) => match r.failure {
            Some(f) => (Some(false), "RevisionFailed", Some(format!("revision {} failed: {f}", r.name))),
            None => (None, "Deploying", Some(format!("revision {} is starting", r.name))),
        },
    };
    let (routes_ok, routes_reason, routes_message) = routes_state(&split, revisions);
    let (ready_reason, ready_message) = match (config_ok, routes_ok) {
        (Some(false), _) | (None, Some(true)) => (config_reason, config_message.clone()),
        _ => (routes_reason, routes_message.clone()),
    };
    let mut ready = and(config_ok, routes_ok);
    let (ready_reason, ready_message) = match serving_problems.first() {
        Some(p) if ready == Some(true) => {
            ready = None;
            ("RevisionFailed", Some(p.clone()))
        }
        _ => (ready_reason, ready_message),
    };
    ServiceStatus {
        observed_generation: svc.metadata.generation,
        conditions: vec![
            condition("ConfigurationsReady", config_ok, config_reason, config_message),
            condition("Ready", ready, ready_reason, ready_message),
            condition("RoutesReady", routes_ok, routes_reason, routes_message),
        ],
        url: Some(format!("http://{name}.{ns}.{domain}")),
        address: Some(Addressable { url: format!("http://{name}.{ns}.svc.cluster.local") }),
        latest_ready_revision_name: latest_ready,
        latest_created_revision_name: latest_created.map(|r| r.name.to_owned()),
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

/// Stamps each condition of `next` with its `lastTransitionTime`: the one in `previous` when the
/// condition's status (True/False/Unknown) is unchanged, else `now` (RFC 3339), as Kubernetes'
/// conventions and `kubectl wait` expect.
pub fn with_transition_times(
    previous: Option<&ServiceStatus>,
    mut next: ServiceStatus,
    now: &str,
) -> ServiceStatus {
    for c in &mut next.conditions {
        let before = previous.and_then(|p| p.conditions.iter().find(|b| b.type_ == c.type_));
        c.last_transition_time = match before {
            Some(b) if b.status == c.status && b.last_transition_time.is_some() => {
                b.last_transition_time.clone()
            }
            _ => Some(now.to_owned()),
        };
    }
    next
}

/// RoutesReady: True when every target exists and is ready, False when one is missing or failed,
/// Unknown while one is starting.
fn routes_state(
    split: &[ResolvedTarget],
    revisions: &[RevisionState<'_>],
) -> (Option<bool>, &'static str, Option<String>) {
    if split.is_empty() {
        return (Some(false), "RevisionMissing", Some("no revision to route traffic to".into()));
    }
    let mut starting = None;
    for t in split {
        match revisions.iter().find(|r| r.name == t.revision) {
            None => {
                return (
                    Some(false),
                    "RevisionMissing",
                    Some(format!("revision {} does not exist", t.revision)),
                );
            }
            Some(r) if r.ready => {}
            Some(r) => match r.failure {
                Some(f) => {
                    return (Some(false), "RevisionFailed", Some(format!("revision {} failed: {f}", r.name)));
                }
                None => starting = starting.or(Some(r.name)),
            },
        }
    }
    match starting {
        Some(r) => (None, "Deploying", Some(format!("revision {r} is starting"))),
        None => (Some(true), "", None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::tests::hello_service;

    fn rs(name: &str, ready: bool) -> RevisionState<'_> {
        RevisionState { name, ready, failure: None }
    }

    fn failed<'a>(name: &'a str, why: &'a str) -> RevisionState<'a> {
        RevisionState { name, ready: false, failure: Some(why) }
    }

    fn cond(s: &ServiceStatus, type_: &str) -> (String, Option<String>) {
        let c = s.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    fn only(revision: &str) -> Vec<ResolvedTarget> {
        vec![ResolvedTarget { revision: revision.into(), percent: 100, tag: None }]
    }

    #[test]
    fn latest_is_the_last_ready_revision_so_a_new_one_takes_over_only_once_ready() {
        let svc = hello_service();
        let starting = [rs("hello-00001", true), rs("hello-00002", false)];
        assert_eq!(resolve_traffic(&svc.spec, &starting), only("hello-00001"));
        let broken = [rs("hello-00001", true), failed("hello-00002", "exited (exit status: 1)")];
        assert_eq!(resolve_traffic(&svc.spec, &broken), only("hello-00001"));
        let done = [rs("hello-00001", true), failed("hello-00002", "x"), rs("hello-00003", true)];
        assert_eq!(resolve_traffic(&svc.spec, &done), only("hello-00003"));
        // Nothing ready yet: the latest created, whatever its state.
        assert_eq!(resolve_traffic(&svc.spec, &[failed("hello-00001", "x")]), only("hello-00001"));
        assert!(resolve_traffic(&svc.spec, &[]).is_empty());
    }

    #[test]
    fn only_the_latest_created_revision_awaits_readiness_until_it_fails() {
        let revs = [rs("a", true), rs("b", false)];
        assert!(awaits_readiness(&revs, "b") && !awaits_readiness(&revs, "a"));
        assert!(!awaits_readiness(&[rs("a", true), failed("b", "x")], "b"));
        assert!(!awaits_readiness(&[rs("b", false), rs("c", false)], "b"));
    }

    #[test]
    fn a_failed_new_revision_makes_the_service_not_ready_while_the_old_one_serves() {
        let svc = hello_service();
        let s = service_status(
            &svc,
            &[rs("hello-00001", true), failed("hello-00002", "the container has no command")],
            &[],
            "example.com",
        );
        assert_eq!(cond(&s, "ConfigurationsReady"), ("False".into(), Some("RevisionFailed".into())));
        assert_eq!(cond(&s, "RoutesReady"), ("True".into(), None));
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(
            ready.message.as_deref(),
            Some("revision hello-00002 failed: the container has no command")
        );
        assert_eq!(s.latest_ready_revision_name.as_deref(), Some("hello-00001"));
        assert_eq!(s.latest_created_revision_name.as_deref(), Some("hello-00002"));
        // A good revision after it: everything is ready again.
        let s = service_status(
            &svc,
            &[rs("hello-00001", true), failed("hello-00002", "x"), rs("hello-00003", true)],
            &[],
            "example.com",
        );
        for c in &s.conditions {
            assert_eq!((c.status.as_str(), c.reason.as_deref()), ("True", None), "{c:?}");
        }
    }

    #[test]
    fn a_starting_revision_is_unknown_and_a_ready_one_with_a_problem_is_not_known_ready() {
        let svc = hello_service();
        let s = service_status(&svc, &[rs("hello-00001", false)], &[], "example.com");
        assert_eq!(cond(&s, "Ready"), ("Unknown".into(), Some("Deploying".into())));
        assert_eq!(s.latest_ready_revision_name, None);
        let problem = vec!["hello-x: Unschedulable".to_owned()];
        let s = service_status(&svc, &[rs("hello-00001", true)], &problem, "example.com");
        assert_eq!(cond(&s, "Ready"), ("Unknown".into(), Some("RevisionFailed".into())));
    }

    #[test]
    fn transition_times_change_only_with_a_conditions_status() {
        let svc = hello_service();
        let starting = service_status(&svc, &[rs("hello-00001", false)], &[], "example.com");
        let t0 = with_transition_times(None, starting.clone(), "2030-01-01T00:00:00Z");
        assert!(
            t0.conditions.iter().all(|c| c.last_transition_time.as_deref() == Some("2030-01-01T00:00:00Z"))
        );
        // Still starting, later: every time stays.
        let t1 = with_transition_times(Some(&t0), starting, "2030-01-01T00:00:05Z");
        assert_eq!(t1, t0);
        // Ready: each condition that turned True moves on.
        let ready = service_status(&svc, &[rs("hello-00001", true)], &[], "example.com");
        let t2 = with_transition_times(Some(&t1), ready, "2030-01-01T00:00:09Z");
        for c in &t2.conditions {
            assert_eq!(
                (c.status.as_str(), c.last_transition_time.as_deref()),
                ("True", Some("2030-01-01T00:00:09Z"))
            );
        }
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
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("RevisionMissing"));
        assert_eq!(s.url.as_deref(), Some("http://hello.default.example.com"));
        assert_eq!(s.latest_ready_revision_name.as_deref(), Some("hello-00001"));
    }
}
