//! Built-in certificate authority: the root that every sidecar trusts
//! (`ROOTCA`) and the short-lived workload certificates (`default`) that
//! carry each workload's SPIFFE identity.
//!
//! Istio's sidecars generate a key and send a CSR through istio-agent; a
//! stock Envoy cannot, so this CA generates the key too and the server
//! delivers both over SDS on the xDS stream of the proxy that is allowed to
//! act as that identity. Certificates follow istiod's: ECDSA P-256, an
//! empty subject (Envoy's XFCC prints `Subject=""`) with the identity in a
//! critical URI SAN, serverAuth + clientAuth, 24h by default, renewed at
//! half-life (mtls-semantics.md, section 5).
//!
//! Pipeline position: `runner` creates the CA at start-up from the state
//! directory; the SDS part of the ADS server calls [`CertificateAuthority::issue`]
//! and turns the result into resources with [`sds_resources`].

mod cert;
mod publish;
mod sds;
mod secret;
mod store;
mod webhook_ca;
mod x509;

pub use cert::{SecretString, WorkloadCert};
pub use publish::{ROOT_CONFIGMAP, ROOT_CONFIGMAP_KEY, publish_root, root_configmap};
pub use sds::{ROOT_SECRET, WORKLOAD_SECRET, sds_resources};
pub use store::write_atomically;
pub use webhook_ca::{INJECTOR_WEBHOOK, ca_bundle_patch, patch_webhook_ca};
pub use x509::CLOCK_SKEW;

use x509::{cert_time, random_serial, serial_hex};

use crate::identity::Identity;
use anyhow::{Context, bail};
use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Istio's `DEFAULT_WORKLOAD_CERT_TTL`.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// The CA: a root key and certificate, and the trust domain it issues for.
pub struct CertificateAuthority {
    trust_domain: String,
    root_pem: String,
    root_not_after: SystemTime,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for CertificateAuthority {
    // The issuer holds the root key: print only what is public.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("root_not_after", &self.root_not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads the root from `state_dir/ca/`, creating it on the first start.
    /// Errors name the file that is missing, unreadable or corrupt.
    pub fn load_or_create(state_dir: &Path, trust_domain: &str) -> anyhow::Result<Self> {
        check_trust_domain(trust_domain)?;
        let root = store::load_or_create(state_dir, SystemTime::now())?;
        Ok(Self::from_root(root, trust_domain))
    }

    /// Loads the root from the Kubernetes Secret `namespace/name`, creating
    /// it (create-only: two replicas starting at once end with one root) if
    /// there is none. See `secret.rs`.
    pub async fn load_or_create_in_secret(
        client: kube::Client,
        namespace: &str,
        name: &str,
        trust_domain: &str,
    ) -> anyhow::Result<Self> {
        check_trust_domain(trust_domain)?;
        let root = secret::load_or_create(client, namespace, name).await?;
        Ok(Self::from_root(root, trust_domain))
    }

    fn from_root(root: store::Root, trust_domain: &str) -> Self {
        CertificateAuthority {
            // Istio replaces '@' with '.' (pkg/spiffe/spiffe.go).
            trust_domain: trust_domain.replace('@', "."),
            root_pem: root.cert_pem,
            root_not_after: root.not_after,
            issuer: root.issuer,
        }
    }

    /// The root certificate, PEM: the trust bundle (`ROOTCA`).
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// When the root certificate expires: no certificate can be issued to
    /// outlive it.
    pub fn root_not_after(&self) -> SystemTime {
        self.root_not_after
    }

    /// Issues a fresh key and certificate for `identity`, valid from
    /// `now - CLOCK_SKEW` to `now + lifetime`.
    pub fn issue(
        &self,
        identity: &Identity,
        lifetime: Duration,
        now: SystemTime,
    ) -> anyhow::Result<WorkloadCert> {
        self.issue_with_names(identity, &[], &[], lifetime, now)
    }

    /// [`CertificateAuthority::issue`] with DNS names and IP addresses as
    /// further SANs, for a server that clients reach by name or address
    /// (the xDS server) as well as by SPIFFE ID.
    pub fn issue_with_names(
        &self,
        identity: &Identity,
        dns_names: &[String],
        ips: &[std::net::IpAddr],
        lifetime: Duration,
        now: SystemTime,
    ) -> anyhow::Result<WorkloadCert> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| anyhow::anyhow!("generating a key for {identity}: {e}"))?;
        let signed = self.sign(identity, dns_names, ips, lifetime, now, &key)?;
        Ok(WorkloadCert {
            cert_chain_pem: signed.cert_chain_pem,
            private_key_pem: SecretString::new(key.serialize_pem()),
            serial_hex: signed.serial_hex,
            spiffe_id: signed.spiffe_id,
            not_before: signed.not_before,
            not_after: signed.not_after,
        })
    }

    /// Signs a certificate for `identity` over the public key of a PKCS#10
    /// request whose key stays with the requester (a sidecar enrolling with
    /// its service-account token); [`CsrPublicKey::parse`] checked the
    /// request's signature. Its subject and SANs are ignored: the
    /// certificate names only `identity`, which the caller authenticated.
    pub fn issue_for_csr(
        &self,
        identity: &Identity,
        key: &CsrPublicKey,
        lifetime: Duration,
        now: SystemTime,
    ) -> anyhow::Result<SignedCert> {
        self.sign(identity, &[], &[], lifetime, now, &key.0)
    }

    fn sign(
        &self,
        identity: &Identity,
        dns_names: &[String],
        ips: &[std::net::IpAddr],
        lifetime: Duration,
        now: SystemTime,
        public_key: &impl rcgen::PublicKeyData,
    ) -> anyhow::Result<SignedCert> {
        if identity.namespace.is_empty() || identity.service_account.is_empty() {
            bail!(
                "cannot issue a certificate for {identity:?}: namespace and service account must be set"
            );
        }
        if lifetime.is_zero() {
            bail!("cannot issue a certificate for {identity}: the lifetime must be positive");
        }
        let spiffe_id = identity.spiffe_id(&self.trust_domain);
        let expiry = now
            .checked_add(lifetime)
            .with_context(|| format!("certificate lifetime {lifetime:?} is out of range"))?;
        if expiry > self.root_not_after {
            bail!(
                "cannot issue a certificate for {identity} valid for {}: the root CA expires \
                 sooner, at {} (in {}); create a new root (move the state directory's ca/ \
                 away) or shorten the certificate lifetime",
                humantime::format_duration(lifetime),
                humantime::format_rfc3339_seconds(self.root_not_after),
                humantime::format_duration(Duration::from_secs(
                    self.root_not_after
                        .duration_since(now)
                        .unwrap_or_default()
                        .as_secs()
                ))
            );
        }
        let (nb_odt, not_before) = cert_time(now.checked_sub(CLOCK_SKEW).unwrap_or(UNIX_EPOCH))?;
        let (na_odt, not_after) = cert_time(expiry)?;
        let serial = random_serial()?;

        let mut params = CertificateParams::default();
        // rcgen's default subject has a CN; a workload certificate has none.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names =
            vec![SanType::URI(spiffe_id.clone().try_into().map_err(|e| {
                anyhow::anyhow!("{spiffe_id:?} is not a valid URI SAN: {e}")
            })?)];
        for name in dns_names {
            params.subject_alt_names.push(SanType::DnsName(
                name.clone()
                    .try_into()
                    .map_err(|e| anyhow::anyhow!("{name:?} is not a valid DNS SAN: {e}"))?,
            ));
        }
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial.clone().into());
        params.not_before = nb_odt;
        params.not_after = na_odt;

        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| anyhow::anyhow!("signing the certificate for {identity}: {e}"))?;
        Ok(SignedCert {
            cert_chain_pem: cert.pem(),
            serial_hex: serial_hex(&serial),
            spiffe_id,
            not_before,
            not_after,
        })
    }
}

/// The public key of a PKCS#10 certificate signing request whose signature
/// checked out (proof that the requester holds the private key).
pub struct CsrPublicKey(rcgen::PublicKey);

impl CsrPublicKey {
    /// Parses a PEM CSR and checks its signature; the error says what is
    /// wrong in one sentence.
    pub fn parse(pem: &str) -> Result<CsrPublicKey, String> {
        rcgen::CertificateSigningRequestParams::from_pem(pem)
            .map(|csr| CsrPublicKey(csr.public_key))
            .map_err(|e| format!("the certificate signing request is invalid: {e}"))
    }
}

/// A certificate signed over a key the CA never saw (see
/// [`CertificateAuthority::issue_for_csr`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCert {
    pub cert_chain_pem: String,
    pub serial_hex: String,
    pub spiffe_id: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

fn check_trust_domain(trust_domain: &str) -> anyhow::Result<()> {
    if trust_domain.is_empty() || !trust_domain.is_ascii() || trust_domain.contains('/') {
        bail!("trust domain {trust_domain:?} must be a non-empty ASCII name without '/'");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
