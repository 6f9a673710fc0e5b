use super::*;
use crate::test_support::TempDir;
use std::os::unix::fs::PermissionsExt;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

fn httpbin() -> Identity {
    Identity {
        namespace: "foo".into(),
        service_account: "httpbin".into(),
    }
}

fn at(unix: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix)
}

/// Roughly now, on a whole second, so expected times are exact.
fn now() -> SystemTime {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    at(secs)
}

fn der(pem: &str) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM");
    pem.contents
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).expect("X.509");
    assert!(rest.is_empty());
    cert
}

fn unix(t: SystemTime) -> i64 {
    i64::try_from(t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs()).expect("fits")
}

#[test]
fn root_is_created_once_and_loaded_on_later_starts() {
    let dir = TempDir::new("ca");
    let first = CertificateAuthority::load_or_create(dir.root(), "cluster.local").expect("create");
    let second = CertificateAuthority::load_or_create(dir.root(), "cluster.local").expect("load");
    assert_eq!(first.root_pem(), second.root_pem());

    let on_disk = std::fs::read_to_string(dir.path("ca/root-cert.pem")).expect("cert file");
    assert_eq!(on_disk, first.root_pem());
    let key_mode = std::fs::metadata(dir.path("ca/root-key.pem"))
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    assert!(!dir.path("ca/root-key.pem.tmp").exists());

    // A certificate issued before the restart verifies against the root after it.
    let cert = first
        .issue(&httpbin(), DEFAULT_CERT_LIFETIME, now())
        .expect("issue");
    let root_der = der(second.root_pem());
    let leaf_der = der(&cert.cert_chain_pem);
    parse(&leaf_der)
        .verify_signature(Some(parse(&root_der).public_key()))
        .expect("signed by the persisted root");
}

#[test]
fn root_certificate_is_a_ten_year_p256_ca() {
    let dir = TempDir::new("ca");
    let before = now();
    let ca = CertificateAuthority::load_or_create(dir.root(), "cluster.local").expect("create");
    let root_der = der(ca.root_pem());
    let root = parse(&root_der);
    assert!(root.is_ca());
    assert_eq!(
        root.subject().to_string(),
        "O=xds-server, CN=xds-server root CA"
    );
    assert_eq!(root.issuer(), root.subject());
    let ku = root.key_usage().expect("valid").expect("key usage").value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    assert!(!ku.digital_signature());
    let lifetime = root.validity().not_after.timestamp() - root.validity().not_before.timestamp();
    assert_eq!(lifetime, 10 * 365 * 24 * 60 * 60);
    assert!(root.validity().not_before.timestamp() >= unix(before));
    root.verify_signature(None).expect("self-signed");
    assert_eq!(
        root.public_key().algorithm.algorithm,
        x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );
}

#[test]
fn corrupt_root_files_are_errors_naming_the_file() {
    let dir = TempDir::new("ca");
    CertificateAuthority::load_or_create(dir.root(), "cluster.local").expect("create");
    let cert_path = dir.path("ca/root-cert.pem");
    let key_path = dir.path("ca/root-key.pem");
    let good_cert = std::fs::read_to_string(&cert_path).expect("cert");

    std::fs::write(&cert_path, "not a certificate").expect("write");
    let err =
        CertificateAuthority::load_or_create(dir.root(), "cluster.local").expect_err("corrupt");
    assert!(
        format!("{err:#}").contains(&*cert_path.to_string_lossy()),
        "{err:#}"
    );

    std::fs::write(&cert_path, &good_cert).expect("write");
    std::fs::write(
        &key_path,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .expect("write");
    let err =
        CertificateAuthority::load_or_create(dir.root(), "cluster.local").expect_err("corrupt");
    assert!(
        format!("{err:#}").contains(&*key_path.to_string_lossy()),
        "{err:#}"
    );
}

#[test]
fn a_key_of_another_root_is_refused() {
    let a = TempDir::new("ca");
    let b = TempDir::new("ca");
    CertificateAuthority::load_or_create(a.root(), "cluster.local").expect("create a");
    CertificateAuthority::load_or_create(b.root(), "cluster.local").expect("create b");
    std::fs::copy(b.path("ca/root-key.pem"), a.path("ca/root-key.pem")).expect("copy");
    let err =
        CertificateAuthority::load_or_create(a.root(), "cluster.local").expect_err("mismatch");
    assert!(
        format!("{err:#}").contains("does not belong to the key"),
        "{err:#}"
    );
}

#[test]
fn half_a_root_on_disk_is_an_error_not_a_new_root() {
    let dir = TempDir::new("ca");
    CertificateAuthority::load_or_create(dir.root(), "cluster.local").expect("create");
    let key_path = dir.path("ca/root-key.pem");
    std::fs::remove_file(&key_path).expect("remove key");
    let err =
        CertificateAuthority::load_or_create(dir.root(), "cluster.local").expect_err("no key");
    assert!(
        format!("{err:#}").contains(&*key_path.to_string_lossy()),
        "{err:#}"
    );
    assert!(
        !key_path.exists(),
        "must not create a new key next to the old root"
    );
}

#[test]
fn workload_certificate_carries_the_spiffe_identity_and_nothing_else() {
    let dir = TempDir::new("ca");
    let ca = CertificateAuthority::load_or_create(dir.root(), "cluster.local").expect("create");
    let issued_at = now();
    let cert = ca
        .issue(&httpbin(), DEFAULT_CERT_LIFETIME, issued_at)
        .expect("issue");
    assert_eq!(cert.spiffe_id, "spiffe://cluster.local/ns/foo/sa/httpbin");

    let leaf_der = der(&cert.cert_chain_pem);
    let leaf = parse(&leaf_der);
    let root_der = der(ca.root_pem());
    let root = parse(&root_der);

    // Empty subject, so Envoy's XFCC prints Subject="".
    assert_eq!(leaf.subject().iter().count(), 0);
    assert_eq!(leaf.subject().to_string(), "");
    assert_eq!(leaf.issuer(), root.subject());
    leaf.verify_signature(Some(root.public_key()))
        .expect("signed by the root");

    let san = leaf
        .subject_alternative_name()
        .expect("valid")
        .expect("SAN present");
    assert!(
        san.critical,
        "SAN must be critical when the subject is empty"
    );
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI("spiffe://cluster.local/ns/foo/sa/httpbin")]
    );

    let ku = leaf.key_usage().expect("valid").expect("key usage").value;
    assert!(ku.digital_signature() && ku.key_encipherment());
    assert!(!ku.key_cert_sign());
    let eku = leaf
        .extended_key_usage()
        .expect("valid")
        .expect("EKU")
        .value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!leaf.is_ca());

    assert_eq!(leaf.validity().not_before.timestamp(), unix(issued_at) - 60);
    assert_eq!(
        leaf.validity().not_after.timestamp(),
        unix(issued_at) + 86_400
    );
    assert_eq!(cert.not_before, issued_at - CLOCK_SKEW);
    assert_eq!(cert.not_after, issued_at + DEFAULT_CERT_LIFETIME);

    // The serial is positive and what we report.
    let raw = leaf.raw_serial();
    assert!(raw[0] & 0x80 == 0, "serial must be positive");
    assert_eq!(serial_hex(raw), cert.serial_hex);

    // The key we hand out belongs to the certificate.
    let key = KeyPair::from_pem(cert.private_key_pem.expose()).expect("PKCS#8 PEM");
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    assert_eq!(
        leaf.public_key().algorithm.algorithm,
        x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );
}

#[test]
fn two_certificates_have_different_serials_and_keys() {
    let dir = TempDir::new("ca");
    let ca = CertificateAuthority::load_or_create(dir.root(), "cluster.local").expect("create");
    let a = ca
        .issue(&httpbin(), DEFAULT_CERT_LIFETIME, now())
        .expect("issue");
    let b = ca
        .issue(&httpbin(), DEFAULT_CERT_LIFETIME, now())
        .expect("issue");
    assert_ne!(a.serial_hex, b.serial_hex);
    assert_ne!(a.private_key_pem, b.private_key_pem);
    assert!(a.serial_hex.len() >= 30, "about 128 bits: {}", a.serial_hex);
}

#[test]
fn renewal_is_due_at_half_the_validity() {
    let dir = TempDir::new("ca");
    let ca = CertificateAuthority::load_or_create(dir.root(), "cluster.local").expect("create");
    let issued_at = now();
    let cert = ca
        .issue(&httpbin(), Duration::from_secs(3600), issued_at)
        .expect("issue");
    // Valid from issued_at - 60s to issued_at + 3600s; due half the
    // lifetime after issue (times in the certificate are whole seconds).
    let due = cert.renew_at();
    let want = issued_at + Duration::from_secs(1800);
    let off = due
        .duration_since(want)
        .or_else(|e| Ok::<_, ()>(e.duration()));
    assert!(
        off.is_ok_and(|d| d <= Duration::from_secs(1)),
        "{due:?} vs {want:?}"
    );
}

#[test]
fn debug_output_never_contains_a_private_key() {
    let dir = TempDir::new("ca");
    let ca = CertificateAuthority::load_or_create(dir.root(), "cluster.local").expect("create");
    let cert = ca
        .issue(&httpbin(), DEFAULT_CERT_LIFETIME, now())
        .expect("issue");
    assert!(cert.private_key_pem.expose().contains("PRIVATE KEY"));
    let text = format!("{cert:?}");
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    let text = format!("{ca:?}");
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    let text = format!("{:?}", sds_resources(&cert, ca.root_pem()));
    assert!(!text.contains("PRIVATE KEY"), "{text}");
}

#[test]
fn trust_domain_at_sign_becomes_a_dot() {
    let dir = TempDir::new("ca");
    let ca = CertificateAuthority::load_or_create(dir.root(), "corp@example").expect("create");
    let cert = ca
        .issue(&httpbin(), DEFAULT_CERT_LIFETIME, now())
        .expect("issue");
    assert_eq!(cert.spiffe_id, "spiffe://corp.example/ns/foo/sa/httpbin");
}

#[test]
fn bad_requests_are_refused() {
    let dir = TempDir::new("ca");
    let ca = CertificateAuthority::load_or_create(dir.root(), "cluster.local").expect("create");
    assert!(ca.issue(&httpbin(), Duration::ZERO, now()).is_err());
    assert!(
        ca.issue(&Identity::default(), DEFAULT_CERT_LIFETIME, now())
            .is_err()
    );
    let err = ca
        .issue(&httpbin(), Duration::from_secs(20 * 365 * 86_400), now())
        .expect_err("outlives the root");
    assert!(err.to_string().contains("root CA expires sooner"), "{err}");
    assert!(
        err.to_string().contains("shorten the certificate lifetime"),
        "{err}"
    );
    assert!(CertificateAuthority::load_or_create(dir.root(), "").is_err());
}

#[test]
fn a_root_key_readable_by_others_is_refused() {
    let dir = TempDir::new("ca");
    CertificateAuthority::load_or_create(dir.root(), "cluster.local").expect("create");
    let key = dir.path("ca/root-key.pem");
    for mode in [0o640, 0o604, 0o644] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let err = CertificateAuthority::load_or_create(dir.root(), "cluster.local")
            .expect_err("a readable key must be refused");
        let text = format!("{err:#}");
        assert!(text.contains(&format!("mode {mode:o}")), "{text}");
        assert!(text.contains("chmod 600"), "{text}");
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    CertificateAuthority::load_or_create(dir.root(), "cluster.local").expect("0600 loads");
}

#[test]
fn the_ca_directory_is_reset_to_0700_on_every_start() {
    let dir = TempDir::new("ca");
    CertificateAuthority::load_or_create(dir.root(), "cluster.local").expect("create");
    let ca_dir = dir.path("ca");
    std::fs::set_permissions(&ca_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    CertificateAuthority::load_or_create(dir.root(), "cluster.local").expect("load");
    let mode = std::fs::metadata(&ca_dir)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "mode {mode:o}");
}

#[test]
fn the_root_expiry_is_known_and_ten_years_out() {
    let dir = TempDir::new("ca");
    let ca = CertificateAuthority::load_or_create(dir.root(), "cluster.local").expect("create");
    let left = ca
        .root_not_after()
        .duration_since(SystemTime::now())
        .expect("in the future");
    assert!(left > Duration::from_secs(9 * 365 * 86_400), "{left:?}");
}

#[test]
fn serial_hex_drops_leading_zero_bytes() {
    assert_eq!(serial_hex(&[0, 0, 0x0a, 0xff]), "0aff");
    assert_eq!(serial_hex(&[0x80, 1]), "8001");
    assert_eq!(serial_hex(&[0, 0]), "00");
}

#[test]
fn the_ca_can_be_shared_between_tasks() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CertificateAuthority>();
    assert_send_sync::<WorkloadCert>();
}
