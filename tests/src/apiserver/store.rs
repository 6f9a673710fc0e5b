//! The stand-in's storage: objects, the resourceVersion counter, the event
//! log watches replay from, open watches, gates, tokens and the request
//! log. Every method runs under the one lock, so each call is atomic as a
//! write to etcd is, and the events of a watch are in resourceVersion
//! order.

use super::events::{Change, Event, Scope, Watcher, bookmark_line, error_line, event_line};
use super::kind::{Kind, render};
use super::request::RecordedRequest;
use super::status::{Failure, bad_request, expired, invalid, not_found, status, with_details};
use super::tokens::Tokens;
use anyhow::bail;
use bytes::Bytes;
use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, Time};
use k8s_openapi::{ByteString, jiff};
use kube::core::{DynamicObject, ObjectList, TypeMeta};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::sync::watch;

/// Events kept for watches to resume from; older ones are compacted away
/// (410 for a watch from before them), as etcd compacts its history.
pub(super) const LOG_CAPACITY: usize = 10_000;
/// Events queued for one watch; a watch that falls this far behind is
/// ended (as the API server ends slow watchers) and resumes.
pub(super) const WATCH_QUEUE: usize = 1024;
/// Requests kept for [`super::ApiServer::requests`].
pub const REQUESTS_KEPT: usize = 100_000;

pub(super) fn rv_of(object: &DynamicObject) -> anyhow::Result<u64> {
    match object.metadata.resource_version.as_deref().map(str::parse) {
        Some(Ok(rv)) => Ok(rv),
        _ => bail!("a stored object without a resourceVersion"),
    }
}

/// (namespace, name); the namespace is "" for cluster-scoped kinds.
type Key = (String, String);

fn key_of(object: &DynamicObject) -> Key {
    (
        object.metadata.namespace.clone().unwrap_or_default(),
        object.metadata.name.clone().unwrap_or_default(),
    )
}

/// How a write treats an existing object.
#[derive(Clone, Copy, Debug)]
pub(super) enum Write {
    /// POST: 409 if it exists.
    Create,
    /// PUT: 404 if it does not; 409 if the object names an older
    /// resourceVersion.
    Replace,
    /// Server-side apply, or a test's write: create or replace.
    /// `keep_created`: a creationTimestamp the object carries is kept.
    Upsert { keep_created: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Gate {
    List,
    Watch,
}

pub(super) struct State {
    addr: SocketAddr,
    rv: u64,
    uids: u64,
    objects: BTreeMap<Kind, BTreeMap<Key, DynamicObject>>,
    log: VecDeque<Event>,
    /// A watch or continue from a resourceVersion below this gets 410.
    compacted: u64,
    watchers: Vec<Watcher>,
    /// Versions served of each custom kind.
    served: BTreeMap<Kind, Vec<String>>,
    held: BTreeSet<(Kind, Gate)>,
    tokens: Tokens,
    requests: VecDeque<RecordedRequest>,
    /// Requests ever received (the number of the next one).
    requests_total: usize,
}

impl State {
    pub(super) fn new(addr: SocketAddr) -> State {
        State {
            addr,
            // Where a fresh cluster's counter roughly starts.
            rv: 1000,
            uids: 0,
            objects: BTreeMap::new(),
            log: VecDeque::new(),
            compacted: 0,
            watchers: Vec::new(),
            served: BTreeMap::new(),
            held: BTreeSet::new(),
            tokens: Tokens::default(),
            requests: VecDeque::new(),
            requests_total: 0,
        }
    }

    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(super) fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Serves a custom kind at `versions`.
    pub(super) fn serve(&mut self, kind: Kind, versions: &[String]) -> anyhow::Result<()> {
        if !kind.is_custom() {
            bail!("{} is core v1: always served", kind.name());
        }
        let known: &[&str] = match kind {
            Kind::PeerAuthentication => crds::peer_authentication::VERSIONS,
            Kind::Sidecar => crds::sidecar::VERSIONS,
            _ => crds::destination_rule::VERSIONS,
        };
        if let Some(v) = versions.iter().find(|v| !known.contains(&v.as_str())) {
            bail!(
                "{} has no version {v} (Istio serves {known:?})",
                kind.name()
            );
        }
        self.served.insert(kind, versions.to_vec());
        Ok(())
    }

    /// The versions `kind` is served at, newest first (Kubernetes' version
    /// priority).
    pub(super) fn versions(&self, kind: Kind) -> Vec<String> {
        if !kind.is_custom() {
            return vec!["v1".to_string()];
        }
        let mut versions = self.served.get(&kind).cloned().unwrap_or_default();
        versions.sort_by_key(|v| std::cmp::Reverse(kube::core::Version::parse(v).priority()));
        versions
    }

    pub(super) fn serves(&self, kind: Kind, version: &str) -> bool {
        self.versions(kind).iter().any(|v| v == version)
    }

    /// The kind at `group`/`version` with resource name `plural`, if served.
    pub(super) fn kind_at(&self, group: &str, version: &str, plural: &str) -> Option<Kind> {
        Kind::from_path(group, plural).filter(|k| self.serves(*k, version))
    }

    pub(super) fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&DynamicObject> {
        let namespace = if kind.namespaced() { namespace } else { "" };
        self.objects
            .get(&kind)?
            .get(&(namespace.to_string(), name.to_string()))
    }

    pub(super) fn namespace_exists(&self, name: &str) -> bool {
        self.get(Kind::Namespace, "", name).is_some()
    }

    fn new_uid(&mut self) -> String {
        self.uids += 1;
        let port = u64::from(self.addr.port());
        format!("{:08x}-0000-4000-8000-{:012x}", port, self.uids)
    }

    /// Stores `object` (its name and, for a namespaced kind, namespace
    /// set); returns it as stored and whether it was created.
    pub(super) fn write(
        &mut self,
        kind: Kind,
        mut object: DynamicObject,
        mode: Write,
    ) -> Result<(DynamicObject, bool), Failure> {
        let name = object
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid(kind, "", "metadata.name: Required value: name is required"))?;
        if kind.namespaced() {
            if object
                .metadata
                .namespace
                .as_deref()
                .is_none_or(str::is_empty)
            {
                return Err(invalid(
                    kind,
                    &name,
                    "metadata.namespace: Required value: namespace is required",
                ));
            }
        } else {
            object.metadata.namespace = None;
        }
        let key = key_of(&object);
        let existing = self.objects.get(&kind).and_then(|m| m.get(&key)).cloned();
        match (mode, &existing) {
            (Write::Create, Some(_)) => {
                let message = format!("{} \"{name}\" already exists", kind.resource());
                return Err(with_details(
                    status(409, "AlreadyExists", message),
                    kind,
                    &name,
                ));
            }
            (Write::Replace, None) => return Err(not_found(kind, &name)),
            (Write::Replace, Some(old)) => {
                let asked = object.metadata.resource_version.as_deref();
                if asked.is_some_and(|rv| !rv.is_empty())
                    && asked != old.metadata.resource_version.as_deref()
                {
                    let message = format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been \
                         modified; please apply your changes to the latest version and try again",
                        kind.resource()
                    );
                    return Err(with_details(status(409, "Conflict", message), kind, &name));
                }
            }
            _ => {}
        }
        if kind == Kind::Secret {
            object = secret_string_data(object).map_err(|e| invalid(kind, &name, &e))?;
        }
        if let Some(old) = &existing {
            check_immutable(kind, old, &object)?;
        }
        let rv = self.next_rv();
        object.types = None;
        object.metadata.resource_version = Some(rv.to_string());
        object.metadata.uid = match existing.as_ref().and_then(|o| o.metadata.uid.clone()) {
            Some(uid) => Some(uid),
            None => Some(self.new_uid()),
        };
        let kept = match mode {
            Write::Upsert { keep_created: true } => object.metadata.creation_timestamp.clone(),
            _ => None,
        };
        object.metadata.creation_timestamp = existing
            .as_ref()
            .and_then(|o| o.metadata.creation_timestamp.clone())
            .or(kept)
            .or_else(|| Some(now()));
        if kind.is_custom() {
            // A custom resource's generation counts changes to anything
            // but its metadata and status.
            let spec = |o: &DynamicObject| {
                let mut data = o.data.clone();
                if let Some(map) = data.as_object_mut() {
                    map.remove("status");
                }
                data
            };
            object.metadata.generation = Some(match &existing {
                None => 1,
                Some(old) => {
                    let generation = old.metadata.generation.unwrap_or(1);
                    generation + i64::from(spec(old) != spec(&object))
                }
            });
        }
        self.objects
            .entry(kind)
            .or_default()
            .insert(key, object.clone());
        let created = existing.is_none();
        self.publish(Event {
            rv,
            kind,
            change: if created {
                Change::Added
            } else {
                Change::Modified
            },
            object: object.clone(),
            prev: existing,
        });
        Ok((object, created))
    }

    /// Deletes an object; a Namespace takes its content along first.
    /// Returns the object's last state, at the delete's resourceVersion.
    pub(super) fn delete(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<DynamicObject, Failure> {
        if self.get(kind, namespace, name).is_none() {
            return Err(not_found(kind, name));
        }
        if kind == Kind::Namespace {
            for inner in Kind::ALL.into_iter().filter(|k| k.namespaced()) {
                let names: Vec<String> = self
                    .objects
                    .get(&inner)
                    .map(|m| {
                        m.keys()
                            .filter(|(ns, _)| ns == name)
                            .map(|(_, n)| n.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                for n in names {
                    self.delete(inner, name, &n)?;
                }
            }
        }
        let namespace = if kind.namespaced() { namespace } else { "" };
        let key = (namespace.to_string(), name.to_string());
        let prev = self
            .objects
            .get_mut(&kind)
            .and_then(|m| m.remove(&key))
            .ok_or_else(|| not_found(kind, name))?;
        let rv = self.next_rv();
        let mut object = prev.clone();
        object.metadata.resource_version = Some(rv.to_string());
        self.publish(Event {
            rv,
            kind,
            change: Change::Deleted,
            object: object.clone(),
            prev: Some(prev),
        });
        Ok(object)
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Sends an event to every watch that sees it and appends it to the
    /// log (compacting the oldest past [`LOG_CAPACITY`]).
    fn publish(&mut self, event: Event) {
        self.watchers.retain(|w| match w.scope.view(&event) {
            Some((change, object)) => w.send(event_line(&w.scope, change, object)),
            None => !w.tx.is_closed(),
        });
        self.log.push_back(event);
        while self.log.len() > LOG_CAPACITY {
            if let Some(old) = self.log.pop_front() {
                self.compacted = old.rv;
            }
        }
    }

    /// One page of a list: at most `limit` objects (0: all) after the
    /// `continue` token's position, read at the token's resourceVersion so
    /// the pages of one list are one consistent snapshot.
    pub(super) fn list(
        &self,
        scope: &Scope,
        limit: usize,
        token: Option<&str>,
    ) -> Result<ObjectList<DynamicObject>, Failure> {
        let (at, after) = match token {
            None => (self.rv, None),
            Some(token) => {
                let invalid = || bad_request(format!("continue key is not valid: {token}"));
                let mut parts = token.splitn(3, ':');
                let at: u64 = parts
                    .next()
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(invalid)?;
                let ns = parts.next().ok_or_else(invalid)?.to_string();
                let name = parts.next().ok_or_else(invalid)?.to_string();
                if at < self.compacted {
                    return Err(expired(
                        "The provided continue parameter is too old to display a consistent \
                         list result. You can start a new list without the continue parameter, \
                         or use the continue token in this response to retrieve the remainder \
                         of the results. Continuing with the provided token results in an \
                         inconsistent list - objects that were created, modified, or deleted \
                         between the time the first chunk was returned and now may show up in \
                         the list.",
                    ));
                }
                (at, Some((ns, name)))
            }
        };
        let objects = self.objects_at(scope.kind, at);
        let matching: Vec<(&Key, &DynamicObject)> = objects
            .iter()
            .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a))
            .filter(|(_, o)| scope.matches(o))
            .collect();
        let take = match limit {
            0 => matching.len(),
            limit => limit.min(matching.len()),
        };
        let remaining = matching.len() - take;
        let page = matching.get(..take).unwrap_or_default();
        let items = page
            .iter()
            .map(|(_, o)| {
                // Items of a built-in kind's list carry no kind of their
                // own; custom resources do.
                let mut item = render(scope.kind, o, &scope.version);
                if !scope.kind.is_custom() {
                    item.types = None;
                }
                item
            })
            .collect();
        let continue_ = match (page.last(), remaining) {
            (Some(((ns, name), _)), 1..) => Some(format!("{at}:{ns}:{name}")),
            _ => None,
        };
        Ok(ObjectList {
            types: TypeMeta {
                api_version: scope.kind.api_version(&scope.version),
                kind: format!("{}List", scope.kind.name()),
            },
            metadata: ListMeta {
                resource_version: Some(at.to_string()),
                continue_,
                remaining_item_count: i64::try_from(remaining).ok().filter(|n| *n > 0),
                self_link: None,
            },
            items,
        })
    }

    /// The objects of `kind` as they were at resourceVersion `at`: the
    /// current ones with the log's later writes undone.
    fn objects_at(&self, kind: Kind, at: u64) -> BTreeMap<Key, DynamicObject> {
        let mut objects = self.objects.get(&kind).cloned().unwrap_or_default();
        for event in self
            .log
            .iter()
            .rev()
            .filter(|e| e.kind == kind && e.rv > at)
        {
            let key = key_of(&event.object);
            match &event.prev {
                Some(prev) => objects.insert(key, prev.clone()),
                None => objects.remove(&key),
            };
        }
        objects
    }

    /// Opens a watch: the lines to send first (the events after `from`;
    /// for no `from`, every matching object as ADDED; for a compacted
    /// `from`, an ERROR 410 and nothing more), and the live events after
    /// them (`None`: the watch ends after the first lines).
    pub(super) fn watch(
        &mut self,
        scope: Scope,
        from: Option<u64>,
        bookmarks: bool,
    ) -> (Vec<Bytes>, Option<mpsc::Receiver<Bytes>>) {
        let mut first = Vec::new();
        match from {
            Some(from) if from < self.compacted => {
                let gone = expired(format!(
                    "too old resource version: {from} ({})",
                    self.compacted
                ));
                first.extend(error_line(*gone));
                return (first, None);
            }
            Some(from) => {
                for event in self.log.iter().filter(|e| e.rv > from) {
                    if let Some((change, object)) = scope.view(event) {
                        first.extend(event_line(&scope, change, object));
                    }
                }
            }
            None => {
                if let Some(objects) = self.objects.get(&scope.kind) {
                    for object in objects.values().filter(|o| scope.matches(o)) {
                        first.extend(event_line(&scope, Change::Added, object.clone()));
                    }
                }
            }
        }
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        self.watchers.push(Watcher {
            scope,
            bookmarks,
            tx,
        });
        (first, Some(rx))
    }

    /// A BOOKMARK at the current resourceVersion to every watch that
    /// allows them: the object of the watched kind with nothing but its
    /// resourceVersion, as the real server sends. Returns how many got it.
    pub(super) fn bookmark(&mut self) -> usize {
        let rv = self.rv;
        let mut sent = 0;
        self.watchers.retain(|w| {
            if !w.bookmarks {
                return !w.tx.is_closed();
            }
            let ok = w.send(bookmark_line(&w.scope, rv));
            sent += usize::from(ok);
            ok
        });
        sent
    }

    pub(super) fn end_watches(&mut self) -> usize {
        let open = self.watchers.iter().filter(|w| !w.tx.is_closed()).count();
        self.watchers.clear();
        open
    }

    pub(super) fn compact(&mut self) -> u64 {
        self.log.clear();
        self.compacted = self.rv;
        self.rv
    }

    pub(super) fn open_watches(&self, kind: Kind) -> usize {
        self.watchers
            .iter()
            .filter(|w| w.scope.kind == kind && !w.tx.is_closed())
            .count()
    }

    pub(super) fn hold(&mut self, kind: Kind, gate: Gate, on: bool) {
        if on {
            self.held.insert((kind, gate));
        } else {
            self.held.remove(&(kind, gate));
        }
    }

    pub(super) fn held(&self, kind: Kind, gate: Gate) -> bool {
        self.held.contains(&(kind, gate))
    }

    pub(super) fn add_token(&mut self, token: &str, username: &str, audiences: Vec<String>) {
        let uid = self.new_uid();
        self.tokens.add(token, username, uid, audiences);
    }

    pub(super) fn review(&self, review: TokenReview) -> TokenReview {
        self.tokens.review(review)
    }

    /// Records a request; returns its number.
    pub(super) fn record(&mut self, method: &str, uri: &str) -> usize {
        let n = self.requests_total;
        self.requests_total += 1;
        self.requests.push_back(RecordedRequest {
            method: method.to_string(),
            uri: uri.to_string(),
            status: None,
        });
        while self.requests.len() > REQUESTS_KEPT {
            self.requests.pop_front();
        }
        n
    }

    /// Notes the status request `n` was answered with.
    pub(super) fn answered(&mut self, n: usize, status: u16) {
        let first = self.requests_total - self.requests.len();
        if let Some(r) = n.checked_sub(first).and_then(|i| self.requests.get_mut(i)) {
            r.status = Some(status);
        }
    }

    pub(super) fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.iter().cloned().collect()
    }

    pub(super) fn requests_since(&self, from: usize) -> Vec<RecordedRequest> {
        let first = self.requests_total - self.requests.len();
        let skip = from.saturating_sub(first);
        self.requests.iter().skip(skip).cloned().collect()
    }

    pub(super) fn request_count(&self) -> usize {
        self.requests_total
    }

    pub(super) fn find_request(
        &self,
        from: usize,
        matches: impl Fn(&RecordedRequest) -> bool,
    ) -> Option<(usize, RecordedRequest)> {
        let first = self.requests_total - self.requests.len();
        self.requests
            .iter()
            .enumerate()
            .map(|(i, r)| (first + i, r))
            .filter(|(n, _)| *n >= from)
            .find(|(_, r)| matches(r))
            .map(|(n, r)| (n, r.clone()))
    }
}

/// Now, to the second, as the API server writes timestamps.
fn now() -> Time {
    let now = jiff::Timestamp::now();
    Time(jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// A Secret's `stringData` folded into `data`, as the API server does on
/// every write.
fn secret_string_data(object: DynamicObject) -> Result<DynamicObject, String> {
    let value = serde_json::to_value(&object).map_err(|e| e.to_string())?;
    let mut secret: Secret =
        serde_json::from_value(value).map_err(|e| format!("not a Secret: {e}"))?;
    if let Some(strings) = secret.string_data.take() {
        let data = secret.data.get_or_insert_with(BTreeMap::new);
        for (k, v) in strings {
            data.insert(k, ByteString(v.into_bytes()));
        }
    }
    let value = serde_json::to_value(&secret).map_err(|e| e.to_string())?;
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// A ConfigMap or Secret marked immutable keeps its data.
fn check_immutable(kind: Kind, old: &DynamicObject, new: &DynamicObject) -> Result<(), Failure> {
    if !matches!(kind, Kind::ConfigMap | Kind::Secret)
        || old.data.get("immutable").and_then(|v| v.as_bool()) != Some(true)
    {
        return Ok(());
    }
    let name = old.metadata.name.clone().unwrap_or_default();
    for field in ["data", "binaryData", "immutable"] {
        if old.data.get(field) != new.data.get(field) {
            return Err(invalid(
                kind,
                &name,
                &format!("{field}: Forbidden: field is immutable when `immutable` is set"),
            ));
        }
    }
    Ok(())
}

/// What the server task and the test share.
pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    /// Bumped on every change a waiter may be waiting for: a request
    /// recorded or answered, a gate opened or closed.
    pub(super) changes: watch::Sender<u64>,
    pub(super) max_watch_timeout: Option<Duration>,
}

impl Shared {
    /// The state; a panic elsewhere while it was held leaves it usable
    /// (every write is one step).
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}
