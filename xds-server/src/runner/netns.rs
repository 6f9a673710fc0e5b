//! Network namespaces for the capture runner (`up --capture iptables`):
//! created with `ip netns add`, deleted when their guard drops (with the
//! links inside them and the `/etc/netns/NAME` files `ip netns exec`
//! mounts over `/etc`), entered by a thread to make sockets there.
//!
//! Every name starts with `xds-PID-` (the runner's process id), so a
//! namespace left by a run that was killed (SIGKILL runs no destructor) is
//! recognised and removed by the next run: [`remove_stale`].

use anyhow::{Context, bail};
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tracing::{info, warn};

/// The common prefix of our namespace names.
pub const PREFIX: &str = "xds-";

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Where `ip netns exec` finds files to mount over `/etc`.
const ETC_NETNS_DIR: &str = "/etc/netns";

/// Runs `program args...`, returning stdout; an error naming the command
/// and quoting its stderr otherwise.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{program} printed non-UTF-8"))
}

/// The name of a namespace of run `pid`: `xds-PID-TAG`.
pub fn name(pid: u32, tag: &str) -> String {
    format!("{PREFIX}{pid}-{tag}")
}

/// The run a namespace name belongs to, if it is one of ours.
pub fn owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, tag) = rest.split_once('-')?;
    if tag.is_empty() {
        return None;
    }
    pid.parse().ok()
}

/// A network namespace of this run, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add NAME`, loopback up.
    pub fn create(name: &str) -> anyhow::Result<Netns> {
        run("ip", &["netns", "add", name])
            .with_context(|| format!("creating network namespace {name}"))?;
        // From here the guard removes it, whatever fails next.
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// `ip -n NAME args...`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `ip netns exec NAME program args...`.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// The words that run a program in this namespace: `ip netns exec NAME`.
    pub fn exec_prefix(&self) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.name.clone(),
        ]
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it
    /// creates live here (whichever thread uses them later), and processes
    /// it starts run here.
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = self.path();
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || -> anyhow::Result<T> {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering network namespace {name}"))?;
                Ok(f())
            })
            .context("starting a thread")?
            .join()
            .map_err(|_| {
                anyhow::anyhow!("the thread in network namespace {} panicked", self.name)
            })?
    }

    /// A listening socket in this namespace.
    pub fn listen(&self, addr: SocketAddr) -> anyhow::Result<TcpListener> {
        let name = self.name.clone();
        self.enter(move || TcpListener::bind(addr))?
            .with_context(|| format!("binding {addr} in network namespace {name}"))
    }

    /// A connection made from this namespace.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> anyhow::Result<TcpStream> {
        let name = self.name.clone();
        self.enter(move || TcpStream::connect_timeout(&addr, timeout))?
            .with_context(|| format!("connecting to {addr} from network namespace {name}"))
    }

    /// Writes `/etc/netns/NAME/FILE`, which `ip netns exec` shows as
    /// `/etc/FILE` to what it runs.
    pub fn write_etc(&self, file: &str, text: &str) -> anyhow::Result<()> {
        let dir = Path::new(ETC_NETNS_DIR).join(&self.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// Deletes namespace `name` and its `/etc/netns` files.
fn delete(name: &str) -> anyhow::Result<()> {
    let etc = Path::new(ETC_NETNS_DIR).join(name);
    if etc.exists() {
        std::fs::remove_dir_all(&etc).with_context(|| format!("removing {}", etc.display()))?;
    }
    run("ip", &["netns", "del", name]).map(|_| ())
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = delete(&self.name) {
            warn!(netns = %self.name, error = %format!("{e:#}"), "could not remove network namespace");
        }
    }
}

/// Whether process `pid` exists and has not exited (a zombie, killed but
/// not yet reaped by its parent, has).
fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    let exists = match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) => true,
        Err(e) => e != nix::errno::Errno::ESRCH,
    };
    // /proc/PID/stat: "PID (COMM) STATE ...", COMM may hold spaces.
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false);
    exists && !zombie
}

/// Our namespaces whose run is gone, by name.
pub fn stale() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| owner(n).is_some_and(|pid| !alive(pid)))
        .collect();
    out.sort();
    out
}

/// Removes what killed runs left: the processes still running in their
/// namespaces (Envoys), the namespaces (with their links) and their
/// `/etc/netns` files. Returns how many namespaces were removed.
pub fn remove_stale() -> anyhow::Result<usize> {
    let names = stale();
    for name in &names {
        let pids = run("ip", &["netns", "pids", name]).unwrap_or_default();
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // Only processes inside a namespace of a dead run of ours: the
            // sidecars that run started.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        delete(name).with_context(|| format!("removing stale network namespace {name}"))?;
    }
    if !names.is_empty() {
        info!(count = names.len(), names = ?names, "removed what an earlier run left behind");
    }
    Ok(names.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_run_and_only_ours_parse() {
        assert_eq!(name(4242, "node"), "xds-4242-node");
        assert_eq!(owner("xds-4242-node"), Some(4242));
        assert_eq!(owner("xds-4242-p12"), Some(4242));
        assert_eq!(owner("xds-4242-"), None);
        assert_eq!(owner("xds-abc-node"), None);
        assert_eq!(owner("xe-ipt-pod-1-0"), None);
        assert_eq!(owner("cni-1234"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_free_pid_is_not() {
        assert!(alive(std::process::id()));
        // pid_max is at most 2^22 on Linux.
        assert!(!alive(4_194_304 + 7));
    }
}
