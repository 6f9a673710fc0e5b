//! Which version of each Istio kind the cluster serves. Istio serves
//! several versions of one schema; the newest this project reads is used,
//! so objects come back as the newest version whatever they were written as.

use hyper::Request;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIGroup;
use kube::Client;
use kube::api::ApiResource;
use kube::core::gvk::GroupVersionKind;
use kube::discovery::{self, Scope, verbs};

/// An Istio kind this source watches.
#[derive(Debug)]
pub(crate) struct IstioKind {
    pub kind: &'static str,
    pub group: &'static str,
    /// The versions this project reads, newest first.
    pub versions: &'static [&'static str],
}

pub(crate) const PEER_AUTHENTICATION: IstioKind = IstioKind {
    kind: "PeerAuthentication",
    group: crds::peer_authentication::GROUP,
    versions: &["v1", "v1beta1"],
};

pub(crate) const DESTINATION_RULE: IstioKind = IstioKind {
    kind: "DestinationRule",
    group: crds::destination_rule::GROUP,
    versions: &["v1", "v1beta1", "v1alpha3"],
};

pub(crate) const SIDECAR: IstioKind = IstioKind {
    kind: "Sidecar",
    group: crds::sidecar::GROUP,
    versions: &["v1", "v1beta1", "v1alpha3"],
};

/// What discovery found for a kind.
#[derive(Debug)]
pub(crate) enum Discovered {
    /// Served: watch this resource.
    Served(ApiResource),
    /// Not served (its CRD is not installed, or serves no version this
    /// project reads), and why.
    NotServed(String),
}

/// Whether an API error says the path does not exist.
fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
}

/// Finds the newest served version of `kind` that this project reads. An
/// error is a failure to ask (the API server is unreachable, or answered
/// 5xx), not an answer: the caller retries.
pub(crate) async fn discover(client: &Client, kind: &IstioKind) -> kube::Result<Discovered> {
    let request = Request::get(format!("/apis/{}", kind.group))
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    let group: APIGroup = match client.request(request).await {
        Ok(group) => group,
        Err(e) if not_found(&e) => {
            return Ok(Discovered::NotServed(format!(
                "the API group {} is not served",
                kind.group
            )));
        }
        Err(e) => return Err(e),
    };
    let served: Vec<&str> = group.versions.iter().map(|v| v.version.as_str()).collect();
    for version in kind.versions {
        if !served.contains(version) {
            continue;
        }
        let gvk = GroupVersionKind::gvk(kind.group, version, kind.kind);
        match discovery::pinned_kind(client, &gvk).await {
            Ok((resource, caps)) => {
                let watchable = caps.scope == Scope::Namespaced
                    && caps.supports_operation(verbs::LIST)
                    && caps.supports_operation(verbs::WATCH);
                if watchable {
                    return Ok(Discovered::Served(resource));
                }
            }
            // The group serves the version, but not this kind in it.
            Err(kube::Error::Discovery(_)) => {}
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Discovered::NotServed(format!(
        "{} serves {} in none of the versions {} (it serves {})",
        kind.group,
        kind.kind,
        kind.versions.join(", "),
        served.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The preference orders name exactly the versions the parser accepts.
    #[test]
    fn preference_orders_cover_the_versions_the_parser_reads() {
        for (kind, versions) in [
            (&PEER_AUTHENTICATION, crds::peer_authentication::VERSIONS),
            (&DESTINATION_RULE, crds::destination_rule::VERSIONS),
            (&SIDECAR, crds::sidecar::VERSIONS),
        ] {
            let mut ours = kind.versions.to_vec();
            let mut theirs = versions.to_vec();
            ours.sort_unstable();
            theirs.sort_unstable();
            assert_eq!(ours, theirs, "{}", kind.kind);
        }
    }
}
