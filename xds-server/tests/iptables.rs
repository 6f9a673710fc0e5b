//! `xds-server iptables` against the real kernel, in network namespaces the
//! test creates and removes: the rules read back as generated, applying
//! twice leaves one copy, the kernel redirects the way Istio's rules do,
//! and `--cleanup` leaves the table exactly as it was. Needs root
//! (`e2e::require_root`).

use e2e::netns::{Netns, veth};
use e2e::require_root;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};
use xds_server::capture::rules::{CHAINS, CaptureConfig, rules};
use xds_server::capture::save::NatTable;

const BIN: &str = env!("CARGO_BIN_EXE_xds-server");

/// The pod's address, and the peer's: one it listens on nowhere, one whose
/// traffic the rules exclude.
const POD: Ipv4Addr = Ipv4Addr::new(192, 168, 250, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(192, 168, 250, 2);
const PEER_EXCLUDED: Ipv4Addr = Ipv4Addr::new(192, 168, 250, 3);

/// `iptables-save -t nat` without its timestamped comment lines.
fn saved(ns: &Netns) -> String {
    ns.exec("iptables-save", &["-t", "nat"])
        .expect("iptables-save")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Accepts one connection within a deadline (the listener is
/// non-blocking): the accepted stream, or `None` if none came.
fn accept_within(listener: &TcpListener, deadline: Duration) -> Option<TcpStream> {
    let until = Instant::now() + deadline;
    loop {
        match listener.accept() {
            Ok((s, _)) => return Some(s),
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => return None,
        }
    }
}

/// The destination the connection had before REDIRECT (SO_ORIGINAL_DST).
fn original_dst(s: &TcpStream) -> SocketAddrV4 {
    let sa = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::OriginalDst)
        .expect("SO_ORIGINAL_DST");
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    )
}

fn listen(ns: &Netns, port: u16) -> TcpListener {
    ns.enter(move || {
        let l = TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
            .expect("bind in the namespace");
        l.set_nonblocking(true).expect("non-blocking");
        l
    })
    .expect("enter the namespace")
}

fn connect(ns: &Netns, to: SocketAddrV4) -> std::io::Result<TcpStream> {
    ns.enter(move || TcpStream::connect_timeout(&to.into(), Duration::from_secs(5)))
        .expect("enter the namespace")
}

#[test]
fn the_capture_rules_redirect_like_istio_and_cleanup_restores_the_table() {
    if !require_root("the_capture_rules_redirect_like_istio_and_cleanup_restores_the_table") {
        return;
    }
    let pod = Netns::create("ipt-pod").expect("pod namespace");
    let peer = Netns::create("ipt-peer").expect("peer namespace");
    veth(
        &pod,
        &["192.168.250.1/29"],
        &peer,
        &["192.168.250.2/29", "192.168.250.3/29"],
    )
    .expect("veth");
    // Somebody else's rules and chain, which must survive untouched.
    pod.exec("iptables", &["-t", "nat", "-N", "OTHER"])
        .expect("a chain of someone else");
    pod.exec("iptables", &["-t", "nat", "-A", "OTHER", "-j", "RETURN"])
        .expect("rule");
    pod.exec(
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-d",
            "10.255.0.0/16",
            "-j",
            "OTHER",
        ],
    )
    .expect("rule");
    let before = saved(&pod);

    let args = [
        "iptables",
        "--exclude-outbound-cidrs",
        "192.168.250.3/32",
        "--exclude-inbound-ports",
        "9999",
    ];
    // Twice: the second run replaces the first.
    for _ in 0..2 {
        pod.exec(BIN, &args).expect("xds-server iptables");
    }
    let table = NatTable::parse(&saved(&pod)).expect("parses");
    let generated = rules(&CaptureConfig {
        exclude_inbound_ports: vec![9999],
        exclude_outbound_cidrs: vec!["192.168.250.3/32".parse().expect("cidr")],
        ..CaptureConfig::default()
    });
    for chain in CHAINS.iter().chain(&["PREROUTING", "OUTPUT"]) {
        let want: Vec<&str> = generated
            .iter()
            .filter(|r| r.chain == *chain)
            .map(|r| r.spec.as_str())
            .collect();
        let got: Vec<&str> = table
            .rules_of(chain)
            .into_iter()
            .filter(|r| !r.ends_with("-j OTHER"))
            .collect();
        assert_eq!(got, want, "chain {chain} after applying twice");
    }
    assert_eq!(table.rules_of("OTHER"), ["-j RETURN"]);

    let outbound = listen(&pod, 15001);
    let inbound = listen(&pod, 15006);
    let excluded_port = listen(&pod, 9999);

    // The pod calls out: captured to 15001, original destination kept.
    let _out = connect(&pod, SocketAddrV4::new(PEER, 80)).expect("redirected to 15001");
    let accepted = accept_within(&outbound, Duration::from_secs(5)).expect("15001 accepted");
    assert_eq!(original_dst(&accepted), SocketAddrV4::new(PEER, 80));

    // An excluded CIDR is reached directly: the peer refuses port 80.
    let direct = connect(&pod, SocketAddrV4::new(PEER_EXCLUDED, 80));
    assert_eq!(
        direct.map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionRefused),
        "an excluded CIDR must not be captured"
    );
    assert!(accept_within(&outbound, Duration::from_millis(200)).is_none());

    // A call into the pod: captured to 15006.
    let _in = connect(&peer, SocketAddrV4::new(POD, 80)).expect("redirected to 15006");
    let accepted = accept_within(&inbound, Duration::from_secs(5)).expect("15006 accepted");
    assert_eq!(original_dst(&accepted), SocketAddrV4::new(POD, 80));

    // Excluded inbound ports, ours and Envoy's, reach their listener.
    let _ex = connect(&peer, SocketAddrV4::new(POD, 9999)).expect("port 9999");
    assert!(accept_within(&excluded_port, Duration::from_secs(5)).is_some());
    assert!(accept_within(&inbound, Duration::from_millis(200)).is_none());
    let health = listen(&pod, 15021);
    let _h = connect(&peer, SocketAddrV4::new(POD, 15021)).expect("port 15021");
    assert!(accept_within(&health, Duration::from_secs(5)).is_some());

    // Loopback to 127.0.0.1 is never captured.
    let local = listen(&pod, 8080);
    let _l = connect(&pod, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080)).expect("loopback");
    assert!(accept_within(&local, Duration::from_secs(5)).is_some());

    pod.exec(BIN, &["iptables", "--cleanup"])
        .expect("xds-server iptables --cleanup");
    assert_eq!(saved(&pod), before, "cleanup must restore the table");
    // Nothing left: a second cleanup is a no-op that succeeds.
    pod.exec(BIN, &["iptables", "--cleanup"])
        .expect("second cleanup");
    assert_eq!(saved(&pod), before);
}

#[test]
fn dry_run_prints_the_restore_input_without_touching_anything() {
    // No root needed: --dry-run never reads or writes the table.
    let out = std::process::Command::new(BIN)
        .args(["iptables", "--dry-run", "--inbound-ports", "80,8080"])
        .output()
        .expect("run xds-server");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let want = xds_server::capture::rules::restore_script(
        &rules(&CaptureConfig {
            inbound_ports: "80,8080".parse().expect("ports"),
            ..CaptureConfig::default()
        }),
        &[],
    );
    assert_eq!(text, want);
    assert!(text.contains("-A ISTIO_INBOUND -p tcp -m tcp --dport 8080 -j ISTIO_IN_REDIRECT"));
}

#[test]
fn bad_flags_are_refused_naming_the_value() {
    for (flag, value, says) in [
        (
            "--inbound-ports",
            "80,http",
            "\"http\" is not a port number",
        ),
        (
            "--exclude-outbound-cidrs",
            "fd00::/8",
            "only IPv4 is captured",
        ),
        ("--exclude-inbound-ports", "0", "port 0"),
    ] {
        let out = std::process::Command::new(BIN)
            .args(["iptables", "--dry-run", flag, value])
            .output()
            .expect("run xds-server");
        assert!(!out.status.success(), "{flag} {value} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
}
