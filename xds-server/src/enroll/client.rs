//! The sidecar's side of enrollment, run by `xds-server bootstrap
//! --ca-addr`.

use super::wire::{CERTIFICATE_PATH, CertificateRequest, CertificateResponse, ErrorResponse};
use crate::bootstrap::HostPort;
use crate::ca::SecretString;
use crate::identity::Identity;
use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tracing::{info, warn};

/// The largest answer read: a certificate is a few KiB.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// First and longest pause between attempts while the control plane cannot
/// be reached or cannot check tokens yet.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What enrollment gave: a certificate for the token's identity and the key
/// generated here for it.
pub struct Enrolled {
    pub cert_chain_pem: String,
    pub private_key_pem: SecretString,
    pub identity: Identity,
    pub not_after: String,
}

/// One attempt's failure: worth another try (the endpoint is not up yet,
/// or cannot reach the API server), or final (refused).
enum Failure {
    Retry(anyhow::Error),
    Final(anyhow::Error),
}

/// Enrolls at the certificate endpoint `ca_addr` with `token`, trusting
/// only `root_pem` for the server's certificate, whose name must be
/// `ca_addr`'s host. Retries what may pass later (no connection, 503) until
/// `timeout`; a refusal (401, 403, 400) ends it at once with the server's
/// reason.
pub async fn enroll(
    ca_addr: &HostPort,
    root_pem: &str,
    token: &str,
    trust_domain: &str,
    timeout: Duration,
) -> anyhow::Result<Enrolled> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| anyhow!("generating the bootstrap key: {e}"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| anyhow!("writing the certificate signing request: {e}"))?;
    let connector = connector(root_pem)?;
    let server_name = ServerName::try_from(ca_addr.host.clone())
        .with_context(|| format!("{:?} is not a valid server name", ca_addr.host))?;
    let body = serde_json::to_vec(&CertificateRequest { csr })?;

    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = RETRY_MIN;
    let response = loop {
        let attempt = tokio::time::timeout_at(
            deadline,
            attempt(&connector, ca_addr, server_name.clone(), token, &body),
        )
        .await;
        match attempt {
            Ok(Ok(response)) => break response,
            Ok(Err(Failure::Final(e))) => return Err(e),
            Ok(Err(Failure::Retry(e))) => {
                if tokio::time::Instant::now() + pause >= deadline {
                    return Err(e.context(format!(
                        "no certificate from {ca_addr} within {}",
                        humantime::format_duration(timeout)
                    )));
                }
                warn!(error = %format!("{e:#}"), retry_in = ?pause, "enrollment failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
            Err(_) => bail!(
                "no certificate from {ca_addr} within {}",
                humantime::format_duration(timeout)
            ),
        }
    };
    let identity = check_certificate(&response.certificate_chain, &key, root_pem, trust_domain)?;
    info!(%identity, not_after = %response.not_after, "enrolled");
    Ok(Enrolled {
        cert_chain_pem: response.certificate_chain,
        private_key_pem: SecretString::new(key.serialize_pem()),
        identity,
        not_after: response.not_after,
    })
}

fn connector(root_pem: &str) -> anyhow::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_slice_iter(root_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("reading the root certificate: {e}"))?;
    if certs.is_empty() {
        bail!("the root certificate file holds no certificate");
    }
    for cert in certs {
        roots
            .add(cert)
            .context("adding the root certificate to the trust store")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn attempt(
    connector: &TlsConnector,
    ca_addr: &HostPort,
    server_name: ServerName<'static>,
    token: &str,
    body: &[u8],
) -> Result<CertificateResponse, Failure> {
    let tcp = TcpStream::connect((ca_addr.host.as_str(), ca_addr.port))
        .await
        .map_err(|e| Failure::Retry(anyhow!("connecting to {ca_addr}: {e}")))?;
    // A certificate the root does not vouch for, or for another name, is
    // not a passing state: say so at once.
    let tls = connector
        .connect(server_name, tcp)
        .await
        .map_err(|e| Failure::Final(anyhow!("TLS with {ca_addr}: {e}")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| Failure::Retry(anyhow!("HTTP with {ca_addr}: {e}")))?;
    let driver = tokio::spawn(connection);
    let request = Request::post(CERTIFICATE_PATH)
        .header(HOST, ca_addr.to_string())
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| Failure::Final(anyhow!("building the request: {e}")))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Failure::Retry(anyhow!("requesting a certificate from {ca_addr}: {e}")))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| Failure::Retry(anyhow!("reading the answer of {ca_addr}: {e}")))?
            .to_bytes();
        if status == StatusCode::OK {
            return serde_json::from_slice::<CertificateResponse>(&bytes).map_err(|e| {
                Failure::Final(anyhow!("the answer of {ca_addr} is not a certificate: {e}"))
            });
        }
        let reason = serde_json::from_slice::<ErrorResponse>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        let error = anyhow!("{ca_addr} refused the certificate request ({status}): {reason}");
        Err(if status == StatusCode::SERVICE_UNAVAILABLE {
            Failure::Retry(error)
        } else {
            Failure::Final(error)
        })
    }
    .await;
    driver.abort();
    result
}

/// Checks what came back: a certificate signed by the root we trust, for
/// the key we generated, with one SPIFFE ID of our trust domain; returns
/// that identity.
fn check_certificate(
    chain_pem: &str,
    key: &KeyPair,
    root_pem: &str,
    trust_domain: &str,
) -> anyhow::Result<Identity> {
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .context("the answer holds no certificate")?
        .map_err(|e| anyhow!("the answer's certificate is not PEM: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| anyhow!("the answer's certificate does not parse: {e}"))?;
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        bail!("the answer's certificate is not for the key sent");
    }
    let root_der = CertificateDer::from_pem_slice(root_pem.as_bytes())
        .map_err(|e| anyhow!("reading the root certificate: {e}"))?;
    let (_, root) = x509_parser::parse_x509_certificate(root_der.as_ref())
        .map_err(|e| anyhow!("the root certificate does not parse: {e}"))?;
    cert.verify_signature(Some(root.public_key()))
        .map_err(|e| anyhow!("the answer's certificate is not signed by the root: {e}"))?;
    crate::xds_tls::spiffe_identity(leaf.as_ref(), trust_domain)
        .map_err(|e| anyhow!("the answer's certificate: {e}"))
}
