//! Who is connected and what each connection holds, per xDS type.
//!
//! Each stream task owns its protocol state and mirrors the part operators
//! care about into the [`Registry`] with short synchronous DashMap writes
//! (never across an `.await`). The debug endpoints read it through
//! [`Registry::snapshot`] and [`Registry::sync_state`].

use crate::identity::{Identity, ProxyId};
use dashmap::DashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;
use translator::{ResourceMap, ResourceType};

/// Identifies one ADS stream for its whole life; never reused.
pub type ConnectionId = u64;

/// A rejected response: what the proxy refused and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nack {
    /// The version the proxy rejected (what we sent with the NACKed nonce).
    pub version: String,
    /// `error_detail.message` from the proxy.
    pub message: String,
    pub at: SystemTime,
}

/// What a stream asked for of one type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscription {
    /// All resources of the type (CDS/LDS legacy wildcard or `*`).
    pub wildcard: bool,
    /// Resources asked for by name (in addition to the wildcard, if any).
    pub names: Names,
}

impl Subscription {
    /// Whether `name` is covered by this subscription.
    pub fn covers(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// The names of a [`Subscription`], a sorted set. A stream naming exactly
/// the resources of its view's map (EDS naming every cluster, the common
/// case) refers to that map's keys instead of keeping its own copy of
/// ~1,000 names; the map is shared by every proxy with the same view.
#[derive(Clone, Default)]
pub struct Names(Repr);

#[derive(Clone)]
enum Repr {
    Owned(BTreeSet<String>),
    /// Exactly the keys of this map.
    KeysOf(Arc<ResourceMap>),
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Owned(BTreeSet::new())
    }
}

/// The names of a [`Names`], in order.
pub struct NamesIter<'a>(IterRepr<'a>);

enum IterRepr<'a> {
    Owned(std::collections::btree_set::Iter<'a, String>),
    KeysOf(std::collections::btree_map::Keys<'a, String, Arc<translator::Resource>>),
}

impl<'a> Iterator for NamesIter<'a> {
    type Item = &'a String;

    fn next(&mut self) -> Option<&'a String> {
        match &mut self.0 {
            IterRepr::Owned(it) => it.next(),
            IterRepr::KeysOf(it) => it.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.0 {
            IterRepr::Owned(it) => it.size_hint(),
            IterRepr::KeysOf(it) => it.size_hint(),
        }
    }
}

impl ExactSizeIterator for NamesIter<'_> {}

impl Names {
    pub fn iter(&self) -> NamesIter<'_> {
        match &self.0 {
            Repr::Owned(set) => NamesIter(IterRepr::Owned(set.iter())),
            Repr::KeysOf(map) => NamesIter(IterRepr::KeysOf(map.keys())),
        }
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Owned(set) => set.len(),
            Repr::KeysOf(map) => map.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, name: &str) -> bool {
        match &self.0 {
            Repr::Owned(set) => set.contains(name),
            Repr::KeysOf(map) => map.contains_key(name),
        }
    }

    /// Adds `name`; whether it was not there yet.
    pub fn insert(&mut self, name: String) -> bool {
        if self.contains(&name) {
            return false;
        }
        self.edit(|set| set.insert(name))
    }

    /// Removes `name`; whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        if !self.contains(name) {
            return false;
        }
        self.edit(|set| set.remove(name))
    }

    /// Whether these are, by reference, the keys of `map`: then `map`
    /// needs no name-by-name comparison to know it is exactly what is named.
    pub fn are_keys_of(&self, map: &Arc<ResourceMap>) -> bool {
        matches!(&self.0, Repr::KeysOf(keys) if Arc::ptr_eq(keys, map))
    }

    /// Refers to `map`'s keys instead of holding the names when they are
    /// the same names (and not already `map`'s). Whether it switched.
    pub fn share_keys_of(&mut self, map: &Arc<ResourceMap>) -> bool {
        match self.shared_with(map) {
            Some(shared) => {
                *self = shared;
                true
            }
            None => false,
        }
    }

    /// The same names as `map`'s keys, by reference to `map`, when they
    /// are the same names and not already `map`'s. Never for no names: an
    /// empty set costs nothing, a reference would keep `map` alive.
    pub fn shared_with(&self, map: &Arc<ResourceMap>) -> Option<Names> {
        let same = !self.is_empty()
            && !self.are_keys_of(map)
            && self.len() == map.len()
            && self.iter().eq(map.keys());
        same.then(|| Names(Repr::KeysOf(Arc::clone(map))))
    }

    /// Changes the names as a set of their own, copied from the map's keys
    /// if they were a map's.
    fn edit<T>(&mut self, change: impl FnOnce(&mut BTreeSet<String>) -> T) -> T {
        let mut set = match std::mem::take(&mut self.0) {
            Repr::Owned(set) => set,
            Repr::KeysOf(map) => map.keys().cloned().collect(),
        };
        let out = change(&mut set);
        self.0 = Repr::Owned(set);
        out
    }
}

impl FromIterator<String> for Names {
    fn from_iter<I: IntoIterator<Item = String>>(names: I) -> Self {
        Names(Repr::Owned(names.into_iter().collect()))
    }
}

impl<'a> IntoIterator for &'a Names {
    type Item = &'a String;
    type IntoIter = NamesIter<'a>;

    fn into_iter(self) -> NamesIter<'a> {
        self.iter()
    }
}

/// The same names, however each side holds them.
impl PartialEq for Names {
    fn eq(&self, other: &Self) -> bool {
        if let (Repr::KeysOf(a), Repr::KeysOf(b)) = (&self.0, &other.0)
            && Arc::ptr_eq(a, b)
        {
            return true;
        }
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Names {}

/// Printed as the set of names, however held.
impl fmt::Debug for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// The state of one xDS type on one connection.
#[derive(Clone, Debug, Default)]
pub struct TypeStatus {
    /// Version of the last response sent (SotW `version_info`, delta
    /// `system_version_info`); `None` until something was sent.
    pub sent_version: Option<String>,
    pub sent_nonce: Option<String>,
    /// The version the proxy last confirmed (ACK).
    pub acked_version: Option<String>,
    pub last_nack: Option<Nack>,
    /// What the proxy should hold after the last response: for SotW exactly
    /// the resources of that response, for delta the accumulated set.
    /// Shared with the snapshots, so keeping it is cheap; `/config_dump` reads it.
    pub sent: Arc<ResourceMap>,
    /// `None` until the proxy asks for this type on this connection.
    /// Shared with the stream: mirroring the status into the registry
    /// copies no names.
    pub subscription: Option<Arc<Subscription>>,
}

/// Whether a proxy holds what we last sent it, for one type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SyncState {
    /// The proxy ACKed the version last sent.
    Synced,
    /// Sent but not (yet) ACKed.
    Stale,
    /// The proxy rejected the version last sent.
    Nacked,
    /// Nothing sent for this type on this connection.
    NotSent,
}

impl SyncState {
    /// The spelling `istioctl proxy-status` uses.
    pub const fn as_str(self) -> &'static str {
        match self {
            SyncState::Synced => "SYNCED",
            SyncState::Stale => "STALE",
            SyncState::Nacked => "NACKED",
            SyncState::NotSent => "NOT SENT",
        }
    }
}

impl fmt::Display for SyncState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TypeStatus {
    /// Where this type stands: the version last sent against what the proxy
    /// said about it.
    pub fn sync_state(&self) -> SyncState {
        let Some(sent) = &self.sent_version else {
            return SyncState::NotSent;
        };
        if self.acked_version.as_ref() == Some(sent) {
            return SyncState::Synced;
        }
        match &self.last_nack {
            Some(nack) if &nack.version == sent => SyncState::Nacked,
            _ => SyncState::Stale,
        }
    }
}

/// One ADS stream, as the debug endpoints see it.
#[derive(Clone, Debug)]
pub struct ConnectionStatus {
    pub id: ConnectionId,
    pub node_id: String,
    /// The layout the node's metadata asked for.
    pub interception: translator::Interception,
    pub proxy: ProxyId,
    pub identity: Identity,
    pub connected_at: SystemTime,
    /// Incremental (delta) xDS rather than state of the world.
    pub delta: bool,
    pub types: BTreeMap<ResourceType, TypeStatus>,
}

/// All open ADS streams. Shared (`Arc`) by the ADS server and the debug
/// endpoints; entries are added when a stream identifies its node and
/// removed when it ends.
#[derive(Debug, Default)]
pub struct Registry {
    connections: DashMap<ConnectionId, ConnectionStatus>,
    next_id: AtomicU64,
}

impl Registry {
    /// A fresh id for a new stream.
    pub(crate) fn next_id(&self) -> ConnectionId {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn insert(&self, status: ConnectionStatus) {
        self.connections.insert(status.id, status);
    }

    pub(crate) fn remove(&self, id: ConnectionId) {
        self.connections.remove(&id);
    }

    /// Mirrors one type's state of a connection.
    pub(crate) fn set_type(&self, id: ConnectionId, kind: ResourceType, status: &TypeStatus) {
        if let Some(mut c) = self.connections.get_mut(&id) {
            c.types.insert(kind, status.clone());
        }
    }

    /// Updates who a connection is after its view was refreshed.
    pub(crate) fn set_proxy(&self, id: ConnectionId, proxy: &ProxyId, identity: &Identity) {
        if let Some(mut c) = self.connections.get_mut(&id) {
            if &c.proxy != proxy {
                c.proxy = proxy.clone();
            }
            if &c.identity != identity {
                c.identity = identity.clone();
            }
        }
    }

    /// A copy of every open connection, sorted by proxy then connection id.
    pub fn snapshot(&self) -> Vec<ConnectionStatus> {
        let mut all: Vec<ConnectionStatus> =
            self.connections.iter().map(|e| e.value().clone()).collect();
        all.sort_by(|a, b| a.proxy.cmp(&b.proxy).then(a.id.cmp(&b.id)));
        all
    }

    /// One connection, if it is still open.
    pub fn get(&self, id: ConnectionId) -> Option<ConnectionStatus> {
        self.connections.get(&id).map(|e| e.value().clone())
    }

    /// Number of open streams.
    pub fn len(&self) -> usize {
        self.connections.len()
    }

    /// Whether no stream is open.
    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }

    /// Sync state of every type for `proxy`, taken from its newest
    /// connection (a reconnecting proxy may briefly have two); `None` if the
    /// proxy is not connected.
    pub fn sync_state(&self, proxy: &ProxyId) -> Option<BTreeMap<ResourceType, SyncState>> {
        let newest = self
            .connections
            .iter()
            .filter(|e| &e.value().proxy == proxy)
            .max_by_key(|e| *e.key())
            .map(|e| e.value().types.clone())?;
        Some(
            ResourceType::PUSH_ORDER
                .into_iter()
                .map(|kind| {
                    let state = newest
                        .get(&kind)
                        .map_or(SyncState::NotSent, TypeStatus::sync_state);
                    (kind, state)
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(sent: Option<&str>, acked: Option<&str>, nacked: Option<&str>) -> TypeStatus {
        TypeStatus {
            sent_version: sent.map(str::to_string),
            acked_version: acked.map(str::to_string),
            last_nack: nacked.map(|v| Nack {
                version: v.to_string(),
                message: "bad".to_string(),
                at: SystemTime::UNIX_EPOCH,
            }),
            ..TypeStatus::default()
        }
    }

    fn keys(names: &[&str]) -> Arc<ResourceMap> {
        Arc::new(
            names
                .iter()
                .map(|n| {
                    let r = translator::Resource::from_encoded::<
                        envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment,
                    >(*n, ResourceType::Endpoint, Vec::new());
                    (n.to_string(), Arc::new(r))
                })
                .collect(),
        )
    }

    fn owned(names: &[&str]) -> Names {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn ads_names_equal_to_a_map_s_keys_refer_to_it_and_behave_the_same() {
        let map = keys(&["a", "b"]);
        let mut names = owned(&["b", "a"]);
        assert!(!names.are_keys_of(&map));
        assert!(names.share_keys_of(&map));
        assert!(names.are_keys_of(&map));
        assert!(!names.share_keys_of(&map), "already shared");
        // Same set, same printout, however held.
        assert_eq!(names, owned(&["a", "b"]));
        assert_eq!(format!("{names:?}"), format!("{:?}", owned(&["a", "b"])));
        assert_eq!(names.iter().collect::<Vec<_>>(), ["a", "b"]);
        assert!(names.contains("a") && !names.contains("c"));
        assert_eq!(names.len(), 2);
        // Another map with the same keys is equal too.
        let mut other = owned(&["a", "b"]);
        other.share_keys_of(&keys(&["a", "b"]));
        assert_eq!(names, other);
        // Other names are not shared.
        assert!(!owned(&["a"]).share_keys_of(&map));
        assert!(!owned(&["a", "c"]).share_keys_of(&map));
        assert!(
            !Names::default().share_keys_of(&keys(&[])),
            "nothing to save"
        );

        // Changing them makes a set of their own; the map is untouched.
        assert!(!names.insert("a".to_string()));
        assert!(names.are_keys_of(&map), "no change, still shared");
        assert!(names.insert("c".to_string()));
        assert!(!names.are_keys_of(&map));
        assert_eq!(names, owned(&["a", "b", "c"]));
        assert_eq!(map.len(), 2);
        let mut names = owned(&["a", "b"]);
        names.share_keys_of(&map);
        assert!(!names.remove("c"));
        assert!(names.remove("b"));
        assert_eq!(names, owned(&["a"]));
    }

    #[test]
    fn ads_sync_state_compares_sent_acked_and_nacked() {
        assert_eq!(status(None, None, None).sync_state(), SyncState::NotSent);
        assert_eq!(
            status(Some("a"), Some("a"), None).sync_state(),
            SyncState::Synced
        );
        assert_eq!(
            status(Some("b"), Some("a"), None).sync_state(),
            SyncState::Stale
        );
        assert_eq!(
            status(Some("b"), Some("a"), Some("b")).sync_state(),
            SyncState::Nacked
        );
        // A newer version after a NACK is stale until ACKed, then synced.
        assert_eq!(
            status(Some("c"), Some("a"), Some("b")).sync_state(),
            SyncState::Stale
        );
        assert_eq!(
            status(Some("c"), Some("c"), Some("b")).sync_state(),
            SyncState::Synced
        );
    }
}
