//! Where log lines go. The daemon logs to stderr; `xds-server up` keeps its
//! terminal for progress, matrices and explanations and writes its logs to a
//! file unless asked (`-v` or `RUST_LOG`) to show them. Colour only when the
//! output is a terminal, so files and pipes get plain text.

use anyhow::Context;
use std::io::IsTerminal;
use std::path::Path;
use tracing_subscriber::EnvFilter;

/// `RUST_LOG` if set and valid, else `default`.
fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// Whether the user asked for logs on the terminal (`RUST_LOG` is set).
pub fn requested() -> bool {
    std::env::var_os("RUST_LOG").is_some_and(|v| !v.is_empty())
}

/// Logs to stderr at `default` level (or `RUST_LOG`).
pub fn to_stderr(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(filter(default))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Logs to `path` (appended, no colour) at `default` level (or `RUST_LOG`).
pub fn to_file(path: &Path, default: &str) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the log file {}", path.display()))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter(default))
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .init();
    Ok(())
}
