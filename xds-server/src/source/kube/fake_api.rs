//! A scripted Kubernetes API server for the source's tests, in kube-rs's
//! own pattern: a `tower_test` mock service behind a real `kube::Client`,
//! answered by a task that keeps collections of objects and speaks the API
//! server's protocol for what the source uses: discovery of the Istio
//! groups, paginated lists (`limit`, `continue`), and watches (replay from
//! `resourceVersion`, ERROR 410 for a compacted one, BOOKMARK events, the
//! server ending a watch). Tests change objects, script failures, hold
//! lists back, and read every request URI.

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIResource, APIResourceList, GroupVersionForDiscovery, ListMeta, Status,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub(super) type Body = UnsyncBoxBody<Bytes, Infallible>;
type Handle = tower_test::mock::Handle<Request<kube::client::Body>, Response<Body>>;
type Reply = tower_test::mock::SendResponse<Response<Body>>;

/// A request the server saw.
#[derive(Clone, Debug)]
pub(super) struct Seen {
    pub at: Instant,
    /// Path and query, as sent.
    pub uri: String,
}

impl Seen {
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }

    /// The decoded value of a query parameter.
    pub fn param(&self, name: &str) -> Option<String> {
        query_param(&self.uri, name)
    }

    pub fn is_watch(&self) -> bool {
        self.param("watch").as_deref() == Some("true")
    }
}

fn query_param(uri: &str, name: &str) -> Option<String> {
    let query = uri.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One kind of object the server holds.
struct Collection {
    group: &'static str,
    kind: &'static str,
    objects: BTreeMap<(String, String), Value>,
    /// Events after `compacted`, for watches that resume: (rv, type, object).
    history: Vec<(u64, &'static str, Value)>,
    /// A watch from a resource version older than this gets 410 Gone.
    compacted: u64,
    /// Open watches: each gets every new event.
    watches: Vec<mpsc::UnboundedSender<Bytes>>,
}

/// Discovery: what a group serves.
struct Group {
    versions: Vec<&'static str>,
    /// kind, plural
    kinds: Vec<(&'static str, &'static str)>,
}

struct State {
    rv: u64,
    /// By plural name (`pods`, `peerauthentications`).
    collections: BTreeMap<&'static str, Collection>,
    groups: BTreeMap<&'static str, Group>,
    seen: Vec<Seen>,
    /// Status codes to answer the next lists (or watches) of a collection with.
    fail_lists: BTreeMap<&'static str, VecDeque<u16>>,
    fail_watches: BTreeMap<&'static str, VecDeque<u16>>,
    /// Status codes to answer the next discoveries of a group with.
    fail_discovery: BTreeMap<&'static str, VecDeque<u16>>,
    /// Collections whose lists are held back, and the held requests.
    holding: Vec<&'static str>,
    held: Vec<(String, Reply)>,
}

/// The fake API server. Dropping it stops it.
pub(super) struct FakeApi {
    state: Arc<Mutex<State>>,
    server: JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn body(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into()).boxed_unsync()
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(body(value.to_string()));
    *response.status_mut() = code;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A `Status` as the API server sends it.
pub(super) fn status(code: u16, reason: &str, message: &str) -> Value {
    let status = Status {
        code: Some(i32::from(code)),
        message: Some(message.to_string()),
        reason: Some(reason.to_string()),
        status: Some("Failure".to_string()),
        metadata: ListMeta::default(),
        details: None,
    };
    serde_json::to_value(&status).expect("a Status serializes")
}

fn error_response(code: u16, reason: &str, message: &str) -> Response<Body> {
    let http = StatusCode::from_u16(code).expect("a valid status code");
    json_response(http, &status(code, reason, message))
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

impl FakeApi {
    /// A server holding empty core collections (namespaces, services,
    /// pods) and the Istio kinds, with no Istio group served yet; and a
    /// client talking to it.
    pub fn start() -> (FakeApi, kube::Client) {
        let mut collections = BTreeMap::new();
        let mut add = |plural, group, kind| {
            collections.insert(
                plural,
                Collection {
                    group,
                    kind,
                    objects: BTreeMap::new(),
                    history: Vec::new(),
                    compacted: 0,
                    watches: Vec::new(),
                },
            );
        };
        add("namespaces", "", "Namespace");
        add("services", "", "Service");
        add("pods", "", "Pod");
        add(
            "peerauthentications",
            "security.istio.io",
            "PeerAuthentication",
        );
        add("destinationrules", "networking.istio.io", "DestinationRule");
        add("sidecars", "networking.istio.io", "Sidecar");
        let state = Arc::new(Mutex::new(State {
            rv: 100,
            collections,
            groups: BTreeMap::new(),
            seen: Vec::new(),
            fail_lists: BTreeMap::new(),
            fail_watches: BTreeMap::new(),
            fail_discovery: BTreeMap::new(),
            holding: Vec::new(),
            held: Vec::new(),
        }));
        let (service, handle) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<Body>>();
        let server = tokio::spawn(serve(handle, state.clone()));
        let client = kube::Client::new(service, "default");
        (FakeApi { state, server }, client)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("the fake API state is not poisoned")
    }

    /// Serves `group` at `versions` (discovery and requests). The Istio
    /// groups know their kinds.
    pub fn serve_group(&self, group: &'static str, versions: &[&'static str]) {
        let kinds = match group {
            "security.istio.io" => vec![("PeerAuthentication", "peerauthentications")],
            "networking.istio.io" => vec![
                ("DestinationRule", "destinationrules"),
                ("Sidecar", "sidecars"),
            ],
            other => panic!("the fake serves no kinds in {other}"),
        };
        self.lock().groups.insert(
            group,
            Group {
                versions: versions.to_vec(),
                kinds,
            },
        );
    }

    /// Serves only `kinds` (kind, plural) of `group` at `versions`: a
    /// cluster where one CRD of a group is installed and another is not.
    pub fn serve_kinds(
        &self,
        group: &'static str,
        versions: &[&'static str],
        kinds: &[(&'static str, &'static str)],
    ) {
        self.lock().groups.insert(
            group,
            Group {
                versions: versions.to_vec(),
                kinds: kinds.to_vec(),
            },
        );
    }

    /// Creates or replaces an object (the API server's ADDED or MODIFIED);
    /// returns its new resource version.
    pub fn apply(&self, plural: &'static str, mut object: Value) -> u64 {
        let mut st = self.lock();
        st.rv += 1;
        let rv = st.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = (
            meta_str(&object, "namespace").to_string(),
            meta_str(&object, "name").to_string(),
        );
        let c = st.collection(plural);
        let kind = if c.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        c.objects.insert(key, object.clone());
        c.event(rv, kind, object);
        rv
    }

    /// Deletes an object (DELETED, with its last state and a new resource
    /// version); returns that version.
    pub fn delete(&self, plural: &'static str, namespace: &str, name: &str) -> u64 {
        let mut st = self.lock();
        st.rv += 1;
        let rv = st.rv;
        let c = st.collection(plural);
        let mut object = c
            .objects
            .remove(&(namespace.to_string(), name.to_string()))
            .expect("deleting an object the fake holds");
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        c.event(rv, "DELETED", object);
        rv
    }

    /// Deletes an object while no watch is open to see it, and compacts the
    /// history past it (as etcd does): a watch resuming from before it gets
    /// 410 Gone, and only a relist can tell the object is gone.
    pub fn delete_unseen(&self, plural: &'static str, namespace: &str, name: &str) {
        let mut st = self.lock();
        st.rv += 1;
        let rv = st.rv;
        let c = st.collection(plural);
        c.objects
            .remove(&(namespace.to_string(), name.to_string()))
            .expect("deleting an object the fake holds");
        c.watches.clear();
        c.history.clear();
        c.compacted = rv;
    }

    /// Sends a BOOKMARK at the current resource version; returns it.
    pub fn bookmark(&self, plural: &'static str) -> u64 {
        let mut st = self.lock();
        st.rv += 1;
        let rv = st.rv;
        let c = st.collection(plural);
        let api_version = c.api_version("v1");
        let object = json!({
            "kind": c.kind,
            "apiVersion": api_version,
            "metadata": {"resourceVersion": rv.to_string()}
        });
        let line = event_line("BOOKMARK", &object);
        c.watches.retain(|w| w.send(line.clone()).is_ok());
        rv
    }

    /// Ends every open watch of a collection, as the API server does when
    /// a watch times out.
    pub fn end_watches(&self, plural: &'static str) {
        self.lock().collection(plural).watches.clear();
    }

    /// Answers the next list of a collection with this HTTP status.
    pub fn fail_next_list(&self, plural: &'static str, code: u16) {
        self.lock()
            .fail_lists
            .entry(plural)
            .or_default()
            .push_back(code);
    }

    /// Answers the next watch of a collection with this HTTP status.
    pub fn fail_next_watch(&self, plural: &'static str, code: u16) {
        self.lock()
            .fail_watches
            .entry(plural)
            .or_default()
            .push_back(code);
    }

    /// Answers the next discovery of a group (`/apis/GROUP`) with this
    /// HTTP status.
    pub fn fail_next_discovery(&self, group: &'static str, code: u16) {
        self.lock()
            .fail_discovery
            .entry(group)
            .or_default()
            .push_back(code);
    }

    /// Holds back lists of a collection until [`FakeApi::release`].
    pub fn hold_lists(&self, plural: &'static str) {
        self.lock().holding.push(plural);
    }

    /// Answers the held lists of a collection, and lists from now on.
    pub fn release(&self, plural: &'static str) {
        let mut st = self.lock();
        st.holding.retain(|p| *p != plural);
        let held = std::mem::take(&mut st.held);
        for (uri, reply) in held {
            if collection_of(&uri).map(|(p, _)| p) == Some(plural.to_string()) {
                let response = st.respond_list(&uri);
                reply.send_response(response);
            } else {
                st.held.push((uri, reply));
            }
        }
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// Waits (up to `deadline`) for a request after the first `skip` that
    /// satisfies `matches`; returns it and its index.
    pub async fn wait_request(
        &self,
        skip: usize,
        deadline: Duration,
        matches: impl Fn(&Seen) -> bool,
    ) -> (usize, Seen) {
        let until = Instant::now() + deadline;
        loop {
            let found = self
                .requests()
                .into_iter()
                .enumerate()
                .skip(skip)
                .find(|(_, s)| matches(s));
            if let Some(found) = found {
                return found;
            }
            assert!(
                Instant::now() < until,
                "no such request within {deadline:?}; requests: {:#?}",
                self.requests().iter().map(|s| &s.uri).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The collection (plural) a resource path names, and the version asked for.
fn collection_of(uri: &str) -> Option<(String, String)> {
    let path = uri.split('?').next()?;
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", version, plural] => Some((plural.to_string(), version.to_string())),
        ["apis", _group, version, plural] => Some((plural.to_string(), version.to_string())),
        _ => None,
    }
}

impl Collection {
    fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    fn event(&mut self, rv: u64, kind: &'static str, object: Value) {
        let line = event_line(kind, &object);
        self.watches.retain(|w| w.send(line.clone()).is_ok());
        self.history.push((rv, kind, object));
    }

    /// The object as served at `version`: custom resources carry the
    /// version asked for (the API server converts between them).
    fn render(&self, object: &Value, version: &str) -> Value {
        let mut object = object.clone();
        if !self.group.is_empty() {
            object["apiVersion"] = json!(self.api_version(version));
        }
        object
    }
}

impl State {
    fn collection(&mut self, plural: &str) -> &mut Collection {
        self.collections
            .get_mut(plural)
            .unwrap_or_else(|| panic!("the fake has no collection {plural}"))
    }

    /// Whether the group of a collection serves `version`.
    fn serves(&self, plural: &str, version: &str) -> bool {
        let Some(c) = self.collections.get(plural) else {
            return false;
        };
        if c.group.is_empty() {
            return version == "v1";
        }
        self.groups
            .get(c.group)
            .is_some_and(|g| g.versions.contains(&version))
    }

    fn handle(&mut self, uri: String, reply: Reply) {
        self.seen.push(Seen {
            at: Instant::now(),
            uri: uri.clone(),
        });
        let path = uri.split('?').next().unwrap_or_default().to_string();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let response = match parts.as_slice() {
            ["apis", group] => self.discover_group(group),
            ["apis", group, version] => self.discover_version(group, version),
            _ => match collection_of(&uri) {
                Some((plural, version)) if self.serves(&plural, &version) => {
                    let plural = self
                        .collections
                        .keys()
                        .find(|k| **k == plural)
                        .copied()
                        .unwrap_or_default();
                    if query_param(&uri, "watch").as_deref() == Some("true") {
                        self.respond_watch(plural, &uri)
                    } else if let Some(code) = self
                        .fail_lists
                        .get_mut(plural)
                        .and_then(VecDeque::pop_front)
                    {
                        error_response(code, "InternalError", "scripted list failure")
                    } else if self.holding.contains(&plural) {
                        self.held.push((uri, reply));
                        return;
                    } else {
                        self.respond_list(&uri)
                    }
                }
                _ => error_response(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            },
        };
        reply.send_response(response);
    }

    fn discover_group(&mut self, group: &str) -> Response<Body> {
        if let Some(code) = self
            .fail_discovery
            .get_mut(group)
            .and_then(VecDeque::pop_front)
        {
            return error_response(code, "ServiceUnavailable", "scripted discovery failure");
        }
        let Some((name, g)) = self.groups.get_key_value(group) else {
            return error_response(
                404,
                "NotFound",
                "the server could not find the requested resource",
            );
        };
        let versions: Vec<GroupVersionForDiscovery> = g
            .versions
            .iter()
            .map(|v| GroupVersionForDiscovery {
                group_version: format!("{name}/{v}"),
                version: v.to_string(),
            })
            .collect();
        let api_group = APIGroup {
            name: name.to_string(),
            preferred_version: versions.first().cloned(),
            versions,
            server_address_by_client_cidrs: None,
        };
        json_response(
            StatusCode::OK,
            &serde_json::to_value(&api_group).expect("an APIGroup serializes"),
        )
    }

    fn discover_version(&self, group: &str, version: &str) -> Response<Body> {
        let Some(g) = self
            .groups
            .get(group)
            .filter(|g| g.versions.contains(&version))
        else {
            return error_response(
                404,
                "NotFound",
                "the server could not find the requested resource",
            );
        };
        let verbs = [
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "create",
            "update",
            "watch",
        ];
        let resources = g
            .kinds
            .iter()
            .flat_map(|(kind, plural)| {
                let main = APIResource {
                    name: plural.to_string(),
                    singular_name: kind.to_lowercase(),
                    namespaced: true,
                    kind: kind.to_string(),
                    verbs: verbs.iter().map(|v| v.to_string()).collect(),
                    categories: Some(vec!["istio-io".to_string()]),
                    ..APIResource::default()
                };
                let status = APIResource {
                    name: format!("{plural}/status"),
                    namespaced: true,
                    kind: kind.to_string(),
                    verbs: vec!["get".into(), "patch".into(), "update".into()],
                    ..APIResource::default()
                };
                [main, status]
            })
            .collect();
        let list = APIResourceList {
            group_version: format!("{group}/{version}"),
            resources,
        };
        json_response(
            StatusCode::OK,
            &serde_json::to_value(&list).expect("an APIResourceList serializes"),
        )
    }

    /// A page of a list: `limit` objects from the `continue` offset.
    fn respond_list(&mut self, uri: &str) -> Response<Body> {
        let Some((plural, version)) = collection_of(uri) else {
            return error_response(404, "NotFound", "no such collection");
        };
        let rv = self.rv;
        let c = self.collection(&plural);
        let offset: usize = query_param(uri, "continue")
            .and_then(|t| t.strip_prefix("page-")?.split('-').next()?.parse().ok())
            .unwrap_or(0);
        let limit: usize = query_param(uri, "limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(usize::MAX);
        let all: Vec<&Value> = c.objects.values().collect();
        let page: Vec<Value> = all
            .iter()
            .skip(offset)
            .take(limit)
            .map(|o| {
                let mut item = c.render(o, &version);
                // Items of a built-in kind's list carry no kind of their own.
                if c.group.is_empty()
                    && let Some(map) = item.as_object_mut()
                {
                    map.remove("kind");
                    map.remove("apiVersion");
                }
                item
            })
            .collect();
        let next = offset.saturating_add(limit);
        let meta = ListMeta {
            resource_version: Some(rv.to_string()),
            continue_: (next < all.len()).then(|| format!("page-{next}-rv{rv}")),
            remaining_item_count: (next < all.len()).then(|| (all.len() - next) as i64),
            self_link: None,
        };
        let list = json!({
            "kind": format!("{}List", c.kind),
            "apiVersion": c.api_version(&version),
            "metadata": meta,
            "items": page,
        });
        json_response(StatusCode::OK, &list)
    }

    /// A watch: replays the events after `resourceVersion`, then streams
    /// new ones until the server ends it. A compacted version gets an ERROR
    /// 410 event, as from the API server.
    fn respond_watch(&mut self, plural: &'static str, uri: &str) -> Response<Body> {
        if let Some(code) = self
            .fail_watches
            .get_mut(plural)
            .and_then(VecDeque::pop_front)
        {
            return error_response(code, "InternalError", "scripted watch failure");
        }
        let from: u64 = query_param(uri, "resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let version = collection_of(uri).map(|(_, v)| v).unwrap_or_default();
        let c = self.collection(plural);
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        if from < c.compacted {
            let gone = status(
                410,
                "Expired",
                &format!("too old resource version: {from} ({})", c.compacted),
            );
            let _ = tx.send(event_line("ERROR", &gone));
        } else {
            for (rv, kind, object) in &c.history {
                if *rv > from {
                    let _ = tx.send(event_line(kind, &c.render(object, &version)));
                }
            }
            c.watches.push(tx);
        }
        let frames = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
            .map(|line| Ok::<_, Infallible>(Frame::data(line)));
        let mut response = Response::new(http_body_util::StreamBody::new(frames).boxed_unsync());
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        response
    }
}

async fn serve(mut handle: Handle, state: Arc<Mutex<State>>) {
    while let Some((request, reply)) = handle.next_request().await {
        let uri = request
            .uri()
            .path_and_query()
            .map(|pq| pq.to_string())
            .unwrap_or_default();
        let Ok(mut st) = state.lock() else {
            return;
        };
        st.handle(uri, reply);
    }
}
