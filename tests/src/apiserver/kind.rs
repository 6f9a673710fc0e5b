//! The kinds the stand-in serves: names, groups, paths, and how a stored
//! object is rendered at the version a client asks for.

use kube::core::{DynamicObject, TypeMeta};

/// A kind the stand-in serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Service,
    Pod,
    ConfigMap,
    Secret,
    PeerAuthentication,
    DestinationRule,
    Sidecar,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Namespace,
        Kind::Service,
        Kind::Pod,
        Kind::ConfigMap,
        Kind::Secret,
        Kind::PeerAuthentication,
        Kind::DestinationRule,
        Kind::Sidecar,
    ];

    /// The kinds `serve --kube` lists and watches.
    pub const WATCHED: [Kind; 6] = [
        Kind::Namespace,
        Kind::Service,
        Kind::Pod,
        Kind::PeerAuthentication,
        Kind::DestinationRule,
        Kind::Sidecar,
    ];

    /// The kind of the Rust type `K`, if served.
    pub fn of<K: kube::Resource<DynamicType = ()>>() -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| K::group(&()) == k.group() && K::plural(&()) == k.plural())
    }

    /// The kind's name (`Pod`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Service => "Service",
            Kind::Pod => "Pod",
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::DestinationRule => "DestinationRule",
            Kind::Sidecar => "Sidecar",
        }
    }

    /// The API group ("" for core).
    pub fn group(self) -> &'static str {
        match self {
            Kind::PeerAuthentication => crds::peer_authentication::GROUP,
            Kind::DestinationRule => crds::destination_rule::GROUP,
            Kind::Sidecar => crds::sidecar::GROUP,
            _ => "",
        }
    }

    /// The resource name in paths (`pods`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Service => "services",
            Kind::Pod => "pods",
            Kind::ConfigMap => "configmaps",
            Kind::Secret => "secrets",
            Kind::PeerAuthentication => "peerauthentications",
            Kind::DestinationRule => "destinationrules",
            Kind::Sidecar => "sidecars",
        }
    }

    pub fn namespaced(self) -> bool {
        self != Kind::Namespace
    }

    /// A custom resource (its versions are chosen by the test).
    pub(super) fn is_custom(self) -> bool {
        !self.group().is_empty()
    }

    pub(super) fn api_version(self, version: &str) -> String {
        match self.group() {
            "" => version.to_string(),
            group => format!("{group}/{version}"),
        }
    }

    /// The resource as errors name it (`peerauthentications.security.istio.io`).
    pub(super) fn resource(self) -> String {
        match self.group() {
            "" => self.plural().to_string(),
            group => format!("{}.{group}", self.plural()),
        }
    }

    pub(super) fn short_names(self) -> Vec<String> {
        let short = match self {
            Kind::Namespace => "ns",
            Kind::Service => "svc",
            Kind::Pod => "po",
            Kind::ConfigMap => "cm",
            Kind::Secret => return Vec::new(),
            Kind::PeerAuthentication => "pa",
            Kind::DestinationRule => "dr",
            // Istio's Sidecar CRD has no short name.
            Kind::Sidecar => return Vec::new(),
        };
        vec![short.to_string()]
    }

    pub(super) fn from_path(group: &str, plural: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group() == group && k.plural() == plural)
    }
}

/// The kind a collection path (`/api/v1/pods`,
/// `/apis/GROUP/VERSION/namespaces/NS/PLURAL`) names.
pub(super) fn collection_of(path: &str) -> Option<Kind> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    match rest {
        [plural] | ["namespaces", _, plural] => Kind::from_path(group, plural),
        _ => None,
    }
}

/// An object as served at `version`: with its apiVersion and kind.
pub(super) fn render(kind: Kind, object: &DynamicObject, version: &str) -> DynamicObject {
    let mut object = object.clone();
    object.types = Some(TypeMeta {
        api_version: kind.api_version(version),
        kind: kind.name().to_string(),
    });
    object
}
