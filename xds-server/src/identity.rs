//! Who a proxy is and who it may act as.
//!
//! Every ADS stream resolves its node id to a [`ProxyId`] and carries the
//! [`Identity`] it is allowed to act as. Today that identity is taken from
//! the workload the node id names; with authenticated xDS it will come from
//! the client certificate of the connection ([`Peer::Certificate`]), and the
//! lookup refuses a node id that names a different identity. SDS only ever
//! hands out the secrets of the stream's identity.

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
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service_account)
    }
}

/// What the transport proved about the peer of an xDS connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Plaintext xDS: the node id is trusted as given.
    Unauthenticated,
    /// mTLS xDS: the peer presented a certificate for this identity.
    Certificate(Identity),
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
