//! Errors that point at the file, document, field and rule.

use std::fmt;

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.template.spec.containers[0].image`.
    pub path: String,
    /// The rule broken, in words.
    pub message: String,
}

impl FieldError {
    /// A new error.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A problem located in a file: which file, which document (1-based), what the document is, and
/// the field error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostic {
    /// The file (or `-` for standard input).
    pub file: String,
    /// The document's position in a multi-document file, from 1.
    pub document: Option<usize>,
    /// What the document is, e.g. `Service default/hello`.
    pub subject: Option<String>,
    /// The field and rule.
    pub error: FieldError,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(n) = self.document {
            write!(f, ": document {n}")?;
        }
        if let Some(s) = &self.subject {
            write!(f, " ({s})")?;
        }
        write!(f, ": {}", self.error)
    }
}

/// Every problem found in some input; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// The closest of `candidates` to `word`, if close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&word.to_ascii_lowercase(), &c.to_ascii_lowercase()), c))
        .filter(|(distance, c)| *distance <= (c.len() / 3).max(2))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let known = ["image", "imagePullPolicy", "command", "args"];
        assert_eq!(did_you_mean("imagee", known), Some("image"));
        assert_eq!(did_you_mean("comand", known), Some("command"));
        assert_eq!(did_you_mean("IMAGE", known), Some("image"));
        assert_eq!(did_you_mean("volumes", known), None);
    }

    #[test]
    fn diagnostics_name_file_document_subject_path_and_rule() {
        let d = Diagnostic {
            file: "svc.yaml".into(),
            document: Some(2),
            subject: Some("Service default/hello".into()),
            error: FieldError::new("spec.template.spec.containers[0].image", "required"),
        };
        assert_eq!(
            d.to_string(),
            "svc.yaml: document 2 (Service default/hello): spec.template.spec.containers[0].image: required"
        );
    }
}
