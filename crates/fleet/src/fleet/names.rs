//! The names a Service's routes claim in its namespace — its own name, and `TAG-NAME` for each
//! tagged traffic target — and the collisions between them: tag `t` of Service `tagd` claims
//! `t-tagd`, Service `t-tagd`'s own name, and a gateway could route that host to only one of them
//! (it routes it to neither). An apply that would make such a collision is refused.

use std::collections::BTreeMap;

use ikukantai_api::service::Service;

/// Where a Service comes from: a document of this apply, or the fleet's state.
#[derive(Debug, Clone, Copy)]
pub(super) enum Origin<'a> {
    /// Document `index` of `file`, in this apply.
    Applying { file: &'a str, index: usize },
    /// Applied before.
    Stored,
}

/// One name a Service's routes claim.
struct Claim<'a> {
    service: &'a str,
    /// `(i, tag)` for `spec.traffic[i].tag`; `None` for the Service's own name.
    tag: Option<(usize, &'a str)>,
    origin: Origin<'a>,
}

impl Claim<'_> {
    fn what(&self, namespace: &str) -> String {
        let service = format!("Service {namespace}/{}", self.service);
        let whose = match self.tag {
            Some((_, tag)) => format!("tag {tag:?} of {service}"),
            None => service,
        };
        match self.origin {
            Origin::Applying { file, index } => format!("{whose} ({file}: document {index})"),
            Origin::Stored => format!("{whose} (already applied)"),
        }
    }

    fn field(&self) -> String {
        match self.tag {
            Some((i, _)) => format!("spec.traffic[{i}].tag"),
            None => "metadata.name".into(),
        }
    }
}

/// Every collision between the names `services` claim, one line each naming both claims and the
/// field of the one being applied. Services listed later replace stored ones with their key.
pub(super) fn collisions<'a>(services: impl IntoIterator<Item = (&'a Service, Origin<'a>)>) -> Vec<String> {
    // (namespace, name) → the claims; a Service applied again replaces what it claimed before.
    let mut by_service: BTreeMap<(&str, &str), (&Service, Origin<'_>)> = BTreeMap::new();
    for (svc, origin) in services {
        by_service.insert((svc.metadata.namespace(), svc.metadata.name()), (svc, origin));
    }
    let mut names: BTreeMap<(&str, String), Vec<Claim<'_>>> = BTreeMap::new();
    for ((namespace, service), (svc, origin)) in &by_service {
        names.entry((namespace, (*service).to_owned())).or_default().push(Claim {
            service,
            tag: None,
            origin: *origin,
        });
        for (i, t) in svc.spec.traffic.iter().enumerate() {
            if let Some(tag) = t.tag.as_deref() {
                let claim = Claim { service, tag: Some((i, tag)), origin: *origin };
                names.entry((namespace, format!("{tag}-{service}"))).or_default().push(claim);
            }
        }
    }
    let mut problems = Vec::new();
    for ((namespace, name), claims) in &names {
        // Reported at a claim being applied, a tag's rather than a name's when both are.
        let is_applying = |c: &&Claim<'_>| matches!(c.origin, Origin::Applying { .. });
        let tagged = claims.iter().filter(is_applying).find(|c| c.tag.is_some());
        let Some(applying) = tagged.or_else(|| claims.iter().find(is_applying)) else {
            // Stored ones only: they were let in before this check; not this apply's business.
            continue;
        };
        for other in claims.iter().filter(|c| !std::ptr::eq(*c, applying)) {
            let Origin::Applying { file, index } = applying.origin else { continue };
            problems.push(format!(
                "{file}: document {index} (Service {namespace}/{}): {}: {} routes the name {name:?}, and so does {}; \
                 a gateway could route its host to only one of them: rename the tag or the Service",
                applying.service,
                applying.field(),
                match applying.tag {
                    Some((_, tag)) => format!("tag {tag:?}"),
                    None => "the Service's name".into(),
                },
                other.what(namespace),
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, tags: &[&str]) -> Service {
        let traffic: Vec<_> = tags
            .iter()
            .map(|t| serde_json::json!({"tag": t, "latestRevision": true, "percent": 0}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"template": {"spec": {"containers": [{"image": "x"}]}}, "traffic": traffic},
        }))
        .unwrap()
    }

    #[test]
    fn a_tag_that_routes_another_services_name_is_a_collision_naming_both() {
        let (tagd, t_tagd) = (service("tagd", &["blue", "t"]), service("t-tagd", &[]));
        let applying = Origin::Applying { file: "a.yaml", index: 2 };
        // Both in one apply.
        let found = collisions([(&tagd, applying), (&t_tagd, Origin::Applying { file: "b.yaml", index: 1 })]);
        assert_eq!(
            found,
            [
                "a.yaml: document 2 (Service default/tagd): spec.traffic[1].tag: tag \"t\" routes the name \"t-tagd\", \
                 and so does Service default/t-tagd (b.yaml: document 1); a gateway could route its host to only one \
                 of them: rename the tag or the Service"
            ]
        );
        // The Service stored, the tag applied; and the other way round.
        let found = collisions([(&t_tagd, Origin::Stored), (&tagd, applying)]);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].contains("spec.traffic[1].tag") && found[0].contains("(already applied)"),
            "{found:?}"
        );
        let found = collisions([(&tagd, Origin::Stored), (&t_tagd, applying)]);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].starts_with(
                "a.yaml: document 2 (Service default/t-tagd): metadata.name: the Service's name"
            ) && found[0].contains("tag \"t\" of Service default/tagd (already applied)"),
            "{found:?}"
        );
    }

    #[test]
    fn no_collision_no_problem_and_a_service_applied_again_replaces_its_stored_claims() {
        let (tagd, t_tagd) = (service("tagd", &["t"]), service("t-tagd", &[]));
        let untagged = service("tagd", &["blue"]);
        let applying = Origin::Applying { file: "a.yaml", index: 1 };
        assert!(collisions([(&tagd, Origin::Stored), (&untagged, applying), (&t_tagd, applying)]).is_empty());
        let mut elsewhere = service("t-tagd", &[]);
        elsewhere.metadata.namespace = Some("other".into());
        assert!(collisions([(&tagd, applying), (&elsewhere, applying)]).is_empty());
    }
}
