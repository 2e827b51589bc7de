//! Pod Security admission's `baseline` and `restricted` checks, as the API server applies them to
//! a Pod spec (the subset of the Pod Security Standards a Pod here can violate). Messages follow
//! the API server's: `violates PodSecurity "restricted:latest": CHECK (DETAIL), …`.

use serde_json::Value;

/// A Pod Security Standards level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "privileged" => Some(Self::Privileged),
            "baseline" => Some(Self::Baseline),
            "restricted" => Some(Self::Restricted),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Privileged => "privileged",
            Self::Baseline => "baseline",
            Self::Restricted => "restricted",
        }
    }
}

/// Capabilities `baseline` lets a container add.
const BASELINE_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];
/// Volume types `restricted` allows.
const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers"].iter().flat_map(|k| spec[*k].as_array().into_iter().flatten()).collect()
}

fn name(c: &Value) -> String {
    c["name"].as_str().unwrap_or_default().to_owned()
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}

/// What `spec` (a PodSpec as JSON) violates at `level`, one entry per failed check.
pub fn violations(level: Level, spec: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if level == Level::Privileged {
        return out;
    }
    let all = containers(spec);
    // baseline
    for key in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[key] == true {
            out.push(format!("host namespaces ({key}=true)"));
        }
    }
    let privileged: Vec<String> =
        all.iter().filter(|c| c["securityContext"]["privileged"] == true).map(|c| name(c)).collect();
    if !privileged.is_empty() {
        out.push(format!(
            "privileged (containers {} must not set securityContext.privileged=true)",
            quoted(&privileged)
        ));
    }
    let host_path: Vec<String> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v.get("hostPath").is_some())
        .map(|v| v["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    if !host_path.is_empty() {
        out.push(format!("hostPath volumes (volumes {})", quoted(&host_path)));
    }
    let host_ports: Vec<String> = all
        .iter()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .filter_map(|p| p["hostPort"].as_u64().filter(|&h| h != 0))
        .map(|h| h.to_string())
        .collect();
    if !host_ports.is_empty() {
        out.push(format!("hostPort (containers use hostPorts {})", host_ports.join(", ")));
    }
    let added: Vec<String> = all
        .iter()
        .filter(|c| {
            c["securityContext"]["capabilities"]["add"].as_array().into_iter().flatten().any(|cap| {
                let cap = cap.as_str().unwrap_or_default();
                if level == Level::Restricted {
                    cap != "NET_BIND_SERVICE"
                } else {
                    !BASELINE_CAPS.contains(&cap)
                }
            })
        })
        .map(|c| name(c))
        .collect();
    if !added.is_empty() {
        out.push(format!(
            "unrestricted capabilities (containers {} must not add capabilities)",
            quoted(&added)
        ));
    }
    let unconfined = |sc: &Value| sc["seccompProfile"]["type"] == "Unconfined";
    if unconfined(&spec["securityContext"]) || all.iter().any(|c| unconfined(&c["securityContext"])) {
        out.push("seccompProfile (type \"Unconfined\" is forbidden)".into());
    }
    if level == Level::Baseline {
        return out;
    }
    // restricted
    let bad_volumes: Vec<String> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| {
            let kinds: Vec<&String> =
                v.as_object().into_iter().flatten().map(|(k, _)| k).filter(|k| *k != "name").collect();
            !kinds.iter().all(|k| RESTRICTED_VOLUMES.contains(&k.as_str()))
        })
        .map(|v| v["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    if !bad_volumes.is_empty() {
        out.push(format!(
            "restricted volume types (volumes {} use restricted volume types)",
            quoted(&bad_volumes)
        ));
    }
    let escalating: Vec<String> = all
        .iter()
        .filter(|c| c["securityContext"]["allowPrivilegeEscalation"] != false)
        .map(|c| name(c))
        .collect();
    if !escalating.is_empty() {
        out.push(format!(
            "allowPrivilegeEscalation != false (containers {} must set securityContext.allowPrivilegeEscalation=false)",
            quoted(&escalating)
        ));
    }
    let not_dropped: Vec<String> = all
        .iter()
        .filter(|c| {
            !c["securityContext"]["capabilities"]["drop"].as_array().into_iter().flatten().any(|d| d == "ALL")
        })
        .map(|c| name(c))
        .collect();
    if !not_dropped.is_empty() {
        out.push(format!(
            "unrestricted capabilities (containers {} must set securityContext.capabilities.drop=[\"ALL\"])",
            quoted(&not_dropped)
        ));
    }
    let pod_non_root = spec["securityContext"]["runAsNonRoot"] == true;
    let may_be_root: Vec<String> = all
        .iter()
        .filter(|c| {
            let own = &c["securityContext"]["runAsNonRoot"];
            !(own == true || (own.is_null() && pod_non_root))
        })
        .map(|c| name(c))
        .collect();
    if !may_be_root.is_empty() {
        out.push(format!(
            "runAsNonRoot != true (pod or containers {} must set securityContext.runAsNonRoot=true)",
            quoted(&may_be_root)
        ));
    }
    let confined =
        |sc: &Value| matches!(sc["seccompProfile"]["type"].as_str(), Some("RuntimeDefault" | "Localhost"));
    let pod_confined = confined(&spec["securityContext"]);
    let no_seccomp: Vec<String> = all
        .iter()
        .filter(|c| {
            !(confined(&c["securityContext"])
                || (pod_confined && c["securityContext"]["seccompProfile"].is_null()))
        })
        .map(|c| name(c))
        .collect();
    if !no_seccomp.is_empty() {
        out.push(format!(
            "seccompProfile (pod or containers {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")",
            quoted(&no_seccomp)
        ));
    }
    out
}

/// The API server's answer to a Pod that violates `level`, if it does.
pub fn admit(level: Level, pod_name: &str, spec: &Value) -> Result<(), String> {
    let v = violations(level, spec);
    if v.is_empty() {
        return Ok(());
    }
    Err(format!(
        "pods {pod_name:?} is forbidden: violates PodSecurity \"{}:latest\": {}",
        level.name(),
        v.join(", ")
    ))
}
