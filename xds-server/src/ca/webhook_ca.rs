//! The root certificate in the injection webhook's configuration: the API
//! server calls `https://xds-server.istio-system.svc:15012/inject` and must
//! trust our CA for it, so the `MutatingWebhookConfiguration` of deploy/
//! (which cannot know the root in advance) gets it as every webhook's
//! `clientConfig.caBundle`, as istiod patches its own injector's. Checked
//! again every [`CHECK_INTERVAL`], so a configuration applied later, or
//! re-applied without the bundle, gets it back.

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// The configuration's name in deploy/ (`40-sidecar-injector.yaml`).
pub const INJECTOR_WEBHOOK: &str = "xds-server-sidecar-injector";
/// How often the configuration is checked.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// The JSON patch that gives every webhook of `config` the bundle, or
/// `None` when each has it already. Each operation is guarded by a `test`
/// of the webhook's name, so a configuration changed between the read and
/// the write fails the patch instead of patching the wrong webhook.
pub fn ca_bundle_patch(config: &MutatingWebhookConfiguration, bundle: &str) -> Option<Value> {
    let mut ops = Vec::new();
    for (i, w) in config.webhooks.iter().flatten().enumerate() {
        let current = w
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| base64::engine::general_purpose::STANDARD.encode(&b.0));
        if current.as_deref() == Some(bundle) {
            continue;
        }
        ops.push(json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": w.name}));
        ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": bundle}));
    }
    (!ops.is_empty()).then(|| Value::Array(ops))
}

/// Keeps the bundle of configuration `name` equal to `root_pem`.
pub fn patch_webhook_ca(client: kube::Client, name: String, root_pem: String) -> JoinHandle<()> {
    let bundle = base64::engine::general_purpose::STANDARD.encode(root_pem.as_bytes());
    tokio::spawn(async move {
        let api: Api<MutatingWebhookConfiguration> = Api::all(client);
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        loop {
            tick.tick().await;
            let config = match api.get_opt(&name).await {
                Ok(Some(c)) => c,
                Ok(None) => {
                    debug!(%name, "no MutatingWebhookConfiguration yet; checking again later");
                    continue;
                }
                Err(error) => {
                    warn!(%name, %error, "reading the injection webhook's configuration failed");
                    continue;
                }
            };
            let Some(patch) = ca_bundle_patch(&config, &bundle) else {
                continue;
            };
            let patch: json_patch::Patch = match serde_json::from_value(patch) {
                Ok(p) => p,
                Err(error) => {
                    warn!(%error, "building the caBundle patch failed");
                    continue;
                }
            };
            match api
                .patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
                .await
            {
                Ok(_) => info!(%name, "set the injection webhook's caBundle to our root"),
                Err(error) => {
                    warn!(%name, %error, "setting the injection webhook's caBundle failed; will retry")
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use hyper::{Request, Response, StatusCode};

    type Handle =
        tower_test::mock::Handle<Request<kube::client::Body>, Response<kube::client::Body>>;

    /// Longer than a check interval: the test pauses tokio's clock, which
    /// then jumps to the next timer, and the next check must come first.
    const DEADLINE: Duration = Duration::from_secs(3 * 30);

    /// Answers the next request; returns its method, URI and body.
    async fn answer(
        handle: &mut Handle,
        status: StatusCode,
        body: Value,
    ) -> (String, String, Value) {
        let (request, reply) = tokio::time::timeout(DEADLINE, handle.next_request())
            .await
            .expect("a request in time")
            .expect("a request");
        let method = request.method().to_string();
        let uri = request.uri().to_string();
        let bytes: Bytes = request
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        reply.send_response(
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(kube::client::Body::from(
                    serde_json::to_vec(&body).expect("JSON"),
                ))
                .expect("response"),
        );
        (
            method,
            uri,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn config(bundles: [Option<&str>; 2]) -> Value {
        let webhook = |name: &str, bundle: Option<&str>| {
            let mut client = json!({"service": {"name": "xds-server", "namespace": "istio-system", "path": "/inject", "port": 15012}});
            if let Some(b) = bundle {
                client["caBundle"] = json!(b);
            }
            json!({"name": name, "clientConfig": client, "sideEffects": "None", "admissionReviewVersions": ["v1"]})
        };
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": INJECTOR_WEBHOOK, "resourceVersion": "3"},
            "webhooks": [
                webhook("namespace.sidecar-injector.xds-server.io", bundles[0]),
                webhook("object.sidecar-injector.xds-server.io", bundles[1]),
            ]
        })
    }

    #[test]
    fn only_webhooks_without_our_bundle_are_patched() {
        let bundle = base64::engine::general_purpose::STANDARD.encode("ROOT PEM");
        let read = |v: Value| -> MutatingWebhookConfiguration {
            serde_json::from_value(v).expect("config")
        };
        assert_eq!(
            ca_bundle_patch(&read(config([Some(&bundle), Some(&bundle)])), &bundle),
            None
        );
        let old = base64::engine::general_purpose::STANDARD.encode("OLD ROOT");
        let patch =
            ca_bundle_patch(&read(config([Some(&bundle), Some(&old)])), &bundle).expect("a patch");
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/webhooks/1/name", "value": "object.sidecar-injector.xds-server.io"},
                {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": bundle},
            ])
        );
    }

    #[tokio::test]
    async fn the_configuration_gets_the_root_once_it_exists() {
        let (service, mut api) = tower_test::mock::pair();
        let client = kube::Client::new(service, "default");
        let task = patch_webhook_ca(client, INJECTOR_WEBHOOK.into(), "ROOT PEM".into());
        let path = format!(
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{INJECTOR_WEBHOOK}"
        );
        // Not applied yet: nothing is written.
        let (method, uri, _) = answer(
            &mut api,
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
        )
        .await;
        assert_eq!((method.as_str(), uri.as_str()), ("GET", path.as_str()));
        tokio::time::pause();
        // Applied now, without bundles: both webhooks get ours.
        let (method, _, _) = answer(&mut api, StatusCode::OK, config([None, None])).await;
        assert_eq!(method, "GET");
        let bundle = base64::engine::general_purpose::STANDARD.encode("ROOT PEM");
        let (method, uri, body) = answer(
            &mut api,
            StatusCode::OK,
            config([Some(&bundle), Some(&bundle)]),
        )
        .await;
        assert_eq!(method, "PATCH");
        assert!(uri.starts_with(&path), "{uri}");
        let ops = body.as_array().expect("a JSON patch");
        assert_eq!(ops.len(), 4);
        assert_eq!(ops[1]["path"], "/webhooks/0/clientConfig/caBundle");
        assert_eq!(ops[3]["value"], bundle);
        task.abort();
    }
}
