//! Semantic checks of a Service, with Knative's rules. Each error names the field and the rule.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::annotations::{AUTOSCALING_PREFIX, RevisionSettings, revision_settings};
use crate::config::FleetConfig;
use crate::error::FieldError;
use crate::service::{
    Container, MAX_CONTAINER_CONCURRENCY, MAX_TIMEOUT_SECONDS, Probe, SERVING_API_VERSION, Service,
};

/// Environment variables the platform sets (Knative's runtime contract); users may not.
pub const RESERVED_ENV: &[&str] = &["PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"];
/// Ports the queue proxy uses (Knative reserves the same).
pub const RESERVED_PORTS: &[u16] = &[8012, 8013, 8022, 9090, 9091];

/// A DNS-1035 label: lowercase letters, digits and '-', starting with a letter, ending with a
/// letter or digit, at most 63 characters.
pub fn dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err(format!("{s:?} is longer than 63 characters"));
    }
    let ok_chars = s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let first = s.as_bytes()[0];
    let last = s.as_bytes()[s.len() - 1];
    if !ok_chars || !first.is_ascii_lowercase() || last == b'-' {
        return Err(format!(
            "{s:?} is not a DNS-1035 label: lowercase letters, digits and '-', starting with a letter and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A DNS-1123 subdomain: dot-separated labels of lowercase letters, digits and '-'.
pub fn dns_subdomain(s: &str) -> Result<(), String> {
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if s.is_empty() || s.len() > 253 || !s.split('.').all(valid_label) {
        return Err(format!("{s:?} is not a DNS subdomain (lowercase letters, digits, '-' and '.')"));
    }
    Ok(())
}

/// A Kubernetes quantity such as `500m`, `640M`, `1Gi`, `2`, `1e3`.
pub fn quantity(s: &str) -> Result<(), String> {
    const SUFFIXES: &[&str] =
        &["Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E", ""];
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let number_end = body.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(body.len());
    let (number, rest) = body.split_at(number_end);
    let ok_number = !number.is_empty() && number != "." && number.matches('.').count() <= 1;
    let ok_rest = SUFFIXES.contains(&rest) || {
        let exp = rest.strip_prefix(['e', 'E']).map(|e| e.strip_prefix(['+', '-']).unwrap_or(e));
        exp.is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()))
    };
    if ok_number && ok_rest {
        Ok(())
    } else {
        Err(format!("{s:?} is not a quantity (like \"500m\", \"640M\", \"1Gi\")"))
    }
}

struct Check {
    errors: Vec<FieldError>,
}

impl Check {
    fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, message));
    }
}

/// Validates a Service as submitted by a user and returns the settings its annotations select.
pub fn validate_service(svc: &Service, fleet: &FleetConfig) -> Result<RevisionSettings, Vec<FieldError>> {
    let mut c = Check { errors: Vec::new() };
    if svc.api_version != SERVING_API_VERSION {
        c.fail("apiVersion", format!("{:?} is not supported; use {SERVING_API_VERSION}", svc.api_version));
    }
    if svc.kind != "Service" {
        c.fail("kind", format!("{:?}: expected Service", svc.kind));
    }
    match svc.metadata.name.as_deref() {
        None => c.fail("metadata.name", "required"),
        Some(n) => {
            if let Err(e) = dns_label(n) {
                c.fail("metadata.name", e);
            }
        }
    }
    if let Some(ns) = &svc.metadata.namespace
        && let Err(e) = dns_label(ns)
    {
        c.fail("metadata.namespace", e);
    }
    for key in svc.metadata.annotations.keys().filter(|k| k.starts_with(AUTOSCALING_PREFIX)) {
        c.fail(
            format!("metadata.annotations[{key:?}]"),
            "autoscaling annotations belong on the revision template: move it to spec.template.metadata.annotations",
        );
    }
    let template = &svc.spec.template;
    if let Some(name) = &template.metadata.name {
        let prefix = format!("{}-", svc.metadata.name());
        if let Err(e) = dns_label(name) {
            c.fail("spec.template.metadata.name", e);
        } else if !name.starts_with(&prefix) || name.len() == prefix.len() {
            c.fail(
                "spec.template.metadata.name",
                format!("{name:?} must start with the service name: \"{prefix}…\""),
            );
        }
    }
    let settings = match revision_settings(
        &template.metadata.annotations,
        fleet,
        "spec.template.metadata.annotations",
    ) {
        Ok(s) => Some(s),
        Err(errors) => {
            c.errors.extend(errors);
            None
        }
    };

    let spec = &template.spec;
    let base = "spec.template.spec";
    match spec.containers.len() {
        0 => c.fail(format!("{base}.containers"), "exactly one container is required"),
        1 => check_container(&mut c, &spec.containers[0], &format!("{base}.containers[0]")),
        n => c.fail(
            format!("{base}.containers"),
            format!("{n} containers given: ikukantai runs exactly one container per revision"),
        ),
    }
    c.errors.extend(crate::podspec::knative_fields(spec, base));
    if let Some(cc) = spec.container_concurrency
        && cc > MAX_CONTAINER_CONCURRENCY
    {
        c.fail(
            format!("{base}.containerConcurrency"),
            format!("{cc} out of range: must be between 0 and {MAX_CONTAINER_CONCURRENCY}"),
        );
    }
    let timeout = spec.timeout_seconds();
    if let Some(t) = spec.timeout_seconds
        && !(1..=MAX_TIMEOUT_SECONDS).contains(&t)
    {
        c.fail(
            format!("{base}.timeoutSeconds"),
            format!("{t} out of range: must be between 1 and {MAX_TIMEOUT_SECONDS}"),
        );
    }
    if let Some(t) = spec.response_start_timeout_seconds
        && (t == 0 || t > timeout)
    {
        c.fail(
            format!("{base}.responseStartTimeoutSeconds"),
            format!("{t} out of range: must be between 1 and timeoutSeconds ({timeout})"),
        );
    }
    if let Some(t) = spec.idle_timeout_seconds
        && t > MAX_TIMEOUT_SECONDS
    {
        c.fail(
            format!("{base}.idleTimeoutSeconds"),
            format!("{t} out of range: must be between 0 and {MAX_TIMEOUT_SECONDS}"),
        );
    }
    check_traffic(&mut c, svc);
    match (c.errors.is_empty(), settings) {
        (true, Some(s)) => Ok(s),
        _ => Err(c.errors),
    }
}

fn check_container(c: &mut Check, container: &Container, base: &str) {
    if container.image.trim().is_empty() {
        c.fail(format!("{base}.image"), "required");
    }
    match container.ports.len() {
        0 => {}
        1 => {
            let p = &container.ports[0];
            let path = format!("{base}.ports[0]");
            if p.container_port == 0 {
                c.fail(format!("{path}.containerPort"), "must be between 1 and 65535");
            } else if RESERVED_PORTS.contains(&p.container_port) {
                c.fail(
                    format!("{path}.containerPort"),
                    format!("{} is reserved by the queue proxy ({RESERVED_PORTS:?})", p.container_port),
                );
            }
            if let Some(name) = &p.name
                && name != "http1"
                && name != "h2c"
            {
                c.fail(format!("{path}.name"), format!("{name:?}: must be http1 or h2c (or unset)"));
            }
            if let Some(proto) = &p.protocol
                && proto != "TCP"
            {
                c.fail(format!("{path}.protocol"), format!("{proto:?}: only TCP is supported"));
            }
        }
        n => c.fail(format!("{base}.ports"), format!("{n} ports given: at most one port may be declared")),
    }
    let mut seen = BTreeSet::new();
    for (i, env) in container.env.iter().enumerate() {
        let path = format!("{base}.env[{i}]");
        if env.name.is_empty() || env.name.contains('=') {
            c.fail(format!("{path}.name"), format!("{:?} is not a valid variable name", env.name));
        } else if RESERVED_ENV.contains(&env.name.as_str()) {
            c.fail(
                format!("{path}.name"),
                format!("{:?} is reserved: the platform sets {RESERVED_ENV:?}", env.name),
            );
        } else if !seen.insert(env.name.as_str()) {
            c.fail(format!("{path}.name"), format!("{:?} is set twice", env.name));
        }
        if env.value.is_some() && env.value_from.is_some() {
            c.fail(path, "set value or valueFrom, not both");
        }
    }
    if let Some(r) = &container.resources {
        for (kind, map) in [("limits", &r.limits), ("requests", &r.requests)] {
            for (name, v) in map {
                let path = format!("{base}.resources.{kind}.{name}");
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    other => {
                        c.fail(path, format!("{other} is not a quantity"));
                        continue;
                    }
                };
                if let Err(e) = quantity(&text) {
                    c.fail(path, e);
                }
            }
        }
    }
    for (field, probe) in
        [("readinessProbe", &container.readiness_probe), ("livenessProbe", &container.liveness_probe)]
    {
        if let Some(p) = probe {
            check_probe(c, p, container, &format!("{base}.{field}"));
        }
    }
}

fn check_probe(c: &mut Check, p: &Probe, container: &Container, base: &str) {
    if p.exec.is_some() {
        c.fail(
            format!("{base}.exec"),
            "exec probes are not supported by ikukantai; use httpGet or tcpSocket",
        );
    }
    let handlers =
        [p.http_get.is_some(), p.tcp_socket.is_some(), p.exec.is_some()].iter().filter(|h| **h).count();
    if handlers > 1 {
        c.fail(base, "set exactly one of httpGet, tcpSocket");
    }
    let check_port = |c: &mut Check, port: &Option<Value>, path: String| match port {
        None => {}
        Some(Value::Number(n)) if n.as_u64() == Some(u64::from(container.port())) => {}
        Some(Value::String(s))
            if container.ports.first().and_then(|p| p.name.as_deref()) == Some(s.as_str()) => {}
        Some(other) => {
            c.fail(path, format!("{other} must be the container port ({}) or omitted", container.port()))
        }
    };
    if let Some(h) = &p.http_get {
        check_port(c, &h.port, format!("{base}.httpGet.port"));
        if let Some(path) = &h.path
            && !path.starts_with('/')
        {
            c.fail(format!("{base}.httpGet.path"), format!("{path:?} must start with '/'"));
        }
        if let Some(scheme) = &h.scheme
            && scheme != "HTTP"
        {
            c.fail(format!("{base}.httpGet.scheme"), format!("{scheme:?}: only HTTP is supported"));
        }
    }
    if let Some(t) = &p.tcp_socket {
        check_port(c, &t.port, format!("{base}.tcpSocket.port"));
    }
    for (field, value) in [
        ("timeoutSeconds", p.timeout_seconds),
        ("failureThreshold", p.failure_threshold),
        ("successThreshold", p.success_threshold),
    ] {
        if value == Some(0) {
            c.fail(format!("{base}.{field}"), "must be at least 1");
        }
    }
}

fn check_traffic(c: &mut Check, svc: &Service) {
    let traffic = &svc.spec.traffic;
    if traffic.is_empty() {
        return;
    }
    let mut total = 0u64;
    let mut tags = BTreeSet::new();
    for (i, t) in traffic.iter().enumerate() {
        let path = format!("spec.traffic[{i}]");
        if t.configuration_name.is_some() {
            c.fail(format!("{path}.configurationName"), "not allowed in a Service: use latestRevision: true");
        }
        if t.url.is_some() {
            c.fail(format!("{path}.url"), "set by the system, not by users");
        }
        match (&t.revision_name, t.latest_revision) {
            (Some(_), Some(true)) => {
                c.fail(path.clone(), "set either revisionName or latestRevision: true, not both")
            }
            (None, Some(true)) => {}
            (Some(name), _) => {
                if let Err(e) = dns_label(name) {
                    c.fail(format!("{path}.revisionName"), e);
                }
            }
            (None, _) => c.fail(path.clone(), "set revisionName or latestRevision: true"),
        }
        if let Some(p) = t.percent {
            if p > 100 {
                c.fail(format!("{path}.percent"), format!("{p} out of range: must be between 0 and 100"));
            }
            total += u64::from(p);
        }
        if let Some(tag) = &t.tag {
            if let Err(e) = dns_label(tag) {
                c.fail(format!("{path}.tag"), e);
            } else if !tags.insert(tag.as_str()) {
                c.fail(format!("{path}.tag"), format!("{tag:?} is used twice"));
            }
        }
    }
    if total != 100 {
        c.fail("spec.traffic", format!("traffic percentages sum to {total}, want 100"));
    }
}

#[cfg(test)]
mod tests;
