//! What the CA hands out: a workload certificate and its key, with the key
//! wrapped so it cannot end up in a log by accident.

use std::fmt;
use std::time::SystemTime;

/// A secret string (a PEM private key). `Debug` and `Display` print
/// `<redacted>`; the value is only reachable through [`SecretString::expose`],
/// so every place that reads it is easy to find.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        SecretString(value.into())
    }

    /// The secret itself. Hand it to Envoy; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        SecretString(value)
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A workload certificate issued by the built-in CA, ready for SDS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadCert {
    /// The leaf certificate, PEM. The root goes out separately as `ROOTCA`.
    pub cert_chain_pem: String,
    /// The leaf's PKCS#8 private key, PEM.
    pub private_key_pem: SecretString,
    /// Serial number, lowercase hex without leading zero bytes.
    pub serial_hex: String,
    /// `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`, the URI SAN.
    pub spiffe_id: String,
    /// Start of validity, as written in the certificate (whole seconds).
    pub not_before: SystemTime,
    /// End of validity, as written in the certificate (whole seconds).
    pub not_after: SystemTime,
}

impl WorkloadCert {
    /// When to replace this certificate: half its lifetime after it was
    /// issued, as istio-agent does (`SECRET_GRACE_PERIOD_RATIO` 0.5), so a
    /// CA outage shorter than half a lifetime never lets a certificate
    /// expire. The back-dating for clock skew does not count: a
    /// certificate of a few seconds must not be due the moment it is made.
    pub fn renew_at(&self) -> SystemTime {
        let issued = self.not_before + super::x509::CLOCK_SKEW;
        let lifetime = self.not_after.duration_since(issued).unwrap_or_default();
        issued + lifetime / 2
    }

    /// Whether the certificate is due for renewal at `now`.
    pub fn needs_renewal(&self, now: SystemTime) -> bool {
        now >= self.renew_at()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn cert(not_before: u64, not_after: u64) -> WorkloadCert {
        WorkloadCert {
            cert_chain_pem: "-----BEGIN CERTIFICATE-----".into(),
            private_key_pem: SecretString::new("-----BEGIN PRIVATE KEY-----\nsecret"),
            serial_hex: "01".into(),
            spiffe_id: "spiffe://cluster.local/ns/foo/sa/bar".into(),
            not_before: UNIX_EPOCH + Duration::from_secs(not_before),
            not_after: UNIX_EPOCH + Duration::from_secs(not_after),
        }
    }

    #[test]
    fn secret_string_never_prints_its_value() {
        let s = SecretString::new("-----BEGIN PRIVATE KEY-----");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(s.expose(), "-----BEGIN PRIVATE KEY-----");
    }

    #[test]
    fn debug_of_a_workload_cert_redacts_the_key() {
        let text = format!("{:?}", cert(0, 100));
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn renewal_is_due_at_half_life() {
        // Issued at 1000, back-dated by the clock skew allowance.
        let c = cert(1_000 - 60, 1_000 + 86_400);
        assert_eq!(
            c.renew_at(),
            UNIX_EPOCH + Duration::from_secs(1_000 + 43_200)
        );
        assert!(!c.needs_renewal(UNIX_EPOCH + Duration::from_secs(1_000 + 43_199)));
        assert!(c.needs_renewal(UNIX_EPOCH + Duration::from_secs(1_000 + 43_200)));
    }
}
