//! Reading manifests and topologies: YAML (multi-document) or JSON, into typed documents, with
//! errors that name the file, the document, the field path and the rule.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::{ConfigMap, FleetConfig};
use crate::error::{Diagnostic, Diagnostics, FieldError, did_you_mean};
use crate::service::Service;
use crate::topology::Topology;
use crate::validate::validate_service;

mod prune;

use prune::Repair;

/// One document of an input file.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    /// A Knative Service.
    Service(Box<Service>),
    /// `config-autoscaler` or `config-ikukantai`.
    Config(ConfigMap),
    /// A fleet topology.
    Topology(Topology),
}

impl Document {
    /// What the document is, for messages: `Service default/hello`.
    pub fn subject(&self) -> String {
        match self {
            Self::Service(s) => format!("Service {}/{}", s.metadata.namespace(), s.metadata.name()),
            Self::Config(c) => format!("ConfigMap {}", c.metadata.name()),
            Self::Topology(t) => format!("Topology of {} nodes", t.nodes.len()),
        }
    }
}

/// A document and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The file it was read from.
    pub file: String,
    /// Its position in the file, from 1.
    pub index: usize,
    /// The document.
    pub document: Document,
}

fn diagnostic(file: &str, index: Option<usize>, subject: Option<String>, error: FieldError) -> Diagnostic {
    Diagnostic { file: file.to_owned(), document: index, subject, error }
}

/// Splits a file into its documents (as JSON values). Empty YAML documents are skipped.
fn raw_documents(file: &str, text: &str) -> Result<Vec<Value>, Diagnostic> {
    let trimmed = text.trim_start();
    let json = file.ends_with(".json") || trimmed.starts_with('{') || trimmed.starts_with('[');
    if json {
        return match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(items)) => Ok(items),
            Ok(v) => Ok(vec![v]),
            Err(e) => Err(diagnostic(file, None, None, FieldError::new("", format!("invalid JSON: {e}")))),
        };
    }
    match serde_saphyr::from_multiple::<Value>(text) {
        Ok(docs) => Ok(docs.into_iter().filter(|d| !d.is_null()).collect()),
        Err(e) => Err(diagnostic(file, None, None, FieldError::new("", format!("invalid YAML: {e}")))),
    }
}

/// The field of serde's "unknown field `x`, expected one of `a`, `b`", and the fields it lists.
fn unknown_field(message: &str) -> Option<(&str, Vec<&str>)> {
    let (field, expected) = message.strip_prefix("unknown field `")?.split_once('`')?;
    Some((field, expected.split('`').skip(1).step_by(2).collect()))
}

/// The field of serde's "missing field `x`".
fn missing_field(message: &str) -> Option<&str> {
    Some(message.strip_prefix("missing field `")?.split_once('`')?.0)
}

/// Rewrites serde's messages into ours: a suggestion for unknown fields, "required" for missing ones.
fn explain(path: &str, message: &str) -> FieldError {
    if let Some((field, known)) = unknown_field(message) {
        // serde_path_to_error's path already ends with the unknown key.
        let full = if path.ends_with(field) { path.to_owned() } else { format!("{path}.{field}") };
        let full = full.trim_start_matches('.').to_owned();
        return match did_you_mean(field, known.iter().copied()) {
            Some(s) => FieldError::new(full, format!("unknown field (did you mean `{s}`?)")),
            None if known.is_empty() => FieldError::new(full, "unknown field"),
            None => FieldError::new(full, format!("unknown field; expected one of {}", known.join(", "))),
        };
    }
    if let Some(field) = missing_field(message) {
        let full = if path.is_empty() || path == "." { field.to_owned() } else { format!("{path}.{field}") };
        return FieldError::new(full, "required field is missing");
    }
    FieldError::new(if path == "." { "" } else { path }, message)
}

/// A document read as far as it goes: the typed document unless nothing sound was left, its
/// structural problems, and what was cut out to get past them.
struct Classified {
    document: Option<Document>,
    errors: Vec<FieldError>,
    repair: Repair,
}

impl Classified {
    fn failed(path: &str, message: impl Into<String>) -> Self {
        Self { document: None, errors: vec![FieldError::new(path, message)], repair: Repair::default() }
    }
}

fn typed<T: DeserializeOwned>(value: Value, wrap: impl FnOnce(T) -> Document) -> Classified {
    let out = prune::deserialize(value);
    Classified { document: out.typed.map(wrap), errors: out.errors, repair: out.repair }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Turns one raw document into a typed one (structure only; see [`load`] for the rules).
fn classify(value: Value) -> Classified {
    if !value.is_object() {
        return Classified::failed("", "a document must be a mapping (key: value)");
    }
    let kind = str_field(&value, "kind").map(str::to_owned);
    let api = str_field(&value, "apiVersion").unwrap_or("").to_owned();
    match kind.as_deref() {
        Some("Service") if api.starts_with("serving.knative.dev/") => {
            typed(value, |s| Document::Service(Box::new(s)))
        }
        Some("ConfigMap") => typed(value, Document::Config),
        Some(other) => Classified::failed(
            "kind",
            format!(
                "{other:?} ({api}) is not something ikukantai reads: expected a Service (serving.knative.dev/v1), a ConfigMap (config-autoscaler or config-ikukantai) or a topology"
            ),
        ),
        None if value.get("nodes").is_some() => typed(value, Document::Topology),
        None if value.get("apiVersion").is_some() => Classified::failed("kind", "required field is missing"),
        None => Classified::failed(
            "",
            "cannot tell what this document is: expected apiVersion and kind (a Knative Service or a ConfigMap), or a topology with nodes",
        ),
    }
}

/// A document that deserialized, and what to call it in messages. `repair` is what was cut out
/// of it first, if anything (see [`prune`]): its structural problems are then already reported,
/// and of its semantic problems only those the cuts cannot explain are.
struct Read {
    loaded: Loaded,
    subject: Option<String>,
    repair: Option<Repair>,
}

impl Read {
    /// Reports a semantic error of this document, unless it may be an artefact of the cuts.
    fn report(&self, error: FieldError, problems: &mut Vec<Diagnostic>) {
        let error = match &self.repair {
            None => Some(error),
            Some(repair) => repair.judge(error, dependencies(&self.loaded.document)),
        };
        if let Some(e) = error {
            problems.push(diagnostic(&self.loaded.file, Some(self.loaded.index), self.subject.clone(), e));
        }
    }
}

/// Checks that read another field than the one they name (in `validate_service`,
/// `Topology::validate` and `FleetConfig::apply`): when something under the first path was cut
/// out, errors under the second may be artefacts.
fn dependencies(document: &Document) -> &'static [(&'static str, &'static str)] {
    match document {
        Document::Service(_) => &[
            // The revision's name starts with the service's.
            ("metadata.name", "spec.template.metadata.name"),
            // Probes go to the container's port, by number or name.
            ("spec.template.spec.containers[*].ports", "spec.template.spec.containers[*].readinessProbe"),
            ("spec.template.spec.containers[*].ports", "spec.template.spec.containers[*].livenessProbe"),
            ("spec.template.spec.timeoutSeconds", "spec.template.spec.responseStartTimeoutSeconds"),
            (
                "spec.template.metadata.annotations[\"ikukantai.dev/queue\"]",
                "spec.template.metadata.annotations[\"ikukantai.dev/queue-priority-rules\"]",
            ),
        ],
        // Links name nodes.
        Document::Topology(_) => &[("nodes[*].name", "links[*].between")],
        Document::Config(_) => &[
            ("data.allow-zero-initial-scale", "data.initial-scale"),
            ("data.max-scale", "data.min-scale"),
            ("data.max-scale-limit", "data.max-scale"),
        ],
    }
}

/// Parses one file's text into documents, checking structure only.
pub fn parse_str(file: &str, text: &str) -> Result<Vec<Loaded>, Diagnostics> {
    let mut read = Vec::new();
    let mut problems = Vec::new();
    parse_into(file, text, &mut read, &mut problems);
    if problems.is_empty() {
        Ok(read.into_iter().map(|r| r.loaded).collect())
    } else {
        Err(Diagnostics(problems))
    }
}

/// Adds the documents of a file that deserialize (maybe once their problems are cut out) to
/// `out`, and every structural problem of every document to `problems`.
fn parse_into(file: &str, text: &str, out: &mut Vec<Read>, problems: &mut Vec<Diagnostic>) {
    let raw = match raw_documents(file, text) {
        Ok(raw) => raw,
        Err(d) => {
            problems.push(d);
            return;
        }
    };
    for (i, value) in raw.into_iter().enumerate() {
        let subject = subject_of_raw(&value);
        let Classified { document, errors, repair } = classify(value);
        let clean = errors.is_empty();
        for e in errors {
            problems.push(diagnostic(file, Some(i + 1), subject.clone(), e));
        }
        if let Some(document) = document {
            // A document with problems keeps one name in all its messages.
            let subject = if clean { Some(document.subject()) } else { subject };
            let loaded = Loaded { file: file.to_owned(), index: i + 1, document };
            out.push(Read { loaded, subject, repair: (!clean).then_some(repair) });
        }
    }
}

fn subject_of_raw(v: &Value) -> Option<String> {
    let kind = str_field(v, "kind")?;
    let meta = v.get("metadata");
    let name = meta.and_then(|m| str_field(m, "name")).unwrap_or("?");
    match kind {
        "Service" => Some(format!(
            "Service {}/{name}",
            meta.and_then(|m| str_field(m, "namespace")).unwrap_or("default")
        )),
        other => Some(format!("{other} {name}")),
    }
}

/// Reads every source (label, text), applies the ConfigMaps among them to a fleet configuration
/// (in order, starting from `base`), and checks every Service and topology against the result.
/// Either everything is valid, or every problem found is returned: all the structural problems
/// of each document, and its semantic problems (those the structural ones cannot have caused).
pub fn load(
    sources: &[(String, String)],
    base: &FleetConfig,
) -> Result<(Vec<Loaded>, FleetConfig), Diagnostics> {
    let mut read = Vec::new();
    let mut problems = Vec::new();
    for (file, text) in sources {
        parse_into(file, text, &mut read, &mut problems);
    }
    let mut fleet = base.clone();
    for r in &read {
        if let Document::Config(cm) = &r.loaded.document {
            // A ConfigMap with structural problems is checked but not applied: it lacks settings.
            let result = if r.repair.is_none() { fleet.apply(cm) } else { fleet.clone().apply(cm) };
            for e in result.err().unwrap_or_default() {
                r.report(e, &mut problems);
            }
        }
    }
    for r in &read {
        let errors = match &r.loaded.document {
            Document::Service(s) => validate_service(s, &fleet).err().unwrap_or_default(),
            Document::Topology(t) => t.validate().err().unwrap_or_default(),
            Document::Config(_) => Vec::new(),
        };
        for e in errors {
            r.report(e, &mut problems);
        }
    }
    if problems.is_empty() {
        Ok((read.into_iter().map(|r| r.loaded).collect(), fleet))
    } else {
        problems.sort_by(|a, b| (&a.file, a.document).cmp(&(&b.file, b.document)));
        Err(Diagnostics(problems))
    }
}

#[cfg(test)]
pub(crate) mod tests;
