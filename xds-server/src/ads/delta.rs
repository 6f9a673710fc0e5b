//! Delta (incremental) ADS: responses carry only the resources that changed
//! and the names that went away.
//!
//! Per type we keep the subscription (wildcard for CDS/LDS unless the first
//! request names resources; `*` subscribes or unsubscribes the wildcard) and
//! what the proxy holds, by name: the version it has, or that we told it the
//! resource does not exist. A response is the difference between the
//! current view and that record, so unchanged resources are never resent,
//! a NACKed version is not resent (the record says the proxy got it), and
//! `initial_resource_versions` of a reconnecting proxy seed the record.
//!
//! Unlike state of the world, subscription changes are applied whatever the
//! nonce: they are increments, and dropping one would lose it for good. The
//! nonce only decides whether `error_detail` / an ACK refers to the latest
//! response.

use super::limits::{self, Limits, Refusal};
use super::registry::{Nack, Names, Subscription, TypeStatus};
use super::stream::{Ended, Session, Variant};
use super::wire::DeltaResponse;
use crate::view::ConfigSource;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use translator::xds::set_version;
use translator::{Resource, ResourceMap, ResourceType};

/// What the proxy holds of one name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    /// The content hash of the version it has ([`Resource::hash`]; the
    /// version string is its hex): 8 bytes per name, not a string.
    Hash(u64),
    /// A version a reconnecting proxy reports that is not one of ours:
    /// matches nothing, so the resource is sent.
    Foreign,
    /// We told it the resource does not exist.
    Absent,
}

impl Version {
    /// A version string from `initial_resource_versions`.
    fn parse(version: &str) -> Version {
        match u64::from_str_radix(version, 16) {
            Ok(hash) if version.len() == 16 => Version::Hash(hash),
            _ => Version::Foreign,
        }
    }
}

/// What the proxy holds of one type, by name: every name of `base` at the
/// hash of its resource there, except as `except` says. The common case, a
/// proxy holding exactly the view's map, is that shared map and no
/// exceptions: no copy of the names per stream.
#[derive(Debug, Default)]
struct Held {
    base: Arc<ResourceMap>,
    /// `Some`: the proxy holds this version of the name (in `base` or not);
    /// `None`: it does not hold this name of `base`.
    except: BTreeMap<String, Option<Version>>,
}

impl FromIterator<(String, Version)> for Held {
    fn from_iter<I: IntoIterator<Item = (String, Version)>>(held: I) -> Self {
        Held {
            base: Arc::default(),
            except: held.into_iter().map(|(n, v)| (n, Some(v))).collect(),
        }
    }
}

impl Held {
    fn get(&self, name: &str) -> Option<Version> {
        match self.except.get(name) {
            Some(version) => *version,
            None => self.base.get(name).map(|r| Version::Hash(r.hash)),
        }
    }

    fn insert(&mut self, name: String, version: Version) {
        let as_base = self
            .base
            .get(name.as_str())
            .is_some_and(|r| Version::Hash(r.hash) == version);
        if as_base {
            self.except.remove(&name);
        } else {
            self.except.insert(name, Some(version));
        }
    }

    fn remove(&mut self, name: &str) {
        if self.base.contains_key(name) {
            self.except.insert(name.to_string(), None);
        } else {
            self.except.remove(name);
        }
    }

    /// The names held, each once (in no particular order).
    fn names(&self) -> impl Iterator<Item = &String> {
        let of_base = self
            .base
            .keys()
            .filter(|name| !matches!(self.except.get(name.as_str()), Some(None)));
        let others = self
            .except
            .iter()
            .filter(|(name, version)| version.is_some() && !self.base.contains_key(name.as_str()))
            .map(|(name, _)| name);
        of_base.chain(others)
    }

    /// Forgets the names `keep` refuses.
    fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self.names().filter(|n| !keep(n)).cloned().collect();
        for name in gone {
            self.remove(&name);
        }
    }

    /// The same record against `map`, if it takes at most `limit` exceptions.
    fn against(
        &self,
        map: &ResourceMap,
        limit: usize,
    ) -> Option<BTreeMap<String, Option<Version>>> {
        let mut except = BTreeMap::new();
        for (name, r) in map {
            let version = self.get(name);
            if version != Some(Version::Hash(r.hash)) {
                except.insert(name.clone(), version);
                if except.len() > limit {
                    return None;
                }
            }
        }
        for name in self.names().filter(|n| !map.contains_key(n.as_str())) {
            except.insert(name.clone(), self.get(name));
            if except.len() > limit {
                return None;
            }
        }
        Some(except)
    }

    /// Re-expresses the same record with the fewest exceptions: against
    /// `map` (the view's current map) when that takes no more than now, so
    /// an older map is let go; against nothing when the exceptions
    /// outnumber the names held.
    fn settle(&mut self, map: &Arc<ResourceMap>) {
        if !Arc::ptr_eq(&self.base, map)
            && let Some(except) = self.against(map, self.except.len())
        {
            self.base = Arc::clone(map);
            self.except = except;
        }
        if self.except.len() > self.names().take(self.except.len() + 1).count() {
            let except = self
                .names()
                .map(|name| (name.clone(), self.get(name)))
                .collect();
            self.base = Arc::default();
            self.except = except;
        }
    }
}

#[derive(Default)]
struct DeltaType {
    status: TypeStatus,
    held: Held,
}

impl DeltaType {
    /// Records that the proxy now holds what `diff` sent, against `all`
    /// (the map it was made from).
    fn record(&mut self, diff: &Diff, all: &Arc<ResourceMap>) {
        for r in &diff.changed {
            self.held.insert(r.name.clone(), Version::Hash(r.hash));
        }
        for name in &diff.removed {
            let named = self
                .status
                .subscription
                .as_ref()
                .is_some_and(|s| s.names.contains(name));
            if named {
                self.held.insert(name.clone(), Version::Absent);
            } else {
                self.held.remove(name);
            }
        }
        self.held.settle(all);
    }
}

/// One delta stream after it was identified.
pub(super) struct Delta<S: ConfigSource> {
    session: Session<S, DeltaResponse>,
    types: BTreeMap<ResourceType, DeltaType>,
    /// Per type, the view's map the last diff was made against (see
    /// `Sotw::decided_from`): the same map, with no subscription change
    /// since, has nothing new to send.
    diffed_from: BTreeMap<ResourceType, Arc<ResourceMap>>,
}

impl<S: ConfigSource> Variant<S> for Delta<S> {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaResponse;
    const DELTA: bool = true;

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn check(limits: &Limits, request: &DeltaDiscoveryRequest) -> Result<(), Refusal> {
        limits::check_delta(limits, request)
    }

    fn new(session: Session<S, DeltaResponse>) -> Self {
        Delta {
            session,
            types: BTreeMap::new(),
            diffed_from: BTreeMap::new(),
        }
    }

    fn session(&self) -> &Session<S, DeltaResponse> {
        &self.session
    }

    async fn on_request(
        &mut self,
        request: DeltaDiscoveryRequest,
        at: Instant,
    ) -> Result<(), Ended> {
        // Exhaustive on purpose: a new field in the protocol must be looked at.
        let DeltaDiscoveryRequest {
            node: _,
            type_url,
            resource_names_subscribe,
            resource_names_unsubscribe,
            resource_locators_subscribe: _,
            resource_locators_unsubscribe: _,
            initial_resource_versions,
            response_nonce,
            error_detail,
        } = request;
        let Some(kind) = ResourceType::from_type_url(&type_url) else {
            self.session.unknown_type(&type_url);
            return Ok(());
        };
        let bounds = &self.session.shared.limits;
        let (max_subscriptions, max_nack) = (
            bounds.max_delta_subscriptions,
            bounds.max_nack_message_bytes,
        );
        // Names this stream subscribed to in its other types: the bound is
        // per stream.
        let others: usize = self
            .types
            .iter()
            .filter(|(k, _)| **k != kind)
            .filter_map(|(_, t)| t.status.subscription.as_ref())
            .map(|s| s.names.len())
            .sum();
        let first = !self.types.contains_key(&kind);
        let state = self.types.entry(kind).or_default();
        let subscription = state.status.subscription.get_or_insert_with(|| {
            Arc::new(Subscription {
                // Legacy wildcard: a first CDS/LDS request naming nothing.
                wildcard: kind.is_wildcard() && resource_names_subscribe.is_empty(),
                names: Names::default(),
            })
        });
        // Whether the subscription changed: a request repeating what the
        // stream already has costs no copy and no diff. The registry shares
        // the subscription, so it is copied (`make_mut`) only when it
        // changes, and replaced there on the publish below.
        let mut changed = first;
        let mut removed = first;
        for name in resource_names_subscribe {
            if name == "*" {
                if !subscription.wildcard {
                    Arc::make_mut(subscription).wildcard = true;
                    changed = true;
                }
            } else if !subscription.names.contains(&name) {
                Arc::make_mut(subscription).names.insert(name);
                changed = true;
            }
        }
        for name in resource_names_unsubscribe {
            let gone = if name == "*" {
                subscription.wildcard
            } else {
                subscription.names.contains(&name)
            };
            if gone {
                let subscription = Arc::make_mut(subscription);
                if name == "*" {
                    subscription.wildcard = false;
                } else {
                    subscription.names.remove(&name);
                }
            }
            removed |= gone;
        }
        changed |= removed;
        // Checked after the fact: one request can only go past the bound
        // by its own names, which `check_delta` bounded.
        if let Err(refusal) =
            limits::check_subscriptions_of(max_subscriptions, others + subscription.names.len())
        {
            return Err(self.session.refuse(refusal).await);
        }
        if changed {
            // Unique here (changed above, or just created): no copy.
            Arc::make_mut(subscription)
                .names
                .share_keys_of(self.session.view.of(kind));
        }
        if first {
            state.held = initial_resource_versions
                .into_iter()
                .map(|(name, version)| {
                    let version = Version::parse(&version);
                    (name, version)
                })
                .collect();
            state.held.settle(self.session.view.of(kind));
        } else if !initial_resource_versions.is_empty() {
            tracing::debug!(%kind, "ignoring initial_resource_versions after the first request");
        }
        if removed {
            // The proxy drops what it unsubscribed from; forget we sent it,
            // so a later subscription sends it again. (On the first request,
            // drops initial versions of names it is not subscribed to.)
            let subscription: &Subscription = subscription;
            state.held.retain(|name| subscription.covers(name));
            state.held.settle(self.session.view.of(kind));
            if state
                .status
                .sent
                .keys()
                .any(|name| !subscription.covers(name))
            {
                Arc::make_mut(&mut state.status.sent).retain(|name, _| subscription.covers(name));
            }
        }

        let mut dirty = changed;
        if !response_nonce.is_empty() {
            match &state.status.sent_nonce {
                Some(sent) if *sent == response_nonce => {
                    if let Some(error) = error_detail {
                        let version = state.status.sent_version.clone().unwrap_or_default();
                        // Kept for the debug endpoints and logged: bounded.
                        let message = limits::truncate(error.message, max_nack);
                        tracing::warn!(%kind, %version, nonce = %response_nonce, error = %message, "proxy rejected configuration (NACK)");
                        state.status.last_nack = Some(Nack {
                            version,
                            message,
                            at: SystemTime::now(),
                        });
                        self.session.stats().record_nack(kind);
                        dirty = true;
                    } else if state.status.acked_version != state.status.sent_version {
                        state.status.acked_version = state.status.sent_version.clone();
                        dirty = true;
                    }
                }
                _ => {
                    tracing::debug!(%kind, nonce = %response_nonce, "ignoring ACK/NACK of a stale nonce");
                }
            }
        }
        if dirty {
            self.session.publish(kind, &state.status);
        }
        // Every push leaves nothing to send for the subscription it was
        // made for, so an unchanged one has nothing new until the view
        // changes (which `on_change` handles). The first request of a type
        // always gets an answer, even an empty one: Envoy's initialization
        // waits for it.
        if !changed {
            return Ok(());
        }
        self.diffed_from.remove(&kind);
        self.push(kind, first, &BTreeSet::new(), at).await.map(drop)
    }

    async fn on_change(&mut self) -> Result<(), Ended> {
        let at = Instant::now();
        match self.session.refresh() {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(status) => return Err(self.session.fail(status).await),
        }
        // Envoy re-creates a cluster that changed and keeps it warming
        // until its endpoints arrive, even unchanged ones: the endpoints of
        // every cluster just sent go out again (as istiod does), or the new
        // cluster waits out Envoy's 15 s initial fetch timeout. An EDS
        // resource is named after its cluster (`service_name`).
        let mut clusters_sent = BTreeSet::new();
        for kind in ResourceType::PUSH_ORDER {
            let resend = if kind == ResourceType::Endpoint {
                std::mem::take(&mut clusters_sent)
            } else {
                BTreeSet::new()
            };
            let sent = self.push(kind, false, &resend, at).await?;
            if kind == ResourceType::Cluster {
                clusters_sent = sent;
            }
        }
        Ok(())
    }
}

/// The difference between what a proxy holds of one type and the view.
#[derive(Default)]
struct Diff {
    /// New or changed resources.
    changed: Vec<Arc<Resource>>,
    /// Subscribed names that do not exist (any more).
    removed: Vec<String>,
    /// Held at the current version without being in `sent` (seeded from
    /// `initial_resource_versions`): nothing to send, but now known.
    adopted: Vec<Arc<Resource>>,
}

impl Diff {
    fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }
}

/// `resend`: names to send even when the proxy holds their current version.
fn diff(all: &ResourceMap, state: &DeltaType, resend: &BTreeSet<String>) -> Diff {
    let mut out = Diff::default();
    let Some(subscription) = &state.status.subscription else {
        return out;
    };
    let mut candidates: BTreeSet<&str> = subscription.names.iter().map(String::as_str).collect();
    if subscription.wildcard {
        candidates.extend(all.keys().map(String::as_str));
        candidates.extend(state.held.names().map(String::as_str));
    }
    for name in candidates {
        match (all.get(name), state.held.get(name)) {
            (Some(r), Some(Version::Hash(hash))) if hash == r.hash && !resend.contains(name) => {
                if !state.status.sent.contains_key(name) {
                    out.adopted.push(Arc::clone(r));
                }
            }
            (Some(r), _) => out.changed.push(Arc::clone(r)),
            (None, Some(Version::Hash(_) | Version::Foreign)) => out.removed.push(name.to_string()),
            // Already told it does not exist.
            (None, Some(Version::Absent)) => {}
            // Asked for by name but does not exist: say so, so the proxy
            // does not wait for it (the xDS spec's way for delta).
            (None, None) => {
                if subscription.names.contains(name) {
                    out.removed.push(name.to_string());
                }
            }
        }
    }
    out
}

/// Whether `subscription` covers every resource of `all`.
fn covers_all(all: &Arc<ResourceMap>, subscription: Option<&Subscription>) -> bool {
    subscription.is_some_and(|s| {
        s.wildcard
            || s.names.are_keys_of(all)
            || (s.names.len() >= all.len() && all.keys().all(|name| s.names.contains(name)))
    })
}

impl<S: ConfigSource> Delta<S> {
    /// Sends what changed of `kind` since the proxy's record, if anything
    /// (or an empty response when `force`), and the names in `resend` the
    /// proxy is subscribed to. The names of the resources it sent.
    async fn push(
        &mut self,
        kind: ResourceType,
        force: bool,
        resend: &BTreeSet<String>,
        at: Instant,
    ) -> Result<BTreeSet<String>, Ended> {
        let Some(state) = self.types.get_mut(&kind) else {
            return Ok(BTreeSet::new());
        };
        let all = self.session.view.of(kind);
        let unchanged = self
            .diffed_from
            .get(&kind)
            .is_some_and(|from| Arc::ptr_eq(from, all));
        if unchanged && !force && resend.is_empty() {
            return Ok(BTreeSet::new());
        }
        self.diffed_from.insert(kind, Arc::clone(all));
        // Names that are the keys of this map now refer to it: no copy of
        // the names, and no older map (with its old resources) kept alive
        // for them. Delta requests do not repeat the names, so this is
        // where a new map is met.
        if let Some(subscription) = &mut state.status.subscription
            && let Some(names) = subscription.names.shared_with(all)
        {
            *subscription = Arc::new(Subscription {
                wildcard: subscription.wildcard,
                names,
            });
            self.session.publish(kind, &state.status);
        }
        let state = &*state;
        let diff = diff(all, state, resend);
        let mut sent = Arc::clone(&state.status.sent);
        if covers_all(all, state.status.subscription.as_deref()) {
            // After this push the proxy holds exactly the view's map (the
            // diff removes what it no longer has): share it rather than
            // keep a copy per stream.
            sent = Arc::clone(all);
        } else if !diff.adopted.is_empty() || !diff.is_empty() {
            let map = Arc::make_mut(&mut sent);
            for r in diff.adopted.iter().chain(&diff.changed) {
                map.insert(r.name.clone(), Arc::clone(r));
            }
            for name in &diff.removed {
                map.remove(name);
            }
        }
        // Kept past the send: the record is settled against it after.
        let all = Arc::clone(all);
        if diff.is_empty() && !force {
            if let Some(state) = self.types.get_mut(&kind) {
                // Content unchanged, but perhaps a new map: let the old go.
                state.held.settle(&all);
                if !diff.adopted.is_empty() {
                    state.status.sent = sent;
                    self.session.publish(kind, &state.status);
                }
            }
            return Ok(BTreeSet::new());
        }
        // What the proxy holds is the view's map in the common case: its
        // version is the map's, computed once for every stream.
        let version = if Arc::ptr_eq(&sent, &all) {
            self.session.shared.versions.of(&all)
        } else {
            set_version(&sent)
        };
        let nonce = self.session.next_nonce();
        let response = DeltaResponse {
            system_version_info: version.clone(),
            kind,
            nonce: nonce.clone(),
            resources: diff.changed.clone(),
            removed: diff.removed.clone(),
        };
        self.session.send(response).await?;
        self.session.stats().record_push(kind, at.elapsed());
        tracing::debug!(%kind, %version, %nonce, changed = diff.changed.len(), removed = diff.removed.len(), "sent");
        if let Some(state) = self.types.get_mut(&kind) {
            state.record(&diff, &all);
            state.status.sent = sent;
            state.status.sent_version = Some(version);
            state.status.sent_nonce = Some(nonce);
            self.session.publish(kind, &state.status);
        }
        Ok(diff.changed.iter().map(|r| r.name.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

    fn resource(name: &str, rev: u8) -> Arc<Resource> {
        Arc::new(Resource::from_encoded::<ClusterLoadAssignment>(
            name,
            ResourceType::Endpoint,
            vec![rev],
        ))
    }

    fn map(resources: &[(&str, u8)]) -> Arc<ResourceMap> {
        Arc::new(
            resources
                .iter()
                .map(|(name, rev)| (name.to_string(), resource(name, *rev)))
                .collect(),
        )
    }

    fn hash(map: &ResourceMap, name: &str) -> Version {
        Version::Hash(map[name].hash)
    }

    /// What the record says, name by name, sorted.
    fn contents(held: &Held) -> Vec<(String, Version)> {
        let mut all: Vec<(String, Version)> = held
            .names()
            .filter_map(|n| held.get(n).map(|v| (n.clone(), v)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// A stream subscribed by name to every resource of `all`, holding
    /// nothing yet.
    fn naming_every(all: &Arc<ResourceMap>) -> DeltaType {
        let mut names: Names = all.keys().cloned().collect();
        names.share_keys_of(all);
        DeltaType {
            status: TypeStatus {
                subscription: Some(Arc::new(Subscription {
                    wildcard: false,
                    names,
                })),
                ..TypeStatus::default()
            },
            held: Held::default(),
        }
    }

    #[test]
    fn ads_delta_held_is_the_view_map_with_no_names_of_its_own_in_the_common_case() {
        let m1 = map(&[("a", 1), ("b", 1), ("c", 1)]);
        let mut state = naming_every(&m1);
        let first = diff(&m1, &state, &BTreeSet::new());
        assert_eq!(first.changed.len(), 3);
        state.record(&first, &m1);
        assert!(Arc::ptr_eq(&state.held.base, &m1), "held is the view's map");
        assert!(state.held.except.is_empty(), "and no per-name copy");

        // One resource changes in a new map: sent, and the record moves to
        // the new map, letting the old go.
        let m2 = map(&[("a", 1), ("b", 2), ("c", 1)]);
        let second = diff(&m2, &state, &BTreeSet::new());
        let sent: Vec<&str> = second.changed.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(sent, ["b"]);
        state.record(&second, &m2);
        assert!(Arc::ptr_eq(&state.held.base, &m2));
        assert!(state.held.except.is_empty());
        assert!(diff(&m2, &state, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn ads_delta_held_keeps_exceptions_for_absent_and_unsubscribed_names() {
        let m = map(&[("a", 1), ("b", 1)]);
        let mut state = naming_every(&m);
        let first = diff(&m, &state, &BTreeSet::new());
        state.record(&first, &m);
        // Asked for a name that does not exist: told so, once.
        if let Some(s) = &mut state.status.subscription {
            Arc::make_mut(s).names.insert("ghost".to_string());
        }
        let ghost = diff(&m, &state, &BTreeSet::new());
        assert_eq!(ghost.removed, ["ghost"]);
        state.record(&ghost, &m);
        assert!(Arc::ptr_eq(&state.held.base, &m));
        assert_eq!(state.held.except.len(), 1);
        assert_eq!(state.held.get("ghost"), Some(Version::Absent));
        assert!(diff(&m, &state, &BTreeSet::new()).is_empty());

        // Unsubscribing from b forgets it: subscribed again, it is sent.
        state.held.retain(|name| name != "b");
        state.held.settle(&m);
        assert_eq!(state.held.get("b"), None);
        assert_eq!(
            contents(&state.held),
            [
                ("a".to_string(), hash(&m, "a")),
                ("ghost".to_string(), Version::Absent)
            ]
        );
        let again = diff(&m, &state, &BTreeSet::new());
        let sent: Vec<&str> = again.changed.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(sent, ["b"]);
    }

    #[test]
    fn ads_delta_held_settles_on_the_cheapest_record_with_the_same_contents() {
        let m = map(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)]);
        // Seeded from initial_resource_versions: names of its own, until
        // settled against a map it matches.
        let mut held: Held = [
            ("a".to_string(), hash(&m, "a")),
            ("b".to_string(), hash(&m, "b")),
            ("c".to_string(), hash(&m, "c")),
            ("d".to_string(), Version::Foreign),
        ]
        .into_iter()
        .collect();
        let before = contents(&held);
        held.settle(&m);
        assert_eq!(contents(&held), before);
        assert!(Arc::ptr_eq(&held.base, &m));
        assert_eq!(held.except.len(), 1, "only d differs");

        // Holding little of the map: exceptions would outnumber the names,
        // so the record holds the names instead of the map.
        held.retain(|name| name == "a");
        let before = contents(&held);
        held.settle(&m);
        assert_eq!(contents(&held), before);
        assert!(held.base.is_empty());
        assert_eq!(held.except.len(), 1);
    }
}
