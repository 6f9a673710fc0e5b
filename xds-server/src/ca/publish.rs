//! The root certificate in every namespace, as the ConfigMap
//! `istio-ca-root-cert` (key `root-cert.pem`) that istiod publishes and that
//! Istio's pod templates mount: a pod's init step trusts the control plane
//! through it before it has any certificate of its own.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Istio's name for the ConfigMap, and its key.
pub const ROOT_CONFIGMAP: &str = "istio-ca-root-cert";
pub const ROOT_CONFIGMAP_KEY: &str = "root-cert.pem";
/// The server-side apply field manager: the fields it owns are ours.
const FIELD_MANAGER: &str = "xds-server";
/// How often namespaces whose ConfigMap could not be written are tried again.
const RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// The ConfigMap as this server writes it.
pub fn root_configmap(namespace: &str, root_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CONFIGMAP.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                ("istio.io/config".to_string(), "true".to_string()),
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    FIELD_MANAGER.to_string(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            ROOT_CONFIGMAP_KEY.to_string(),
            root_pem.to_string(),
        )])),
        ..ConfigMap::default()
    }
}

/// Writes the root ConfigMap into every namespace, present and future, by
/// server-side apply (so replicas writing the same content agree, and
/// fields others add are kept). A namespace whose write fails is tried
/// again every [`RETRY_INTERVAL`]; one being deleted is skipped.
pub fn publish_root(client: kube::Client, root_pem: String) -> JoinHandle<()> {
    tokio::spawn(async move {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let mut events = std::pin::pin!(
            watcher::watcher(namespaces, watcher::Config::default()).default_backoff()
        );
        let mut done = BTreeSet::new();
        let mut pending = BTreeSet::new();
        let mut retry = tokio::time::interval(RETRY_INTERVAL);
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(Event::Apply(ns) | Event::InitApply(ns))) => {
                        let Some(name) = ns.metadata.name else { continue };
                        if ns.metadata.deletion_timestamp.is_some() {
                            pending.remove(&name);
                        } else if !done.contains(&name) {
                            pending.insert(name);
                        }
                    }
                    Some(Ok(Event::Delete(ns))) => {
                        if let Some(name) = ns.metadata.name {
                            done.remove(&name);
                            pending.remove(&name);
                        }
                    }
                    // A relist: namespaces that are gone are forgotten when
                    // their Delete is missed; a stale entry only skips a
                    // write for a namespace recreated under the same name
                    // during the gap, which its Apply then schedules.
                    Some(Ok(Event::Init | Event::InitDone)) => {}
                    Some(Err(error)) => debug!(%error, "namespace watch failed; retrying"),
                    None => break,
                },
                _ = retry.tick() => {}
            }
            let mut failed = BTreeSet::new();
            while let Some(name) = pending.pop_first() {
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), &name);
                let patch = Patch::Apply(root_configmap(&name, &root_pem));
                match api
                    .patch(
                        ROOT_CONFIGMAP,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &patch,
                    )
                    .await
                {
                    Ok(_) => {
                        info!(namespace = %name, "published the root certificate ({ROOT_CONFIGMAP})");
                        done.insert(name);
                    }
                    Err(error) => {
                        warn!(namespace = %name, %error, "publishing the root certificate failed; will retry");
                        failed.insert(name);
                    }
                }
            }
            pending = failed;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::kube_mock::{self, Handle, Seen};
    use hyper::StatusCode;
    use serde_json::{Value, json};

    const DEADLINE: Duration = Duration::from_secs(10);

    async fn answer(handle: &mut Handle, status: StatusCode, body: Value) -> Seen {
        kube_mock::answer(handle, status, &body).await
    }

    fn namespace(name: &str, deleting: bool) -> Value {
        let mut metadata =
            json!({"name": name, "resourceVersion": "5", "uid": format!("uid-{name}")});
        if deleting {
            metadata["deletionTimestamp"] = json!("2026-11-29T00:00:00Z");
        }
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": metadata})
    }

    #[tokio::test]
    async fn every_namespace_but_one_being_deleted_gets_the_root_configmap() {
        let (client, mut api) = kube_mock::client();
        let task = publish_root(client, "ROOT PEM".to_string());

        let list = answer(
            &mut api,
            StatusCode::OK,
            json!({
                "apiVersion": "v1", "kind": "NamespaceList",
                "metadata": {"resourceVersion": "7"},
                "items": [namespace("foo", false), namespace("leaving", true)]
            }),
        )
        .await;
        assert_eq!(list.method, "GET");
        assert!(list.uri.starts_with("/api/v1/namespaces?"), "{}", list.uri);

        let cm = root_configmap("foo", "ROOT PEM");
        let patch = answer(
            &mut api,
            StatusCode::OK,
            serde_json::to_value(&cm).expect("JSON"),
        )
        .await;
        assert_eq!(patch.method, "PATCH");
        assert_eq!(
            patch.uri,
            "/api/v1/namespaces/foo/configmaps/istio-ca-root-cert?&force=true&fieldManager=xds-server"
        );
        assert_eq!(patch.content_type, "application/apply-patch+yaml");
        assert_eq!(patch.body["data"]["root-cert.pem"], "ROOT PEM");
        assert_eq!(patch.body["metadata"]["namespace"], "foo");

        // Then the watch from the list's version: no write for "leaving".
        let watch = tokio::time::timeout(DEADLINE, api.next_request())
            .await
            .expect("a request in time")
            .expect("a request")
            .0;
        assert!(
            watch.uri().to_string().contains("watch=true"),
            "{}",
            watch.uri()
        );
        assert!(
            watch.uri().to_string().contains("resourceVersion=7"),
            "{}",
            watch.uri()
        );
        task.abort();
    }
}
