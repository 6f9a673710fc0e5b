//! A request as the stand-in records it, for tests to look at.

use super::kind::{self, Kind};

/// One request the stand-in received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query, as sent.
    pub uri: String,
    /// The status code answered; `None` while the request is in progress
    /// (a held list or watch).
    pub status: Option<u16>,
}

impl RecordedRequest {
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }

    /// The decoded value of a query parameter.
    pub fn param(&self, name: &str) -> Option<String> {
        let query = self.uri.split_once('?')?.1;
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// A WATCH (`watch=true` or `watch=1`).
    pub fn is_watch(&self) -> bool {
        matches!(self.param("watch").as_deref(), Some("true" | "1"))
    }

    /// A LIST or WATCH of `kind` (any namespace, any version).
    pub fn is_collection_of(&self, kind: Kind) -> bool {
        self.method == "GET" && kind::collection_of(self.path()) == Some(kind)
    }

    /// A LIST of `kind`.
    pub fn is_list_of(&self, kind: Kind) -> bool {
        self.is_collection_of(kind) && !self.is_watch()
    }

    /// A WATCH of `kind`.
    pub fn is_watch_of(&self, kind: Kind) -> bool {
        self.is_collection_of(kind) && self.is_watch()
    }
}
