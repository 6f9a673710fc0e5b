//! Certificate fields shared by the root and the workload certificates:
//! serial numbers, validity times and the clock skew allowance.

use anyhow::Context;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;

/// How far back a certificate's validity starts, so a peer whose clock is a
/// little behind ours does not reject a certificate issued just now.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// 128 random bits, as a positive serial number (the DER encoder adds a
/// leading zero byte where the top bit is set).
pub(super) fn random_serial() -> anyhow::Result<Vec<u8>> {
    let mut serial = vec![0u8; 16];
    getrandom::getrandom(&mut serial)
        .map_err(|e| anyhow::anyhow!("reading random bytes for a serial number: {e}"))?;
    Ok(serial)
}

/// Lowercase hex of the serial's value (no leading zero bytes), as Envoy's
/// `/certs` prints it.
pub(super) fn serial_hex(serial: &[u8]) -> String {
    let start = serial
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(serial.len().saturating_sub(1));
    serial[start..].iter().map(|b| format!("{b:02x}")).collect()
}

/// A certificate time: `t` truncated to whole seconds (what X.509 can
/// hold), both as rcgen wants it and as we report it.
pub(super) fn cert_time(t: SystemTime) -> anyhow::Result<(OffsetDateTime, SystemTime)> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .context("certificate times must be after 1970")?
        .as_secs();
    let odt = i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .with_context(|| format!("certificate time {secs}s after 1970 is out of range"))?;
    Ok((odt, UNIX_EPOCH + Duration::from_secs(secs)))
}
