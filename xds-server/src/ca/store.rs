//! The root CA on disk: `STATE_DIR/ca/root-cert.pem` and `root-key.pem`.
//!
//! Created once, on the first start, and loaded on every later one, so that
//! certificates issued before a restart stay trusted after it. The key file
//! is written with mode 0600 in a 0700 directory, and a new root only
//! appears on disk once both files are complete (written aside, then
//! renamed, certificate last). A root that is unreadable, does not match
//! its key or has expired is an error naming the file: replacing a root
//! silently would break every workload's mTLS at once.
//!
//! Several processes may share one state directory (two `serve` replicas,
//! `bootstrap` run beside them) and start at the same moment on an empty
//! one. Creation therefore happens under an exclusive lock on
//! `STATE_DIR/ca/.lock` (`flock`, released by the kernel if the holder
//! dies), and whoever takes the lock second finds the first one's root and
//! loads it: every process ends up signing with the one root on disk.

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(super) const CERT_FILE: &str = "root-cert.pem";
pub(super) const KEY_FILE: &str = "root-key.pem";
/// Istio's self-signed root lives 10 years too.
pub(super) const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
pub(super) const ROOT_ORGANIZATION: &str = "xds-server";
pub(super) const ROOT_COMMON_NAME: &str = "xds-server root CA";

/// A loaded (or just created) root: what the CA needs to sign with.
pub(super) struct Root {
    pub cert_pem: String,
    pub issuer: Issuer<'static, KeyPair>,
    pub not_after: SystemTime,
}

/// The lock file that serialises root creation between processes (and
/// threads) sharing a state directory.
pub(super) const LOCK_FILE: &str = ".lock";

pub(super) fn load_or_create(state_dir: &Path, now: SystemTime) -> anyhow::Result<Root> {
    let dir = state_dir.join("ca");
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    if cert_path.exists() && key_path.exists() {
        return load(&cert_path, &key_path, now);
    }
    // Missing or half there: settle it under the creation lock. A creator
    // holds the lock from before its first file appears until after its
    // last, so once we hold it what is on disk is final: a complete root
    // (someone else just made it), nothing (we make it), or half a root
    // left by a crash (an error, as below).
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating CA directory {}", dir.display()))?;
    let _lock = lock_exclusive(&dir.join(LOCK_FILE))?;
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => load(&cert_path, &key_path, now),
        (false, false) => create(&dir, &cert_path, &key_path, now),
        (true, false) => bail!(
            "root CA certificate {} exists but its key {} does not; restore the key, \
             or remove the certificate to create a new root (every workload certificate \
             will then be replaced)",
            cert_path.display(),
            key_path.display()
        ),
        (false, true) => bail!(
            "root CA key {} exists but its certificate {} does not; restore the certificate, \
             or remove the key to create a new root (every workload certificate \
             will then be replaced)",
            key_path.display(),
            cert_path.display()
        ),
    }
}

fn load(cert_path: &Path, key_path: &Path, now: SystemTime) -> anyhow::Result<Root> {
    if let Some(dir) = cert_path.parent() {
        restrict_dir(dir)?;
    }
    refuse_key_readable_by_others(key_path)?;
    let cert_pem = fs::read_to_string(cert_path)
        .with_context(|| format!("reading root CA certificate {}", cert_path.display()))?;
    let key_pem = fs::read_to_string(key_path)
        .with_context(|| format!("reading root CA key {}", key_path.display()))?;

    let cert_name = cert_path.display().to_string();
    let key_name = key_path.display().to_string();
    let root = root_from_pem(cert_pem, &key_pem, &cert_name, &key_name, now).map_err(|e| {
        anyhow::anyhow!(
            "{e}; move both files in {} away to create a new root (every workload \
             certificate will then be replaced)",
            cert_path.parent().unwrap_or(cert_path).display()
        )
    })?;
    tracing::info!(path = %cert_path.display(), "loaded root CA");
    Ok(root)
}

/// A root from its PEM certificate and key, wherever they were kept
/// (`cert_name` and `key_name` say where, for errors): the key must be the
/// certificate's, the certificate a CA that has not expired.
pub(super) fn root_from_pem(
    cert_pem: String,
    key_pem: &str,
    cert_name: &str,
    key_name: &str,
    now: SystemTime,
) -> anyhow::Result<Root> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| {
        anyhow::anyhow!(
            "root CA key {} is not a PEM PKCS#8 private key: {e}",
            key_name
        )
    })?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| {
        anyhow::anyhow!(
            "root CA certificate {} is not a PEM certificate: {e}",
            cert_name
        )
    })?;
    let x509 = pem.parse_x509().map_err(|e| {
        anyhow::anyhow!(
            "root CA certificate {} does not parse as X.509: {e}",
            cert_name
        )
    })?;
    if !x509.is_ca() {
        bail!(
            "root CA certificate {} is not a CA certificate (basic constraints CA:FALSE)",
            cert_name
        );
    }
    if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        bail!(
            "root CA certificate {} does not belong to the key {}",
            cert_name,
            key_name
        );
    }
    let not_after = system_time(x509.validity().not_after.timestamp());
    if not_after <= now {
        bail!(
            "root CA certificate {} expired at {}",
            cert_name,
            x509.validity().not_after
        );
    }
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| {
        anyhow::anyhow!(
            "root CA certificate {} cannot be used to sign: {e}",
            cert_name
        )
    })?;
    Ok(Root {
        cert_pem,
        issuer,
        not_after,
    })
}

fn create(dir: &Path, cert_path: &Path, key_path: &Path, now: SystemTime) -> anyhow::Result<Root> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating CA directory {}", dir.display()))?;

    let (root, key_pem) = generate_root(now)?;
    let cert_pem = root.cert_pem.clone();

    // Both files are written aside and renamed into place, key first: a
    // crash leaves either nothing or a complete root behind, never a
    // truncated file.
    write_new(&tmp(key_path), key_pem.as_bytes(), 0o600)?;
    write_new(&tmp(cert_path), cert_pem.as_bytes(), 0o644)?;
    fs::rename(tmp(key_path), key_path)
        .with_context(|| format!("writing root CA key {}", key_path.display()))?;
    fs::rename(tmp(cert_path), cert_path)
        .with_context(|| format!("writing root CA certificate {}", cert_path.display()))?;
    tracing::info!(path = %cert_path.display(), "created a new root CA");
    Ok(root)
}

/// A new self-signed root (ECDSA P-256, ten years), and its key as PEM for
/// whoever keeps it.
pub(super) fn generate_root(now: SystemTime) -> anyhow::Result<(Root, String)> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| anyhow::anyhow!("generating the root CA key: {e}"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ROOT_ORGANIZATION);
    dn.push(DnType::CommonName, ROOT_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(super::x509::random_serial()?.into());
    let (not_before, _) = super::x509::cert_time(now)?;
    let (not_after_odt, not_after) = super::x509::cert_time(
        now.checked_add(ROOT_LIFETIME)
            .context("root CA expiry is out of range")?,
    )?;
    params.not_before = not_before;
    params.not_after = not_after_odt;
    let cert = params
        .self_signed(&key)
        .map_err(|e| anyhow::anyhow!("self-signing the root CA: {e}"))?;
    let cert_pem = cert.pem();

    let key_pem = key.serialize_pem();
    Ok((
        Root {
            cert_pem,
            issuer: Issuer::new(params, key),
            not_after,
        },
        key_pem,
    ))
}

/// Opens (creating it 0600 if needed) and locks `path` exclusively,
/// waiting for another holder. The lock lasts as long as the returned file.
fn lock_exclusive(path: &Path) -> anyhow::Result<fs::File> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening the CA lock {}", path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

fn tmp(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Writes a file that only gets `mode` (never wider, whatever the umask
/// allowed before), replacing a stale temporary file of an earlier attempt.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// A root key that group or others can read may already be copied: refuse
/// to sign with it rather than warn, and say how to fix the mode.
fn refuse_key_readable_by_others(key_path: &Path) -> anyhow::Result<()> {
    let meta = fs::metadata(key_path)
        .with_context(|| format!("reading root CA key {}", key_path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "root CA key {} has mode {mode:o}: readable by group or others; \
             run `chmod 600 {}` if no one else could have read it, else create a new root",
            key_path.display(),
            key_path.display()
        );
    }
    Ok(())
}

/// The CA directory is ours alone (0700), on every start: a mode widened
/// by hand or by a restore is put back, and the log says so.
fn restrict_dir(dir: &Path) -> anyhow::Result<()> {
    let meta =
        fs::metadata(dir).with_context(|| format!("reading CA directory {}", dir.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting CA directory {} to mode 700", dir.display()))?;
        tracing::warn!(path = %dir.display(), was = format_args!("{mode:o}"), "CA directory mode reset to 700");
    }
    Ok(())
}

/// Writes `bytes` to `path` with `mode` (never wider), atomically: aside,
/// then renamed over `path`, so a reader never sees half a file.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    write_new(&tmp(path), bytes, mode)?;
    fs::rename(tmp(path), path).with_context(|| format!("writing {}", path.display()))
}

fn system_time(unix_seconds: i64) -> SystemTime {
    match u64::try_from(unix_seconds) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;
    use std::sync::{Arc, Barrier};

    /// Many creators starting at once on one empty state directory (as two
    /// `serve` replicas and a `bootstrap` may): all end up with the root
    /// that is on disk, never one of their own that lost a race.
    #[test]
    fn concurrent_creators_on_an_empty_dir_end_with_one_root() {
        for round in 0..5 {
            let dir = TempDir::new("ca-race");
            let state = dir.root().to_path_buf();
            let creators = 6;
            let barrier = Arc::new(Barrier::new(creators));
            let threads: Vec<_> = (0..creators)
                .map(|_| {
                    let state = state.clone();
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        barrier.wait();
                        load_or_create(&state, SystemTime::now()).map(|root| root.cert_pem)
                    })
                })
                .collect();
            let roots: Vec<String> = threads
                .into_iter()
                .map(|t| {
                    t.join()
                        .expect("creator thread")
                        .expect("load or create the root")
                })
                .collect();
            let on_disk = fs::read_to_string(state.join("ca").join(CERT_FILE)).expect("root file");
            for (i, root) in roots.iter().enumerate() {
                assert_eq!(
                    root, &on_disk,
                    "round {round}: creator {i} uses a root that is not the one on disk"
                );
            }
            // And the key on disk is that root's key.
            load(
                &state.join("ca").join(CERT_FILE),
                &state.join("ca").join(KEY_FILE),
                SystemTime::now(),
            )
            .expect("the root on disk matches its key");
        }
    }
}
