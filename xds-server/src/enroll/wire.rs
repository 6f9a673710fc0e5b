//! What the certificate endpoint and its client say to each other, and
//! where a pod keeps its credentials.

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
