//! State-of-the-world ADS: every response carries the full set of resources
//! of its type that the proxy subscribed to.
//!
//! Per type we keep the subscription, the version and nonce last sent, the
//! version last ACKed and the last NACK. The rules (go-control-plane's, plus
//! recording NACKs):
//! - a request whose `response_nonce` is not the nonce last sent for its type
//!   is stale and ignored entirely, subscription included; the first request
//!   of a type (nothing sent yet) is always taken;
//! - `error_detail` makes a request a NACK: recorded, and the rejected
//!   version is not sent again; the next different version is;
//! - a type is pushed when the version of its subscribed resources differs
//!   from the one last sent, or when the subscription changed;
//! - a change pushes the subscribed types in [`ResourceType::PUSH_ORDER`].
//!
//! `version_info` of a stream's first request (left from an earlier server)
//! is not trusted: a new stream always gets the current state.

use super::limits::{self, Limits, Refusal};
use super::registry::{Nack, Names, Subscription, TypeStatus};
use super::stream::{Ended, Session, Variant};
use super::wire::SotwResponse;
use crate::view::ConfigSource;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use translator::xds::set_version;
use translator::{ResourceMap, ResourceType};

/// One state-of-the-world stream after it was identified.
pub(super) struct Sotw<S: ConfigSource> {
    session: Session<S, SotwResponse>,
    types: BTreeMap<ResourceType, TypeStatus>,
    /// Per type, the view's map the last push decision was made from. The
    /// snapshots keep a map whose content did not change across
    /// generations, so the same map under the same subscription means
    /// nothing to send, found without hashing anything.
    decided_from: BTreeMap<ResourceType, Arc<ResourceMap>>,
}

impl<S: ConfigSource> Variant<S> for Sotw<S> {
    type Request = DiscoveryRequest;
    type Response = SotwResponse;
    const DELTA: bool = false;

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn check(limits: &Limits, request: &DiscoveryRequest) -> Result<(), Refusal> {
        limits::check_sotw(limits, request)
    }

    fn new(session: Session<S, SotwResponse>) -> Self {
        Sotw {
            session,
            types: BTreeMap::new(),
            decided_from: BTreeMap::new(),
        }
    }

    fn session(&self) -> &Session<S, SotwResponse> {
        &self.session
    }

    async fn on_request(&mut self, request: DiscoveryRequest, at: Instant) -> Result<(), Ended> {
        // Exhaustive on purpose: a new field in the protocol must be looked at.
        let DiscoveryRequest {
            version_info,
            node: _,
            resource_names,
            resource_locators: _,
            type_url,
            response_nonce,
            error_detail,
        } = request;
        let Some(kind) = ResourceType::from_type_url(&type_url) else {
            self.session.unknown_type(&type_url);
            return Ok(());
        };
        let max_nack = self.session.shared.limits.max_nack_message_bytes;
        let status = self.types.entry(kind).or_default();
        // Whether the registry's copy is out of date: a repeated ACK of the
        // same version and names is common and needs no copy.
        let mut dirty = status.sent_nonce.is_none();
        if let Some(sent_nonce) = &status.sent_nonce {
            if *sent_nonce != response_nonce {
                tracing::debug!(%kind, nonce = %response_nonce, latest = %sent_nonce, "ignoring stale request");
                return Ok(());
            }
            if let Some(error) = error_detail {
                let version = status.sent_version.clone().unwrap_or_default();
                // Kept for the debug endpoints and logged: bounded.
                let message = limits::truncate(error.message, max_nack);
                tracing::warn!(%kind, %version, nonce = %response_nonce, error = %message, "proxy rejected configuration (NACK)");
                status.last_nack = Some(Nack {
                    version,
                    message,
                    at: SystemTime::now(),
                });
                self.session.stats().record_nack(kind);
                dirty = true;
            } else if status.acked_version.as_ref() != Some(&version_info) {
                status.acked_version = Some(version_info);
                dirty = true;
            }
        }
        let all = self.session.view.of(kind);
        let subscription = sotw_subscription(kind, resource_names, all);
        let changed = status.subscription.as_deref() != Some(&subscription);
        // The same names now shared with the current map: taken too, so the
        // stream and the registry stop holding an older map alive.
        let shares = subscription.names.are_keys_of(all)
            && status
                .subscription
                .as_ref()
                .is_some_and(|s| !s.names.are_keys_of(all));
        if changed || shares {
            status.subscription = Some(Arc::new(subscription));
            dirty = true;
        }
        if dirty {
            self.session.publish(kind, status);
        }
        self.push(kind, changed, at).await.map(drop)
    }

    /// After a change: re-read the view and push what differs, in order.
    async fn on_change(&mut self) -> Result<(), Ended> {
        let at = Instant::now();
        match self.session.refresh() {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(status) => return Err(self.session.fail(status).await),
        }
        // Envoy re-creates a cluster that changed and keeps it warming
        // until endpoints for it arrive, even unchanged ones: after clusters
        // go out, endpoints go out too (as istiod and go-control-plane do),
        // or the new cluster waits out Envoy's 15 s initial fetch timeout.
        let mut clusters_sent = false;
        for kind in ResourceType::PUSH_ORDER {
            let force = kind == ResourceType::Endpoint && clusters_sent;
            let sent = self.push(kind, force, at).await?;
            if kind == ResourceType::Cluster {
                clusters_sent = sent;
            }
        }
        Ok(())
    }
}

impl<S: ConfigSource> Sotw<S> {
    /// Sends `kind` if the proxy subscribed to it and its version differs
    /// from what was sent last (or `force`: after a subscription change, or
    /// endpoints after clusters). Whether it sent.
    async fn push(&mut self, kind: ResourceType, force: bool, at: Instant) -> Result<bool, Ended> {
        let Some(status) = self.types.get(&kind) else {
            return Ok(false);
        };
        let Some(subscription) = &status.subscription else {
            return Ok(false);
        };
        let all = self.session.view.of(kind);
        let unchanged = self
            .decided_from
            .get(&kind)
            .is_some_and(|from| Arc::ptr_eq(from, all));
        if !force && unchanged {
            return Ok(false);
        }
        self.decided_from.insert(kind, Arc::clone(all));
        let resources = select(all, subscription);
        // Wildcards and EDS naming every cluster get the view's map itself,
        // shared by every proxy with that view: its version is computed
        // once, not per stream.
        let version = if Arc::ptr_eq(&resources, all) {
            self.session.shared.versions.of(all)
        } else {
            set_version(&resources)
        };
        if !force && status.sent_version.as_ref() == Some(&version) {
            return Ok(false);
        }
        let nonce = self.session.next_nonce();
        let response = SotwResponse {
            version_info: version.clone(),
            kind,
            nonce: nonce.clone(),
            resources: resources.values().cloned().collect(),
        };
        self.session.send(response).await?;
        self.session.stats().record_push(kind, at.elapsed());
        tracing::debug!(%kind, %version, %nonce, count = resources.len(), "sent");
        if let Some(status) = self.types.get_mut(&kind) {
            status.sent_version = Some(version);
            status.sent_nonce = Some(nonce);
            status.sent = resources;
            self.session.publish(kind, status);
        }
        Ok(true)
    }
}

/// The subscription a state-of-the-world request expresses. For CDS/LDS an
/// empty list (legacy) or `*` means all; other types are always by name.
/// Names that are exactly the keys of `all` (EDS naming every cluster) are
/// kept as a reference to `all`, not copied.
fn sotw_subscription(
    kind: ResourceType,
    names: Vec<String>,
    all: &Arc<ResourceMap>,
) -> Subscription {
    let wildcard = kind.is_wildcard() && (names.is_empty() || names.iter().any(|n| n == "*"));
    let mut names: Names = names.into_iter().filter(|n| n != "*").collect();
    names.share_keys_of(all);
    Subscription { wildcard, names }
}

/// The resources of `all` that `subscription` covers. Shares the map when
/// it covers everything (a wildcard, or EDS naming every cluster), so a
/// stream keeps no copy of the names the view already holds.
fn select(all: &Arc<ResourceMap>, subscription: &Subscription) -> Arc<ResourceMap> {
    let names = &subscription.names;
    if subscription.wildcard
        || names.are_keys_of(all)
        || (names.len() >= all.len() && all.keys().all(|name| names.contains(name)))
    {
        return Arc::clone(all);
    }
    Arc::new(
        subscription
            .names
            .iter()
            .filter_map(|name| all.get_key_value(name.as_str()))
            .map(|(name, r)| (name.clone(), Arc::clone(r)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ads_sotw_wildcard_only_for_cds_and_lds() {
        let none = Arc::new(ResourceMap::new());
        assert!(sotw_subscription(ResourceType::Cluster, vec![], &none).wildcard);
        assert!(sotw_subscription(ResourceType::Listener, vec!["*".into()], &none).wildcard);
        assert!(!sotw_subscription(ResourceType::Endpoint, vec![], &none).wildcard);
        let named = sotw_subscription(ResourceType::Route, vec!["a".into(), "b".into()], &none);
        assert!(!named.wildcard);
        assert_eq!(named.names.len(), 2);
    }
}
