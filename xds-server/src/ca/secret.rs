//! The root CA kept in a Kubernetes Secret (`serve --kube --ca-secret
//! NAMESPACE/NAME`), so every replica signs with the same root and a pod's
//! restart does not mint a new one.
//!
//! Create-only: a replica that finds no Secret generates a root and
//! *creates* the Secret; it never updates one. Two replicas starting at once
//! both try, the API server accepts exactly one create (409 Conflict for the
//! other), and the loser loads the winner's Secret, so the cluster ends up
//! with one root, never two. The Secret is immutable; replacing the root is
//! an operator's decision (delete the Secret, restart every replica).

use super::store::{Root, generate_root, root_from_pem};
use anyhow::{Context, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use std::collections::BTreeMap;
use std::time::SystemTime;

/// The keys of the root certificate and key in the Secret's data (the names
/// istiod uses for its `istio-ca-secret`).
pub const CERT_KEY: &str = "ca-cert.pem";
pub const KEY_KEY: &str = "ca-key.pem";

/// Loads the root from `namespace/name`, creating the Secret with a new root
/// if there is none.
pub(super) async fn load_or_create(
    client: kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Root> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    // Found, or created, or lost the race and found: three steps at most.
    for _ in 0..3 {
        let existing = api
            .get_opt(name)
            .await
            .with_context(|| format!("reading the CA Secret {namespace}/{name}"))?;
        if let Some(secret) = existing {
            let root = from_secret(&secret, namespace, name)?;
            tracing::info!(secret = %format!("{namespace}/{name}"), "loaded root CA from its Secret");
            return Ok(root);
        }
        let (root, key_pem) = generate_root(SystemTime::now())?;
        match api
            .create(
                &PostParams::default(),
                &new_secret(namespace, name, &root, &key_pem),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(secret = %format!("{namespace}/{name}"), "created a new root CA in its Secret");
                return Ok(root);
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::info!(
                    secret = %format!("{namespace}/{name}"),
                    "another replica created the CA Secret first; loading it"
                );
            }
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("creating the CA Secret {namespace}/{name}"));
            }
        }
    }
    bail!(
        "the CA Secret {namespace}/{name} was reported as created by another replica but \
         cannot be read"
    )
}

fn new_secret(namespace: &str, name: &str, root: &Root, key_pem: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "xds-server".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_string()),
        immutable: Some(true),
        data: Some(BTreeMap::from([
            (
                CERT_KEY.to_string(),
                ByteString(root.cert_pem.as_bytes().to_vec()),
            ),
            (KEY_KEY.to_string(), ByteString(key_pem.as_bytes().to_vec())),
        ])),
        ..Secret::default()
    }
}

fn from_secret(secret: &Secret, namespace: &str, name: &str) -> anyhow::Result<Root> {
    let field = |key: &str| -> anyhow::Result<String> {
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .with_context(|| format!("the CA Secret {namespace}/{name} has no data.{key}"))?;
        String::from_utf8(bytes.0.clone()).with_context(|| {
            format!("data.{key} of the CA Secret {namespace}/{name} is not PEM text")
        })
    };
    let cert_pem = field(CERT_KEY)?;
    let key_pem = field(KEY_KEY)?;
    root_from_pem(
        cert_pem,
        &key_pem,
        &format!("Secret {namespace}/{name} data.{CERT_KEY}"),
        &format!("Secret {namespace}/{name} data.{KEY_KEY}"),
        SystemTime::now(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::kube_mock::{self, Handle, Reply, client, status};
    use hyper::{Response, StatusCode};

    fn json(status: StatusCode, body: serde_json::Value) -> Response<kube::client::Body> {
        kube_mock::json_response(status, &body)
    }

    /// The next request: method, path, and body as JSON (if any).
    async fn next(handle: &mut Handle) -> (String, String, serde_json::Value, Reply) {
        let (seen, reply) = kube_mock::next(handle).await;
        (seen.method, seen.path, seen.body, reply)
    }

    const PATH: &str = "/api/v1/namespaces/istio-system/secrets";

    fn winner() -> (Root, Secret) {
        let (root, key) = generate_root(SystemTime::now()).expect("root");
        let secret = new_secret("istio-system", "xds-server-ca", &root, &key);
        (root, secret)
    }

    #[tokio::test]
    async fn no_secret_creates_one_with_a_new_root() {
        let (client, mut api) = client();
        let load =
            tokio::spawn(
                async move { load_or_create(client, "istio-system", "xds-server-ca").await },
            );
        let (method, path, _, reply) = next(&mut api).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("GET", &*format!("{PATH}/xds-server-ca"))
        );
        reply.send_response(json(StatusCode::NOT_FOUND, status(404, "NotFound")));
        let (method, path, body, reply) = next(&mut api).await;
        assert_eq!((method.as_str(), path.as_str()), ("POST", PATH));
        assert_eq!(body["metadata"]["name"], "xds-server-ca");
        assert_eq!(body["immutable"], true);
        for key in [CERT_KEY, KEY_KEY] {
            assert!(body["data"][key].is_string(), "data.{key} in {body}");
        }
        reply.send_response(json(StatusCode::CREATED, body.clone()));
        let root = load.await.expect("task").expect("created");
        let sent: Secret = serde_json::from_value(body).expect("a Secret");
        let cert = sent
            .data
            .as_ref()
            .and_then(|d| d.get(CERT_KEY))
            .expect("cert");
        assert_eq!(root.cert_pem.as_bytes(), cert.0.as_slice());
    }

    #[tokio::test]
    async fn losing_the_create_race_loads_the_winners_root() {
        let (client, mut api) = client();
        let load =
            tokio::spawn(
                async move { load_or_create(client, "istio-system", "xds-server-ca").await },
            );
        let (winner_root, winner_secret) = winner();
        let (_, _, _, reply) = next(&mut api).await;
        reply.send_response(json(StatusCode::NOT_FOUND, status(404, "NotFound")));
        let (method, _, _, reply) = next(&mut api).await;
        assert_eq!(method, "POST");
        reply.send_response(json(StatusCode::CONFLICT, status(409, "AlreadyExists")));
        let (method, path, _, reply) = next(&mut api).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("GET", &*format!("{PATH}/xds-server-ca"))
        );
        reply.send_response(json(
            StatusCode::OK,
            serde_json::to_value(&winner_secret).expect("JSON"),
        ));
        let root = load.await.expect("task").expect("loaded");
        assert_eq!(root.cert_pem, winner_root.cert_pem);
    }

    #[tokio::test]
    async fn a_secret_with_a_broken_key_is_an_error_naming_it() {
        let (client, mut api) = client();
        let load =
            tokio::spawn(
                async move { load_or_create(client, "istio-system", "xds-server-ca").await },
            );
        let (_, mut secret) = winner();
        if let Some(data) = secret.data.as_mut() {
            data.insert(KEY_KEY.to_string(), ByteString(b"not a key".to_vec()));
        }
        let (_, _, _, reply) = next(&mut api).await;
        reply.send_response(json(
            StatusCode::OK,
            serde_json::to_value(&secret).expect("JSON"),
        ));
        let error = load.await.expect("task").err().expect("a broken key");
        let text = format!("{error:#}");
        assert!(
            text.contains("Secret istio-system/xds-server-ca data.ca-key.pem"),
            "{text}"
        );
    }
}
