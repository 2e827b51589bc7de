//! The ikukantai resource model.
//!
//! - [`service`]: Knative `serving.knative.dev/v1` Services as users write them, and their status;
//! - [`revision`]: immutable revisions, `<service>-00001`, `-00002`, …;
//! - [`annotations`]: `autoscaling.knative.dev/*` with Knative's ranges, and `ikukantai.dev/*`;
//! - [`config`]: fleet-wide defaults (`config-autoscaler`, `config-ikukantai` ConfigMaps);
//! - [`topology`]: nodes, capacities and links of a fleet;
//! - [`parse`]: YAML/JSON documents in, typed documents or precise errors out;
//! - [`validate`]: Knative's rules for Services.
//!
//! Every error names the file, the document, the field path and the rule broken.

pub mod annotations;
pub mod config;
pub mod duration;
pub mod error;
pub mod parse;
pub mod podspec;
pub mod revision;
mod schema;
pub mod service;
pub mod status;
pub mod topology;
pub mod validate;

pub use error::{Diagnostic, Diagnostics, FieldError};
