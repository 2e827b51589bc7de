//! Reading manifests and topologies: YAML (multi-document) or JSON, into typed documents, with
//! errors that name the file, the document, the field path and the rule.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::{ConfigMap, FleetConfig};
use crate::error::{Diagnostic, Diagnostics, FieldError, did_you_mean};
use crate::service::Service;
use crate::topology::Topology;
use crate::validate::validate_service;

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

/// Rewrites serde's messages into ours: a suggestion for unknown fields, "required" for missing ones.
fn explain(path: &str, message: &str) -> FieldError {
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((field, expected)) = rest.split_once('`')
    {
        let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        // serde_path_to_error's path already ends with the unknown key.
        let full = if path.ends_with(field) { path.to_owned() } else { format!("{path}.{field}") };
        let full = full.trim_start_matches('.').to_owned();
        return match did_you_mean(field, known.iter().copied()) {
            Some(s) => FieldError::new(full, format!("unknown field (did you mean `{s}`?)")),
            None if known.is_empty() => FieldError::new(full, "unknown field"),
            None => FieldError::new(full, format!("unknown field; expected one of {}", known.join(", "))),
        };
    }
    if let Some(rest) = message.strip_prefix("missing field `")
        && let Some((field, _)) = rest.split_once('`')
    {
        let full = if path.is_empty() || path == "." { field.to_owned() } else { format!("{path}.{field}") };
        return FieldError::new(full, "required field is missing");
    }
    FieldError::new(if path == "." { "" } else { path }, message)
}

fn typed<T: DeserializeOwned>(value: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        explain(&path, &e.inner().to_string())
    })
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Turns one raw document into a typed one (structure only; see [`load`] for the rules).
fn classify(value: Value) -> Result<Document, FieldError> {
    if !value.is_object() {
        return Err(FieldError::new("", "a document must be a mapping (key: value)"));
    }
    let kind = str_field(&value, "kind").map(str::to_owned);
    let api = str_field(&value, "apiVersion").unwrap_or("").to_owned();
    match kind.as_deref() {
        Some("Service") if api.starts_with("serving.knative.dev/") => {
            typed(value).map(|s| Document::Service(Box::new(s)))
        }
        Some("ConfigMap") => typed(value).map(Document::Config),
        Some(other) => Err(FieldError::new(
            "kind",
            format!(
                "{other:?} ({api}) is not something ikukantai reads: expected a Service (serving.knative.dev/v1), a ConfigMap (config-autoscaler or config-ikukantai) or a topology"
            ),
        )),
        None if value.get("nodes").is_some() => typed(value).map(Document::Topology),
        None if value.get("apiVersion").is_some() => {
            Err(FieldError::new("kind", "required field is missing"))
        }
        None => Err(FieldError::new(
            "",
            "cannot tell what this document is: expected apiVersion and kind (a Knative Service or a ConfigMap), or a topology with nodes",
        )),
    }
}

/// Parses one file's text into documents, checking structure only.
pub fn parse_str(file: &str, text: &str) -> Result<Vec<Loaded>, Diagnostics> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    parse_into(file, text, &mut out, &mut problems);
    if problems.is_empty() { Ok(out) } else { Err(Diagnostics(problems)) }
}

/// Adds the well-formed documents of a file to `out` and the problems of the others to `problems`.
fn parse_into(file: &str, text: &str, out: &mut Vec<Loaded>, problems: &mut Vec<Diagnostic>) {
    let raw = match raw_documents(file, text) {
        Ok(raw) => raw,
        Err(d) => {
            problems.push(d);
            return;
        }
    };
    for (i, value) in raw.into_iter().enumerate() {
        let subject = subject_of_raw(&value);
        match classify(value) {
            Ok(document) => out.push(Loaded { file: file.to_owned(), index: i + 1, document }),
            Err(e) => problems.push(diagnostic(file, Some(i + 1), subject, e)),
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
/// Either everything is valid, or every problem found is returned.
pub fn load(
    sources: &[(String, String)],
    base: &FleetConfig,
) -> Result<(Vec<Loaded>, FleetConfig), Diagnostics> {
    let mut loaded = Vec::new();
    let mut problems = Vec::new();
    for (file, text) in sources {
        parse_into(file, text, &mut loaded, &mut problems);
    }
    let mut fleet = base.clone();
    for l in &loaded {
        if let Document::Config(cm) = &l.document
            && let Err(errors) = fleet.apply(cm)
        {
            for e in errors {
                problems.push(diagnostic(&l.file, Some(l.index), Some(l.document.subject()), e));
            }
        }
    }
    for l in &loaded {
        let errors = match &l.document {
            Document::Service(s) => validate_service(s, &fleet).err().unwrap_or_default(),
            Document::Topology(t) => t.validate().err().unwrap_or_default(),
            Document::Config(_) => Vec::new(),
        };
        for e in errors {
            problems.push(diagnostic(&l.file, Some(l.index), Some(l.document.subject()), e));
        }
    }
    if problems.is_empty() {
        Ok((loaded, fleet))
    } else {
        problems.sort_by(|a, b| (&a.file, a.document).cmp(&(&b.file, b.document)));
        Err(Diagnostics(problems))
    }
}

#[cfg(test)]
pub(crate) mod tests;
