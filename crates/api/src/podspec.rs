//! The Kubernetes fields a revision may pass through to its Pods, after Knative's field masks
//! (`pkg/apis/serving/fieldmask.go`): a tenant's Service must not be a way to run a privileged
//! container, mount the node's filesystem or take capabilities. The typed fields of
//! [`RevisionSpec`] are already a subset; this checks the ones kept as JSON.

use serde_json::Value;

use crate::error::FieldError;
use crate::service::RevisionSpec;

/// A container's `securityContext` keys Knative allows (not `privileged`, `procMount`,
/// `seLinuxOptions`, `windowsOptions`, `appArmorProfile`).
const CONTAINER_SECURITY: &[&str] = &[
    "allowPrivilegeEscalation",
    "capabilities",
    "readOnlyRootFilesystem",
    "runAsGroup",
    "runAsNonRoot",
    "runAsUser",
    "seccompProfile",
];
/// Capabilities a container may add (what Pod Security `restricted` allows too).
const ADDABLE_CAPABILITIES: &[&str] = &["NET_BIND_SERVICE"];
/// The Pod's `securityContext` keys Knative allows (not `seLinuxOptions`, `sysctls`,
/// `windowsOptions`).
const POD_SECURITY: &[&str] = &[
    "fsGroup",
    "fsGroupChangePolicy",
    "runAsGroup",
    "runAsNonRoot",
    "runAsUser",
    "seccompProfile",
    "supplementalGroups",
];
/// Volume sources Knative allows (no `hostPath`, no network or node-level volumes).
const VOLUME_SOURCES: &[&str] = &["configMap", "emptyDir", "persistentVolumeClaim", "projected", "secret"];
/// Sources of a projected volume Knative allows.
const PROJECTED_SOURCES: &[&str] = &["configMap", "downwardAPI", "secret", "serviceAccountToken"];
/// A volume mount's keys Knative allows (no `mountPropagation`).
const MOUNT_KEYS: &[&str] = &["mountPath", "name", "readOnly", "subPath"];
/// The volume the platform adds to every instance Pod (its sidecar's token).
pub const RESERVED_VOLUME: &str = "ikukantai-token";

fn keys_in(v: &Value, allowed: &[&str], path: &str, what: &str, errors: &mut Vec<FieldError>) {
    let Some(o) = v.as_object() else {
        errors.push(FieldError::new(path, "must be an object"));
        return;
    };
    for k in o.keys().filter(|k| !allowed.contains(&k.as_str())) {
        errors.push(FieldError::new(
            format!("{path}.{k}"),
            format!("not allowed in a revision ({what} may set only {})", allowed.join(", ")),
        ));
    }
}

/// Problems with the pass-through fields of `spec` (at field path `base`).
pub fn knative_fields(spec: &RevisionSpec, base: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(sc) = &spec.security_context {
        keys_in(sc, POD_SECURITY, &format!("{base}.securityContext"), "a Pod's securityContext", &mut errors);
    }
    for (i, c) in spec.containers.iter().enumerate() {
        let cbase = format!("{base}.containers[{i}]");
        if let Some(sc) = &c.security_context {
            let path = format!("{cbase}.securityContext");
            keys_in(sc, CONTAINER_SECURITY, &path, "a container's securityContext", &mut errors);
            let added = sc.pointer("/capabilities/add").and_then(Value::as_array).into_iter().flatten();
            for (j, cap) in added.enumerate() {
                if !cap.as_str().is_some_and(|c| ADDABLE_CAPABILITIES.contains(&c)) {
                    errors.push(FieldError::new(
                        format!("{path}.capabilities.add[{j}]"),
                        format!("{cap} may not be added (only {})", ADDABLE_CAPABILITIES.join(", ")),
                    ));
                }
            }
        }
        for (j, m) in c.volume_mounts.as_ref().and_then(Value::as_array).into_iter().flatten().enumerate() {
            keys_in(m, MOUNT_KEYS, &format!("{cbase}.volumeMounts[{j}]"), "a volume mount", &mut errors);
        }
    }
    for (i, v) in spec.volumes.as_ref().and_then(Value::as_array).into_iter().flatten().enumerate() {
        let path = format!("{base}.volumes[{i}]");
        if v["name"] == RESERVED_VOLUME {
            errors.push(FieldError::new(
                format!("{path}.name"),
                format!("{RESERVED_VOLUME:?} is reserved by the platform"),
            ));
        }
        let sources: Vec<&str> =
            v.as_object().into_iter().flatten().map(|(k, _)| k.as_str()).filter(|k| *k != "name").collect();
        for s in sources.iter().filter(|s| !VOLUME_SOURCES.contains(s)) {
            errors.push(FieldError::new(
                format!("{path}.{s}"),
                format!("not allowed in a revision (volumes may be {})", VOLUME_SOURCES.join(", ")),
            ));
        }
        for (j, p) in
            v.pointer("/projected/sources").and_then(Value::as_array).into_iter().flatten().enumerate()
        {
            keys_in(
                p,
                PROJECTED_SOURCES,
                &format!("{path}.projected.sources[{j}]"),
                "a projected volume",
                &mut errors,
            );
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(v: Value) -> RevisionSpec {
        serde_json::from_value(v).unwrap()
    }

    fn paths(spec: &RevisionSpec) -> Vec<String> {
        knative_fields(spec, "spec.template.spec").iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn privileged_containers_host_paths_and_capabilities_are_refused() {
        let s = spec(json!({
            "containers": [{"image": "x",
                "securityContext": {"privileged": true, "runAsNonRoot": true, "capabilities": {"add": ["SYS_ADMIN", "NET_BIND_SERVICE"], "drop": ["ALL"]}},
                "volumeMounts": [{"name": "root", "mountPath": "/host", "mountPropagation": "Bidirectional"}]}],
            "securityContext": {"sysctls": [{"name": "net.core.somaxconn", "value": "1024"}], "runAsUser": 1000},
            "volumes": [{"name": "root", "hostPath": {"path": "/"}},
                        {"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}, {"clusterTrustBundle": {}}]}}]
        }));
        let errors = paths(&s);
        for expected in [
            "spec.template.spec.containers[0].securityContext.privileged",
            "spec.template.spec.containers[0].securityContext.capabilities.add[0]",
            "spec.template.spec.containers[0].volumeMounts[0].mountPropagation",
            "spec.template.spec.securityContext.sysctls",
            "spec.template.spec.volumes[0].hostPath",
            "spec.template.spec.volumes[1].projected.sources[1].clusterTrustBundle",
        ] {
            assert!(errors.iter().any(|e| e.starts_with(expected)), "{expected} in {errors:#?}");
        }
        assert_eq!(errors.len(), 6, "{errors:#?}");
    }

    #[test]
    fn what_knative_allows_passes() {
        let s = spec(json!({
            "containers": [{"image": "x",
                "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                    "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}, "seccompProfile": {"type": "RuntimeDefault"}},
                "volumeMounts": [{"name": "cfg", "mountPath": "/etc/app", "readOnly": true}]}],
            "securityContext": {"fsGroup": 2000, "runAsNonRoot": true},
            "volumes": [{"name": "cfg", "configMap": {"name": "app"}}, {"name": "scratch", "emptyDir": {}}]
        }));
        assert!(paths(&s).is_empty(), "{:#?}", paths(&s));
    }
}
