//! Sidecar injection, as `istioctl kube-inject` and Istio's webhook do it:
//! every pod template that should get a sidecar is rewritten to run stock
//! Envoy bootstrapped by `xds-server` (see [`template`]); everything else
//! passes through unchanged.
//!
//! Which pods: the rules the model uses for config files
//! (`translator::model::build::has_sidecar`): the namespace label
//! `istio-injection=enabled` (or `istio.io/rev`), overridden by the pod's
//! `sidecar.istio.io/inject` label or annotation. Namespaces are known from
//! the Namespace objects among the documents (`inject -f`) or given by the
//! caller (the webhook). Pods on the host network are never injected, and a
//! pod that already has an `istio-proxy` container is left as it is, so
//! injecting twice changes nothing.
//!
//! Which layout: `sidecar.istio.io/interceptionMode` (REDIRECT by default:
//! iptables capture; NONE: no capture, the application calls the sidecar
//! explicitly; TPROXY is refused), with Istio's
//! `traffic.sidecar.istio.io/{includeInboundPorts,excludeInboundPorts,
//! excludeOutboundIPRanges}` passed to `xds-server iptables`.

pub mod template;
pub mod webhook;

use crate::capture::rules::{InboundPorts, Ipv4Cidr, parse_ports};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use template::{Capture, Settings};
use translator::Interception;
use translator::model::Labels;

const INJECT: &str = "sidecar.istio.io/inject";
const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
const STATUS: &str = "sidecar.istio.io/status";
const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
const TLS_MODE: &str = "security.istio.io/tlsMode";
const INCLUDE_INBOUND: &str = "traffic.sidecar.istio.io/includeInboundPorts";
const EXCLUDE_INBOUND: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
const EXCLUDE_OUTBOUND: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";

/// What happened to one object with a pod template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// `Kind namespace/name`.
    pub object: String,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Injected(Interception),
    /// Left unchanged, and why.
    Left(String),
}

/// The result of injecting a set of documents.
#[derive(Debug, Default)]
pub struct Report {
    pub decisions: Vec<Decision>,
    /// Things that will not work as the user may expect (a probe the
    /// sidecar captures), one sentence each.
    pub warnings: Vec<String>,
}

/// The labels of the Namespace objects among `docs`.
pub fn namespace_labels(docs: &[Value]) -> BTreeMap<String, Labels> {
    let mut out = BTreeMap::new();
    let mut visit = |v: &Value| {
        if v.get("kind").and_then(Value::as_str) == Some("Namespace")
            && let Some(name) = v.pointer("/metadata/name").and_then(Value::as_str)
        {
            out.insert(
                name.to_string(),
                string_map(v.pointer("/metadata/labels")).unwrap_or_default(),
            );
        }
    };
    for d in docs {
        visit(d);
        for item in d
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            visit(item);
        }
    }
    out
}

/// A map of strings (labels, annotations); `None` when it holds anything
/// else.
fn string_map(v: Option<&Value>) -> Option<Labels> {
    match v {
        None | Some(Value::Null) => Some(Labels::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
            .collect(),
        Some(_) => None,
    }
}

/// Injects every pod template of `docs` that should get a sidecar, in
/// place. Errors name the object, the field and the reason; on any error
/// the caller should print nothing of `docs`.
pub fn inject_documents(
    docs: &mut [Value],
    namespaces: &BTreeMap<String, Labels>,
    settings: &Settings,
) -> Result<Report, Vec<String>> {
    let mut report = Report::default();
    let mut errors = Vec::new();
    for doc in docs.iter_mut() {
        if doc.get("kind").and_then(Value::as_str) == Some("List") {
            if let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) {
                for item in items {
                    inject_object(item, namespaces, settings, &mut report, &mut errors);
                }
            }
        } else {
            inject_object(doc, namespaces, settings, &mut report, &mut errors);
        }
    }
    if errors.is_empty() {
        Ok(report)
    } else {
        Err(errors)
    }
}

/// The JSON pointer of the pod template of a kind, relative to the object
/// (`""`: the object is the pod).
fn template_pointer(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Pod" => "",
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => "/spec/template",
        "CronJob" => "/spec/jobTemplate/spec/template",
        _ => return None,
    })
}

fn inject_object(
    obj: &mut Value,
    namespaces: &BTreeMap<String, Labels>,
    settings: &Settings,
    report: &mut Report,
    errors: &mut Vec<String>,
) {
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let Some(pointer) = template_pointer(&kind) else {
        return;
    };
    let namespace = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let object = format!("{kind} {namespace}/{name}");
    let field = |f: &str| {
        if pointer.is_empty() {
            f.to_string()
        } else {
            format!("{}.{f}", pointer.trim_start_matches('/').replace('/', "."))
        }
    };
    let Some(Value::Object(template)) = obj.pointer_mut(pointer) else {
        errors.push(format!("{object}: {}: missing or not an object", field("")));
        return;
    };
    let empty = Labels::new();
    let ns_labels = namespaces.get(&namespace).unwrap_or(&empty);
    match inject_template(template, ns_labels, settings) {
        Ok((action, warnings)) => {
            report
                .warnings
                .extend(warnings.into_iter().map(|w| format!("{object}: {w}")));
            report.decisions.push(Decision { object, action });
        }
        Err((f, reason)) => errors.push(format!("{object}: {}: {reason}", field(&f))),
    }
}

/// The annotation `key`, checked by `check`.
fn annotation<'a>(
    annotations: &'a Labels,
    key: &str,
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<Option<&'a str>, (String, String)> {
    match annotations.get(key) {
        None => Ok(None),
        Some(v) => check(v)
            .map(|()| Some(v.as_str()))
            .map_err(|e| (format!("metadata.annotations.{key}"), e)),
    }
}

fn capture_of(annotations: &Labels) -> Result<Capture, (String, String)> {
    let inbound = annotation(annotations, INCLUDE_INBOUND, |v| {
        v.parse::<InboundPorts>().map(|_| ())
    })?;
    let exclude_in = annotation(annotations, EXCLUDE_INBOUND, |v| parse_ports(v).map(|_| ()))?;
    let exclude_out = annotation(annotations, EXCLUDE_OUTBOUND, |v| {
        v.split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .try_for_each(|c| c.parse::<Ipv4Cidr>().map(|_| ()))
    })?;
    Ok(Capture {
        inbound_ports: inbound.unwrap_or("*").trim().to_string(),
        exclude_inbound_ports: exclude_in.unwrap_or_default().trim().to_string(),
        exclude_outbound_cidrs: exclude_out.unwrap_or_default().trim().to_string(),
    })
}

type Problem = (String, String);

/// Injects one pod template (`metadata` and `spec`): what was done, and
/// warnings; or the field and reason it cannot be.
fn inject_template(
    template: &mut Map<String, Value>,
    ns_labels: &Labels,
    settings: &Settings,
) -> Result<(Action, Vec<String>), Problem> {
    let labels =
        string_map(template.get("metadata").and_then(|m| m.get("labels"))).ok_or_else(|| {
            (
                "metadata.labels".to_string(),
                "must map strings to strings".into(),
            )
        })?;
    let annotations = string_map(template.get("metadata").and_then(|m| m.get("annotations")))
        .ok_or_else(|| {
            (
                "metadata.annotations".to_string(),
                "must map strings to strings".into(),
            )
        })?;
    let spec = template.get("spec").and_then(Value::as_object);
    let has = |list: &str, name: &str| {
        spec.and_then(|s| s.get(list))
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.get("name").and_then(Value::as_str) == Some(name))
            })
    };
    if has("containers", template::PROXY_CONTAINER) {
        return Ok((
            Action::Left("already injected (it has an istio-proxy container)".into()),
            Vec::new(),
        ));
    }
    if spec
        .and_then(|s| s.get("hostNetwork"))
        .and_then(Value::as_bool)
        == Some(true)
    {
        return Ok((
            Action::Left("pods on the host network are never injected, as in Istio".into()),
            Vec::new(),
        ));
    }
    if !translator::model::build::has_sidecar(ns_labels, &labels, &annotations) {
        let why = match labels.get(INJECT).or_else(|| annotations.get(INJECT)) {
            Some(v) if v == "false" => format!("the pod says {INJECT}: \"false\""),
            _ => "its namespace is not labelled istio-injection=enabled (among the documents \
                  given) and the pod does not ask for a sidecar"
                .to_string(),
        };
        return Ok((Action::Left(why), Vec::new()));
    }
    let mode = match annotations.get(INTERCEPTION_MODE).map(String::as_str) {
        None => Interception::Redirect,
        Some(v) => Interception::from_metadata(Some(v))
            .map_err(|e| (format!("metadata.annotations.{INTERCEPTION_MODE}"), e))?,
    };
    let capture = capture_of(&annotations)?;
    for (list, name) in [
        ("initContainers", template::INIT_CONTAINER),
        ("initContainers", template::BOOTSTRAP_CONTAINER),
    ] {
        if has(list, name) {
            return Err((
                format!("spec.{list}"),
                format!("already has a container named {name}, which injection adds"),
            ));
        }
    }
    let existing_volumes: Vec<&str> = spec
        .and_then(|s| s.get("volumes"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .collect();
    if let Some(v) = template::VOLUMES
        .iter()
        .find(|v| existing_volumes.contains(v))
    {
        return Err((
            "spec.volumes".into(),
            format!("already has a volume named {v}, which injection adds"),
        ));
    }
    let warnings = match mode {
        Interception::Redirect => captured_probes(spec, &capture),
        Interception::None => Vec::new(),
    };

    // Every list and object injection writes to, checked before any write:
    // a template is changed whole or not at all.
    let first_app = spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array)
        .and_then(|cs| cs.first())
        .and_then(|c| c.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    check_shapes(template)?;

    // metadata: the label that tells the control plane (and auto mTLS) the
    // pod has a sidecar, unless the user set one; the injection status.
    let metadata = object_at(template, "metadata", "metadata")?;
    object_at(metadata, "labels", "metadata.labels")?
        .entry(TLS_MODE)
        .or_insert_with(|| json!("istio"));
    let annotation_map = object_at(metadata, "annotations", "metadata.annotations")?;
    annotation_map.insert(STATUS.into(), json!(template::status(mode)));
    if let Some(app) = first_app {
        annotation_map
            .entry(DEFAULT_CONTAINER)
            .or_insert_with(|| json!(app));
    }

    let spec = object_at(template, "spec", "spec")?;
    let mut init = Vec::new();
    if mode == Interception::Redirect {
        init.push(template::init_container(settings, &capture));
    }
    init.push(template::bootstrap_container(settings, mode));
    let init_list = array_at(spec, "initContainers", "spec.initContainers")?;
    init.append(init_list);
    *init_list = init;
    array_at(spec, "containers", "spec.containers")?.push(template::proxy_container(settings));
    array_at(spec, "volumes", "spec.volumes")?.extend(template::volumes());
    Ok((Action::Injected(mode), warnings))
}

/// Checks that what injection writes to is absent, null or of the right
/// type, without writing anything.
fn check_shapes(template: &Map<String, Value>) -> Result<(), Problem> {
    let ok = |v: Option<&Value>, object: bool| match v {
        None | Some(Value::Null) => true,
        Some(v) => v.is_object() == object && v.is_array() != object,
    };
    let metadata = template.get("metadata");
    let spec = template.get("spec");
    for (field, value, object) in [
        ("metadata", metadata, true),
        (
            "metadata.labels",
            metadata.and_then(|m| m.get("labels")),
            true,
        ),
        (
            "metadata.annotations",
            metadata.and_then(|m| m.get("annotations")),
            true,
        ),
        ("spec", spec, true),
        (
            "spec.initContainers",
            spec.and_then(|s| s.get("initContainers")),
            false,
        ),
        (
            "spec.containers",
            spec.and_then(|s| s.get("containers")),
            false,
        ),
        ("spec.volumes", spec.and_then(|s| s.get("volumes")), false),
    ] {
        if !ok(value, object) {
            let what = if object { "an object" } else { "a list" };
            return Err((field.to_string(), format!("must be {what}")));
        }
    }
    Ok(())
}

/// The object under `key`, created if absent. A value of another type is
/// a problem at `field`.
fn object_at<'a>(
    m: &'a mut Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<&'a mut Map<String, Value>, Problem> {
    let v = m.entry(key).or_insert_with(|| json!({}));
    if v.is_null() {
        *v = json!({});
    }
    v.as_object_mut()
        .ok_or_else(|| (field.to_string(), "must be an object".to_string()))
}

/// The array under `key`, created if absent. A value of another type is a
/// problem at `field`.
fn array_at<'a>(
    m: &'a mut Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<&'a mut Vec<Value>, Problem> {
    let v = m.entry(key).or_insert_with(|| json!([]));
    if v.is_null() {
        *v = json!([]);
    }
    v.as_array_mut()
        .ok_or_else(|| (field.to_string(), "must be a list".to_string()))
}

/// Probes of the application that the sidecar captures: the kubelet
/// probes in plaintext from outside the mesh, so on a STRICT port it is
/// reset. Istio rewrites such probes to its agent, which a stock Envoy
/// does not have; we say so instead.
fn captured_probes(spec: Option<&Map<String, Value>>, capture: &Capture) -> Vec<String> {
    let inbound: InboundPorts = capture.inbound_ports.parse().unwrap_or(InboundPorts::All);
    let excluded = parse_ports(&capture.exclude_inbound_ports).unwrap_or_default();
    let captured = |p: u16| {
        !template::never_captured(p)
            && !excluded.contains(&p)
            && match &inbound {
                InboundPorts::All => true,
                InboundPorts::None => false,
                InboundPorts::Only(list) => list.contains(&p),
            }
    };
    let mut out = Vec::new();
    let containers = spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for c in containers {
        let cname = c.get("name").and_then(Value::as_str).unwrap_or_default();
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            let Some(p) = c.get(probe) else { continue };
            let port = ["httpGet", "tcpSocket", "grpc"]
                .iter()
                .find_map(|k| p.get(*k).and_then(|h| h.get("port")));
            let number = match port {
                Some(Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                Some(Value::String(s)) => s.parse().ok().or_else(|| {
                    c.get("ports")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .find(|cp| cp.get("name").and_then(Value::as_str) == Some(s))
                        .and_then(|cp| cp.get("containerPort"))
                        .and_then(Value::as_u64)
                        .and_then(|n| u16::try_from(n).ok())
                }),
                _ => None,
            };
            if let Some(n) = number.filter(|n| captured(*n)) {
                out.push(format!(
                    "container {cname}'s {probe} on port {n} goes through the sidecar: under \
                     STRICT the kubelet's plaintext probe is reset; exclude the port \
                     ({EXCLUDE_INBOUND}) or use an exec probe"
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
