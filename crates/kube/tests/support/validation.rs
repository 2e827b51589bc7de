//! The API server's validation of what the controller creates, where a create can fail: label
//! values, and probe ports. Each returns the API server's messages (`field: Invalid value: …`).
//! And CPU quantities, as admission reads them.

use serde_json::Value;

/// Label values: at most 63 characters, alphanumeric at both ends, `-`, `_` and `.` between.
pub fn labels(obj: &Value) -> Vec<String> {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    obj["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, v)| {
            let v = v.as_str().unwrap_or_default();
            let shape = v.is_empty()
                || (v.starts_with(alnum)
                    && v.ends_with(alnum)
                    && v.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.')));
            let why = if v.len() > 63 {
                "must be no more than 63 characters"
            } else if !shape {
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'"
            } else {
                return None;
            };
            Some(format!("metadata.labels: Invalid value: {v:?}: {why}"))
        })
        .collect()
}

/// Probes of a Pod spec: every `httpGet` and `tcpSocket` needs a port (1-65535, or a name).
pub fn probe_ports(spec: &Value) -> Vec<String> {
    let mut invalid = Vec::new();
    for (i, c) in spec["containers"].as_array().into_iter().flatten().enumerate() {
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            for action in ["httpGet", "tcpSocket"] {
                let a = &c[probe][action];
                if a.is_object() {
                    let port = &a["port"];
                    if port.is_null() || port.as_u64().is_some_and(|p| p == 0 || p > 65535) {
                        invalid.push(format!(
                            "spec.containers[{i}].{probe}.{action}.port: Invalid value: 0: must be between 1 and 65535, inclusive"
                        ));
                    }
                }
            }
        }
    }
    invalid
}

/// A CPU quantity (`25m`, `1`, `0.5`) in millicores.
pub fn millicores(q: &str) -> f64 {
    match q.strip_suffix('m') {
        Some(m) => m.parse().unwrap(),
        None => q.parse::<f64>().unwrap() * 1000.0,
    }
}
