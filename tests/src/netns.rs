//! Network namespaces for tests that need real iptables: created with
//! `ip netns add`, removed on drop (also when the test panics), with every
//! link inside them. Call [`crate::require_root`] first.

use anyhow::Context;
use std::sync::atomic::{AtomicUsize, Ordering};
pub use xds_server::runner::netns::run;

/// A network namespace of this test process, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add xe-TAG-PID-N`, with its loopback up.
    pub fn create(tag: &str) -> anyhow::Result<Netns> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("xe-{tag}-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        // From here on the guard removes it, whatever fails next.
        let ns = Netns { name };
        ns.exec("ip", &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip netns add NAME` with exactly this name (tests that need one a
    /// program recognises), loopback up.
    pub fn create_named(name: &str) -> anyhow::Result<Netns> {
        run("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.exec("ip", &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `program args...` inside the namespace (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `f` on a thread that has entered this namespace, so sockets it
    /// creates live there (a socket stays in the namespace it was created
    /// in, whichever thread uses it later).
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        let handle = std::thread::spawn(move || -> anyhow::Result<T> {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .context("setns into the test namespace")?;
            Ok(f())
        });
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("the thread in namespace {} panicked", self.name))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Something under test may have removed it already.
        if !std::path::Path::new("/run/netns").join(&self.name).exists() {
            return;
        }
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("could not remove network namespace {}: {e:#}", self.name);
        }
    }
}

/// A veth pair with one end in each namespace, both up, each end given
/// its addresses (`A.B.C.D/LEN`).
pub fn veth(a: &Netns, a_addrs: &[&str], b: &Netns, b_addrs: &[&str]) -> anyhow::Result<()> {
    run(
        "ip",
        &[
            "link",
            "add",
            "eth0",
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            b.name(),
        ],
    )?;
    for (ns, addrs) in [(a, a_addrs), (b, b_addrs)] {
        for addr in addrs {
            ns.exec("ip", &["addr", "add", addr, "dev", "eth0"])?;
        }
        ns.exec("ip", &["link", "set", "eth0", "up"])?;
    }
    Ok(())
}
