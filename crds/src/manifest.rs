//! Parsing the YAML a user would `kubectl apply`: multi-document streams, `List`
//! objects, the Kubernetes kinds the mesh model reads and the Istio kinds of this
//! crate. The file source feeds its output to the mesh model; every problem comes
//! back as an [`ObjectError`] naming file, document, object, field and reason, and
//! the bad object is left out while the rest still load.

use std::sync::LazyLock;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::destination_rule::{self, DestinationRule};
use crate::peer_authentication::{self, PeerAuthentication};
use crate::sidecar::{self, Sidecar};
use crate::{schema, validate, yaml};

/// One object read from a file, of a kind this project understands (or a note that
/// a kind was skipped).
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// A namespace; its labels (e.g. `istio-injection`) matter to the mesh.
    Namespace(Namespace),
    /// A service account: the workload identity in SPIFFE IDs.
    ServiceAccount(ServiceAccount),
    /// A service: ports, target ports and selector.
    Service(Box<Service>),
    /// A deployment (apps/v1): its pod template describes workloads. Boxed, as are
    /// pods: each is over 2 KB and would bloat every variant.
    Deployment(Box<Deployment>),
    /// A bare pod.
    Pod(Box<Pod>),
    /// A PeerAuthentication (security.istio.io/v1 or v1beta1), already validated.
    PeerAuthentication(PeerAuthentication),
    /// A DestinationRule (networking.istio.io/v1, v1beta1 or v1alpha3), already validated.
    DestinationRule(Box<DestinationRule>),
    /// A Sidecar (networking.istio.io/v1, v1beta1 or v1alpha3), already validated.
    Sidecar(Box<Sidecar>),
    /// A kind this project does not read; the caller warns once per kind.
    Skipped(Skipped),
}

/// A document of a kind this project does not read (e.g. a ConfigMap or an
/// AuthorizationPolicy). Not an error: files often mix in unrelated objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// File the document came from.
    pub file: String,
    /// 0-based document index in the file.
    pub index: usize,
    /// The document's `apiVersion`.
    pub api_version: String,
    /// The document's `kind`.
    pub kind: String,
}

/// An object with where it came from, so later diagnostics can point back to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The object.
    pub object: Object,
    /// File name as given to [`parse_documents`].
    pub file: String,
    /// 0-based index of the YAML document in the file.
    pub index: usize,
    /// 0-based index in the `items` of a `kind: List` document, if it came from one.
    pub item: Option<usize>,
    /// The `apiVersion` as written (the types serialize as the newest version).
    pub api_version: String,
}

/// A problem with one object (or one document), for a user to read and fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectError {
    /// File name as given to [`parse_documents`].
    pub file: String,
    /// 0-based index of the YAML document in the file.
    pub index: usize,
    /// 0-based index in the `items` of a `kind: List` document.
    pub item: Option<usize>,
    /// The object's kind, when known.
    pub kind: Option<String>,
    /// The object's namespace (after defaulting), when known.
    pub namespace: Option<String>,
    /// The object's name, when known.
    pub name: Option<String>,
    /// Path of the offending field, e.g. `spec.mtls.mode`; `None` for the document as a whole.
    pub field: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl std::error::Error for ObjectError {}

/// `file (document N[, item M]): Kind ns/name: field: reason`, leaving out what is unknown.
impl std::fmt::Display for ObjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (document {}", self.file, self.index)?;
        if let Some(item) = self.item {
            write!(f, ", item {item}")?;
        }
        f.write_str("): ")?;
        if let Some(kind) = &self.kind {
            f.write_str(kind)?;
            match (&self.namespace, &self.name) {
                (Some(ns), Some(name)) => write!(f, " {ns}/{name}")?,
                (None, Some(name)) => write!(f, " {name}")?,
                _ => {}
            }
            f.write_str(": ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.reason)
    }
}

impl Object {
    /// The object's kind, e.g. `PeerAuthentication`.
    pub fn kind(&self) -> &str {
        match self {
            Object::Namespace(_) => "Namespace",
            Object::ServiceAccount(_) => "ServiceAccount",
            Object::Service(_) => "Service",
            Object::Deployment(_) => "Deployment",
            Object::Pod(_) => "Pod",
            Object::PeerAuthentication(_) => "PeerAuthentication",
            Object::DestinationRule(_) => "DestinationRule",
            Object::Sidecar(_) => "Sidecar",
            Object::Skipped(s) => &s.kind,
        }
    }

    /// The object's metadata, `None` for a skipped document.
    pub fn metadata(&self) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta> {
        match self {
            Object::Namespace(o) => Some(&o.metadata),
            Object::ServiceAccount(o) => Some(&o.metadata),
            Object::Service(o) => Some(&o.metadata),
            Object::Deployment(o) => Some(&o.metadata),
            Object::Pod(o) => Some(&o.metadata),
            Object::PeerAuthentication(o) => Some(&o.metadata),
            Object::DestinationRule(o) => Some(&o.metadata),
            Object::Sidecar(o) => Some(&o.metadata),
            Object::Skipped(_) => None,
        }
    }
}

/// The kinds this module reads, and what each accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Namespace,
    ServiceAccount,
    Service,
    Deployment,
    Pod,
    PeerAuthentication,
    DestinationRule,
    Sidecar,
}

impl Kind {
    fn from_name(kind: &str) -> Option<Kind> {
        Some(match kind {
            "Namespace" => Kind::Namespace,
            "ServiceAccount" => Kind::ServiceAccount,
            "Service" => Kind::Service,
            "Deployment" => Kind::Deployment,
            "Pod" => Kind::Pod,
            "PeerAuthentication" => Kind::PeerAuthentication,
            "DestinationRule" => Kind::DestinationRule,
            "Sidecar" => Kind::Sidecar,
            _ => return None,
        })
    }

    /// Accepted `apiVersion`s, as (group, versions); group "" is the core group.
    fn api_versions(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Kind::Namespace | Kind::ServiceAccount | Kind::Service | Kind::Pod => ("", &["v1"]),
            Kind::Deployment => ("apps", &["v1"]),
            Kind::PeerAuthentication => (peer_authentication::GROUP, peer_authentication::VERSIONS),
            Kind::DestinationRule => (destination_rule::GROUP, destination_rule::VERSIONS),
            Kind::Sidecar => (sidecar::GROUP, sidecar::VERSIONS),
        }
    }

    fn accepts(self, api_version: &str) -> bool {
        let (group, versions) = self.api_versions();
        let (have_group, have_version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        have_group == group && versions.contains(&have_version)
    }

    fn expected(self) -> String {
        let (group, versions) = self.api_versions();
        let all: Vec<String> = versions
            .iter()
            .map(|v| {
                if group.is_empty() {
                    v.to_string()
                } else {
                    format!("{group}/{v}")
                }
            })
            .collect();
        all.join(", ")
    }

    fn namespaced(self) -> bool {
        self != Kind::Namespace
    }

    /// The `spec` schema of the CRD kinds, for the unknown-field check.
    fn spec_schema(self) -> Option<&'static JSONSchemaProps> {
        static PA: LazyLock<Option<JSONSchemaProps>> =
            LazyLock::new(|| spec_schema_of(peer_authentication::crd()));
        static DR: LazyLock<Option<JSONSchemaProps>> =
            LazyLock::new(|| spec_schema_of(destination_rule::crd()));
        static SC: LazyLock<Option<JSONSchemaProps>> =
            LazyLock::new(|| spec_schema_of(sidecar::crd()));
        match self {
            Kind::PeerAuthentication => PA.as_ref(),
            Kind::DestinationRule => DR.as_ref(),
            Kind::Sidecar => SC.as_ref(),
            _ => None,
        }
    }
}

fn spec_schema_of(
    crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Option<JSONSchemaProps> {
    let mut root = crd
        .spec
        .versions
        .into_iter()
        .next()?
        .schema?
        .open_api_v3_schema?;
    root.properties.as_mut()?.remove("spec")
}

/// Top-level fields a custom resource may carry.
const CR_TOP_LEVEL: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];

/// Parses a multi-document YAML text as `kubectl apply -f` would read it.
///
/// Returns the objects that parsed and validated, and one error per problem found
/// (an object with errors is left out). Empty documents are skipped; `kind: List`
/// is expanded; unknown kinds come back as [`Object::Skipped`]; namespaced objects
/// without a namespace get `default`. A YAML syntax error is reported for its
/// document and ends the file (the parser cannot resynchronise), but the documents
/// before it are kept. Never panics on input, and bounds what input can cost
/// (see [`crate::yaml`]): a document nested more than [`crate::yaml::MAX_DEPTH`]
/// levels or with a duplicate map key is an error naming the field and is left
/// out, the documents after it still read; a file whose aliases expand it to
/// more than [`crate::yaml::MAX_VALUES`] values is an error that ends the file.
pub fn parse_documents(text: &str, file: &str) -> (Vec<Parsed>, Vec<ObjectError>) {
    let (documents, errors) = read_documents(text, file);
    let mut out = Output {
        file,
        parsed: Vec::new(),
        errors,
    };
    for (index, json) in documents {
        out.document(index, json);
    }
    out.errors.sort_by_key(|e| (e.index, e.item));
    (out.parsed, out.errors)
}

/// The documents of a multi-document YAML text as JSON values, with their
/// 0-based index, read with the same bounds and conversions as
/// [`parse_documents`] (which interprets them): for tools that rewrite
/// objects of any kind and must keep every field (`xds-server inject`).
/// Empty documents are left out; a document that cannot be read is an
/// error, and a syntax error ends the file.
pub fn read_documents(text: &str, file: &str) -> (Vec<(usize, Value)>, Vec<ObjectError>) {
    let mut out = Output {
        file,
        parsed: Vec::new(),
        errors: Vec::new(),
    };
    let mut documents = Vec::new();
    let reader = yaml::Reader::new(yaml::MAX_VALUES);
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let mut yaml = match reader.document(document) {
            Ok(yaml) => yaml,
            Err(problem) if problem.fatal => {
                let reason = format!(
                    "{}; later documents in this file were not read",
                    problem.reason
                );
                out.document_error_at(index, problem.field, reason);
                break;
            }
            Err(problem) => {
                out.document_error_at(index, problem.field, problem.reason);
                continue;
            }
        };
        if let Err(e) = yaml.apply_merge() {
            out.document_error(index, format!("invalid YAML merge key: {e}"));
            continue;
        }
        match yaml_to_json(yaml, "") {
            Ok(Value::Null) => {}
            Ok(json) => documents.push((index, json)),
            Err(reason) => out.document_error(index, reason),
        }
    }
    (documents, out.errors)
}

/// Converts YAML to JSON as Kubernetes does: non-string map keys (`80:` under
/// `portLevelMtls`) become strings; tags and non-finite floats are rejected.
fn yaml_to_json(yaml: serde_yaml::Value, path: &str) -> Result<Value, String> {
    use serde_yaml::Value as Y;
    Ok(match yaml {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                let num = serde_json::Number::from_f64(f)
                    .ok_or_else(|| format!("{}: {n} is not a number JSON can hold", at(path)))?;
                Value::Number(num)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| yaml_to_json(v, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(mapping) => {
            let mut map = Map::new();
            for (key, value) in mapping {
                let key = match key {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    other => {
                        return Err(format!(
                            "{}: map key {other:?} is not a string, number or boolean",
                            at(path)
                        ));
                    }
                };
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let value = yaml_to_json(value, &child_path)?;
                if map.insert(key.clone(), value).is_some() {
                    return Err(format!("{child_path}: duplicate key {key:?}"));
                }
            }
            Value::Object(map)
        }
        Y::Tagged(tagged) => {
            return Err(format!(
                "{}: YAML tag {} is not supported",
                at(path),
                tagged.tag
            ));
        }
    })
}

fn at(path: &str) -> &str {
    if path.is_empty() { "<document>" } else { path }
}

/// Collects results for one file.
struct Output<'a> {
    file: &'a str,
    parsed: Vec<Parsed>,
    errors: Vec<ObjectError>,
}

/// What is known about the object being parsed, for error messages.
struct Ctx {
    index: usize,
    item: Option<usize>,
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

impl Output<'_> {
    fn document_error(&mut self, index: usize, reason: String) {
        self.document_error_at(index, None, reason);
    }

    fn document_error_at(&mut self, index: usize, field: Option<String>, reason: String) {
        let ctx = Ctx {
            index,
            item: None,
            kind: None,
            namespace: None,
            name: None,
        };
        self.error(&ctx, field, reason);
    }

    fn error(&mut self, ctx: &Ctx, field: Option<String>, reason: String) {
        self.errors.push(ObjectError {
            file: self.file.to_string(),
            index: ctx.index,
            item: ctx.item,
            kind: ctx.kind.clone(),
            namespace: ctx.namespace.clone(),
            name: ctx.name.clone(),
            field,
            reason,
        });
    }

    /// One YAML document: a single object or a `List`.
    fn document(&mut self, index: usize, json: Value) {
        let mut ctx = Ctx {
            index,
            item: None,
            kind: None,
            namespace: None,
            name: None,
        };
        let Value::Object(mut obj) = json else {
            self.error(
                &ctx,
                None,
                "document is not a mapping (expected an object with apiVersion and kind)".into(),
            );
            return;
        };
        if obj.get("kind").and_then(Value::as_str) != Some("List") {
            self.object(&mut ctx, obj);
            return;
        }
        ctx.kind = Some("List".into());
        let api_version = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if api_version != "v1" {
            self.error(
                &ctx,
                Some("apiVersion".into()),
                format!("unsupported apiVersion {api_version:?} for List (expected v1)"),
            );
            return;
        }
        let items = match obj.remove("items") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items,
            Some(_) => {
                self.error(&ctx, Some("items".into()), "must be a list".into());
                return;
            }
        };
        for (i, item) in items.into_iter().enumerate() {
            let mut ctx = Ctx {
                index,
                item: Some(i),
                kind: None,
                namespace: None,
                name: None,
            };
            match item {
                Value::Object(o) if o.get("kind").and_then(Value::as_str) == Some("List") => {
                    ctx.kind = Some("List".into());
                    self.error(&ctx, None, "a List inside a List is not supported".into());
                }
                Value::Object(o) => self.object(&mut ctx, o),
                _ => self.error(&ctx, None, "item is not an object".into()),
            }
        }
    }

    /// One object: dispatch on apiVersion and kind, default the namespace, check
    /// fields, deserialize, validate. Reports every problem it finds.
    fn object(&mut self, ctx: &mut Ctx, mut obj: Map<String, Value>) {
        let kind_name = match obj.get("kind") {
            Some(Value::String(k)) if !k.is_empty() => k.clone(),
            _ => {
                self.error(ctx, Some("kind".into()), "kind is required".into());
                return;
            }
        };
        ctx.kind = Some(kind_name.clone());
        let api_version = match obj.get("apiVersion") {
            Some(Value::String(v)) if !v.is_empty() => v.clone(),
            _ => {
                self.error(
                    ctx,
                    Some("apiVersion".into()),
                    "apiVersion is required".into(),
                );
                return;
            }
        };
        let Some(kind) = Kind::from_name(&kind_name) else {
            self.skipped(ctx, api_version, kind_name);
            return;
        };

        let metadata = obj
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if metadata.is_null() {
            *metadata = Value::Object(Map::new());
        }
        let Some(metadata) = metadata.as_object_mut() else {
            self.error(ctx, Some("metadata".into()), "must be an object".into());
            return;
        };
        if kind.namespaced() {
            let has_ns = metadata
                .get("namespace")
                .and_then(Value::as_str)
                .is_some_and(|ns| !ns.is_empty());
            if !has_ns {
                metadata.insert("namespace".into(), Value::String("default".into()));
            }
            ctx.namespace = metadata
                .get("namespace")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        ctx.name = metadata
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_string);

        let errors_before = self.errors.len();
        if !kind.accepts(&api_version) {
            self.error(
                ctx,
                Some("apiVersion".into()),
                format!(
                    "unsupported apiVersion {api_version:?} for {kind_name} (expected one of {})",
                    kind.expected()
                ),
            );
            return;
        }
        if ctx.name.is_none() {
            self.error(ctx, Some("metadata.name".into()), "name is required".into());
        }
        if let Some(spec_schema) = kind.spec_schema() {
            let spec = obj
                .entry("spec")
                .or_insert_with(|| Value::Object(Map::new()));
            if spec.is_null() {
                *spec = Value::Object(Map::new());
            }
            let mut unknown: Vec<String> = obj
                .keys()
                .filter(|k| !CR_TOP_LEVEL.contains(&k.as_str()))
                .cloned()
                .collect();
            if let Some(spec) = obj.get("spec") {
                unknown.extend(schema::unknown_fields(spec, spec_schema, "spec"));
            }
            for field in unknown {
                let leaf = field.rsplit('.').next().unwrap_or(&field).to_string();
                self.error(ctx, Some(field), format!("unknown field {leaf:?}"));
            }
        }

        let json = Value::Object(obj);
        let object = match kind {
            Kind::Namespace => self.typed(ctx, json).map(Object::Namespace),
            Kind::ServiceAccount => self.typed(ctx, json).map(Object::ServiceAccount),
            Kind::Service => self.typed(ctx, json).map(|s: Service| {
                self.field_errors(ctx, validate::service(&s));
                Object::Service(Box::new(s))
            }),
            Kind::Deployment => self.typed(ctx, json).map(|d: Deployment| {
                self.field_errors(ctx, validate::deployment(&d));
                Object::Deployment(Box::new(d))
            }),
            Kind::Pod => self.typed(ctx, json).map(|p| Object::Pod(Box::new(p))),
            Kind::PeerAuthentication => self.typed(ctx, json).map(|pa: PeerAuthentication| {
                self.field_errors(ctx, validate::peer_authentication(&pa));
                Object::PeerAuthentication(pa)
            }),
            Kind::DestinationRule => self.typed(ctx, json).map(|dr: DestinationRule| {
                self.field_errors(ctx, validate::destination_rule(&dr));
                Object::DestinationRule(Box::new(dr))
            }),
            Kind::Sidecar => self.typed(ctx, json).map(|sc: Sidecar| {
                self.field_errors(ctx, sidecar::validate(&sc));
                Object::Sidecar(Box::new(sc))
            }),
        };
        if let Some(object) = object
            && self.errors.len() == errors_before
        {
            self.parsed.push(Parsed {
                object,
                file: self.file.to_string(),
                index: ctx.index,
                item: ctx.item,
                api_version,
            });
        }
    }

    fn skipped(&mut self, ctx: &Ctx, api_version: String, kind: String) {
        self.parsed.push(Parsed {
            object: Object::Skipped(Skipped {
                file: self.file.to_string(),
                index: ctx.index,
                api_version: api_version.clone(),
                kind,
            }),
            file: self.file.to_string(),
            index: ctx.index,
            item: ctx.item,
            api_version,
        });
    }

    /// Deserializes with the failing field's path in the error.
    fn typed<T: DeserializeOwned>(&mut self, ctx: &Ctx, json: Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(json) {
            Ok(v) => Some(v),
            Err(e) => {
                let path = e.path().to_string();
                let field = (path != ".").then_some(path);
                self.error(ctx, field, e.into_inner().to_string());
                None
            }
        }
    }

    fn field_errors(&mut self, ctx: &Ctx, errors: Vec<validate::FieldError>) {
        for e in errors {
            self.error(ctx, Some(e.field), e.reason);
        }
    }
}

/// Parses one object that is already JSON, e.g. as the Kubernetes API returns it,
/// with the same checks as a document of [`parse_documents`] (kind and apiVersion,
/// namespace defaulting, unknown fields, typed deserialization, validation).
/// `file` names where it came from in errors; the object is document 0.
pub fn parse_value(json: Value, file: &str) -> (Vec<Parsed>, Vec<ObjectError>) {
    let mut out = Output {
        file,
        parsed: Vec::new(),
        errors: Vec::new(),
    };
    if !json.is_null() {
        out.document(0, json);
    }
    (out.parsed, out.errors)
}
