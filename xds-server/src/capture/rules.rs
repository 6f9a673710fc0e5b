//! The nat-table rules of Istio's REDIRECT capture, generated from a
//! [`CaptureConfig`] with no system access.
//!
//! The layout follows istio-iptables (its `testdata/*.golden` files):
//!
//! - `PREROUTING -> ISTIO_INBOUND`: connections arriving at the pod. The
//!   HBONE port 15008, Envoy's own ports (15090 stats, 15021 health, 15020
//!   the agent's port; Istio's injector excludes them with `-d`) and the
//!   excluded ports are returned; the rest (or only the listed ports) jump
//!   to `ISTIO_IN_REDIRECT`, a REDIRECT to 15006.
//! - `OUTPUT -> ISTIO_OUTPUT`: connections the pod opens.
//!   - source 127.0.0.6 on `lo` is returned: that is Envoy handing an
//!     inbound connection to the application (the inbound clusters bind that
//!     source), which must not be captured again;
//!   - the proxy's uid (then gid): to the pod's own non-loopback address
//!     over `lo` it goes to inbound capture (the application calling itself
//!     through a Service still meets its server-side policy), any other
//!     traffic of the proxy is returned, so Envoy's upstream connections
//!     leave as they are; loopback traffic of anyone else is returned;
//!   - 127.0.0.1 and the excluded CIDRs are returned;
//!   - everything else jumps to `ISTIO_REDIRECT`, a REDIRECT to 15001.
//!
//! Rules are written the way `iptables-save` prints them (addresses before
//! interfaces before protocol, an explicit `-m tcp` for `--dport`), so the
//! rules we apply and the ones we read back compare as strings.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Envoy's outbound capture port (`virtualOutbound`).
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// Envoy's inbound capture port (`virtualInbound`).
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// Istio's HBONE tunnel port, never captured.
pub const TUNNEL_PORT: u16 = 15008;
/// The source address Envoy binds when it forwards inbound connections to
/// the application (Istio's `InboundPassthroughBindIpv4`).
pub const INBOUND_PASSTHROUGH_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
/// Ports of the sidecar itself that are never captured inbound: Envoy's
/// Prometheus port, its health port and the agent's status port, the list
/// Istio's injector passes as `--exclude-inbound-ports` (`-d`).
pub const SIDECAR_PORTS: [u16; 3] = [15090, 15021, 15020];
/// Istio's proxy uid and gid.
pub const DEFAULT_PROXY_ID: u32 = 1337;

/// Our chains, in the order Istio creates them.
pub const CHAINS: [&str; 4] = [
    "ISTIO_INBOUND",
    "ISTIO_REDIRECT",
    "ISTIO_IN_REDIRECT",
    "ISTIO_OUTPUT",
];
const INBOUND: &str = "ISTIO_INBOUND";
const REDIRECT: &str = "ISTIO_REDIRECT";
const IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
const OUTPUT: &str = "ISTIO_OUTPUT";

/// iptables' multiport match takes at most 15 ports.
const MULTIPORT_MAX: usize = 15;

/// Which inbound ports are captured (`--inbound-ports`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InboundPorts {
    /// `*`: every port but the excluded ones.
    All,
    /// Empty: no inbound capture at all.
    None,
    /// Only these ports.
    Only(Vec<u16>),
}

impl FromStr for InboundPorts {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "*" => Ok(InboundPorts::All),
            "" => Ok(InboundPorts::None),
            list => Ok(InboundPorts::Only(parse_ports(list)?)),
        }
    }
}

/// A comma-separated list of ports, 1-65535, duplicates dropped (the first
/// one kept, so the order is the user's).
pub fn parse_ports(list: &str) -> Result<Vec<u16>, String> {
    let mut out: Vec<u16> = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let port: u16 = part
            .parse()
            .map_err(|_| format!("{part:?} is not a port number (1-65535)"))?;
        if port == 0 {
            return Err("port 0 cannot be captured or excluded".into());
        }
        if !out.contains(&port) {
            out.push(port);
        }
    }
    Ok(out)
}

/// An IPv4 network, `A.B.C.D/LEN` (or an address: `/32`). The address is
/// kept as written; iptables masks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (
                a,
                l.parse::<u8>()
                    .ok()
                    .filter(|l| *l <= 32)
                    .ok_or_else(|| format!("{s:?}: the prefix length must be 0-32"))?,
            ),
            None => (s, 32),
        };
        let addr = addr
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("{s:?} is not an IPv4 address or CIDR (only IPv4 is captured)"))?;
        // iptables-save prints the network address: mask it here, so what
        // we apply reads back the same.
        let mask = if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len))
        };
        Ok(Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            len,
        })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Everything the rules depend on (the flags of `xds-server iptables`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Connections the proxy opens are never captured outbound.
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    pub inbound_ports: InboundPorts,
    /// Not captured inbound, besides [`SIDECAR_PORTS`] (always excluded).
    pub exclude_inbound_ports: Vec<u16>,
    /// Destinations the application reaches directly, not through Envoy.
    pub exclude_outbound_cidrs: Vec<Ipv4Cidr>,
}

impl Default for CaptureConfig {
    /// What Istio's injector asks for: every inbound port, every outbound
    /// destination, uid and gid 1337.
    fn default() -> Self {
        CaptureConfig {
            proxy_uid: DEFAULT_PROXY_ID,
            proxy_gid: DEFAULT_PROXY_ID,
            inbound_ports: InboundPorts::All,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
        }
    }
}

/// One rule: `-A CHAIN SPEC`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    pub chain: String,
    /// Matches and target, as `iptables-save` prints them.
    pub spec: String,
}

impl Rule {
    fn new(chain: &str, spec: impl Into<String>) -> Rule {
        Rule {
            chain: chain.to_string(),
            spec: spec.into(),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {} {}", self.chain, self.spec)
    }
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `-p tcp` with a match on these destination ports: `-m tcp --dport` for
/// one, `-m multiport --dports` for up to 15, so one rule per 15 ports.
fn dport_matches(ports: &[u16]) -> Vec<String> {
    ports
        .chunks(MULTIPORT_MAX)
        .map(|chunk| match chunk {
            [one] => format!("-p tcp -m tcp --dport {one}"),
            many => format!("-p tcp -m multiport --dports {}", join(many)),
        })
        .collect()
}

/// The rules, in the order they are appended (each chain's own order is
/// what matters to the kernel).
pub fn rules(cfg: &CaptureConfig) -> Vec<Rule> {
    let mut out = Vec::new();
    let excluded: Vec<u16> =
        SIDECAR_PORTS
            .iter()
            .chain(&cfg.exclude_inbound_ports)
            .fold(Vec::new(), |mut acc, p| {
                if !acc.contains(p) {
                    acc.push(*p);
                }
                acc
            });

    // Inbound.
    out.push(Rule::new(
        INBOUND,
        format!("-p tcp -m tcp --dport {TUNNEL_PORT} -j RETURN"),
    ));
    out.push(Rule::new(
        REDIRECT,
        format!("-p tcp -j REDIRECT --to-ports {OUTBOUND_CAPTURE_PORT}"),
    ));
    out.push(Rule::new(
        IN_REDIRECT,
        format!("-p tcp -j REDIRECT --to-ports {INBOUND_CAPTURE_PORT}"),
    ));
    match &cfg.inbound_ports {
        InboundPorts::None => {}
        InboundPorts::All => {
            out.push(Rule::new("PREROUTING", format!("-p tcp -j {INBOUND}")));
            for m in dport_matches(&excluded) {
                out.push(Rule::new(INBOUND, format!("{m} -j RETURN")));
            }
            out.push(Rule::new(INBOUND, format!("-p tcp -j {IN_REDIRECT}")));
        }
        InboundPorts::Only(ports) => {
            // An excluded port stays excluded even when listed.
            let ports: Vec<u16> = ports
                .iter()
                .copied()
                .filter(|p| !excluded.contains(p) && *p != TUNNEL_PORT)
                .collect();
            if !ports.is_empty() {
                out.push(Rule::new("PREROUTING", format!("-p tcp -j {INBOUND}")));
                for p in ports {
                    out.push(Rule::new(
                        INBOUND,
                        format!("-p tcp -m tcp --dport {p} -j {IN_REDIRECT}"),
                    ));
                }
            }
        }
    }

    // Outbound.
    out.push(Rule::new("OUTPUT", format!("-p tcp -j {OUTPUT}")));
    out.push(Rule::new(
        OUTPUT,
        format!("-s {INBOUND_PASSTHROUGH_SOURCE}/32 -o lo -j RETURN"),
    ));
    for owner in [
        format!("--uid-owner {}", cfg.proxy_uid),
        format!("--gid-owner {}", cfg.proxy_gid),
    ] {
        out.push(Rule::new(
            OUTPUT,
            format!(
                "! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport {TUNNEL_PORT} -m owner {owner} -j {IN_REDIRECT}"
            ),
        ));
        out.push(Rule::new(
            OUTPUT,
            format!("-o lo -m owner ! {owner} -j RETURN"),
        ));
        out.push(Rule::new(OUTPUT, format!("-m owner {owner} -j RETURN")));
    }
    out.push(Rule::new(OUTPUT, "-d 127.0.0.1/32 -j RETURN"));
    for cidr in &cfg.exclude_outbound_cidrs {
        // iptables-save leaves out a match on 0.0.0.0/0 (it matches all).
        let spec = if cidr.len == 0 {
            "-j RETURN".to_string()
        } else {
            format!("-d {cidr} -j RETURN")
        };
        out.push(Rule::new(OUTPUT, spec));
    }
    out.push(Rule::new(OUTPUT, format!("-j {REDIRECT}")));
    out
}

/// The `iptables-restore --noflush` input that installs `rules` in one
/// transaction: declaring our chains creates them, or empties them when a
/// previous run left them; `stale_jumps` (rules of other chains that jump
/// into ours, read from the table) are deleted first, so applying twice
/// leaves one copy.
pub fn restore_script(rules: &[Rule], stale_jumps: &[Rule]) -> String {
    let mut s = String::from("*nat\n");
    for chain in CHAINS {
        s.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for r in stale_jumps {
        s.push_str(&format!("-D {} {}\n", r.chain, r.spec));
    }
    for r in rules {
        s.push_str(&format!("{r}\n"));
    }
    s.push_str("COMMIT\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(rules: &[Rule]) -> String {
        rules.iter().map(|r| format!("{r}\n")).collect()
    }

    #[test]
    fn the_default_is_what_istios_injector_asks_for() {
        // Compare istio-iptables' testdata/inbound-ports-wildcard.golden
        // with `-i '*' -d 15090,15021,15020`, in iptables-save's notation.
        let expected = "\
-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp -m multiport --dports 15090,15021,15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
";
        assert_eq!(text(&rules(&CaptureConfig::default())), expected);
    }

    #[test]
    fn listed_inbound_ports_are_the_only_ones_captured_and_exclusions_still_win() {
        let cfg = CaptureConfig {
            proxy_uid: 1000,
            proxy_gid: 2000,
            inbound_ports: "80, 9000,15021".parse().expect("ports"),
            exclude_inbound_ports: vec![9000],
            exclude_outbound_cidrs: vec![
                "10.96.0.0/12".parse().expect("cidr"),
                "169.254.169.254".parse().expect("address"),
            ],
        };
        let expected = "\
-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp -m tcp --dport 80 -j ISTIO_IN_REDIRECT
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1000 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1000 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1000 -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --gid-owner 2000 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 2000 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 2000 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -d 10.96.0.0/12 -j RETURN
-A ISTIO_OUTPUT -d 169.254.169.254/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
";
        assert_eq!(text(&rules(&cfg)), expected);
    }

    #[test]
    fn no_inbound_ports_means_no_prerouting_jump() {
        let cfg = CaptureConfig {
            inbound_ports: "".parse().expect("empty"),
            ..CaptureConfig::default()
        };
        let r = rules(&cfg);
        assert!(!r.iter().any(|r| r.chain == "PREROUTING"), "{r:?}");
        assert!(
            !r.iter()
                .any(|r| r.spec.ends_with("-j ISTIO_IN_REDIRECT") && r.chain == "ISTIO_INBOUND")
        );
        // Every port listed being excluded is the same as none.
        let cfg = CaptureConfig {
            inbound_ports: "15020,15021".parse().expect("ports"),
            ..CaptureConfig::default()
        };
        assert!(!rules(&cfg).iter().any(|r| r.chain == "PREROUTING"));
    }

    #[test]
    fn more_than_fifteen_excluded_ports_take_several_multiport_rules() {
        let cfg = CaptureConfig {
            exclude_inbound_ports: (1..=20).collect(),
            ..CaptureConfig::default()
        };
        let returns: Vec<String> = rules(&cfg)
            .into_iter()
            .filter(|r| r.chain == "ISTIO_INBOUND" && r.spec.ends_with("-j RETURN"))
            .map(|r| r.spec)
            .collect();
        assert_eq!(
            returns,
            [
                "-p tcp -m tcp --dport 15008 -j RETURN",
                "-p tcp -m multiport --dports 15090,15021,15020,1,2,3,4,5,6,7,8,9,10,11,12 -j RETURN",
                "-p tcp -m multiport --dports 13,14,15,16,17,18,19,20 -j RETURN",
            ]
        );
    }

    #[test]
    fn the_restore_script_declares_our_chains_and_deletes_stale_jumps_first() {
        let stale = [Rule::new("OUTPUT", "-p tcp -j ISTIO_OUTPUT")];
        let script = restore_script(&rules(&CaptureConfig::default()), &stale);
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(
            lines[..7],
            [
                "*nat",
                ":ISTIO_INBOUND - [0:0]",
                ":ISTIO_REDIRECT - [0:0]",
                ":ISTIO_IN_REDIRECT - [0:0]",
                ":ISTIO_OUTPUT - [0:0]",
                "-D OUTPUT -p tcp -j ISTIO_OUTPUT",
                "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
            ]
        );
        assert_eq!(lines.last(), Some(&"COMMIT"));
    }

    #[test]
    fn flags_are_parsed_strictly() {
        assert_eq!("*".parse::<InboundPorts>(), Ok(InboundPorts::All));
        assert_eq!(" ".parse::<InboundPorts>(), Ok(InboundPorts::None));
        assert_eq!(
            "80,80,443".parse::<InboundPorts>(),
            Ok(InboundPorts::Only(vec![80, 443]))
        );
        assert!("80,http".parse::<InboundPorts>().is_err());
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("65536").is_err());
        let cidr: Ipv4Cidr = "10.1.2.3/8".parse().expect("cidr");
        assert_eq!(cidr.to_string(), "10.0.0.0/8");
        assert_eq!(
            "0.0.0.0/0".parse::<Ipv4Cidr>().map(|c| c.to_string()),
            Ok("0.0.0.0/0".into())
        );
        assert!("10.0.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("fd00::/8".parse::<Ipv4Cidr>().is_err());
        assert!("10.0.0/8".parse::<Ipv4Cidr>().is_err());
    }
}
