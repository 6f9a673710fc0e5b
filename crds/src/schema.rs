//! CRD schema helpers: building multi-version CRDs from kube's derived ones,
//! checking that a schema is structural, and finding fields a schema does not
//! declare (what `kubectl apply --validate=strict` would reject).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use schemars::{Schema, SchemaGenerator, json_schema};

/// Schema for fields kept as raw JSON: any object, stored as written.
pub(crate) fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Turns kube's single-version CRD into one serving every name in `versions` with
/// the same schema, `storage` being the stored one. Istio serves several versions
/// of one proto; with identical schemas no conversion webhook is needed.
pub(crate) fn with_versions(
    mut crd: CustomResourceDefinition,
    versions: &[&str],
    storage: &str,
) -> CustomResourceDefinition {
    let Some(mut template) = crd.spec.versions.pop() else {
        return crd;
    };
    if let Some(props) = template
        .schema
        .as_mut()
        .and_then(|s| s.open_api_v3_schema.as_mut())
    {
        relax_root(props);
    }
    crd.spec.versions = versions
        .iter()
        .map(|name| {
            let mut v = template.clone();
            v.name = (*name).to_string();
            v.served = true;
            v.storage = *name == storage;
            v
        })
        .collect();
    crd
}

/// Istio's CRDs do not require `spec` (an empty policy is valid), and kube adds
/// a `title` naming the Rust type; drop both so the manifest matches Istio's shape.
fn relax_root(props: &mut JSONSchemaProps) {
    props.title = None;
    if let Some(required) = props.required.as_mut() {
        required.retain(|r| r != "spec");
        if required.is_empty() {
            props.required = None;
        }
    }
    strip_defaults(props);
}

/// Removes `default`s that `#[serde(default)]` puts in the schema: the API server
/// would write them into stored objects (`host: ''`), which Istio's CRDs never do.
fn strip_defaults(props: &mut JSONSchemaProps) {
    props.default = None;
    for child in props.properties.iter_mut().flat_map(|p| p.values_mut()) {
        strip_defaults(child);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(child)) = props.additional_properties.as_mut() {
        strip_defaults(child);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(child)) = props.items.as_mut() {
        strip_defaults(child);
    }
}

/// Reasons `schema` is not structural in the Kubernetes sense (every node typed,
/// unless it preserves unknown fields or is int-or-string; no `anyOf`/`oneOf`/
/// `allOf`/`not`, which our types never need; objects say what they contain).
pub fn structural_problems(schema: &JSONSchemaProps) -> Vec<String> {
    let mut out = Vec::new();
    check_structural(schema, "", &mut out);
    out
}

fn check_structural(s: &JSONSchemaProps, path: &str, out: &mut Vec<String>) {
    let at = if path.is_empty() { "<root>" } else { path };
    let preserve = s.x_kubernetes_preserve_unknown_fields == Some(true);
    let int_or_string = s.x_kubernetes_int_or_string == Some(true);
    if s.any_of.is_some() || s.one_of.is_some() || s.all_of.is_some() || s.not.is_some() {
        out.push(format!("{at}: uses anyOf/oneOf/allOf/not"));
    }
    if s.ref_path.is_some() || s.definitions.is_some() {
        out.push(format!("{at}: uses $ref or definitions"));
    }
    if let Some(JSONSchemaPropsOrArray::Schemas(_)) = s.items {
        out.push(format!("{at}: items is a list of schemas"));
    }
    match s.type_.as_deref() {
        None if !(preserve || int_or_string) => {
            out.push(format!("{at}: no type (untyped schema)"));
        }
        Some("object") => {
            let has_additional = matches!(
                s.additional_properties,
                Some(JSONSchemaPropsOrBool::Schema(_))
            );
            if s.properties.is_some() && has_additional {
                out.push(format!("{at}: both properties and additionalProperties"));
            }
            if s.properties.is_none() && !has_additional && !preserve {
                out.push(format!("{at}: object without properties, additionalProperties or preserve-unknown-fields"));
            }
        }
        Some("array") if s.items.is_none() => out.push(format!("{at}: array without items")),
        _ => {}
    }
    for (name, child) in s.properties.iter().flatten() {
        check_structural(child, &format!("{path}.{name}"), out);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(child)) = &s.additional_properties {
        check_structural(child, &format!("{path}[*]"), out);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(child)) = &s.items {
        check_structural(child, &format!("{path}[]"), out);
    }
}

/// Paths (like `spec.mtsl` or `spec.subsets[0].lables`) of fields in `value` that
/// `schema` does not declare. The API server rejects these under strict field
/// validation; a file source must too, or a typo silently weakens a policy.
pub(crate) fn unknown_fields(
    value: &serde_json::Value,
    schema: &JSONSchemaProps,
    path: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    walk_unknown(value, schema, path, &mut out);
    out
}

fn walk_unknown(value: &serde_json::Value, s: &JSONSchemaProps, path: &str, out: &mut Vec<String>) {
    if s.x_kubernetes_preserve_unknown_fields == Some(true) {
        return;
    }
    match value {
        serde_json::Value::Object(map) => {
            if let Some(props) = &s.properties {
                for (key, child) in map {
                    let child_path = join(path, key);
                    match props.get(key) {
                        Some(child_schema) => walk_unknown(child, child_schema, &child_path, out),
                        None => out.push(child_path),
                    }
                }
            } else if let Some(JSONSchemaPropsOrBool::Schema(child_schema)) =
                &s.additional_properties
            {
                for (key, child) in map {
                    walk_unknown(child, child_schema, &format!("{path}[{key}]"), out);
                }
            }
        }
        serde_json::Value::Array(items) => {
            if let Some(JSONSchemaPropsOrArray::Schema(child_schema)) = &s.items {
                for (i, child) in items.iter().enumerate() {
                    walk_unknown(child, child_schema, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}
