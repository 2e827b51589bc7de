//! Every structural problem of a document at once: serde stops at the first problem, so on each
//! one we record it, cut the offending value out of the raw document and deserialize again.
//!
//! - an unknown field: the key is removed (nothing is lost: the model has no such field);
//! - an invalid value: the key (or array element) is removed;
//! - a missing field: reported unless it is missing only because we removed it, or because it
//!   was misspelt (the unknown-field message already says "did you mean"); either way the object
//!   that lacks it is removed in turn, up to the whole document.
//!
//! Removing array elements shifts the later ones: [`Repair`] keeps the removed indices, so that
//! every path, of later structural problems and of semantic ones, names the index as written.
//!
//! Once what is left deserializes, semantic validation can run on it, but a removed value reads
//! as unset (or default), so some of its findings would be artefacts: [`Repair::judge`] drops the
//! errors on a removed value, inside one, on an object or array that contains one (`spec.traffic`
//! sums its elements' percents), and those the caller declares dependent on one.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_path_to_error::Segment;

use super::{explain, missing_field, unknown_field};
use crate::error::{FieldError, did_you_mean};

/// Most problems reported for one document: a guard against pathological input.
const MAX_PROBLEMS: usize = 100;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seg {
    /// A field or map key.
    Key(String),
    /// An array index.
    Index(usize),
    /// Any index (dependency patterns only).
    AnyIndex,
}

type Path = Vec<Seg>;

/// serde_path_to_error's rendering (`a.b[0].c`, `.` for the root), which [`explain`] expects.
fn render(path: &[Seg]) -> String {
    if path.is_empty() {
        return ".".into();
    }
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
            Seg::AnyIndex => out.push_str("[*]"),
        }
    }
    out
}

fn from_serde(path: &serde_path_to_error::Path) -> Option<Path> {
    path.iter()
        .map(|s| match s {
            Segment::Map { key } => Some(Seg::Key(key.clone())),
            Segment::Seq { index } => Some(Seg::Index(*index)),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
        .collect()
}

/// A step of a path as written in a [`FieldError`], kept verbatim to write it back.
#[derive(Debug)]
enum Token<'a> {
    /// `name` (after a `.` or at the start).
    Key(&'a str),
    /// `["key"]`, as written.
    Quoted { raw: &'a str, key: String },
    /// `[3]`.
    Index(usize),
    /// `[*]`.
    Any,
}

/// Splits a field path as validation writes it: `a.b[0].c`, `annotations["x.y/z"]`, and `[*]`
/// in patterns.
fn tokens(path: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            rest = r;
            continue;
        }
        if let Some(r) = rest.strip_prefix("[\"") {
            let mut key = String::new();
            let mut chars = r.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => key.extend(chars.next().map(|(_, c)| c)),
                    '"' if r[i + 1..].starts_with(']') => {
                        end = Some(i + 2);
                        break;
                    }
                    c => key.push(c),
                }
            }
            if let Some(end) = end {
                out.push(Token::Quoted { raw: &rest[..end + 2], key });
                rest = &r[end..];
                continue;
            }
        }
        if let Some(r) = rest.strip_prefix('[')
            && let Some((inside, after)) = r.split_once(']')
        {
            if inside == "*" {
                out.push(Token::Any);
                rest = after;
                continue;
            }
            if let Ok(i) = inside.parse() {
                out.push(Token::Index(i));
                rest = after;
                continue;
            }
        }
        let end =
            rest.char_indices().skip(1).find(|(_, c)| matches!(c, '.' | '[')).map_or(rest.len(), |(i, _)| i);
        out.push(Token::Key(&rest[..end]));
        rest = &rest[end..];
    }
    out
}

fn segs(tokens: &[Token<'_>]) -> Path {
    tokens
        .iter()
        .map(|t| match t {
            Token::Key(k) => Seg::Key((*k).to_owned()),
            Token::Quoted { key, .. } => Seg::Key(key.clone()),
            Token::Index(i) => Seg::Index(*i),
            Token::Any => Seg::AnyIndex,
        })
        .collect()
}

/// Whether `pattern` is `path` or one of its ancestors (`[*]` matching any index).
fn covers(pattern: &[Seg], path: &[Seg]) -> bool {
    pattern.len() <= path.len()
        && pattern
            .iter()
            .zip(path)
            .all(|(p, s)| p == s || (*p == Seg::AnyIndex && matches!(s, Seg::Index(_))))
}

fn get<'a>(value: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, seg| match (seg, v) {
        (Seg::Key(k), Value::Object(m)) => m.get(k),
        (Seg::Index(i), Value::Array(a)) => a.get(*i),
        _ => None,
    })
}

fn get_mut<'a>(value: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |v, seg| match (seg, v) {
        (Seg::Key(k), Value::Object(m)) => m.get_mut(k),
        (Seg::Index(i), Value::Array(a)) => a.get_mut(*i),
        _ => None,
    })
}

/// What pruning did to a document, in the document's own (original) coordinates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Repair {
    /// Removed array elements: the array's path → the removed indices.
    removed: BTreeMap<Path, BTreeSet<usize>>,
    /// Values removed because they were invalid, or because a field they need was.
    tainted: Vec<Path>,
    /// Fields an unknown key was probably meant to be (its "did you mean"), not in the document.
    misspelt: Vec<Path>,
}

impl Repair {
    /// The original path of a path in the pruned document.
    fn original(&self, path: &[Seg]) -> Path {
        let mut out = Path::with_capacity(path.len());
        for seg in path {
            let seg = match seg {
                Seg::Index(i) => {
                    let mut index = *i;
                    // The i-th element that is left is the i-th original index not removed.
                    for r in self.removed.get(&out).into_iter().flatten() {
                        if *r <= index {
                            index += 1;
                        }
                    }
                    Seg::Index(index)
                }
                other => other.clone(),
            };
            out.push(seg);
        }
        out
    }

    /// A semantic error found on the pruned document, with its path as written in the original
    /// document, or `None` when it may be an artefact of the pruning. `dependencies` lists pairs
    /// of paths (`[*]` for any index) whose checks read each other: when something under the
    /// first was removed, errors under the second are dropped too.
    pub(super) fn judge(&self, error: FieldError, dependencies: &[(&str, &str)]) -> Option<FieldError> {
        let written = tokens(&error.path);
        let path = self.original(&segs(&written));
        let artefact = self.tainted.iter().any(|t| covers(t, &path) || covers(&path, t))
            || self.misspelt.iter().any(|m| covers(m, &path))
            || dependencies.iter().any(|(cause, effect)| {
                let cause = segs(&tokens(cause));
                covers(&segs(&tokens(effect)), &path) && self.tainted.iter().any(|t| covers(&cause, t))
            });
        if artefact {
            return None;
        }
        let mut indices = path.iter().filter_map(|s| if let Seg::Index(i) = s { Some(*i) } else { None });
        let mut text = String::new();
        for t in &written {
            match t {
                Token::Key(k) => {
                    if !text.is_empty() {
                        text.push('.');
                    }
                    text.push_str(k);
                }
                Token::Quoted { raw, .. } => text.push_str(raw),
                Token::Index(_) => text.push_str(&format!("[{}]", indices.next().unwrap_or_default())),
                Token::Any => text.push_str("[*]"),
            }
        }
        Some(FieldError::new(text, error.message))
    }
}

/// A document deserialized as far as it goes.
#[derive(Debug)]
pub(super) struct Outcome<T> {
    /// The document once its problems were cut out; `None` when nothing sound was left.
    pub(super) typed: Option<T>,
    /// Its structural problems, in the order serde met them.
    pub(super) errors: Vec<FieldError>,
    /// What was cut out.
    pub(super) repair: Repair,
}

/// Deserializes `value`, cutting out each problem until what is left deserializes (or nothing
/// sound is left).
pub(super) fn deserialize<T: DeserializeOwned>(mut value: Value) -> Outcome<T> {
    let mut out = Outcome { typed: None, errors: Vec::new(), repair: Repair::default() };
    loop {
        let error = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(typed) => {
                out.typed = Some(typed);
                return out;
            }
            Err(e) => e,
        };
        if out.errors.len() >= MAX_PROBLEMS {
            let message = format!("too many problems: only the first {MAX_PROBLEMS} are listed");
            out.errors.push(FieldError::new("", message));
            return out;
        }
        let message = error.inner().to_string();
        let Some(path) = from_serde(error.path()) else {
            // Not a path into the JSON value (no enums here): say it as serde does, and stop.
            out.errors.push(explain(&error.path().to_string(), &message));
            return out;
        };
        // Each round removes a value, or stops: the loop ends.
        if !out.prune(&mut value, &path, &message) {
            return out;
        }
    }
}

impl<T> Outcome<T> {
    /// Records the problem serde found at `path` (in `value`'s current coordinates) and cuts it
    /// out; false when nothing is left to try.
    fn prune(&mut self, value: &mut Value, path: &[Seg], message: &str) -> bool {
        if let Some((field, known)) = unknown_field(message) {
            // serde_path_to_error's path ends with the unknown key.
            let key = match path.last() {
                Some(Seg::Key(k)) if k == field => path.to_vec(),
                _ => [path, &[Seg::Key(field.to_owned())]].concat(),
            };
            let object = &key[..key.len() - 1];
            self.errors.push(explain(&render(&self.repair.original(&key)), message));
            if let Some(meant) = did_you_mean(field, known)
                && get(value, object).and_then(|o| o.get(meant)).is_none()
            {
                let mut meant_path = self.repair.original(object);
                meant_path.push(Seg::Key(meant.to_owned()));
                self.repair.misspelt.push(meant_path);
            }
            return self.cut(value, &key);
        }
        let original = self.repair.original(path);
        if let Some(field) = missing_field(message) {
            let mut field_path = original.clone();
            field_path.push(Seg::Key(field.to_owned()));
            // Missing because we cut it out, or because it is misspelt (and reported so)?
            let ours =
                self.repair.tainted.contains(&field_path) || self.repair.misspelt.contains(&field_path);
            if !ours {
                self.errors.push(explain(&render(&original), message));
            }
            // The object cannot be read without the field: it goes too.
        } else {
            self.errors.push(explain(&render(&original), message));
        }
        self.repair.tainted.push(original);
        self.cut(value, path)
    }

    /// Removes the value at `path` (current coordinates), remembering removed array indices.
    fn cut(&mut self, value: &mut Value, path: &[Seg]) -> bool {
        let Some((last, parent)) = path.split_last() else { return false };
        match (last, get_mut(value, parent)) {
            (Seg::Key(k), Some(Value::Object(m))) => m.remove(k).is_some(),
            (Seg::Index(i), Some(Value::Array(a))) if *i < a.len() => {
                let array = self.repair.original(parent);
                let index = match self.repair.original(path).pop() {
                    Some(Seg::Index(index)) => index,
                    _ => return false,
                };
                a.remove(*i);
                self.repair.removed.entry(array).or_default().insert(index);
                true
            }
            _ => false,
        }
    }
}
