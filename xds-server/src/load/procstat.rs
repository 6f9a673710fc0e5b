//! A process's memory and CPU as the kernel reports them: resident and
//! peak resident set (`VmRSS`, `VmHWM` in /proc/PID/status) and user plus
//! system CPU time (/proc/PID/stat). Also this process's own CPU, and its
//! file-descriptor limit.

use anyhow::{Context, anyhow, bail};
use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage, setrlimit};
use std::time::Duration;

/// One reading of a process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcStats {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub cpu: Duration,
}

/// Reads process `pid`.
pub fn read(pid: u32) -> anyhow::Result<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .context("sysconf(CLK_TCK)")?
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .context("no clock tick rate")?;
    Ok(ProcStats {
        rss_kib: status_kib(&status, "VmRSS:")?,
        hwm_kib: status_kib(&status, "VmHWM:")?,
        cpu: cpu_of_stat(&stat, ticks)?,
    })
}

/// A `NAME:   123 kB` line of /proc/PID/status, in KiB.
fn status_kib(status: &str, field: &str) -> anyhow::Result<u64> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .with_context(|| format!("no {field} line"))?;
    let number = line
        .split_whitespace()
        .next()
        .with_context(|| format!("{field} has no value"))?;
    number
        .parse()
        .map_err(|e| anyhow!("{field} {number:?}: {e}"))
}

/// utime + stime of a /proc/PID/stat line. The command name (field 2) is
/// in parentheses and may hold spaces, so fields are counted after its
/// closing one: utime and stime are fields 14 and 15.
fn cpu_of_stat(stat: &str, ticks_per_second: u64) -> anyhow::Result<Duration> {
    let (_, rest) = stat
        .rsplit_once(')')
        .context("/proc/PID/stat has no command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let field = |n: usize| -> anyhow::Result<u64> {
        let v = fields
            .get(n - 3)
            .with_context(|| format!("/proc/PID/stat has no field {n}"))?;
        v.parse().map_err(|e| anyhow!("field {n} {v:?}: {e}"))
    };
    let ticks = field(14)? + field(15)?;
    Ok(Duration::from_millis(ticks * 1000 / ticks_per_second))
}

/// The kernel's count of connections dropped because a listening socket's
/// accept queue was full (`TcpExt: ListenOverflows` in /proc/net/netstat),
/// machine-wide since boot.
pub fn listen_overflows() -> Option<u64> {
    netstat_counter(
        &std::fs::read_to_string("/proc/net/netstat").ok()?,
        "TcpExt:",
        "ListenOverflows",
    )
}

/// A counter of /proc/net/netstat: a line of names, then one of values,
/// both starting with `prefix`.
fn netstat_counter(text: &str, prefix: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let names = lines.next()?;
    let values = lines.next()?;
    let at = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// CPU (user + system) this process used so far.
pub fn own_cpu() -> Duration {
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(usage) => {
            let tv = |t: nix::sys::time::TimeVal| {
                Duration::new(
                    u64::try_from(t.tv_sec()).unwrap_or(0),
                    u32::try_from(t.tv_usec()).unwrap_or(0) * 1000,
                )
            };
            tv(usage.user_time()) + tv(usage.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// Raises this process's soft limit on open files to its hard limit
/// (children, such as a server the benchmark starts, inherit it) and
/// checks that `needed` descriptors fit. Returns the new limit.
pub fn raise_nofile(needed: u64) -> anyhow::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(RLIMIT_NOFILE)")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit(RLIMIT_NOFILE)")?;
    }
    if needed > hard {
        bail!(
            "{needed} file descriptors are needed but the hard limit is {hard} (ulimit -Hn); \
             raise it or connect fewer proxies"
        );
    }
    Ok(hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_counts_fields_after_a_command_name_with_spaces_and_parens() {
        let stat = "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(
            cpu_of_stat(stat, 100).expect("parses"),
            Duration::from_secs(3)
        );
        assert!(cpu_of_stat("42 (x) S 1", 100).is_err());
    }

    #[test]
    fn status_fields_are_read_in_kib() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kib(status, "VmRSS:").expect("rss"), 1024);
        assert_eq!(status_kib(status, "VmHWM:").expect("hwm"), 2048);
        assert!(status_kib(status, "VmSwap:").is_err());
    }

    #[test]
    fn netstat_counters_are_found_by_name() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 1 42 43\n\
                    IpExt: ListenOverflows\nIpExt: 7\n";
        assert_eq!(
            netstat_counter(text, "TcpExt:", "ListenOverflows"),
            Some(42)
        );
        assert_eq!(netstat_counter(text, "IpExt:", "ListenOverflows"), Some(7));
        assert_eq!(netstat_counter(text, "TcpExt:", "Nope"), None);
    }

    #[test]
    fn this_process_can_be_read() {
        let me = read(std::process::id()).expect("own /proc");
        assert!(me.rss_kib > 0 && me.hwm_kib >= me.rss_kib, "{me:?}");
    }
}
