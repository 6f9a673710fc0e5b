//! The iptables capture layout (`INTERCEPTION_MODE: REDIRECT`) takes the
//! same decisions as the explicit-bind layout: every call below goes
//! through both, by the simulations in `support::sim` and
//! `support::capture_sim`, and the outcomes must agree with each other and
//! with the expected ones. Then what only the capture layout can do: TCP
//! services through `virtualOutbound`, and ports no Service targets
//! (row 31 of the test matrix in docs/mtls-semantics.md).

mod support;

use support::capture_sim;
use support::sim::{self, Outcome, Outcome::*};
use support::{case_docs, repo_root};
use translator::model::Mesh;
use translator::model::build::{Addressing, mesh_from_yaml};
use translator::{Interception, translate};

fn mesh_of(folders: &[&str], extra: &str) -> Mesh {
    let mut docs = Vec::new();
    for f in folders {
        docs.extend(case_docs(&repo_root().join(f)));
    }
    if !extra.is_empty() {
        docs.push(("extra.yaml".into(), extra.to_string()));
    }
    let addressing = Addressing {
        service_net: Some("10.96.0.0".parse().expect("net")),
        ..Addressing::default()
    };
    mesh_from_yaml(&docs, Default::default(), &addressing)
        .unwrap_or_else(|e| panic!("invalid input: {e:?}"))
}

const NAMESPACES: [&str; 3] = ["foo", "bar", "legacy"];

/// (from namespace, to namespace, outcome) for every pair.
type Matrix = Vec<(String, String, Outcome)>;

/// sleep.FROM -> httpbin.TO:8000 in both layouts, for every pair.
fn article_matrix(mesh: &Mesh) -> Matrix {
    let t = translate(mesh);
    let mut out = Vec::new();
    for from in NAMESPACES {
        for to in NAMESPACES {
            let explicit = sim::call(mesh, &t, (from, "sleep-0"), ("httpbin", to), 8000, 0);
            let captured = capture_sim::call(mesh, &t, (from, "sleep-0"), ("httpbin", to), 8000, 0);
            assert_eq!(
                captured, explicit,
                "sleep.{from} -> httpbin.{to}: the capture layout decides otherwise"
            );
            out.push((from.to_string(), to.to_string(), captured));
        }
    }
    out
}

fn expect(rows: &[(&str, [Outcome; 3])]) -> Matrix {
    let mut out = Vec::new();
    for (from, cells) in rows {
        for (to, cell) in NAMESPACES.iter().zip(cells) {
            out.push((from.to_string(), to.to_string(), *cell));
        }
    }
    out
}

#[test]
fn the_articles_four_stages_decide_alike_in_both_layouts() {
    let stages: [(&str, Matrix); 4] = [
        (
            "",
            expect(&[
                ("foo", [Mtls, Mtls, Plain]),
                ("bar", [Mtls, Mtls, Plain]),
                ("legacy", [Plain, Plain, Plain]),
            ]),
        ),
        (
            "examples/article/mesh-strict",
            expect(&[
                ("foo", [Mtls, Mtls, Plain]),
                ("bar", [Mtls, Mtls, Plain]),
                ("legacy", [Reset, Reset, Plain]),
            ]),
        ),
        (
            "examples/article/namespace-strict",
            expect(&[
                ("foo", [Mtls, Mtls, Plain]),
                ("bar", [Mtls, Mtls, Plain]),
                ("legacy", [Reset, Plain, Plain]),
            ]),
        ),
        (
            "examples/article/workload-strict",
            expect(&[
                ("foo", [Mtls, Mtls, Plain]),
                ("bar", [Mtls, Mtls, Plain]),
                ("legacy", [Plain, Reset, Plain]),
            ]),
        ),
    ];
    for (stage, want) in stages {
        let mut folders = vec!["examples/article/base"];
        if !stage.is_empty() {
            folders.push(stage);
        }
        assert_eq!(
            article_matrix(&mesh_of(&folders, "")),
            want,
            "stage {stage:?}"
        );
    }
}

/// Policies of the resolution tables (rows of the test matrix), each
/// checked for agreement between the layouts on all nine pairs.
const POLICY_ROWS: &[(&str, &str)] = &[
    (
        "11-12 workload DISABLE under namespace STRICT",
        "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin, namespace: foo}
spec: {selector: {matchLabels: {app: httpbin}}, mtls: {mode: DISABLE}}
",
    ),
    (
        "14-15 port-level DISABLE on the target port",
        "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin, namespace: bar}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: STRICT}
  portLevelMtls: {80: {mode: DISABLE}}
",
    ),
    (
        "16 port-level on the Service port does nothing",
        "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin, namespace: bar}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: STRICT}
  portLevelMtls: {8000: {mode: DISABLE}}
",
    ),
    (
        "17 port-level PERMISSIVE under workload STRICT",
        "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin, namespace: bar}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: STRICT}
  portLevelMtls: {80: {mode: PERMISSIVE}}
",
    ),
    (
        "21 DestinationRule DISABLE towards STRICT",
        "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec: {mtls: {mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: foo}
spec: {host: httpbin.foo.svc.cluster.local, trafficPolicy: {tls: {mode: DISABLE}}}
",
    ),
    (
        "23 ISTIO_MUTUAL towards DISABLE",
        "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin, namespace: foo}
spec: {selector: {matchLabels: {app: httpbin}}, mtls: {mode: DISABLE}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: foo}
spec: {host: httpbin.foo.svc.cluster.local, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}
",
    ),
    (
        "29 mesh DISABLE with workload STRICT",
        "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin, namespace: foo}
spec: {selector: {matchLabels: {app: httpbin}}, mtls: {mode: STRICT}}
",
    ),
];

#[test]
fn policy_rows_decide_alike_in_both_layouts() {
    for (row, policies) in POLICY_ROWS {
        let mesh = mesh_of(&["examples/article/base"], policies);
        let outcomes = article_matrix(&mesh);
        // Not vacuous: each row makes at least one call that is not 200 mTLS.
        assert!(
            outcomes.iter().any(|(_, _, o)| *o != Mtls),
            "row {row}: {outcomes:?}"
        );
    }
}

/// tcp-echo.foo:9000 (TCP Service) and tcp-echo's pod port 9100 (no
/// Service), from sleep.foo (sidecar) and sleep.legacy (none).
fn tcp_and_passthrough(stage: &str) -> [Outcome; 4] {
    let mesh = mesh_of(&["examples/tcp-passthrough/base", stage], "");
    let t = translate(&mesh);
    let tcp = |from: &str| {
        let captured =
            capture_sim::call(&mesh, &t, (from, "sleep-0"), ("tcp-echo", "foo"), 9000, 0);
        let explicit = sim::call(&mesh, &t, (from, "sleep-0"), ("tcp-echo", "foo"), 9000, 0);
        assert_eq!(
            captured, explicit,
            "{stage}: sleep.{from} -> tcp-echo.foo:9000"
        );
        captured
    };
    let pod = |from: &str| {
        capture_sim::call_pod(&mesh, &t, (from, "sleep-0"), ("foo", "tcp-echo-0"), 9100)
    };
    [tcp("foo"), tcp("legacy"), pod("foo"), pod("legacy")]
}

#[test]
fn a_tcp_service_and_a_port_no_service_targets_follow_the_namespace_mode() {
    // [sleep.foo -> tcp-echo:9000, sleep.legacy -> tcp-echo:9000,
    //  sleep.foo -> pod:9100, sleep.legacy -> pod:9100]
    assert_eq!(
        tcp_and_passthrough("examples/tcp-passthrough/strict"),
        // A captured client reaches a pod port through PassthroughCluster,
        // in plaintext, as Istio's do: STRICT closes it.
        [Mtls, Reset, Reset, Reset]
    );
    assert_eq!(
        tcp_and_passthrough("examples/tcp-passthrough/permissive"),
        [Mtls, Plain, Plain, Plain]
    );
    assert_eq!(
        tcp_and_passthrough("examples/tcp-passthrough/disable"),
        [Plain, Plain, Plain, Plain]
    );
}

#[test]
fn row_31_port_level_mode_on_a_port_no_service_targets() {
    // Workload STRICT with 9000 DISABLE; 9000 is in no Service.
    let mesh = mesh_of(
        &["examples/article/base"],
        "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: STRICT}
  portLevelMtls: {9000: {mode: DISABLE}}
",
    );
    let t = translate(&mesh);
    let legacy = ("legacy", "sleep-0");
    let httpbin = ("foo", "httpbin-0");
    assert_eq!(
        capture_sim::call_pod(&mesh, &t, legacy, httpbin, 9000),
        Plain
    );
    assert_eq!(
        capture_sim::call_pod(&mesh, &t, legacy, httpbin, 9001),
        Reset
    );
    // The served port keeps the workload's STRICT.
    assert_eq!(
        capture_sim::call(&mesh, &t, legacy, ("httpbin", "foo"), 8000, 0),
        Reset
    );
}

#[test]
fn both_layouts_share_clusters_and_endpoints_and_differ_in_listeners() {
    let mesh = mesh_of(&["examples/article/base"], "");
    let t = translate(&mesh);
    let plan = t.proxy("foo", "sleep-0").expect("sidecar");
    let none = plan.resources_for(Interception::None);
    let redirect = plan.resources_for(Interception::Redirect);
    assert!(std::sync::Arc::ptr_eq(&none.endpoints, &redirect.endpoints));
    for (name, r) in plan.outbound_clusters.iter() {
        assert!(
            std::sync::Arc::ptr_eq(r, &redirect.clusters[name]),
            "{name} is shared"
        );
    }
    let names = |m: &translator::ResourceMap| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&redirect.listeners),
        [
            "0.0.0.0_80",
            "0.0.0.0_8000",
            "virtualInbound",
            "virtualOutbound"
        ]
    );
    assert!(names(&none.listeners).iter().all(|n| n.starts_with("127.")));
    // The outbound listeners are one allocation for every captured sidecar.
    let other = t.proxy("bar", "httpbin-0").expect("sidecar");
    assert!(std::sync::Arc::ptr_eq(
        &plan.capture.outbound_listeners,
        &other.capture.outbound_listeners
    ));
}
