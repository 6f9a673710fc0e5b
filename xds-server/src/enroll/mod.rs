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
mod wire;

#[cfg(test)]
mod tests;

pub use client::{Enrolled, enroll};
pub use review::{KubeTokenReviewer, ReviewError, TokenReviewer, identity_of_user};
pub use server::{Enroller, Route, serve, serve_with};
pub use wire::{
    CERTIFICATE_PATH, CertificateRequest, CertificateResponse, DEFAULT_AUDIENCE, DEFAULT_ROOT_PATH,
    DEFAULT_TOKEN_PATH, ErrorResponse, MAX_REQUEST_BYTES,
};
