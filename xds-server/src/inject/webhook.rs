//! Injection as a mutating admission webhook: the API server sends an
//! `AdmissionReview` (admission.k8s.io/v1) for each Pod being created in a
//! namespace the `MutatingWebhookConfiguration` selects (deploy/); the
//! answer allows it, with a JSON patch adding the sidecar when the pod
//! should get one (the same rewriting as `xds-server inject`, see
//! [`super`]), or refuses it naming the field when it cannot be injected
//! (a `TPROXY` interception mode, a malformed annotation), so a broken pod
//! is not started without its sidecar.
//!
//! The patch replaces the few fields injection writes (`add` of a member
//! that exists replaces it, RFC 6902): the pod's labels and annotations,
//! its init containers, containers and volumes.

use super::template::Settings;
use super::{Action, inject_documents};
use base64::Engine;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use translator::model::Labels;

/// The path the webhook is served at, on the certificate endpoint's HTTPS
/// port (the API server calls `https://xds-server.istio-system.svc:15012/inject`).
pub const INJECT_PATH: &str = "/inject";

/// What injection may change in a Pod, as JSON pointers.
const PATCHED: [&str; 5] = [
    "/metadata/labels",
    "/metadata/annotations",
    "/spec/initContainers",
    "/spec/containers",
    "/spec/volumes",
];

/// The `AdmissionReview` answering `request` (the body the API server
/// posted), given the labels of the cluster's namespaces. An error (the
/// body is not an `AdmissionReview` v1 with a request uid) is for a 400.
pub fn review(
    request: &[u8],
    namespaces: &BTreeMap<String, Labels>,
    settings: &Settings,
) -> Result<Value, String> {
    let review: Value =
        serde_json::from_slice(request).map_err(|e| format!("the body is not JSON: {e}"))?;
    if review.get("apiVersion").and_then(Value::as_str) != Some("admission.k8s.io/v1")
        || review.get("kind").and_then(Value::as_str) != Some("AdmissionReview")
    {
        return Err("the body is not an AdmissionReview of admission.k8s.io/v1".into());
    }
    let request = review
        .get("request")
        .ok_or("the AdmissionReview has no request")?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .ok_or("the AdmissionReview request has no uid")?;
    let response = |body: Value| {
        let mut r = json!({"uid": uid, "allowed": true});
        if let (Value::Object(r), Value::Object(extra)) = (&mut r, body) {
            r.extend(extra);
        }
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": r})
    };
    let kind = request.pointer("/kind/kind").and_then(Value::as_str);
    let operation = request.get("operation").and_then(Value::as_str);
    let Some(pod) = request
        .get("object")
        .filter(|_| kind == Some("Pod") && operation == Some("CREATE"))
    else {
        // Not ours to change: the configuration selects Pod CREATE only.
        return Ok(response(json!({})));
    };
    // The pod of a Deployment has no name yet and may have no namespace:
    // the request says where it is created.
    let namespace = request
        .get("namespace")
        .and_then(Value::as_str)
        .or_else(|| pod.pointer("/metadata/namespace").and_then(Value::as_str))
        .unwrap_or("default")
        .to_string();
    let mut doc = pod.clone();
    if let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("namespace".into(), json!(namespace));
    }
    if let Value::Object(m) = &mut doc {
        m.insert("kind".into(), json!("Pod"));
    }
    let mut docs = [doc];
    let report = match inject_documents(&mut docs, namespaces, settings) {
        Ok(report) => report,
        Err(errors) => {
            tracing::warn!(%namespace, errors = ?errors, "refusing a pod that cannot be injected");
            return Ok(response(json!({
                "allowed": false,
                "status": {"code": 400, "reason": "BadRequest", "message": errors.join("; ")}
            })));
        }
    };
    let [injected] = docs;
    let injected_now = report
        .decisions
        .iter()
        .any(|d| matches!(d.action, Action::Injected(_)));
    if !injected_now {
        return Ok(response(json!({})));
    }
    let patch: Vec<Value> = PATCHED
        .iter()
        .filter_map(|p| {
            let after = injected.pointer(p)?;
            (pod.pointer(p) != Some(after)).then(|| json!({"op": "add", "path": p, "value": after}))
        })
        .collect();
    let patch = serde_json::to_vec(&patch).map_err(|e| e.to_string())?;
    let mut extra = json!({
        "patchType": "JSONPatch",
        "patch": base64::engine::general_purpose::STANDARD.encode(patch),
    });
    if !report.warnings.is_empty()
        && let Value::Object(m) = &mut extra
    {
        // kubectl prints these to whoever created the pod.
        m.insert("warnings".into(), json!(report.warnings));
    }
    let pod_name = pod
        .pointer("/metadata/name")
        .or_else(|| pod.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    tracing::info!(%namespace, pod = pod_name, "injected a sidecar");
    Ok(response(extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pod: Value, namespace: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": namespace,
                "operation": "CREATE",
                "object": pod,
            }
        }))
        .expect("JSON")
    }

    fn sleep_pod(annotations: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": "sleep-7d9c-", "labels": {"app": "sleep"}, "annotations": annotations},
            "spec": {"serviceAccountName": "sleep", "containers": [{"name": "sleep", "image": "curlimages/curl"}]}
        })
    }

    fn namespaces() -> BTreeMap<String, Labels> {
        BTreeMap::from([
            (
                "foo".to_string(),
                Labels::from([("istio-injection".to_string(), "enabled".to_string())]),
            ),
            ("legacy".to_string(), Labels::new()),
        ])
    }

    /// Applies the response's JSON patch (only `add`, as we send it).
    fn apply(pod: &Value, response: &Value) -> Value {
        let patch = response
            .pointer("/response/patch")
            .and_then(Value::as_str)
            .expect("a patch");
        let ops: Vec<Value> = serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(patch)
                .expect("base64"),
        )
        .expect("JSON patch");
        let mut out = pod.clone();
        for op in ops {
            assert_eq!(op["op"], "add");
            let path = op["path"].as_str().expect("path");
            let (parent, key) = path.rsplit_once('/').expect("a member");
            out.pointer_mut(parent)
                .and_then(Value::as_object_mut)
                .expect("the parent exists")
                .insert(key.to_string(), op["value"].clone());
        }
        out
    }

    #[test]
    fn a_pod_in_an_injection_namespace_gets_the_sidecar_as_a_json_patch() {
        let pod = sleep_pod(json!({}));
        let answer = review(
            &request(pod.clone(), "foo"),
            &namespaces(),
            &Settings::default(),
        )
        .expect("answered");
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(
            answer["response"]["uid"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(answer["response"]["patchType"], "JSONPatch");
        let patched = apply(&pod, &answer);
        // The same pod `xds-server inject` makes of it.
        let mut docs = [{
            let mut p = pod.clone();
            p["metadata"]["namespace"] = json!("foo");
            p
        }];
        inject_documents(&mut docs, &namespaces(), &Settings::default()).expect("injects");
        let mut want = docs[0].clone();
        want["metadata"]
            .as_object_mut()
            .expect("metadata")
            .remove("namespace");
        assert_eq!(patched, want);
        let containers: Vec<&str> = patched["spec"]["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(containers, ["sleep", "istio-proxy"]);
    }

    #[test]
    fn pods_that_should_not_get_a_sidecar_are_allowed_unchanged() {
        for (pod, ns) in [
            (sleep_pod(json!({})), "legacy"),
            (
                sleep_pod(json!({"sidecar.istio.io/inject": "false"})),
                "foo",
            ),
        ] {
            let answer =
                review(&request(pod, ns), &namespaces(), &Settings::default()).expect("answered");
            assert_eq!(answer["response"]["allowed"], true, "{answer}");
            assert!(answer["response"].get("patch").is_none(), "{answer}");
        }
    }

    #[test]
    fn a_pod_that_cannot_be_injected_is_refused_naming_the_field() {
        let pod = sleep_pod(json!({"sidecar.istio.io/interceptionMode": "TPROXY"}));
        let answer =
            review(&request(pod, "foo"), &namespaces(), &Settings::default()).expect("answered");
        assert_eq!(answer["response"]["allowed"], false);
        let message = answer["response"]["status"]["message"]
            .as_str()
            .expect("message");
        assert!(
            message.contains("metadata.annotations.sidecar.istio.io/interceptionMode"),
            "{message}"
        );
    }

    #[test]
    fn what_is_not_an_admission_review_is_an_error() {
        let s = Settings::default();
        assert!(review(b"nope", &namespaces(), &s).is_err());
        assert!(review(br#"{"apiVersion":"v1","kind":"Pod"}"#, &namespaces(), &s).is_err());
        assert!(
            review(
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#,
                &namespaces(),
                &s
            )
            .is_err()
        );
    }

    #[test]
    fn a_probe_the_sidecar_captures_is_a_warning_for_whoever_creates_the_pod() {
        let mut pod = sleep_pod(json!({}));
        pod["spec"]["containers"][0]["readinessProbe"] = json!({"tcpSocket": {"port": 8080}});
        let answer =
            review(&request(pod, "foo"), &namespaces(), &Settings::default()).expect("answered");
        let warnings = answer["response"]["warnings"].as_array().expect("warnings");
        assert!(
            warnings[0]
                .as_str()
                .is_some_and(|w| w.contains("port 8080")),
            "{warnings:?}"
        );
    }
}
