//! The stand-in against a plain `kube::Client`, as `serve --kube` reaches
//! it: what a conforming client sees of each behaviour.

use super::*;
use futures::{Stream, StreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIGroup, ObjectMeta};
use kube::Api;
use kube::api::{ApiResource, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::core::GroupVersionKind;
use std::collections::BTreeMap;
use std::pin::pin;

pub(super) const DEADLINE: Duration = Duration::from_secs(10);

/// A server that sends bookmarks only when asked (so tests see exactly
/// the events they cause).
pub(super) async fn server() -> ApiServer {
    ApiServer::start(ApiServerOptions {
        bookmark_interval: None,
        ..ApiServerOptions::default()
    })
    .await
    .expect("the stand-in starts")
}

pub(super) fn meta(namespace: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(str::to_string),
        ..ObjectMeta::default()
    }
}

pub(super) fn namespace(name: &str) -> Namespace {
    Namespace {
        metadata: meta(None, name),
        ..Namespace::default()
    }
}

pub(super) fn pod(ns: &str, name: &str, phase: &str) -> Pod {
    Pod {
        metadata: meta(Some(ns), name),
        status: Some(PodStatus {
            phase: Some(phase.into()),
            ..PodStatus::default()
        }),
        ..Pod::default()
    }
}

fn names<K: kube::Resource>(items: &[K]) -> Vec<String> {
    items
        .iter()
        .map(|o| o.meta().name.clone().unwrap_or_default())
        .collect()
}

/// The next event of a watch stream, within the deadline.
pub(super) async fn next<K>(
    events: &mut (impl Stream<Item = kube::Result<WatchEvent<K>>> + Unpin),
) -> Option<WatchEvent<K>> {
    tokio::time::timeout(DEADLINE, events.next())
        .await
        .expect("a watch event (or the end) in time")
        .map(|e| e.expect("a well-formed watch event"))
}

pub(super) fn added_name(event: Option<WatchEvent<Namespace>>) -> String {
    match event {
        Some(WatchEvent::Added(ns)) => ns.metadata.name.unwrap_or_default(),
        other => panic!("want ADDED, got {other:?}"),
    }
}

mod watches;

#[test]
fn the_kinds_are_named_as_their_rust_types() {
    use crds::destination_rule::DestinationRule;
    use crds::peer_authentication::PeerAuthentication;
    let found = [
        Kind::of::<Namespace>(),
        Kind::of::<Service>(),
        Kind::of::<Pod>(),
        Kind::of::<ConfigMap>(),
        Kind::of::<Secret>(),
        Kind::of::<PeerAuthentication>(),
        Kind::of::<DestinationRule>(),
        Kind::of::<crds::Sidecar>(),
    ];
    assert_eq!(found, Kind::ALL.map(Some));
    for kind in Kind::ALL {
        let path = match kind.group() {
            "" => format!("/api/v1/namespaces/ns/{}", kind.plural()),
            g => format!("/apis/{g}/v1/namespaces/ns/{}", kind.plural()),
        };
        assert_eq!(kind::collection_of(&path), Some(kind), "{path}");
    }
}

#[tokio::test]
async fn writes_stamp_metadata_and_bump_one_counter() {
    let api = server().await;
    let start = api.resource_version();
    let rv = api.apply(&namespace("foo")).expect("apply");
    assert_eq!(rv, start + 1);
    let rv2 = api.apply(&pod("foo", "web-0", "Running")).expect("apply");
    assert_eq!(rv2, start + 2, "one counter for every kind");
    let stored: Pod = api.get("foo", "web-0").expect("get").expect("stored");
    let m = &stored.metadata;
    assert_eq!(m.resource_version.as_deref(), Some(&*rv2.to_string()));
    assert_eq!(m.namespace.as_deref(), Some("foo"));
    assert!(m.uid.is_some() && m.creation_timestamp.is_some(), "{m:?}");
    let uid = m.uid.clone();
    let rv3 = api
        .set_pod_ready("foo", "web-0", true)
        .expect("readiness flip");
    let stored: Pod = api.get("foo", "web-0").expect("get").expect("stored");
    assert_eq!(stored.metadata.uid, uid, "a replace keeps the uid");
    assert_eq!(
        stored.metadata.resource_version.as_deref(),
        Some(&*rv3.to_string())
    );
    let ready = stored
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status);
    assert_eq!(ready.as_deref(), Some("True"));
}

#[tokio::test]
async fn lists_are_paged_with_consistent_continue_tokens() {
    let api = server().await;
    for i in 0..5 {
        api.apply(&namespace(&format!("ns-{i}"))).expect("apply");
    }
    let at = api.resource_version();
    let client = api.client().expect("client");
    let namespaces: Api<Namespace> = Api::all(client);
    let first = namespaces
        .list(&ListParams::default().limit(2))
        .await
        .expect("page 1");
    assert_eq!(names(&first.items), ["ns-0", "ns-1"]);
    assert_eq!(
        first.metadata.resource_version.as_deref(),
        Some(&*at.to_string())
    );
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    // Changes between pages do not show in the rest of this list.
    api.delete::<Namespace>("", "ns-3").expect("delete");
    api.apply(&namespace("ns-9")).expect("apply");
    let token = first.metadata.continue_.expect("a continue token");
    let second = namespaces
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .expect("page 2");
    assert_eq!(names(&second.items), ["ns-2", "ns-3"]);
    assert_eq!(
        second.metadata.resource_version.as_deref(),
        Some(&*at.to_string()),
        "every page is read at the first page's resourceVersion"
    );
    let token = second.metadata.continue_.expect("a continue token");
    let third = namespaces
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .expect("page 3");
    assert_eq!(names(&third.items), ["ns-4"]);
    assert_eq!(third.metadata.continue_, None);
    // A new list sees the changes.
    let all = namespaces.list(&ListParams::default()).await.expect("list");
    assert_eq!(names(&all.items), ["ns-0", "ns-1", "ns-2", "ns-4", "ns-9"]);
    assert_eq!(
        all.metadata.resource_version.as_deref(),
        Some(&*api.resource_version().to_string())
    );
    // A continue token from before a compaction is expired.
    api.compact();
    let error = namespaces
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .expect_err("an expired token");
    assert!(
        matches!(&error, kube::Error::Api(s) if s.code == 410),
        "{error:?}"
    );
}

#[tokio::test]
async fn the_pod_field_selector_filters_lists_and_watches() {
    let api = server().await;
    let selector = "status.phase!=Succeeded,status.phase!=Failed";
    api.apply(&pod("foo", "running", "Running")).expect("apply");
    api.apply(&pod("foo", "done", "Succeeded")).expect("apply");
    let pods: Api<Pod> = Api::all(api.client().expect("client"));
    let list = pods
        .list(&ListParams::default().fields(selector))
        .await
        .expect("list");
    assert_eq!(names(&list.items), ["running"]);
    let mut events = pin!(
        pods.watch(
            &WatchParams::default().fields(selector),
            &api.resource_version().to_string()
        )
        .await
        .expect("watch")
    );
    // Leaving the selection is a DELETED; entering it an ADDED.
    api.update::<Pod>("foo", "running", |p| {
        if let Some(s) = p.status.as_mut() {
            s.phase = Some("Failed".into());
        }
    })
    .expect("update");
    match next(&mut events).await {
        Some(WatchEvent::Deleted(p)) => assert_eq!(p.metadata.name.as_deref(), Some("running")),
        other => panic!("want DELETED, got {other:?}"),
    }
    api.apply(&pod("foo", "new", "Pending")).expect("apply");
    match next(&mut events).await {
        Some(WatchEvent::Added(p)) => assert_eq!(p.metadata.name.as_deref(), Some("new")),
        other => panic!("want ADDED, got {other:?}"),
    }
    let error = pods
        .list(&ListParams::default().fields("spec.unknown=x"))
        .await
        .expect_err("an unsupported field");
    assert!(
        matches!(&error, kube::Error::Api(s) if s.code == 400 && s.message.contains("field label not supported")),
        "{error:?}"
    );
}

#[tokio::test]
async fn istio_kinds_are_served_only_at_the_chosen_versions() {
    use crds::destination_rule::{DestinationRule, DestinationRuleSpec};
    let api = ApiServer::start(ApiServerOptions {
        peer_authentication_versions: vec![],
        destination_rule_versions: vec!["v1alpha3".into()],
        bookmark_interval: None,
        ..ApiServerOptions::default()
    })
    .await
    .expect("start");
    api.apply(&DestinationRule {
        metadata: meta(Some("foo"), "web"),
        spec: DestinationRuleSpec {
            host: "web".into(),
            ..DestinationRuleSpec::default()
        },
    })
    .expect("apply");
    let client = api.client().expect("client");
    let group: APIGroup = client
        .request(
            hyper::Request::get("/apis/networking.istio.io")
                .body(Vec::new())
                .expect("request"),
        )
        .await
        .expect("the DestinationRule group");
    let versions: Vec<&str> = group.versions.iter().map(|v| v.version.as_str()).collect();
    assert_eq!(versions, ["v1alpha3"]);
    let error = client
        .request::<APIGroup>(
            hyper::Request::get("/apis/security.istio.io")
                .body(Vec::new())
                .expect("request"),
        )
        .await
        .expect_err("PeerAuthentication is not served");
    assert!(
        matches!(&error, kube::Error::Api(s) if s.code == 404),
        "{error:?}"
    );
    let at = |version: &str| {
        let gvk = GroupVersionKind::gvk("networking.istio.io", version, "DestinationRule");
        let resource = ApiResource::from_gvk(&gvk);
        Api::<DynamicObject>::all_with(client.clone(), &resource)
    };
    let list = at("v1alpha3")
        .list(&ListParams::default())
        .await
        .expect("list");
    let types = list.items.first().and_then(|o| o.types.clone());
    assert_eq!(
        types.map(|t| t.api_version).as_deref(),
        Some("networking.istio.io/v1alpha3"),
        "stored once, returned at the version asked for"
    );
    let error = at("v1")
        .list(&ListParams::default())
        .await
        .expect_err("v1 is not served");
    assert!(
        matches!(&error, kube::Error::Api(s) if s.code == 404),
        "{error:?}"
    );
    // Discovery finds the kind at its served version.
    let gvk = GroupVersionKind::gvk("networking.istio.io", "v1alpha3", "DestinationRule");
    let (resource, caps) = kube::discovery::pinned_kind(&client, &gvk)
        .await
        .expect("discovery");
    assert_eq!(resource.plural, "destinationrules");
    assert!(caps.supports_operation(kube::discovery::verbs::WATCH));
}

#[tokio::test]
async fn a_held_list_is_answered_once_released() {
    let api = server().await;
    api.apply(&namespace("foo")).expect("apply");
    api.hold_lists(Kind::Namespace);
    let namespaces: Api<Namespace> = Api::all(api.client().expect("client"));
    let list = tokio::spawn(async move { namespaces.list(&ListParams::default()).await });
    let (_, seen) = api
        .wait_request(0, DEADLINE, |r| r.is_list_of(Kind::Namespace))
        .await
        .expect("the list arrives");
    assert_eq!(seen.status, None, "held, not answered");
    assert!(!list.is_finished());
    api.release_lists(Kind::Namespace);
    let list = tokio::time::timeout(DEADLINE, list)
        .await
        .expect("answered in time")
        .expect("task")
        .expect("list");
    assert_eq!(names(&list.items), ["foo"]);
}

fn review(token: &str, audiences: &[&str]) -> TokenReview {
    TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.into()),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect())
                .filter(|a: &Vec<String>| !a.is_empty()),
        },
        ..TokenReview::default()
    }
}

#[tokio::test]
async fn token_reviews_authenticate_registered_tokens_for_their_audiences() {
    let api = server().await;
    api.add_token(
        "sleep-token",
        "system:serviceaccount:foo:sleep",
        &["istio-ca", "other"],
    );
    let reviews: Api<TokenReview> = Api::all(api.client().expect("client"));
    let post = |r: TokenReview| {
        let reviews = reviews.clone();
        async move {
            reviews
                .create(&PostParams::default(), &r)
                .await
                .expect("a TokenReview answer")
                .status
                .expect("a status")
        }
    };

    let allowed = post(review("sleep-token", &["istio-ca", "unrelated"])).await;
    assert_eq!(allowed.authenticated, Some(true));
    let user = allowed.user.expect("a user");
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:foo:sleep")
    );
    assert_eq!(
        user.groups.unwrap_or_default(),
        [
            "system:serviceaccounts",
            "system:serviceaccounts:foo",
            "system:authenticated"
        ]
    );
    assert_eq!(
        allowed.audiences.unwrap_or_default(),
        ["istio-ca"],
        "the audiences asked for that the token has"
    );

    let own = post(review("sleep-token", &[])).await;
    assert_eq!(own.authenticated, Some(true));
    assert_eq!(own.audiences.unwrap_or_default(), ["istio-ca", "other"]);

    let unknown = post(review("forged", &["istio-ca"])).await;
    assert_eq!(unknown.authenticated, Some(false));
    let error = unknown.error.unwrap_or_default();
    assert!(error.starts_with("[invalid bearer token, "), "{error}");

    let wrong_audience = post(review("sleep-token", &["kubernetes"])).await;
    assert_eq!(wrong_audience.authenticated, Some(false));
    let error = wrong_audience.error.unwrap_or_default();
    assert!(
        error.contains("invalid bearer token") && error.contains("kubernetes"),
        "{error}"
    );
    let posts = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path() == "/apis/authentication.k8s.io/v1/tokenreviews")
        .count();
    assert_eq!(posts, 4);
}

fn root_cert_map(ns: &str, pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: meta(Some(ns), "istio-ca-root-cert"),
        data: Some(BTreeMap::from([("root-cert.pem".into(), pem.into())])),
        ..ConfigMap::default()
    }
}

#[tokio::test]
async fn server_side_apply_upserts_a_config_map() {
    let api = server().await;
    let maps: Api<ConfigMap> = Api::namespaced(api.client().expect("client"), "foo");
    let params = PatchParams::apply("xds-server").force();
    let error = maps
        .patch(
            "istio-ca-root-cert",
            &params,
            &Patch::Apply(root_cert_map("foo", "one")),
        )
        .await
        .expect_err("no namespace foo yet");
    assert!(
        matches!(&error, kube::Error::Api(s) if s.code == 404 && s.message.contains("namespaces \"foo\" not found")),
        "{error:?}"
    );
    api.apply(&namespace("foo")).expect("apply");
    let created = maps
        .patch(
            "istio-ca-root-cert",
            &params,
            &Patch::Apply(root_cert_map("foo", "one")),
        )
        .await
        .expect("created by apply");
    let uid = created.metadata.uid.clone();
    assert!(uid.is_some());
    let updated = maps
        .patch(
            "istio-ca-root-cert",
            &params,
            &Patch::Apply(root_cert_map("foo", "two")),
        )
        .await
        .expect("updated by apply");
    assert_eq!(updated.metadata.uid, uid);
    let stored: ConfigMap = api
        .get("foo", "istio-ca-root-cert")
        .expect("get")
        .expect("stored");
    assert_eq!(
        stored
            .data
            .and_then(|d| d.get("root-cert.pem").cloned())
            .as_deref(),
        Some("two")
    );
    let patch = api
        .requests()
        .into_iter()
        .rfind(|r| r.method == "PATCH")
        .expect("a PATCH");
    assert_eq!(patch.param("fieldManager").as_deref(), Some("xds-server"));
    assert_eq!(patch.param("force").as_deref(), Some("true"));
    assert_eq!(patch.status, Some(200));
}

#[tokio::test]
async fn secrets_are_created_once_and_read_back() {
    let api = server().await;
    api.apply(&namespace("istio-system")).expect("apply");
    let secrets: Api<Secret> = Api::namespaced(api.client().expect("client"), "istio-system");
    assert!(
        secrets
            .get_opt("xds-server-ca")
            .await
            .expect("a 404 is an answer")
            .is_none()
    );
    let secret = Secret {
        metadata: meta(Some("istio-system"), "xds-server-ca"),
        immutable: Some(true),
        data: Some(BTreeMap::from([(
            "ca-cert.pem".into(),
            ByteString(b"PEM".to_vec()),
        )])),
        ..Secret::default()
    };
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("created");
    let error = secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect_err("a second create");
    assert!(
        matches!(&error, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{error:?}"
    );
    let mut changed = secrets.get("xds-server-ca").await.expect("read back");
    changed.data = Some(BTreeMap::from([(
        "ca-cert.pem".into(),
        ByteString(b"OTHER".to_vec()),
    )]));
    let error = secrets
        .replace("xds-server-ca", &PostParams::default(), &changed)
        .await
        .expect_err("an immutable Secret");
    assert!(
        matches!(&error, kube::Error::Api(s) if s.code == 422),
        "{error:?}"
    );
    let stored: Secret = api
        .get("istio-system", "xds-server-ca")
        .expect("get")
        .expect("stored");
    assert_eq!(
        stored.data.and_then(|d| d.get("ca-cert.pem").cloned()),
        Some(ByteString(b"PEM".to_vec()))
    );
}

#[tokio::test]
async fn deleting_a_namespace_deletes_what_is_in_it() {
    let api = server().await;
    api.apply(&namespace("foo")).expect("apply");
    api.apply(&pod("foo", "web-0", "Running")).expect("apply");
    api.apply(&pod("bar", "web-0", "Running")).expect("apply");
    let from = api.resource_version();
    let pods: Api<Pod> = Api::all(api.client().expect("client"));
    let mut events = pin!(
        pods.watch(&WatchParams::default(), &from.to_string())
            .await
            .expect("watch")
    );
    api.delete::<Namespace>("", "foo").expect("delete");
    match next(&mut events).await {
        Some(WatchEvent::Deleted(p)) => {
            assert_eq!(p.metadata.namespace.as_deref(), Some("foo"));
        }
        other => panic!("want DELETED, got {other:?}"),
    }
    assert!(api.get::<Pod>("foo", "web-0").expect("get").is_none());
    assert!(api.get::<Pod>("bar", "web-0").expect("get").is_some());
}

#[tokio::test]
async fn the_kubeconfig_reaches_the_server_over_plain_http() {
    let api = server().await;
    api.apply(&namespace("foo")).expect("apply");
    let dir = crate::ScratchDir::new("kubeconfig").expect("scratch");
    let path = dir.path().join("kubeconfig");
    api.write_kubeconfig(&path).expect("written");
    let file = kube::config::Kubeconfig::read_from(&path).expect("a kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .expect("usable");
    let client = kube::Client::try_from(config).expect("client");
    let namespaces: Api<Namespace> = Api::all(client);
    let list = namespaces.list(&ListParams::default()).await.expect("list");
    assert_eq!(names(&list.items), ["foo"]);
}

#[tokio::test]
async fn errors_are_statuses() {
    let api = server().await;
    let client = api.client().expect("client");
    let text = client
        .request_text(
            hyper::Request::get("/api/v1/nothings")
                .body(Vec::new())
                .expect("request"),
        )
        .await
        .expect_err("no such resource");
    assert!(
        matches!(&text, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"),
        "{text:?}"
    );
    let pods: Api<Pod> = Api::namespaced(client, "foo");
    let error = pods.get("nope").await.expect_err("absent");
    assert!(
        matches!(&error, kube::Error::Api(s) if s.code == 404 && s.message == "pods \"nope\" not found"),
        "{error:?}"
    );
}
