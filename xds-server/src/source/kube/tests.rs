//! The source against a scripted API server ([`FakeApi`]): lists, watches,
//! failures and discovery as a real one answers them, objects as the API
//! returns them (k8s-openapi types and this project's Istio types,
//! serialized).

use super::fake_api::FakeApi;
use super::snapshot::POD_FIELD_SELECTOR;
use super::*;
use crate::source::ConfigSnapshot;
use crds::{
    ClientTlsMode, ClientTlsSettings, DestinationRule, DestinationRuleSpec, MtlsMode, MutualTls,
    Object, PeerAuthentication, PeerAuthenticationSpec, TrafficPolicy,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, NamespaceSpec, NamespaceStatus, PodCondition, PodIP, PodSpec,
    PodStatus, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    FieldsV1, ManagedFieldsEntry, ObjectMeta, Time,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Creation time of the fixtures (2020-09-13T12:26:40Z).
const CREATED: i64 = 1_600_000_000;
/// Every wait in these tests ends by then.
const DEADLINE: Duration = Duration::from_secs(5);

fn opts() -> KubeOptions {
    KubeOptions {
        debounce: Duration::from_millis(20),
        page_size: 500,
        rediscover_min: Duration::from_millis(50),
        rediscover_max: Duration::from_millis(200),
    }
}

fn time(secs: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(secs).expect("a time in range"))
}

/// Metadata as the API server returns it, managedFields included.
fn meta(namespace: Option<&str>, name: &str, created: i64, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        uid: Some(format!("uid-{}-{name}", namespace.unwrap_or("cluster"))),
        generation: Some(1),
        creation_timestamp: Some(time(created)),
        labels: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        }),
        managed_fields: Some(vec![ManagedFieldsEntry {
            api_version: Some("v1".to_string()),
            fields_type: Some("FieldsV1".to_string()),
            fields_v1: Some(FieldsV1(
                json!({"f:metadata": {"f:labels": {}}, "f:spec": {}}),
            )),
            manager: Some("kubectl-client-side-apply".to_string()),
            operation: Some("Update".to_string()),
            time: Some(time(created)),
            subresource: None,
        }]),
        ..ObjectMeta::default()
    }
}

fn namespace(name: &str, labels: &[(&str, &str)]) -> Value {
    let ns = Namespace {
        metadata: meta(None, name, CREATED, labels),
        spec: Some(NamespaceSpec {
            finalizers: Some(vec!["kubernetes".to_string()]),
        }),
        status: Some(NamespaceStatus {
            phase: Some("Active".to_string()),
            conditions: None,
        }),
    };
    serde_json::to_value(&ns).expect("a Namespace serializes")
}

fn service(ns: &str, name: &str, port: i32) -> Value {
    let svc = Service {
        metadata: meta(Some(ns), name, CREATED, &[("app", name)]),
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.10".to_string()),
            cluster_ips: Some(vec!["10.96.0.10".to_string()]),
            selector: Some(BTreeMap::from([("app".to_string(), name.to_string())])),
            ports: Some(vec![ServicePort {
                name: Some("http".to_string()),
                port,
                protocol: Some("TCP".to_string()),
                target_port: Some(IntOrString::Int(8080)),
                ..ServicePort::default()
            }]),
            type_: Some("ClusterIP".to_string()),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    serde_json::to_value(&svc).expect("a Service serializes")
}

/// A container with one named TCP port.
fn container(name: &str, image: &str, (port_name, port): (&str, i32)) -> Container {
    Container {
        name: name.to_string(),
        image: Some(image.to_string()),
        ports: Some(vec![ContainerPort {
            name: Some(port_name.to_string()),
            container_port: port,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        }]),
        ..Container::default()
    }
}

/// A pod with an app container and an istio-proxy sidecar.
fn pod(ns: &str, name: &str, ip: Option<&str>, phase: &str) -> Value {
    let app = name.split('-').next().unwrap_or(name);
    let pod = Pod {
        metadata: meta(
            Some(ns),
            name,
            CREATED,
            &[("app", app), ("security.istio.io/tlsMode", "istio")],
        ),
        spec: Some(PodSpec {
            service_account_name: Some(app.to_string()),
            node_name: Some("node-1".to_string()),
            containers: vec![
                container(app, &format!("registry.example/{app}:1"), ("http", 8080)),
                Container {
                    args: Some(vec!["proxy".to_string(), "sidecar".to_string()]),
                    ..container(
                        "istio-proxy",
                        "docker.io/istio/proxyv2:1.24.0",
                        ("http-envoy-prom", 15090),
                    )
                },
            ],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some(phase.to_string()),
            pod_ip: ip.map(str::to_string),
            pod_ips: ip.map(|ip| vec![PodIP { ip: ip.to_string() }]),
            host_ip: Some("192.0.2.10".to_string()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".to_string(),
                status: if phase == "Running" { "True" } else { "False" }.to_string(),
                last_transition_time: Some(time(CREATED + 5)),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    };
    serde_json::to_value(&pod).expect("a Pod serializes")
}

fn peer_authentication(ns: &str, name: &str, mode: MtlsMode, created: i64) -> Value {
    let mut pa = PeerAuthentication::new(
        name,
        PeerAuthenticationSpec {
            selector: None,
            mtls: Some(MutualTls { mode }),
            port_level_mtls: None,
        },
    );
    pa.metadata = meta(Some(ns), name, created, &[]);
    serde_json::to_value(&pa).expect("a PeerAuthentication serializes")
}

/// The same PeerAuthentication with a mode no version of the CRD has.
fn with_bad_mode(mut pa: Value) -> Value {
    pa["spec"]["mtls"]["mode"] = json!("STRICTEST");
    pa
}

fn destination_rule(ns: &str, name: &str, host: &str, created: i64) -> Value {
    let mut dr = DestinationRule::new(
        name,
        DestinationRuleSpec {
            host: host.to_string(),
            traffic_policy: Some(TrafficPolicy {
                tls: Some(ClientTlsSettings {
                    mode: ClientTlsMode::IstioMutual,
                    ..ClientTlsSettings::default()
                }),
                ..TrafficPolicy::default()
            }),
            ..DestinationRuleSpec::default()
        },
    );
    dr.metadata = meta(Some(ns), name, created, &[]);
    serde_json::to_value(&dr).expect("a DestinationRule serializes")
}

/// Both Istio groups served at every version Istio serves.
fn serve_istio(api: &FakeApi) {
    api.serve_group("security.istio.io", &["v1", "v1beta1"]);
    api.serve_group("networking.istio.io", &["v1", "v1alpha3", "v1beta1"]);
}

/// A small mesh: a namespace, a service, two running pods, one policy of
/// each Istio kind.
fn populate(api: &FakeApi) {
    api.apply(
        "namespaces",
        namespace("foo", &[("istio-injection", "enabled")]),
    );
    api.apply("services", service("foo", "web", 80));
    api.apply("pods", pod("foo", "web-a", Some("10.1.0.1"), "Running"));
    api.apply("pods", pod("foo", "web-b", Some("10.1.0.2"), "Running"));
    api.apply(
        "peerauthentications",
        peer_authentication("foo", "strict", MtlsMode::Strict, CREATED),
    );
    api.apply(
        "destinationrules",
        destination_rule("foo", "web", "web.foo.svc.cluster.local", CREATED),
    );
}

async fn start(
    client: kube::Client,
    opts: KubeOptions,
) -> (watch::Receiver<SharedSnapshot>, JoinHandle<()>) {
    tokio::time::timeout(DEADLINE, watch_cluster(client, opts))
        .await
        .expect("the first snapshot within the deadline")
        .expect("the source starts")
}

/// `ns/name` (or `name`) of the objects of one kind.
fn names(s: &ConfigSnapshot, kind: &str) -> Vec<String> {
    s.objects
        .iter()
        .filter(|(p, _)| p.object.kind() == kind)
        .filter_map(|(p, _)| {
            let m = p.object.metadata()?;
            let name = m.name.clone()?;
            Some(match &m.namespace {
                Some(ns) => format!("{ns}/{name}"),
                None => name,
            })
        })
        .collect()
}

fn names_one(p: &crds::Parsed) -> String {
    let m = p.object.metadata();
    format!(
        "{}/{}",
        m.and_then(|m| m.namespace.clone()).unwrap_or_default(),
        m.and_then(|m| m.name.clone()).unwrap_or_default()
    )
}

fn pa_mode(s: &ConfigSnapshot, ns: &str, name: &str) -> Option<MtlsMode> {
    s.objects.iter().find_map(|(p, _)| match &p.object {
        Object::PeerAuthentication(pa)
            if pa.metadata.namespace.as_deref() == Some(ns)
                && pa.metadata.name.as_deref() == Some(name) =>
        {
            Some(pa.mode())
        }
        _ => None,
    })
}

/// Waits for a published snapshot that satisfies `done`; returns it and
/// how many snapshots were published meanwhile.
async fn wait_for(
    rx: &mut watch::Receiver<SharedSnapshot>,
    done: impl Fn(&ConfigSnapshot) -> bool,
) -> (SharedSnapshot, usize) {
    let until = Instant::now() + DEADLINE;
    let mut published = 0;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let changed = tokio::time::timeout(left, rx.changed()).await;
        assert!(
            matches!(changed, Ok(Ok(()))),
            "no matching snapshot within {DEADLINE:?}; last: {:?}",
            rx.borrow()
                .objects
                .iter()
                .map(|(p, _)| p.object.metadata().and_then(|m| m.name.clone()))
                .collect::<Vec<_>>()
        );
        published += 1;
        let snap = rx.borrow_and_update().clone();
        if done(&snap) {
            return (snap, published);
        }
    }
}

/// Asserts that nothing is published for `quiet`.
async fn assert_quiet(rx: &mut watch::Receiver<SharedSnapshot>, quiet: Duration) {
    let changed = tokio::time::timeout(quiet, rx.changed()).await;
    assert!(
        changed.is_err(),
        "unexpected snapshot: {:?}",
        names(&rx.borrow(), "Pod")
    );
}

fn is_watch_of(path: &'static str) -> impl Fn(&fake_api::Seen) -> bool {
    move |s| s.path() == path && s.is_watch()
}

fn is_list_of(path: &'static str) -> impl Fn(&fake_api::Seen) -> bool {
    move |s| s.path() == path && !s.is_watch()
}

/// Log lines written while the guard lives (on this thread, which runs
/// every task of a `#[tokio::test]`).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn lines_with(&self, needle: &str) -> Vec<String> {
        let bytes = self.0.lock().expect("the log buffer is not poisoned");
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

#[tokio::test]
async fn the_first_list_pages_through_continue_tokens_and_keeps_trimmed_objects() {
    let (api, client) = FakeApi::start();
    serve_istio(&api);
    populate(&api);
    for i in 0..4 {
        api.apply(
            "pods",
            pod(
                "bar",
                &format!("job-{i}"),
                Some(&format!("10.2.0.{i}")),
                "Running",
            ),
        );
    }
    api.apply("pods", pod("bar", "pending-0", None, "Pending"));
    api.apply("pods", pod("bar", "done-0", Some("10.2.0.9"), "Succeeded"));
    let (rx, task) = start(
        client,
        KubeOptions {
            page_size: 3,
            ..opts()
        },
    )
    .await;
    let snap = rx.borrow().clone();

    // 8 pods, 3 a page: three requests, the later ones with the token.
    let lists: Vec<fake_api::Seen> = api
        .requests()
        .into_iter()
        .filter(|s| s.path() == "/api/v1/pods" && !s.is_watch())
        .collect();
    let uris: Vec<&str> = lists.iter().map(|s| s.uri.as_str()).collect();
    assert_eq!(
        uris[0],
        "/api/v1/pods?&fieldSelector=status.phase%21%3DSucceeded%2Cstatus.phase%21%3DFailed&limit=3"
    );
    assert_eq!(
        lists[0].param("fieldSelector").as_deref(),
        Some(POD_FIELD_SELECTOR)
    );
    let tokens: Vec<Option<String>> = lists.iter().map(|s| s.param("continue")).collect();
    assert_eq!(tokens.len(), 3, "{uris:#?}");
    assert_eq!(tokens[0], None);
    assert!(
        tokens[1]
            .as_deref()
            .is_some_and(|t| t.starts_with("page-3-")),
        "{uris:#?}"
    );
    assert!(
        tokens[2]
            .as_deref()
            .is_some_and(|t| t.starts_with("page-6-")),
        "{uris:#?}"
    );
    assert!(
        lists
            .iter()
            .all(|s| s.param("limit").as_deref() == Some("3"))
    );
    for path in [
        "/api/v1/namespaces",
        "/api/v1/services",
        "/apis/security.istio.io/v1/peerauthentications",
        "/apis/networking.istio.io/v1/destinationrules",
    ] {
        assert!(
            api.requests()
                .iter()
                .any(|s| s.uri == format!("{path}?&limit=3")),
            "{path} listed"
        );
    }

    // Every pod listed, minus the one without an address and the finished one.
    assert_eq!(
        names(&snap, "Pod"),
        [
            "bar/job-0",
            "bar/job-1",
            "bar/job-2",
            "bar/job-3",
            "foo/web-a",
            "foo/web-b"
        ]
    );
    assert_eq!(names(&snap, "Namespace"), ["foo"]);
    assert_eq!(names(&snap, "Service"), ["foo/web"]);
    assert_eq!(names(&snap, "PeerAuthentication"), ["foo/strict"]);
    assert_eq!(names(&snap, "DestinationRule"), ["foo/web"]);
    assert!(snap.errors.is_empty(), "{:?}", snap.errors);
    for (p, seen) in &snap.objects {
        let m = p.object.metadata().expect("metadata");
        assert_eq!(
            m.managed_fields,
            None,
            "{} keeps no managedFields",
            p.object.kind()
        );
        // Policies (and everything else) date from their creation.
        assert_eq!(*seen, CREATED, "{} {:?}", p.object.kind(), m.name);
        assert_eq!(p.file, "kubernetes");
    }
    let Some(Object::Pod(web)) = snap
        .objects
        .iter()
        .map(|(p, _)| &p.object)
        .find(|o| o.kind() == "Pod")
    else {
        panic!("a pod");
    };
    let spec = web.spec.as_ref().expect("a trimmed spec");
    assert_eq!(spec.containers[0].image, None, "images are not kept");
    assert_eq!(spec.node_name, None);
    assert_eq!(spec.containers[1].name, "istio-proxy");
    let status = web.status.as_ref().expect("a trimmed status");
    assert_eq!(status.pod_ips, None);
    let ready = status.conditions.as_ref().expect("the Ready condition");
    assert_eq!(
        (ready[0].type_.as_str(), ready[0].status.as_str()),
        ("Ready", "True")
    );
    assert_eq!(ready[0].last_transition_time, None);

    // The watches start from the list's resource version.
    let (_, watch) = api
        .wait_request(0, DEADLINE, is_watch_of("/api/v1/pods"))
        .await;
    assert!(
        watch.uri.starts_with("/api/v1/pods?&watch=true&timeoutSeconds=290&fieldSelector=status.phase%21%3DSucceeded%2Cstatus.phase%21%3DFailed&allowWatchBookmarks=true&resourceVersion="),
        "{}",
        watch.uri
    );
    task.abort();
}

#[tokio::test]
async fn watch_events_apply_in_order_and_a_burst_is_one_snapshot() {
    let (api, client) = FakeApi::start();
    serve_istio(&api);
    populate(&api);
    let debounce = Duration::from_millis(300);
    let (mut rx, task) = start(client, KubeOptions { debounce, ..opts() }).await;
    rx.borrow_and_update();
    api.wait_request(0, DEADLINE, is_watch_of("/api/v1/services"))
        .await;
    api.wait_request(0, DEADLINE, is_watch_of("/api/v1/pods"))
        .await;

    // One burst: each object's events apply in the order sent.
    api.apply("services", service("foo", "api", 80));
    api.apply("services", service("foo", "api", 81));
    api.apply("pods", pod("foo", "api-x", Some("10.1.0.7"), "Running"));
    api.delete("pods", "foo", "api-x");
    api.delete("pods", "foo", "web-a");
    api.apply("pods", pod("foo", "web-a", Some("10.1.0.8"), "Running"));
    api.delete("pods", "foo", "web-b");
    let (snap, published) = wait_for(&mut rx, |s| names(s, "Service").len() == 2).await;
    assert_eq!(published, 1, "one snapshot for the burst");
    assert_eq!(names(&snap, "Service"), ["foo/api", "foo/web"]);
    let port = snap.objects.iter().find_map(|(p, _)| match &p.object {
        Object::Service(s) if s.metadata.name.as_deref() == Some("api") => {
            Some(s.spec.as_ref()?.ports.as_ref()?[0].port)
        }
        _ => None,
    });
    assert_eq!(port, Some(81), "MODIFIED after ADDED");
    assert_eq!(names(&snap, "Pod"), ["foo/web-a"]);
    let ip = snap.objects.iter().find_map(|(p, _)| match &p.object {
        Object::Pod(p) => p.status.as_ref()?.pod_ip.clone(),
        _ => None,
    });
    assert_eq!(ip.as_deref(), Some("10.1.0.8"), "re-created after DELETED");

    // A change the trimmed pod does not keep publishes nothing.
    let mut noisy = pod("foo", "web-a", Some("10.1.0.8"), "Running");
    noisy["status"]["hostIP"] = json!("192.0.2.99");
    noisy["status"]["conditions"][0]["lastProbeTime"] = json!("2024-01-01T00:00:00Z");
    noisy["metadata"]["managedFields"][0]["manager"] = json!("kubelet");
    api.apply("pods", noisy);
    assert_quiet(&mut rx, debounce * 3).await;

    // A pod that finishes leaves the mesh.
    api.apply("pods", pod("foo", "web-a", Some("10.1.0.8"), "Succeeded"));
    let (snap, _) = wait_for(&mut rx, |s| names(s, "Pod").is_empty()).await;
    assert_eq!(names(&snap, "Service"), ["foo/api", "foo/web"]);
    task.abort();
}

#[tokio::test]
async fn an_ended_watch_resumes_from_the_last_event_or_bookmark_without_a_relist() {
    let (api, client) = FakeApi::start();
    serve_istio(&api);
    populate(&api);
    let (mut rx, task) = start(client, opts()).await;
    rx.borrow_and_update();
    let (first, _) = api
        .wait_request(0, DEADLINE, is_watch_of("/api/v1/pods"))
        .await;

    // A bookmark moves the resource version on; the server then ends the watch.
    let bookmark = api.bookmark("pods");
    api.end_watches("pods");
    let (resumed, seen) = api
        .wait_request(first + 1, DEADLINE, is_watch_of("/api/v1/pods"))
        .await;
    assert!(seen.uri.contains("watch=true"), "{}", seen.uri);
    assert!(
        seen.uri.ends_with(&format!(
            "&allowWatchBookmarks=true&resourceVersion={bookmark}"
        )),
        "resumed from the bookmark: {}",
        seen.uri
    );
    // The resumed watch delivers.
    api.apply("pods", pod("foo", "web-c", Some("10.1.0.3"), "Running"));
    wait_for(&mut rx, |s| {
        names(s, "Pod").contains(&"foo/web-c".to_string())
    })
    .await;

    // Without a bookmark, from the last event's version.
    let (first_svc, _) = api
        .wait_request(0, DEADLINE, is_watch_of("/api/v1/services"))
        .await;
    let last = api.apply("services", service("foo", "web", 90));
    wait_for(&mut rx, |s| {
        s.objects.iter().any(|(p, _)| match &p.object {
            Object::Service(svc) => svc
                .spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .is_some_and(|p| p[0].port == 90),
            _ => false,
        })
    })
    .await;
    api.end_watches("services");
    let (_, seen) = api
        .wait_request(first_svc + 1, DEADLINE, is_watch_of("/api/v1/services"))
        .await;
    assert!(
        seen.uri
            .ends_with(&format!("&allowWatchBookmarks=true&resourceVersion={last}")),
        "resumed from the last event: {}",
        seen.uri
    );

    // Nothing was listed again.
    let after: Vec<String> = api.requests()[resumed..]
        .iter()
        .filter(|s| !s.is_watch() && (s.path() == "/api/v1/pods" || s.path() == "/api/v1/services"))
        .map(|s| s.uri.clone())
        .collect();
    assert!(after.is_empty(), "no relist: {after:?}");
    task.abort();
}

#[tokio::test]
async fn gone_relists_and_drops_an_object_deleted_during_the_gap() {
    let (api, client) = FakeApi::start();
    serve_istio(&api);
    populate(&api);
    let (mut rx, task) = start(client, opts()).await;
    assert_eq!(
        names(&rx.borrow_and_update(), "Pod"),
        ["foo/web-a", "foo/web-b"]
    );
    let (first, _) = api
        .wait_request(0, DEADLINE, is_watch_of("/api/v1/pods"))
        .await;
    let lists_before = api
        .requests()
        .iter()
        .filter(|s| is_list_of("/api/v1/pods")(s))
        .count();

    // The watch drops; meanwhile web-b goes and the history is compacted.
    api.delete_unseen("pods", "foo", "web-b");
    let (snap, _) = wait_for(&mut rx, |s| names(s, "Pod") == ["foo/web-a"]).await;
    assert_eq!(names(&snap, "PeerAuthentication"), ["foo/strict"]);

    // The resumed watch got 410 Gone; then the pods were listed again, and
    // watched from the new list.
    let (resumed, seen) = api
        .wait_request(first + 1, DEADLINE, is_watch_of("/api/v1/pods"))
        .await;
    assert!(seen.uri.contains("resourceVersion="), "{}", seen.uri);
    let (relist, _) = api
        .wait_request(resumed + 1, DEADLINE, is_list_of("/api/v1/pods"))
        .await;
    let lists_after = api
        .requests()
        .iter()
        .filter(|s| is_list_of("/api/v1/pods")(s))
        .count();
    assert_eq!(lists_after, lists_before + 1, "one relist");
    api.wait_request(relist + 1, DEADLINE, is_watch_of("/api/v1/pods"))
        .await;
    api.apply("pods", pod("foo", "web-d", Some("10.1.0.4"), "Running"));
    wait_for(&mut rx, |s| names(s, "Pod") == ["foo/web-a", "foo/web-d"]).await;
    task.abort();
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_and_the_source_recovers() {
    let (api, client) = FakeApi::start();
    serve_istio(&api);
    populate(&api);
    api.fail_next_list("services", 503);
    api.fail_next_watch("namespaces", 500);
    let started = Instant::now();
    let (mut rx, task) = start(client, opts()).await;
    assert_eq!(names(&rx.borrow_and_update(), "Service"), ["foo/web"]);
    assert!(started.elapsed() < DEADLINE);

    // The failed list was retried after a backoff (kube-rs's default: 800 ms
    // and up), not at once.
    let lists: Vec<fake_api::Seen> = api
        .requests()
        .into_iter()
        .filter(|s| is_list_of("/api/v1/services")(s))
        .collect();
    assert_eq!(lists.len(), 2, "{lists:?}");
    let waited = lists[1].at - lists[0].at;
    assert!(
        waited >= Duration::from_millis(700),
        "retried after {waited:?}"
    );

    // So was the failed watch; changes arrive once it is back.
    let (first, failed) = api
        .wait_request(0, DEADLINE, is_watch_of("/api/v1/namespaces"))
        .await;
    let (_, retried) = api
        .wait_request(first + 1, DEADLINE, is_watch_of("/api/v1/namespaces"))
        .await;
    let waited = retried.at - failed.at;
    assert!(
        waited >= Duration::from_millis(700),
        "retried after {waited:?}"
    );
    assert_eq!(
        retried.param("resourceVersion"),
        failed.param("resourceVersion")
    );
    api.apply("namespaces", namespace("bar", &[]));
    wait_for(&mut rx, |s| names(s, "Namespace") == ["bar", "foo"]).await;
    task.abort();
}

#[tokio::test]
async fn istio_kinds_are_watched_at_the_newest_version_served() {
    // (security.istio.io serves, networking.istio.io serves, PA version, DR version)
    let table: [(&[&'static str], &[&'static str], &str, &str); 4] = [
        (
            &["v1", "v1beta1"],
            &["v1", "v1alpha3", "v1beta1"],
            "v1",
            "v1",
        ),
        (&["v1beta1"], &["v1alpha3", "v1beta1"], "v1beta1", "v1beta1"),
        (&["v1beta1", "v1"], &["v1alpha3"], "v1", "v1alpha3"),
        // A newer version this project does not read is not used.
        (
            &["v1beta1", "v2alpha1"],
            &["v1beta1", "v1alpha3"],
            "v1beta1",
            "v1beta1",
        ),
    ];
    for (security, networking, pa_version, dr_version) in table {
        let (api, client) = FakeApi::start();
        api.serve_group("security.istio.io", security);
        api.serve_group("networking.istio.io", networking);
        populate(&api);
        let (rx, task) = start(client, opts()).await;
        let snap = rx.borrow().clone();
        let case = format!("{security:?} {networking:?}");
        for (group, version, plural) in [
            ("security.istio.io", pa_version, "peerauthentications"),
            ("networking.istio.io", dr_version, "destinationrules"),
        ] {
            let uris: Vec<String> = api.requests().into_iter().map(|s| s.uri).collect();
            assert!(
                uris.contains(&format!("/apis/{group}")),
                "{case}: {uris:#?}"
            );
            assert!(
                uris.contains(&format!("/apis/{group}/{version}")),
                "{case}: {uris:#?}"
            );
            let path = format!("/apis/{group}/{version}/{plural}");
            assert!(
                uris.contains(&format!("{path}?&limit=500")),
                "{case}: {uris:#?}"
            );
            let expected = format!("{group}/{version}");
            let api_version = snap
                .objects
                .iter()
                .find(|(p, _)| p.api_version.starts_with(group))
                .map(|(p, _)| p.api_version.clone());
            assert_eq!(api_version.as_deref(), Some(expected.as_str()), "{case}");
            let watched = api
                .wait_request(0, DEADLINE, |s| s.is_watch() && s.path() == path)
                .await;
            assert!(watched.1.uri.contains("allowWatchBookmarks=true"), "{case}");
        }
        assert_eq!(names(&snap, "PeerAuthentication"), ["foo/strict"], "{case}");
        assert_eq!(names(&snap, "DestinationRule"), ["foo/web"], "{case}");
        assert!(snap.errors.is_empty(), "{case}: {:?}", snap.errors);
        task.abort();
    }
}

#[tokio::test]
async fn a_kind_not_served_is_empty_until_its_crd_is_installed() {
    let (logs, _guard) = Logs::capture();
    let (api, client) = FakeApi::start();
    api.serve_group("networking.istio.io", &["v1"]);
    populate(&api);
    let (mut rx, task) = start(client, opts()).await;
    let snap = rx.borrow_and_update().clone();
    assert!(names(&snap, "PeerAuthentication").is_empty());
    assert_eq!(names(&snap, "DestinationRule"), ["foo/web"]);
    assert_eq!(names(&snap, "Pod"), ["foo/web-a", "foo/web-b"]);
    assert!(snap.errors.is_empty(), "{:?}", snap.errors);
    // Never listed: there is nothing to list.
    assert!(
        !api.requests()
            .iter()
            .any(|s| s.path().contains("peerauthentications")),
        "{:?}",
        api.requests()
    );

    // Discovery goes on in the background and finds the CRD once installed.
    api.serve_group("security.istio.io", &["v1beta1"]);
    let (snap, _) = wait_for(&mut rx, |s| !names(s, "PeerAuthentication").is_empty()).await;
    assert_eq!(pa_mode(&snap, "foo", "strict"), Some(MtlsMode::Strict));
    let asked = api
        .requests()
        .iter()
        .filter(|s| s.uri == "/apis/security.istio.io")
        .count();
    assert!(asked >= 2, "discovery retried: {asked}");
    let warned = logs.lines_with("not served by the cluster");
    assert_eq!(warned.len(), 1, "warned once: {warned:#?}");
    assert!(warned[0].contains("WARN"), "{}", warned[0]);
    assert!(warned[0].contains("PeerAuthentication"), "{}", warned[0]);
    api.wait_request(
        0,
        DEADLINE,
        is_watch_of("/apis/security.istio.io/v1beta1/peerauthentications"),
    )
    .await;
    task.abort();
}

#[tokio::test]
async fn a_failed_discovery_is_retried_and_not_taken_for_a_missing_crd() {
    let (api, client) = FakeApi::start();
    serve_istio(&api);
    populate(&api);
    api.fail_next_discovery("security.istio.io", 503);
    let (rx, task) = start(client, opts()).await;
    // Not published without the policy: an unanswered discovery is not
    // "no PeerAuthentications".
    assert_eq!(
        pa_mode(&rx.borrow(), "foo", "strict"),
        Some(MtlsMode::Strict)
    );
    let asked: Vec<fake_api::Seen> = api
        .requests()
        .into_iter()
        .filter(|s| s.uri == "/apis/security.istio.io")
        .collect();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert!(asked[1].at - asked[0].at >= opts().rediscover_min);
    task.abort();
}

#[tokio::test]
async fn an_invalid_policy_is_reported_and_its_last_good_version_stays_in_force() {
    let (logs, _guard) = Logs::capture();
    let (api, client) = FakeApi::start();
    serve_istio(&api);
    populate(&api);
    api.apply(
        "peerauthentications",
        peer_authentication("foo", "other", MtlsMode::Permissive, CREATED + 60),
    );
    let (mut rx, task) = start(client, opts()).await;
    rx.borrow_and_update();
    api.wait_request(
        0,
        DEADLINE,
        is_watch_of("/apis/security.istio.io/v1/peerauthentications"),
    )
    .await;

    // `strict` breaks while `other` changes validly.
    let broken_strict = with_bad_mode(peer_authentication(
        "foo",
        "strict",
        MtlsMode::Strict,
        CREATED,
    ));
    api.apply("peerauthentications", broken_strict.clone());
    api.apply(
        "peerauthentications",
        peer_authentication("foo", "other", MtlsMode::Disable, CREATED + 60),
    );
    let (snap, _) = wait_for(&mut rx, |s| {
        !s.errors.is_empty() && pa_mode(s, "foo", "other") == Some(MtlsMode::Disable)
    })
    .await;
    assert_eq!(snap.errors.len(), 1, "{:?}", snap.errors);
    let e = &snap.errors[0];
    assert_eq!(e.kind.as_deref(), Some("PeerAuthentication"));
    assert_eq!(
        (e.namespace.as_deref(), e.name.as_deref()),
        (Some("foo"), Some("strict"))
    );
    assert_eq!(e.field.as_deref(), Some("spec.mtls.mode"));
    assert!(e.reason.contains("STRICTEST"), "{e}");
    assert_eq!(
        pa_mode(&snap, "foo", "strict"),
        Some(MtlsMode::Strict),
        "last good kept"
    );
    let seen = snap
        .objects
        .iter()
        .find(|(p, _)| names_one(p) == "foo/strict")
        .map(|(_, at)| *at);
    assert_eq!(seen, Some(CREATED), "the kept version keeps its age");
    assert_eq!(
        names(&snap, "Pod"),
        ["foo/web-a", "foo/web-b"],
        "the rest applies"
    );
    let warned = logs.lines_with("rejected cluster object");
    assert_eq!(warned.len(), 1, "{warned:#?}");
    for part in [
        "WARN",
        "kind=\"PeerAuthentication\"",
        "namespace=foo",
        "name=strict",
        "field=\"spec.mtls.mode\"",
        "STRICTEST",
        "last_good_kept=true",
    ] {
        assert!(warned[0].contains(part), "{part} in {}", warned[0]);
    }

    // A new object that was never valid is only an error.
    let mut port_level = peer_authentication("foo", "ports", MtlsMode::Strict, CREATED);
    port_level["spec"]["portLevelMtls"] = json!({"8080": {"mode": "DISABLE"}});
    api.apply("peerauthentications", port_level);
    let (snap, _) = wait_for(&mut rx, |s| s.errors.len() == 2).await;
    assert_eq!(
        names(&snap, "PeerAuthentication"),
        ["foo/other", "foo/strict"]
    );
    assert!(
        snap.errors
            .iter()
            .any(|e| e.name.as_deref() == Some("ports")
                && e.field.as_deref() == Some("spec.portLevelMtls")),
        "{:?}",
        snap.errors
    );

    // Fixed: the new version applies and the error goes.
    api.apply(
        "peerauthentications",
        peer_authentication("foo", "strict", MtlsMode::Permissive, CREATED),
    );
    let (snap, _) = wait_for(&mut rx, |s| s.errors.len() == 1).await;
    assert_eq!(pa_mode(&snap, "foo", "strict"), Some(MtlsMode::Permissive));

    // Broken again, then deleted: gone, last good version and error alike.
    api.apply("peerauthentications", broken_strict);
    wait_for(&mut rx, |s| s.errors.len() == 2).await;
    api.delete("peerauthentications", "foo", "strict");
    api.delete("peerauthentications", "foo", "ports");
    let (snap, _) = wait_for(&mut rx, |s| s.errors.is_empty()).await;
    assert_eq!(names(&snap, "PeerAuthentication"), ["foo/other"]);
    task.abort();
}

#[tokio::test]
async fn nothing_is_published_until_every_kind_is_listed() {
    // Either kind held last keeps the source waiting: a built-in one and an
    // Istio one.
    for (first, last) in [("pods", "destinationrules"), ("destinationrules", "pods")] {
        let (api, client) = FakeApi::start();
        serve_istio(&api);
        populate(&api);
        api.hold_lists(first);
        api.hold_lists(last);
        let source = tokio::spawn(watch_cluster(client, opts()));

        // Everything else is listed and watched; the source still waits.
        for path in [
            "/api/v1/namespaces",
            "/api/v1/services",
            "/apis/security.istio.io/v1/peerauthentications",
        ] {
            api.wait_request(0, DEADLINE, |s| s.path() == path && s.is_watch())
                .await;
        }
        api.release(first);
        api.wait_request(0, DEADLINE, |s| s.path().ends_with(first) && s.is_watch())
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!source.is_finished(), "returned before {last} were listed");

        api.release(last);
        let (rx, task) = tokio::time::timeout(DEADLINE, source)
            .await
            .expect("returns once everything is listed")
            .expect("the task did not panic")
            .expect("the source starts");
        let snap = rx.borrow().clone();
        assert_eq!(names(&snap, "Pod"), ["foo/web-a", "foo/web-b"]);
        assert_eq!(names(&snap, "DestinationRule"), ["foo/web"]);
        assert_eq!(names(&snap, "PeerAuthentication"), ["foo/strict"]);
        task.abort();
    }
}

#[tokio::test]
async fn giving_up_before_the_first_snapshot_stops_the_watches() {
    let (api, client) = FakeApi::start();
    serve_istio(&api);
    api.hold_lists("pods");
    let source = tokio::spawn(watch_cluster(client, opts()));
    api.wait_request(0, DEADLINE, is_watch_of("/api/v1/services"))
        .await;
    assert!(!source.is_finished(), "cannot be ready while pods are held");
    // The caller gives up: its future is dropped.
    source.abort();
    let _ = source.await;
    let before = api.requests().len();
    api.release("pods");
    api.apply("services", service("foo", "late", 80));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after: Vec<String> = api.requests()[before..]
        .iter()
        .map(|s| s.uri.clone())
        .collect();
    assert!(
        after.is_empty(),
        "no request after the caller gave up: {after:?}"
    );
}

#[tokio::test]
async fn a_client_comes_from_a_kubeconfig_file() {
    let dir = crate::test_support::TempDir::new("kubeconfig");
    dir.write(
        "config",
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
         clusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:6443\n    insecure-skip-tls-verify: true\n\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: mesh\n\
         users:\n- name: test\n  user:\n    token: not-a-real-token\n",
    );
    let client = client(Some(&dir.path("config")))
        .await
        .expect("a client from the file");
    assert_eq!(client.default_namespace(), "mesh");
    let missing = client_err(&dir.path("missing")).await;
    assert!(missing.contains("missing"), "{missing}");
}

async fn client_err(path: &Path) -> String {
    match client(Some(path)).await {
        Ok(_) => panic!("no client from {}", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn sidecar(ns: &str, name: &str, hosts: &[&str]) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"namespace": ns, "name": name, "creationTimestamp": "2024-01-01T00:00:00Z"},
        "spec": {"egress": [{"hosts": hosts}]},
    })
}

fn sidecar_hosts(s: &ConfigSnapshot, ns: &str, name: &str) -> Option<Vec<String>> {
    s.objects.iter().find_map(|(p, _)| match &p.object {
        Object::Sidecar(sc)
            if sc.metadata.namespace.as_deref() == Some(ns)
                && sc.metadata.name.as_deref() == Some(name) =>
        {
            Some(sc.spec.egress.first()?.hosts.clone())
        }
        _ => None,
    })
}

#[tokio::test]
async fn sidecars_are_listed_and_watched_like_the_other_istio_kinds() {
    let (api, client) = FakeApi::start();
    serve_istio(&api);
    populate(&api);
    api.apply("sidecars", sidecar("foo", "scope", &["./*"]));
    let (mut rx, task) = start(client, opts()).await;
    let snap = rx.borrow_and_update().clone();
    assert_eq!(names(&snap, "Sidecar"), ["foo/scope"]);
    assert_eq!(
        sidecar_hosts(&snap, "foo", "scope"),
        Some(vec!["./*".to_string()])
    );
    api.wait_request(
        0,
        DEADLINE,
        is_watch_of("/apis/networking.istio.io/v1/sidecars"),
    )
    .await;

    // A change through the watch.
    api.apply("sidecars", sidecar("foo", "scope", &["bar/*"]));
    let (snap, _) = wait_for(&mut rx, |s| {
        sidecar_hosts(s, "foo", "scope") == Some(vec!["bar/*".to_string()])
    })
    .await;
    assert!(snap.errors.is_empty(), "{:?}", snap.errors);

    // An invalid one is an error naming it; the valid ones stay.
    api.apply(
        "sidecars",
        sidecar("foo", "broken", &["no-namespace.example.com"]),
    );
    let (snap, _) = wait_for(&mut rx, |s| !s.errors.is_empty()).await;
    let errors: Vec<String> = snap.errors.iter().map(ToString::to_string).collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("Sidecar foo/broken: spec.egress[0].hosts[0]")),
        "{errors:?}"
    );
    assert_eq!(names(&snap, "Sidecar"), ["foo/scope"]);
    task.abort();
}

#[tokio::test]
async fn without_the_sidecar_crd_the_other_kinds_still_load() {
    let (api, client) = FakeApi::start();
    api.serve_group("security.istio.io", &["v1", "v1beta1"]);
    api.serve_kinds(
        "networking.istio.io",
        &["v1", "v1alpha3", "v1beta1"],
        &[("DestinationRule", "destinationrules")],
    );
    populate(&api);
    let (mut rx, task) = start(client, opts()).await;
    let snap = rx.borrow_and_update().clone();
    assert!(names(&snap, "Sidecar").is_empty());
    assert_eq!(names(&snap, "DestinationRule"), ["foo/web"]);
    assert!(snap.errors.is_empty(), "{:?}", snap.errors);
    assert!(
        !api.requests().iter().any(|s| s.path().contains("sidecars")),
        "never listed"
    );

    // Installed later: discovery finds it.
    api.serve_group("networking.istio.io", &["v1", "v1alpha3", "v1beta1"]);
    api.apply("sidecars", sidecar("foo", "scope", &["./*"]));
    let (snap, _) = wait_for(&mut rx, |s| !names(s, "Sidecar").is_empty()).await;
    assert_eq!(names(&snap, "Sidecar"), ["foo/scope"]);
    task.abort();
}
