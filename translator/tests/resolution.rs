//! Resolution tables: the rows of the test matrix in
//! docs/mtls-semantics.md (repository root) that apply to the explicit-bind layout,
//! each run through the generated Envoy config by `support::sim`. The row
//! number of that matrix is in each test's name.

mod support;

use support::sim::{Outcome, Outcome::*, call};
use support::{case_docs, repo_root};
use translator::model::build::{Addressing, mesh_from_yaml};
use translator::model::{Mesh, MeshConfig};
use translator::resolve::{Scope, ServerMode};
use translator::{Severity, Translation, translate};

fn mesh_with(policies: &str, root: &str) -> Mesh {
    let mut docs = case_docs(&repo_root().join("examples/article/base"));
    docs.push(("policies.yaml".into(), policies.to_string()));
    let config = MeshConfig {
        root_namespace: root.into(),
        ..Default::default()
    };
    mesh_from_yaml(&docs, config, &Addressing::default())
        .unwrap_or_else(|e| panic!("invalid policies: {e:?}"))
}

/// sleep.FROM -> httpbin.TO:8000, through the generated config.
fn check(policies: &str, cases: &[(&str, &str, Outcome)]) -> Translation {
    check_root(policies, "istio-system", cases)
}

fn check_root(policies: &str, root: &str, cases: &[(&str, &str, Outcome)]) -> Translation {
    let mesh = mesh_with(policies, root);
    let t = translate(&mesh);
    for (from, to, want) in cases {
        let got = call(&mesh, &t, (from, "sleep-0"), ("httpbin", to), 8000, 0);
        assert_eq!(got, *want, "sleep.{from} -> httpbin.{to}");
    }
    t
}

fn server<'a>(t: &'a Translation, ns: &str) -> &'a translator::translate::ServerPort {
    t.server_ports
        .iter()
        .find(|p| p.namespace == ns && p.workload == "httpbin-0" && p.port == 80)
        .expect("httpbin port 80 is reported")
}

fn has_diag(t: &Translation, severity: Severity, object: &str, needle: &str) -> bool {
    t.diagnostics.iter().any(|d| {
        d.severity == severity
            && format!("{}/{}", d.object.namespace, d.object.name) == object
            && d.to_string().contains(needle)
    })
}

const MESH_STRICT: &str = "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
";

#[test]
fn rows_1_to_3_default_is_permissive_with_auto_mtls() {
    let t = check(
        "",
        &[
            ("foo", "foo", Mtls),
            ("foo", "bar", Mtls),
            ("foo", "legacy", Plain),
            ("legacy", "foo", Plain),
            ("legacy", "legacy", Plain),
        ],
    );
    let s = server(&t, "foo");
    assert_eq!(
        (s.mode, s.scope, &s.by),
        (Some(ServerMode::Permissive), Some(Scope::Default), &None)
    );
}

#[test]
fn rows_5_to_8_mesh_strict_rejects_plaintext_from_legacy_only() {
    let t = check(
        MESH_STRICT,
        &[
            ("foo", "bar", Mtls),
            ("legacy", "foo", Reset),
            ("legacy", "bar", Reset),
            ("foo", "legacy", Plain),
            ("legacy", "legacy", Plain),
        ],
    );
    let s = server(&t, "bar");
    assert_eq!(s.mode, Some(ServerMode::Strict));
    assert_eq!(s.scope, Some(Scope::Mesh));
    assert_eq!(
        s.by.as_ref().map(|b| b.to_string()).as_deref(),
        Some("PeerAuthentication istio-system/default")
    );
}

#[test]
fn row_9_namespace_strict_applies_to_its_namespace_only() {
    check(
        "
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec: {mtls: {mode: STRICT}}
",
        &[
            ("legacy", "foo", Reset),
            ("legacy", "bar", Plain),
            ("bar", "foo", Mtls),
        ],
    );
}

#[test]
fn row_10_namespace_unset_inherits_mesh_strict() {
    let t = check(
        &format!(
            "{MESH_STRICT}---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: foo}}
spec: {{mtls: {{mode: UNSET}}}}
"
        ),
        &[("legacy", "foo", Reset)],
    );
    assert_eq!(server(&t, "foo").scope, Some(Scope::Mesh));
}

#[test]
fn rows_11_12_workload_disable_overrides_namespace_strict_and_clients_follow() {
    let t = check(
        "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: overwrite-example, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: DISABLE}
",
        &[
            ("legacy", "foo", Plain),
            ("bar", "foo", Plain),
            ("bar", "bar", Mtls),
        ],
    );
    let s = server(&t, "foo");
    assert_eq!(
        (s.mode, s.scope),
        (Some(ServerMode::Disable), Some(Scope::Workload))
    );
}

#[test]
fn namespace_strict_with_workload_permissive_override_accepts_both() {
    check(
        "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: PERMISSIVE}
",
        &[("legacy", "foo", Plain), ("bar", "foo", Mtls)],
    );
}

#[test]
fn workload_unset_inherits_namespace_mode() {
    let t = check(
        "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
",
        &[("legacy", "foo", Reset)],
    );
    assert_eq!(server(&t, "foo").scope, Some(Scope::Namespace));
}

const BAR_WORKLOAD_STRICT: &str = "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin, namespace: bar}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: STRICT}
";

#[test]
fn row_13_workload_strict() {
    check(
        BAR_WORKLOAD_STRICT,
        &[("legacy", "bar", Reset), ("foo", "bar", Mtls)],
    );
}

#[test]
fn rows_14_15_port_level_disable_on_target_port_opens_plaintext_and_clients_follow() {
    let t = check(
        &format!("{BAR_WORKLOAD_STRICT}  portLevelMtls:\n    80: {{mode: DISABLE}}\n"),
        &[("legacy", "bar", Plain), ("foo", "bar", Plain)],
    );
    let s = server(&t, "bar");
    assert_eq!(
        (s.mode, s.scope),
        (Some(ServerMode::Disable), Some(Scope::Port))
    );
}

#[test]
fn row_16_port_level_on_service_port_has_no_effect_and_is_reported() {
    let t = check(
        &format!("{BAR_WORKLOAD_STRICT}  portLevelMtls:\n    8000: {{mode: DISABLE}}\n"),
        &[("legacy", "bar", Reset)],
    );
    assert!(
        has_diag(&t, Severity::Warning, "bar/httpbin", "use 80"),
        "{:#?}",
        t.diagnostics
    );
}

#[test]
fn row_17_port_level_permissive_overrides_workload_strict() {
    check(
        &format!("{BAR_WORKLOAD_STRICT}  portLevelMtls:\n    80: {{mode: PERMISSIVE}}\n"),
        &[("legacy", "bar", Plain), ("foo", "bar", Mtls)],
    );
}

#[test]
fn port_level_unset_inherits_the_workload_mode() {
    let t = check(
        &format!("{BAR_WORKLOAD_STRICT}  portLevelMtls:\n    80: {{mode: UNSET}}\n"),
        &[("legacy", "bar", Reset)],
    );
    assert_eq!(server(&t, "bar").scope, Some(Scope::Workload));
}

#[test]
fn row_18_root_namespace_policy_with_selector_is_ignored_and_reported() {
    let t = check(
        &format!(
            "{MESH_STRICT}---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: httpbin, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  mtls: {{mode: DISABLE}}
"
        ),
        &[("legacy", "foo", Reset)],
    );
    assert!(has_diag(
        &t,
        Severity::Warning,
        "istio-system/httpbin",
        "root namespace"
    ));
}

#[test]
fn row_19_two_namespace_policies_oldest_wins() {
    let t = check(
        "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: b, namespace: foo, creationTimestamp: '2024-01-02T00:00:00Z'}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a, namespace: foo, creationTimestamp: '2024-01-01T00:00:00Z'}
spec: {mtls: {mode: STRICT}}
",
        &[("legacy", "foo", Reset)],
    );
    assert!(has_diag(
        &t,
        Severity::Warning,
        "foo/b",
        "older PeerAuthentication foo/a"
    ));
    assert_eq!(
        server(&t, "foo").by.as_ref().map(|b| b.name.as_str()),
        Some("a")
    );
}

#[test]
fn same_timestamp_falls_back_to_name_order() {
    let t = check(
        "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: zz, namespace: foo, creationTimestamp: '2024-01-01T00:00:00Z'}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: aa, namespace: foo, creationTimestamp: '2024-01-01T00:00:00Z'}
spec: {mtls: {mode: STRICT}}
",
        &[("legacy", "foo", Reset)],
    );
    assert!(has_diag(&t, Severity::Warning, "foo/zz", "oldest one wins"));
}

#[test]
fn row_20_two_workload_policies_oldest_wins_without_merging() {
    let t = check(
        "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: older, namespace: foo, creationTimestamp: '2024-01-01T00:00:00Z'}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: DISABLE}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: newer, namespace: foo, creationTimestamp: '2024-02-01T00:00:00Z'}
spec:
  selector: {matchLabels: {version: v1}}
  mtls: {mode: STRICT}
  portLevelMtls:
    80: {mode: STRICT}
",
        &[("legacy", "foo", Plain)],
    );
    assert!(has_diag(&t, Severity::Warning, "foo/newer", "not merged"));
}

#[test]
fn mesh_policy_in_a_non_default_root_namespace() {
    let policy = "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: mesh-config}
spec: {mtls: {mode: STRICT}}
";
    let t = check_root(
        policy,
        "mesh-config",
        &[("legacy", "foo", Reset), ("legacy", "bar", Reset)],
    );
    assert_eq!(server(&t, "foo").scope, Some(Scope::Mesh));
    // The same object in istio-system, when the root is elsewhere, is a
    // plain namespace policy for a namespace without workloads.
    check(
        &policy.replace("mesh-config", "istio-system2"),
        &[("legacy", "foo", Plain)],
    );
}

const FOO_STRICT: &str = "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec: {mtls: {mode: STRICT}}
";

#[test]
fn row_21_destination_rule_disable_towards_strict_server_fails_and_is_a_conflict() {
    let t = check(
        &format!(
            "{FOO_STRICT}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: bad-rule, namespace: foo}}
spec:
  host: httpbin.foo.svc.cluster.local
  trafficPolicy: {{tls: {{mode: DISABLE}}}}
"
        ),
        &[("foo", "foo", Upstream503), ("bar", "foo", Upstream503)],
    );
    assert!(
        has_diag(&t, Severity::Conflict, "foo/bad-rule", "plaintext"),
        "{:#?}",
        t.diagnostics
    );
}

#[test]
fn row_22_destination_rule_disable_towards_permissive_server_is_plaintext() {
    check(
        "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: plain, namespace: foo}
spec:
  host: httpbin
  trafficPolicy: {tls: {mode: DISABLE}}
",
        &[("foo", "foo", Plain), ("bar", "foo", Plain)],
    );
}

#[test]
fn row_23_istio_mutual_towards_disable_server_fails_and_is_a_conflict() {
    let t = check(
        "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: DISABLE}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: foo}
spec:
  host: httpbin.foo.svc.cluster.local
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
",
        &[("foo", "foo", Upstream503), ("legacy", "foo", Plain)],
    );
    assert!(has_diag(
        &t,
        Severity::Conflict,
        "foo/httpbin",
        "is DISABLE"
    ));
}

#[test]
fn row_24_istio_mutual_towards_workload_without_sidecar_fails_and_is_a_conflict() {
    let t = check(
        "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin-legacy, namespace: foo}
spec:
  host: httpbin.legacy.svc.cluster.local
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
",
        &[("foo", "legacy", Upstream503), ("bar", "legacy", Plain)],
    );
    assert!(has_diag(
        &t,
        Severity::Conflict,
        "foo/httpbin-legacy",
        "no sidecar"
    ));
}

#[test]
fn row_25_service_namespace_rule_beats_root_namespace_rule() {
    let policies = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: default, namespace: istio-system}
spec:
  host: '*.local'
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin-legacy, namespace: legacy}
spec:
  host: httpbin.legacy.svc.cluster.local
  trafficPolicy: {tls: {mode: DISABLE}}
";
    let t = check(policies, &[("foo", "legacy", Plain), ("foo", "bar", Mtls)]);
    let mesh = mesh_with(policies, "istio-system");
    let reports = t.client_ports(&mesh);
    let c = reports
        .iter()
        .find(|c| c.client_namespace == "foo" && c.service == "httpbin.legacy.svc.cluster.local")
        .expect("reported");
    assert_eq!(c.tls, "DISABLE");
    assert_eq!(c.by.as_ref().map(|b| b.namespace.as_str()), Some("legacy"));
}

#[test]
fn row_26_rule_in_client_namespace_is_not_on_other_clients_lookup_path() {
    check(
        "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: bar}
spec: {mtls: {mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin-bar, namespace: foo}
spec:
  host: httpbin.bar.svc.cluster.local
  trafficPolicy: {tls: {mode: DISABLE}}
",
        &[("foo", "bar", Upstream503), ("bar", "bar", Mtls)],
    );
}

#[test]
fn row_27_destination_rule_without_tls_leaves_auto_mtls_in_charge() {
    check(
        &format!(
            "{MESH_STRICT}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: lb, namespace: foo}}
spec:
  host: httpbin.foo.svc.cluster.local
  trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}
"
        ),
        &[("foo", "foo", Mtls)],
    );
}

#[test]
fn row_29_mesh_disable_with_workload_strict_still_upgrades_clients() {
    // Decision 3: unlike istiod (istio/istio#56084), auto mTLS looks at the
    // endpoint's own port mode, so clients send mTLS and succeed.
    check(
        "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: STRICT}
",
        &[
            ("bar", "foo", Mtls),
            ("legacy", "foo", Reset),
            ("bar", "bar", Plain),
        ],
    );
}

#[test]
fn export_to_dot_hides_a_rule_from_other_namespaces() {
    check(
        "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: private, namespace: bar}
spec:
  host: httpbin.bar.svc.cluster.local
  exportTo: ['.']
  trafficPolicy: {tls: {mode: DISABLE}}
",
        &[("bar", "bar", Plain), ("foo", "bar", Mtls)],
    );
}

#[test]
fn port_level_settings_replace_top_level_tls_for_that_port() {
    check(
        "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: foo}
spec:
  host: httpbin.foo.svc.cluster.local
  trafficPolicy:
    tls: {mode: DISABLE}
    portLevelSettings:
    - port: {number: 8000}
      loadBalancer: {simple: LEAST_REQUEST}
",
        // The port entry has no tls: auto mTLS, not the top-level DISABLE.
        &[("foo", "foo", Mtls)],
    );
}

#[test]
fn workload_selector_rule_applies_only_to_selected_clients() {
    let mesh = mesh_with(
        "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: sleep-only, namespace: foo}
spec:
  host: httpbin.bar.svc.cluster.local
  workloadSelector: {matchLabels: {app: sleep}}
  trafficPolicy: {tls: {mode: DISABLE}}
",
        "istio-system",
    );
    let t = translate(&mesh);
    assert_eq!(
        call(&mesh, &t, ("foo", "sleep-0"), ("httpbin", "bar"), 8000, 0),
        Plain
    );
    assert_eq!(
        call(&mesh, &t, ("foo", "httpbin-0"), ("httpbin", "bar"), 8000, 0),
        Mtls
    );
}

#[test]
fn row_34_partial_service_gets_mtls_only_to_sidecar_endpoints() {
    let mesh = mesh_with(
        "
apiVersion: v1
kind: Namespace
metadata: {name: partial}
---
apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: partial}
spec:
  selector: {app: httpbin}
  ports: [{name: http, port: 8000, targetPort: 80}]
---
apiVersion: v1
kind: Pod
metadata:
  name: with-sidecar
  namespace: partial
  labels: {app: httpbin, sidecar.istio.io/inject: 'true'}
spec:
  serviceAccountName: httpbin
  containers: [{name: httpbin, image: x, ports: [{containerPort: 80}]}]
status: {podIP: 127.30.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: without-sidecar, namespace: partial, labels: {app: httpbin}}
spec:
  containers: [{name: httpbin, image: x}]
status: {podIP: 127.30.0.2}
",
        "istio-system",
    );
    let t = translate(&mesh);
    assert_eq!(
        call(
            &mesh,
            &t,
            ("foo", "sleep-0"),
            ("httpbin", "partial"),
            8000,
            0
        ),
        Mtls
    );
    assert_eq!(
        call(
            &mesh,
            &t,
            ("foo", "sleep-0"),
            ("httpbin", "partial"),
            8000,
            1
        ),
        Plain
    );
}

#[test]
fn sidecar_opt_out_wins_over_namespace_injection() {
    let mesh = mesh_with(
        "
apiVersion: v1
kind: Pod
metadata:
  name: opted-out
  namespace: foo
  annotations: {sidecar.istio.io/inject: 'false'}
spec:
  containers: [{name: c, image: x}]
",
        "istio-system",
    );
    let (_, w) = mesh.workload("foo", "opted-out").expect("pod exists");
    assert!(!w.sidecar);
    assert!(translate(&mesh).proxy("foo", "opted-out").is_none());
}
