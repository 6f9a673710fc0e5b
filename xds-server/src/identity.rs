//! Who a proxy is and who it may act as.
//!
//! Every ADS stream resolves its node id to a [`ProxyId`] and carries the
//! [`Identity`] it is allowed to act as. With authenticated xDS (the
//! default) that identity is the SPIFFE ID of the connection's client
//! certificate ([`Peer::Certificate`]), and a node id naming a workload of
//! another identity is refused. Only `--insecure-xds` (loopback only) trusts
//! the node id as given ([`Peer::Unauthenticated`]). SDS only ever hands out
//! the secrets of the stream's identity.

use std::fmt;

/// A workload's SPIFFE identity: namespace and service account.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub namespace: String,
    pub service_account: String,
}

impl Identity {
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }

    /// The identity a SPIFFE ID of `trust_domain` names
    /// (`spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`); an error
    /// saying what is wrong with any other URI.
    pub fn from_spiffe_id(uri: &str, trust_domain: &str) -> Result<Identity, String> {
        let Some(rest) = uri.strip_prefix("spiffe://") else {
            return Err(format!("{uri:?} is not a SPIFFE ID"));
        };
        let Some((domain, path)) = rest.split_once('/') else {
            return Err(format!("{uri:?} has no path"));
        };
        if domain != trust_domain {
            return Err(format!(
                "{uri:?} is in trust domain {domain:?}, not {trust_domain:?}"
            ));
        }
        match path.split('/').collect::<Vec<_>>().as_slice() {
            ["ns", ns, "sa", sa] if !ns.is_empty() && !sa.is_empty() => Ok(Identity {
                namespace: ns.to_string(),
                service_account: sa.to_string(),
            }),
            _ => Err(format!(
                "{uri:?} is not of the form spiffe://{trust_domain}/ns/NAMESPACE/sa/SERVICE_ACCOUNT"
            )),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service_account)
    }
}

/// What the transport proved about the peer of an xDS connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Plaintext xDS (`--insecure-xds`): the node id is trusted as given.
    Unauthenticated,
    /// mTLS xDS: the peer presented a certificate for this identity.
    Certificate(Identity),
    /// The transport could not establish an identity (say, a certificate
    /// without a SPIFFE ID of our trust domain); the reason, for the log.
    Rejected(String),
}

/// A proxy as the model knows it: the pod it runs in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProxyId {
    pub namespace: String,
    pub pod: String,
}

impl fmt::Display for ProxyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.pod, self.namespace)
    }
}

/// Istio's node id, `TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeId {
    pub kind: String,
    pub ip: String,
    pub pod: String,
    pub namespace: String,
    pub domain: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "node id {id:?} is not of the form sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local: {reason}"
)]
pub struct NodeIdError {
    pub id: String,
    pub reason: &'static str,
}

impl NodeId {
    pub fn parse(id: &str) -> Result<NodeId, NodeIdError> {
        let err = |reason| NodeIdError {
            id: id.to_string(),
            reason,
        };
        let parts: Vec<&str> = id.split('~').collect();
        let [kind, ip, pod_ns, domain] = parts.as_slice() else {
            return Err(err("expected four parts separated by '~'"));
        };
        if !matches!(*kind, "sidecar" | "router" | "waypoint") {
            return Err(err("type must be sidecar, router or waypoint"));
        }
        let Some((pod, namespace)) = pod_ns.rsplit_once('.') else {
            return Err(err("third part must be POD.NAMESPACE"));
        };
        if pod.is_empty() || namespace.is_empty() {
            return Err(err("pod and namespace must not be empty"));
        }
        Ok(NodeId {
            kind: kind.to_string(),
            ip: ip.to_string(),
            pod: pod.to_string(),
            namespace: namespace.to_string(),
            domain: domain.to_string(),
        })
    }

    /// The node id istio-agent would use for this pod.
    pub fn format(ip: &str, pod: &str, namespace: &str, cluster_domain: &str) -> String {
        format!("sidecar~{ip}~{pod}.{namespace}~{namespace}.svc.{cluster_domain}")
    }

    pub fn proxy_id(&self) -> ProxyId {
        ProxyId {
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_sidecar_node_id() {
        let n =
            NodeId::parse("sidecar~10.0.0.5~httpbin-0.foo~foo.svc.cluster.local").expect("valid");
        assert_eq!(n.pod, "httpbin-0");
        assert_eq!(n.namespace, "foo");
        assert_eq!(n.ip, "10.0.0.5");
        assert_eq!(
            NodeId::format("10.0.0.5", "httpbin-0", "foo", "cluster.local"),
            "sidecar~10.0.0.5~httpbin-0.foo~foo.svc.cluster.local"
        );
    }

    #[test]
    fn spiffe_ids_of_our_trust_domain_name_an_identity() {
        let id =
            Identity::from_spiffe_id("spiffe://cluster.local/ns/foo/sa/sleep", "cluster.local")
                .expect("valid");
        assert_eq!(id.to_string(), "foo/sleep");
        for (bad, why) in [
            ("https://cluster.local/ns/foo/sa/sleep", "not a SPIFFE ID"),
            ("spiffe://other.domain/ns/foo/sa/sleep", "trust domain"),
            ("spiffe://cluster.local/ns/foo", "not of the form"),
            ("spiffe://cluster.local/ns//sa/sleep", "not of the form"),
            (
                "spiffe://cluster.local/ns/foo/sa/sleep/x",
                "not of the form",
            ),
            ("spiffe://cluster.local", "no path"),
        ] {
            let err = Identity::from_spiffe_id(bad, "cluster.local").expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn rejects_malformed_node_ids() {
        for bad in [
            "",
            "sidecar~1.2.3.4~pod~x",
            "proxy~1~a.b~c",
            "sidecar~1~nodot~c",
        ] {
            assert!(NodeId::parse(bad).is_err(), "{bad}");
        }
    }
}
