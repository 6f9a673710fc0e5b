//! The one rule for tests that need root: [`require_root`], the same rule
//! as [`crate::require_envoy`] for Envoy.
//!
//! Tests that create network namespaces, veth links and iptables rules need
//! root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and the `ip` and `iptables` tools.
//! Without them such a test fails, saying what is missing. The only way
//! around that is an explicit opt-out, `XDS_SKIP_ROOT=1`, refused under CI;
//! a skip is appended to `XDS_SKIP_REPORT` like an Envoy skip.

use crate::envoy_rule::{record_skip, running_in_ci};

/// Set (to anything but empty, `0` or `false`) to skip the tests that need
/// root when not run as root. Refused under CI.
pub const SKIP_ROOT_VAR: &str = "XDS_SKIP_ROOT";

/// The tools such tests run.
pub const TOOLS: [&str; 3] = ["ip", "iptables-save", "iptables-restore"];

/// What a test that needs root does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootDecision {
    Run,
    /// Return without testing anything; the note says why.
    Skip(String),
    Fail(String),
}

/// The rule, without the environment: `root` whether the effective uid is
/// 0, `missing` the tools not found, `opt_out` whether `XDS_SKIP_ROOT` is
/// on, `ci` whether `CI` is.
pub fn decide(root: bool, missing: &[&str], opt_out: bool, ci: bool) -> RootDecision {
    let problem = match (root, missing) {
        (true, []) => return RootDecision::Run,
        (false, _) => "it runs as root (network namespaces, veth links, iptables), and this \
                       process is not root"
            .to_string(),
        (true, missing) => format!(
            "it runs {} and {} not installed (Debian and Ubuntu: apt-get install -y iproute2 \
             iptables)",
            missing.join(", "),
            if missing.len() == 1 {
                "it is"
            } else {
                "they are"
            }
        ),
    };
    if !opt_out {
        RootDecision::Fail(format!(
            "this test needs root: {problem}. (To skip the tests that need root instead, \
             set {SKIP_ROOT_VAR}=1; not allowed under CI.)"
        ))
    } else if ci {
        RootDecision::Fail(format!(
            "{SKIP_ROOT_VAR} is set, but so is CI, and under CI a test that needs root is \
             run, never skipped: {problem}"
        ))
    } else {
        RootDecision::Skip(format!("{SKIP_ROOT_VAR} is set and {problem}"))
    }
}

/// Whether an environment flag is on (anything but unset, empty, `0`,
/// `false`).
fn flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| {
        !matches!(
            v.to_string_lossy().trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false"
        )
    })
}

/// Tools of [`TOOLS`] found neither on `PATH` nor in /usr/sbin, /sbin.
fn missing_tools() -> Vec<&'static str> {
    TOOLS
        .iter()
        .copied()
        .filter(|t| xds_server::capture::apply::find_tool(t).is_err())
        .collect()
}

/// `true` when `test` may run; `false` when the run opted out with
/// `XDS_SKIP_ROOT=1` outside CI (the skip is recorded, the test must return
/// at once).
///
/// # Panics
/// When the test cannot run and the run did not opt out, or opted out under
/// CI; or when a skip cannot be recorded.
pub fn require_root(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    match decide(root, &missing_tools(), flag(SKIP_ROOT_VAR), running_in_ci()) {
        RootDecision::Run => true,
        RootDecision::Fail(message) => panic!("{test}: {message}"),
        RootDecision::Skip(note) => {
            record_skip(test, &note);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_with_the_tools_runs_whatever_the_flags() {
        for (opt_out, ci) in [(false, false), (true, false), (false, true), (true, true)] {
            assert_eq!(decide(true, &[], opt_out, ci), RootDecision::Run);
        }
    }

    #[test]
    fn not_root_fails_unless_opted_out_outside_ci() {
        for ci in [false, true] {
            let RootDecision::Fail(m) = decide(false, &[], false, ci) else {
                panic!("ci={ci}: not root without the opt-out must fail");
            };
            assert!(
                m.contains("not root") && m.contains("XDS_SKIP_ROOT=1"),
                "{m}"
            );
        }
        let RootDecision::Fail(m) = decide(false, &[], true, true) else {
            panic!("the opt-out must be refused under CI");
        };
        assert!(m.contains("XDS_SKIP_ROOT is set, but so is CI"), "{m}");
        assert!(matches!(
            decide(false, &[], true, false),
            RootDecision::Skip(_)
        ));
    }

    #[test]
    fn missing_tools_are_named_and_fail_like_missing_root() {
        let RootDecision::Fail(m) = decide(true, &["iptables-save"], false, false) else {
            panic!("missing tools must fail");
        };
        assert!(m.contains("iptables-save and it is not installed"), "{m}");
        assert!(m.contains("apt-get install"), "{m}");
        let RootDecision::Fail(m) = decide(true, &["ip", "iptables-save"], true, true) else {
            panic!("missing tools under CI must fail even with the opt-out");
        };
        assert!(
            m.contains("ip, iptables-save and they are not installed"),
            "{m}"
        );
    }
}
