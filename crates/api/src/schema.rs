//! JSON Schema pieces for fields kept as opaque JSON, shaped the way Kubernetes' structural
//! schemas require (every node typed, or explicitly open).

use schemars::{Schema, SchemaGenerator, json_schema};

/// Any JSON value, kept as written (Kubernetes-only fields the platform passes through).
pub(crate) fn any(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// A port given as a number or a name.
pub(crate) fn int_or_string(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "x-kubernetes-int-or-string": true })
}

/// Resource quantities by resource name (`cpu: 500m`, `memory: 128Mi`, `cpu: 1`).
pub(crate) fn quantities(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": { "x-kubernetes-int-or-string": true }
    })
}
