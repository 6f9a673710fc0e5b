//! The `serve` process the benchmark starts: on free loopback ports, its
//! log in a file, ready once `/readyz` says so, stopped with SIGTERM (and
//! killed if it does not exit in time, or if the benchmark itself fails).

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// How long the server may take to load the mesh and answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long it gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between readiness checks.
const READY_POLL: Duration = Duration::from_millis(50);

/// A running `xds-server serve`.
pub struct ServerProcess {
    child: Child,
    pid: u32,
    pub xds_addr: SocketAddr,
    pub debug_addr: SocketAddr,
    pub log: PathBuf,
}

/// A loopback port free right now (the kernel's choice). Another process
/// could take it before the server binds it; on a benchmark machine that
/// is unlikely, and the server then fails to start with a clear error.
async fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("finding a free port")?;
    Ok(listener.local_addr()?)
}

impl ServerProcess {
    /// Starts `bin serve` on `config_dir` with its state in `state_dir`,
    /// logging to `log`, plus `extra` arguments; waits until it is ready.
    pub async fn start(
        bin: &Path,
        config_dir: &Path,
        state_dir: &Path,
        log: &Path,
        extra: &[String],
    ) -> anyhow::Result<ServerProcess> {
        let xds_addr = free_port().await?;
        let debug_addr = free_port().await?;
        let out = std::fs::File::create(log)
            .with_context(|| format!("creating the server log {}", log.display()))?;
        let err = out.try_clone().context("sharing the server log")?;
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--config-dir")
            .arg(config_dir)
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--xds-addr")
            .arg(xds_addr.to_string())
            .arg("--debug-addr")
            .arg(debug_addr.to_string())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // If the benchmark fails half-way, the server goes with it.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("the server has no process id")?;
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the server exited ({status}) before it was ready; see {}",
                    log.display()
                );
            }
            if ready(debug_addr).await {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the server was not ready within {READY_TIMEOUT:?}; see {}",
                    log.display()
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
        Ok(ServerProcess {
            child,
            pid,
            xds_addr,
            debug_addr,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGTERM, then SIGKILL if it has not exited within [`STOP_TIMEOUT`].
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let pid = Pid::from_raw(i32::try_from(self.pid).context("process id")?);
        if let Err(error) = kill(pid, Signal::SIGTERM) {
            tracing::warn!(%error, pid = self.pid, "SIGTERM to the server failed");
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status.context("waiting for the server")?;
                if !status.success() {
                    tracing::warn!(%status, "the server exited with an error");
                }
            }
            Err(_) => {
                tracing::warn!(
                    pid = self.pid,
                    "the server did not stop in time; killing it"
                );
                self.child.kill().await.context("killing the server")?;
            }
        }
        Ok(())
    }
}

/// Whether `GET /readyz` on `addr` answers 200.
async fn ready(addr: SocketAddr) -> bool {
    let attempt = async {
        let tcp = TcpStream::connect(addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        let driver = tokio::spawn(connection);
        let request = hyper::Request::get("/readyz")
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())?;
        let status = sender.send_request(request).await?.status();
        driver.abort();
        anyhow::Ok(status == hyper::StatusCode::OK)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(true))
    )
}
