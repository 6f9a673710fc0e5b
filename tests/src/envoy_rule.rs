//! The one rule for tests that need Envoy: [`require_envoy`].
//!
//! Envoy is looked up as the runner does (`xds_server::runner::envoy::find_envoy`:
//! `ENVOY_BIN`, then `PATH`, then `<repo>/.venv/bin/envoy`). A test that
//! needs Envoy and cannot find it fails, with the message that says where it
//! looked and how to install Envoy. The only way around that is an explicit
//! opt-out, `XDS_SKIP_ENVOY=1`, and it is refused under CI. A skipped test is
//! counted: its name is appended to the file named by `XDS_SKIP_REPORT`
//! (`scripts/test.sh` sets it and prints the count).
//!
//! `xds-server/tests/up.rs` (it runs the built binary, which only that
//! package's tests can name) reaches this through a dev-dependency on e2e.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use xds_server::runner::envoy::{EnvoyNotFound, find_envoy};

/// Set (to anything but empty, `0` or `false`) to skip the tests that need
/// Envoy when it cannot be found, instead of failing them. Refused under CI.
pub const SKIP_ENVOY_VAR: &str = "XDS_SKIP_ENVOY";

/// A file each skipped test appends its name to, one line per skip.
pub const SKIP_REPORT_VAR: &str = "XDS_SKIP_REPORT";

/// The workspace root (where `.venv/` and `scripts/` live).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Whether an environment flag is on: set to anything but empty, `0` or
/// `false` (any case).
fn flag(value: Option<OsString>) -> bool {
    value.is_some_and(|v| {
        !matches!(
            v.to_string_lossy().trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false"
        )
    })
}

/// Whether we run under CI: `CI` set to anything but empty, `0` or `false`.
pub fn running_in_ci() -> bool {
    flag(std::env::var_os("CI"))
}

/// What a test that needs Envoy does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvoyDecision {
    /// Run with this binary.
    Run(PathBuf),
    /// Return without testing anything (opted out, not under CI); the note
    /// says why.
    Skip(String),
    /// Fail with this message.
    Fail(String),
}

/// The rule, without the environment: `found` is the lookup's result,
/// `opt_out` whether `XDS_SKIP_ENVOY` is on, `ci` whether `CI` is.
pub fn decide(found: Result<PathBuf, EnvoyNotFound>, opt_out: bool, ci: bool) -> EnvoyDecision {
    match found {
        Ok(path) => EnvoyDecision::Run(path),
        Err(error) if !opt_out => EnvoyDecision::Fail(format!(
            "this test needs Envoy: {error}. (To skip the tests that need Envoy \
             instead, set {SKIP_ENVOY_VAR}=1; not allowed under CI.)"
        )),
        Err(error) if ci => EnvoyDecision::Fail(format!(
            "{SKIP_ENVOY_VAR} is set, but so is CI, and under CI a missing Envoy is a \
             failure, never a skip: {error}"
        )),
        Err(error) => EnvoyDecision::Skip(format!("{SKIP_ENVOY_VAR} is set and {error}")),
    }
}

/// The Envoy binary for `test`, or `None` when the run opted out with
/// `XDS_SKIP_ENVOY=1` and Envoy is missing: then the skip is appended to
/// `XDS_SKIP_REPORT` (if set), a note goes to stderr, and the test must
/// return at once.
///
/// # Panics
/// When Envoy cannot be found and the run did not opt out, or opted out
/// under CI; or when a skip cannot be written to `XDS_SKIP_REPORT`.
pub fn require_envoy(test: &str) -> Option<PathBuf> {
    let found = find_envoy(Some(&workspace_root()));
    match decide(
        found,
        flag(std::env::var_os(SKIP_ENVOY_VAR)),
        running_in_ci(),
    ) {
        EnvoyDecision::Run(path) => Some(path),
        EnvoyDecision::Fail(message) => panic!("{test}: {message}"),
        EnvoyDecision::Skip(note) => {
            record_skip(test, &note);
            None
        }
    }
}

/// Appends `line` and a newline to `path` (created if missing) in one
/// `write_all` on a file opened with `O_APPEND`, so test processes that
/// append at the same time do not interleave their lines.
/// Says that `test` was skipped, and why, and records it in
/// `XDS_SKIP_REPORT` (test.sh counts them).
///
/// # Panics
/// When the skip cannot be recorded.
pub fn record_skip(test: &str, note: &str) {
    if let Some(report) = std::env::var_os(SKIP_REPORT_VAR).filter(|r| !r.is_empty())
        && let Err(error) = append_line(Path::new(&report), test)
    {
        panic!(
            "{test}: skipped, but the skip cannot be recorded in \
             {SKIP_REPORT_VAR}={}: {error}",
            Path::new(&report).display()
        );
    }
    eprintln!("note: SKIPPED {test}: {note}");
}

pub fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(format!("{line}\n").as_bytes())
}
