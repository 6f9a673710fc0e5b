//! Enrollment: how a sidecar in a cluster gets its bootstrap client
//! certificate, the credential every xDS stream is authenticated by.
//!
//! Istio's agent sends a CSR with the pod's projected service-account token
//! to istiod, which checks the token with the TokenReview API and signs a
//! certificate for the token's service account. A stock Envoy has no agent,
//! so the pod's init step (`xds-server bootstrap --ca-addr ...`) does the
//! same once, before Envoy starts:
//!
//! 1. it generates a key (which never leaves the pod) and a CSR;
//! 2. it connects to the control plane's certificate endpoint over TLS,
//!    trusting only the root published in the namespace's ConfigMap
//!    `istio-ca-root-cert` (as Istio's pods do) and checking the server's
//!    name;
//! 3. it sends `POST /v1/certificate` with `Authorization: Bearer TOKEN`
//!    and `{"csr": PEM}`;
//! 4. the server asks the API server's TokenReview whether the token is
//!    valid for the configured audience (`istio-ca` by default, Istio's),
//!    takes the service account from the user name it returns
//!    (`system:serviceaccount:NAMESPACE:NAME`), and signs the CSR's key for
//!    that identity only: the CSR's own subject and SANs are ignored;
//! 5. the init step writes the certificate, its key (0600) and the root
//!    beside the bootstrap.
//!
//! From then on the stream identity rule applies unchanged: a stream's
//! identity is its client certificate's SPIFFE ID, and its node id must
//! name a workload of that identity (see `docs/security.md`).

mod client;
mod review;
mod server;

#[cfg(test)]
mod tests;

pub use client::{Enrolled, enroll};
pub use review::{KubeTokenReviewer, ReviewError, TokenReviewer, identity_of_user};
pub use server::{Enroller, Route, serve, serve_with};

use serde::{Deserialize, Serialize};

/// The one path of the certificate endpoint.
pub const CERTIFICATE_PATH: &str = "/v1/certificate";

/// The audience a sidecar's token must be issued for: Istio's CA audience,
/// so pod templates written for Istio's projected token work unchanged.
pub const DEFAULT_AUDIENCE: &str = "istio-ca";

/// Where an Istio pod mounts its projected token (`istio-token`).
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/tokens/istio-token";

/// Where an Istio pod mounts the root from the ConfigMap
/// `istio-ca-root-cert`.
pub const DEFAULT_ROOT_PATH: &str = "/var/run/secrets/istio/root-cert.pem";

/// The largest request body the endpoint reads: a CSR is well under 2 KiB.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The request body.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateRequest {
    /// A PKCS#10 certificate signing request, PEM.
    pub csr: String,
}

/// The answer to a granted request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateResponse {
    /// The signed certificate, PEM (the root is not included: the client
    /// already trusts it).
    pub certificate_chain: String,
    /// The identity the certificate carries.
    pub spiffe_id: String,
    /// When it expires, RFC 3339.
    pub not_after: String,
}

/// The answer to a refused request: why, in one sentence.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: String,
}
