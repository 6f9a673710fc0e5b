//! What a watch sees: the events of the log through its scope (namespace
//! and field selector), as the newline-delimited WatchEvent lines the API
//! server streams.

use super::kind::{Kind, render};
use super::status::{Failure, bad_request};
use bytes::Bytes;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, WatchEvent};
use kube::core::watch::{Bookmark, BookmarkMeta};
use kube::core::{DynamicObject, TypeMeta};
use std::collections::BTreeMap;
use tokio::sync::mpsc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Change {
    Added,
    Modified,
    Deleted,
}

/// One write, as the log keeps it for watches and consistent pages.
pub(super) struct Event {
    pub rv: u64,
    pub kind: Kind,
    pub change: Change,
    /// The object after the write (for a delete: its last state, with the
    /// delete's resourceVersion).
    pub object: DynamicObject,
    /// The object before the write.
    pub prev: Option<DynamicObject>,
}

/// `fieldSelector`: `field=value`, `field==value`, `field!=value`, joined
/// by commas, on the fields the real server indexes for the kind.
#[derive(Clone, Debug, Default)]
pub(super) struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub(super) fn parse(kind: Kind, selector: &str) -> Result<Self, Failure> {
        let mut terms = Vec::new();
        for term in selector.split(',').filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(bad_request(format!(
                    "invalid selector: '{selector}'; can't understand '{term}'"
                )));
            };
            let supported = matches!(field, "metadata.name" | "metadata.namespace")
                || (kind == Kind::Pod
                    && matches!(
                        field,
                        "status.phase"
                            | "status.podIP"
                            | "spec.nodeName"
                            | "spec.serviceAccountName"
                    ))
                || (kind == Kind::Secret && field == "type");
            if !supported {
                return Err(bad_request(format!("field label not supported: {field}")));
            }
            terms.push((field.to_string(), equal, value.to_string()));
        }
        Ok(FieldSelector(terms))
    }

    fn matches(&self, object: &DynamicObject) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = match field.as_str() {
                "metadata.name" => object.metadata.name.clone().unwrap_or_default(),
                "metadata.namespace" => object.metadata.namespace.clone().unwrap_or_default(),
                path => object
                    .data
                    .pointer(&format!("/{}", path.replace('.', "/")))
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string(),
            };
            (actual == *value) == *equal
        })
    }
}

/// What a LIST or WATCH asks for.
pub(super) struct Scope {
    pub kind: Kind,
    pub version: String,
    /// `None`: every namespace (or a cluster-scoped kind).
    pub namespace: Option<String>,
    pub fields: FieldSelector,
}

impl Scope {
    pub(super) fn matches(&self, object: &DynamicObject) -> bool {
        self.namespace
            .as_ref()
            .is_none_or(|ns| object.metadata.namespace.as_ref() == Some(ns))
            && self.fields.matches(object)
    }

    /// What a watch of this scope sees of `event`: an object entering the
    /// selection is ADDED, one leaving it DELETED (in its last matching
    /// state, at the event's resourceVersion), as from the real server.
    pub(super) fn view(&self, event: &Event) -> Option<(Change, DynamicObject)> {
        if event.kind != self.kind {
            return None;
        }
        let now = self.matches(&event.object);
        let before = event.prev.as_ref().is_some_and(|p| self.matches(p));
        match event.change {
            Change::Added => now.then(|| (Change::Added, event.object.clone())),
            Change::Deleted => now.then(|| (Change::Deleted, event.object.clone())),
            Change::Modified => match (before, now) {
                (true, true) => Some((Change::Modified, event.object.clone())),
                (false, true) => Some((Change::Added, event.object.clone())),
                (true, false) => {
                    let mut gone = event.prev.clone()?;
                    gone.metadata.resource_version = Some(event.rv.to_string());
                    Some((Change::Deleted, gone))
                }
                (false, false) => None,
            },
        }
    }
}

/// One line of a watch stream.
pub(super) fn event_line(scope: &Scope, change: Change, object: DynamicObject) -> Option<Bytes> {
    let object = render(scope.kind, &object, &scope.version);
    let event = match change {
        Change::Added => WatchEvent::Added(object),
        Change::Modified => WatchEvent::Modified(object),
        Change::Deleted => WatchEvent::Deleted(object),
    };
    line(&event)
}

/// An ERROR event carrying `status`.
pub(super) fn error_line(status: Status) -> Option<Bytes> {
    line(&WatchEvent::<DynamicObject>::ErrorStatus(status))
}

pub(super) fn line<T: serde::Serialize>(event: &T) -> Option<Bytes> {
    let mut bytes = serde_json::to_vec(event).ok()?;
    bytes.push(b'\n');
    Some(Bytes::from(bytes))
}

pub(super) struct Watcher {
    pub scope: Scope,
    pub bookmarks: bool,
    pub tx: mpsc::Sender<Bytes>,
}

impl Watcher {
    /// Queues a line; false once the watch is gone or too far behind.
    pub(super) fn send(&self, line: Option<Bytes>) -> bool {
        match line {
            Some(line) => self.tx.try_send(line).is_ok(),
            None => false,
        }
    }
}

/// A BOOKMARK at `rv`: the object of the watched kind with nothing but its
/// resourceVersion, as the real server sends it (k8s-openapi's own
/// bookmark leaves out apiVersion and kind, which kube-rs requires).
pub(super) fn bookmark_line(scope: &Scope, rv: u64) -> Option<Bytes> {
    let event = kube::core::WatchEvent::<DynamicObject>::Bookmark(Bookmark {
        types: TypeMeta {
            api_version: scope.kind.api_version(&scope.version),
            kind: scope.kind.name().to_string(),
        },
        metadata: BookmarkMeta {
            resource_version: rv.to_string(),
            annotations: BTreeMap::new(),
        },
    });
    line(&event)
}
