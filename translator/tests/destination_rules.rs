//! DestinationRule fidelity with istiod, part one: merging rules for one
//! host, `exportTo`, and the lookup order. Each test names the Istio
//! function or test it mirrors (pilot/pkg/model/push_context.go,
//! destination_rule.go, sidecar.go). Inputs are the article's base mesh
//! (sleep and httpbin in foo and bar with sidecars, in legacy without) plus
//! the YAML of each test; outcomes go through `support::sim`.
//! Part two, the TLS the rules make clients send, is `client_tls.rs`.

mod support;

use support::dr::*;
use support::sim::{Outcome::*, call};
use translator::translate;

// --- merging ---------------------------------------------------------------

// Mirrors TestSetDestinationRuleMerging (push_context_test.go) and
// mergeDestinationRule: two rules for one host in one namespace make one,
// the older the base, the subsets of both (new names only); a rule with
// another exportTo stays apart.
#[test]
fn rules_for_one_host_merge_with_the_oldest_as_base_and_new_subsets_added() {
    let host = "  host: httpbin.foo.svc.cluster.local\n";
    let policies = [
        dr(
            "foo",
            "rule2",
            T2,
            &format!("{host}  subsets: [{{name: subset3}}, {{name: subset1}}]"),
        ),
        dr(
            "foo",
            "rule1",
            T1,
            &format!("{host}  subsets: [{{name: subset1}}, {{name: subset2}}]"),
        ),
        dr(
            "foo",
            "rule3",
            T3,
            &format!("{host}  exportTo: [bar]\n  subsets: [{{name: subset5}}]"),
        ),
    ]
    .concat();
    let mesh = mesh_with(&policies);
    let t = translate(&mesh);
    assert_eq!(
        rules_of(&mesh, &t, "foo/sleep-0", "httpbin.foo"),
        ["foo/rule1", "foo/rule2"]
    );
    // rule3 is exported to bar only, with its own exportTo: not merged.
    assert_eq!(
        rules_of(&mesh, &t, "bar/sleep-0", "httpbin.foo"),
        ["foo/rule3"]
    );
    let e =
        translator::explain::explain(&mesh, &t, "sleep.foo", "httpbin.foo:8000").expect("explains");
    let applied = e.destination_rule.expect("a rule applies");
    assert_eq!(applied.subsets, ["subset1", "subset2", "subset3"]);
    // The dropped duplicate is reported against the newer rule.
    assert!(t.diagnostics.iter().any(|d| {
        d.object.name == "rule2"
            && d.message.contains("subset \"subset1\" is dropped")
            && d.message
                .contains("DestinationRule foo/rule1 already defines it")
    }));
}

// mergeDestinationRule step 2: a base without trafficPolicy adopts the
// newer rule's; a base with one (even without tls) keeps its own.
#[test]
fn a_base_without_traffic_policy_adopts_the_newer_rules_and_one_with_keeps_its_own() {
    let host = "  host: httpbin.foo.svc.cluster.local\n";
    let adopt = [
        dr(
            "foo",
            "old",
            T1,
            &format!("{host}  subsets: [{{name: v1}}]"),
        ),
        dr(
            "foo",
            "new",
            T2,
            &format!("{host}  trafficPolicy: {{tls: {{mode: DISABLE}}}}"),
        ),
    ]
    .concat();
    let mesh = mesh_with(&adopt);
    let t = translate(&mesh);
    let r = row(&mesh, &t, "foo/sleep-0", "httpbin.foo", 8000);
    assert_eq!(r.tls, "DISABLE");
    assert_eq!(r.by.map(|b| b.name).as_deref(), Some("new"));
    assert_eq!(
        call(&mesh, &t, ("foo", "sleep-0"), ("httpbin", "foo"), 8000, 0),
        Plain
    );

    let keep = [
        dr(
            "foo",
            "old",
            T1,
            &format!("{host}  trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}"),
        ),
        dr(
            "foo",
            "new",
            T2,
            &format!("{host}  trafficPolicy: {{tls: {{mode: DISABLE}}}}"),
        ),
    ]
    .concat();
    let mesh = mesh_with(&keep);
    let t = translate(&mesh);
    let r = row(&mesh, &t, "foo/sleep-0", "httpbin.foo", 8000);
    assert_eq!((r.tls.as_str(), r.rules.len()), ("AUTO", 2));
    assert_eq!(
        call(&mesh, &t, ("foo", "sleep-0"), ("httpbin", "foo"), 8000, 0),
        Mtls
    );
}

// sortConfigBySelectorAndCreationTime: equal timestamps fall back to the
// name, so `a` is the base and its policy wins.
#[test]
fn equal_creation_times_make_the_first_name_the_base() {
    let host = "  host: httpbin.foo.svc.cluster.local\n";
    let policies = [
        dr(
            "foo",
            "b",
            T1,
            &format!("{host}  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}"),
        ),
        dr(
            "foo",
            "a",
            T1,
            &format!("{host}  trafficPolicy: {{tls: {{mode: DISABLE}}}}"),
        ),
    ]
    .concat();
    let mesh = mesh_with(&policies);
    let t = translate(&mesh);
    assert_eq!(
        rules_of(&mesh, &t, "foo/sleep-0", "httpbin.foo"),
        ["foo/a", "foo/b"]
    );
    assert_eq!(tls_of(&mesh, &t, "foo/sleep-0", "httpbin.foo"), "DISABLE");
}

// Mirrors TestSetDestinationRuleWithWorkloadSelector: selector rules stay
// apart (two with the same selector merge), and a catch-all rule whose
// exportTo is a superset of theirs is merged into each as their parent
// while staying a rule of its own for everyone else.
#[test]
fn selector_rules_stay_apart_and_merge_the_catch_all_as_their_parent() {
    let host = "  host: httpbin.foo.svc.cluster.local\n";
    let policies = [
        CLIENTS.to_string(),
        dr(
            "foo",
            "nsrule1",
            T2,
            &format!(
                "{host}  exportTo: [.]\n  workloadSelector: {{matchLabels: {{app: app1}}}}\n  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}"
            ),
        ),
        dr(
            "foo",
            "nsrule2",
            T3,
            &format!(
                "{host}  workloadSelector: {{matchLabels: {{app: app2}}}}\n  subsets: [{{name: v2}}]"
            ),
        ),
        dr(
            "foo",
            "nsrule3",
            T3,
            &format!(
                "{host}  workloadSelector: {{matchLabels: {{app: app2}}}}\n  subsets: [{{name: v3}}]"
            ),
        ),
        dr(
            "foo",
            "nsrule4",
            T1,
            &format!("{host}  exportTo: [., bar]\n  trafficPolicy: {{tls: {{mode: DISABLE}}}}"),
        ),
    ]
    .concat();
    let mesh = mesh_with(&policies);
    let t = translate(&mesh);
    assert_eq!(
        rules_of(&mesh, &t, "foo/app1", "httpbin.foo"),
        ["foo/nsrule1", "foo/nsrule4"]
    );
    assert_eq!(tls_of(&mesh, &t, "foo/app1", "httpbin.foo"), "ISTIO_MUTUAL");
    // nsrule2 has no trafficPolicy: it adopts its parent's.
    assert_eq!(
        rules_of(&mesh, &t, "foo/app2", "httpbin.foo"),
        ["foo/nsrule2", "foo/nsrule3", "foo/nsrule4"]
    );
    assert_eq!(tls_of(&mesh, &t, "foo/app2", "httpbin.foo"), "DISABLE");
    assert_eq!(
        rules_of(&mesh, &t, "foo/sleep-0", "httpbin.foo"),
        ["foo/nsrule4"]
    );
    // "workload specific DR should not be exported".
    assert_eq!(
        rules_of(&mesh, &t, "bar/sleep-0", "httpbin.foo"),
        ["foo/nsrule4"]
    );
    // /debug/mtlsz lists the clients each selector rule selects.
    let r = row(&mesh, &t, "foo/app2", "httpbin.foo", 8000);
    assert_eq!(r.clients, ["foo/app2"]);
    let names: Vec<&str> = r.selected_by.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["nsrule2", "nsrule3"]);
    assert!(
        row(&mesh, &t, "foo/sleep-0", "httpbin.foo", 8000)
            .selected_by
            .is_empty()
    );
}

// istio/istio#58322 (open): with equal exportTo (`.`), istiod merges the
// catch-all into the selector rule and drops it as a rule of its own, so
// clients the selector does not match get no rule. We keep it.
#[test]
fn a_catch_all_with_the_selector_rules_export_to_still_applies_to_other_clients() {
    let host = "  host: httpbin.foo.svc.cluster.local\n";
    let policies = [
        CLIENTS.to_string(),
        dr(
            "foo",
            "client1",
            T1,
            &format!(
                "{host}  exportTo: [.]\n  workloadSelector: {{matchLabels: {{app: app1}}}}\n  trafficPolicy: {{loadBalancer: {{simple: LEAST_REQUEST}}}}"
            ),
        ),
        dr(
            "foo",
            "all",
            T2,
            &format!("{host}  exportTo: [.]\n  trafficPolicy: {{tls: {{mode: DISABLE}}}}"),
        ),
    ]
    .concat();
    let mesh = mesh_with(&policies);
    let t = translate(&mesh);
    assert_eq!(
        rules_of(&mesh, &t, "foo/app1", "httpbin.foo"),
        ["foo/client1", "foo/all"]
    );
    assert_eq!(tls_of(&mesh, &t, "foo/app1", "httpbin.foo"), "AUTO");
    assert_eq!(
        rules_of(&mesh, &t, "foo/sleep-0", "httpbin.foo"),
        ["foo/all"]
    );
    assert_eq!(tls_of(&mesh, &t, "foo/sleep-0", "httpbin.foo"), "DISABLE");
}

// ENABLE_ENHANCED_DESTINATIONRULE_MERGE (on by default): rules whose
// exportTo differ are not merged; where both apply, the last catch-all
// entry for the host wins (SidecarScope.DestinationRule).
#[test]
fn rules_with_different_export_to_stay_apart() {
    let host = "  host: httpbin.foo.svc.cluster.local\n";
    let policies = [
        dr(
            "foo",
            "public",
            T1,
            &format!("{host}  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}"),
        ),
        dr(
            "foo",
            "to-bar",
            T2,
            &format!("{host}  exportTo: [bar]\n  trafficPolicy: {{tls: {{mode: DISABLE}}}}"),
        ),
    ]
    .concat();
    let mesh = mesh_with(&policies);
    let t = translate(&mesh);
    assert_eq!(
        rules_of(&mesh, &t, "foo/sleep-0", "httpbin.foo"),
        ["foo/public"]
    );
    assert_eq!(
        rules_of(&mesh, &t, "bar/sleep-0", "httpbin.foo"),
        ["foo/to-bar"]
    );
    assert_eq!(tls_of(&mesh, &t, "bar/sleep-0", "httpbin.foo"), "DISABLE");
}

// --- exportTo ----------------------------------------------------------------

// setDestinationRules: a rule is in its own namespace's index only when
// exportTo is empty or holds `*`, `.` or the namespace itself.
#[test]
fn export_to_without_dot_or_the_own_namespace_hides_the_rule_at_home() {
    let host = "  host: httpbin.bar.svc.cluster.local\n";
    for (export_to, foo_sees, bar_sees) in [
        ("[foo]", true, false),
        ("['~']", false, false),
        ("[.]", false, true),
        ("[bar]", false, true),
        ("['*']", true, true),
        ("[., foo]", true, true),
    ] {
        let policies = dr(
            "bar",
            "r",
            T1,
            &format!("{host}  exportTo: {export_to}\n  trafficPolicy: {{tls: {{mode: DISABLE}}}}"),
        );
        let mesh = mesh_with(&policies);
        let t = translate(&mesh);
        for (client, sees) in [("foo/sleep-0", foo_sees), ("bar/sleep-0", bar_sees)] {
            let want = if sees { "DISABLE" } else { "AUTO" };
            assert_eq!(
                tls_of(&mesh, &t, client, "httpbin.bar"),
                want,
                "exportTo {export_to}, client {client}"
            );
        }
        if export_to == "['~']" {
            assert!(
                t.diagnostics
                    .iter()
                    .any(|d| d.field.as_deref() == Some("spec.exportTo")
                        && d.message.contains("no namespace, its own included")),
                "{:?}",
                t.diagnostics
            );
        }
    }
}

// --- lookup order ---------------------------------------------------------------

// Mirrors TestSetDestinationRuleWithExportTo: a client in the root
// namespace reads the root namespace's private rules first (rule1 with
// exportTo `.` beats the public rule4 there), others get rule4.
#[test]
fn a_client_in_the_root_namespace_reads_private_root_rules_first() {
    let host = "  host: httpbin.foo.svc.cluster.local\n";
    let policies = [
        root_client().to_string(),
        dr(
            "istio-system",
            "rule4",
            T1,
            &format!("{host}  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}"),
        ),
        dr(
            "istio-system",
            "rule1",
            T2,
            &format!("{host}  exportTo: [.]\n  trafficPolicy: {{tls: {{mode: DISABLE}}}}"),
        ),
    ]
    .concat();
    let mesh = mesh_with(&policies);
    let t = translate(&mesh);
    assert_eq!(
        rules_of(&mesh, &t, "istio-system/probe", "httpbin.foo"),
        ["istio-system/rule1"]
    );
    assert_eq!(
        rules_of(&mesh, &t, "bar/sleep-0", "httpbin.foo"),
        ["istio-system/rule4"]
    );
    let e = translator::explain::explain(&mesh, &t, "probe.istio-system", "httpbin.foo:8000")
        .expect("explains");
    assert!(e.lookup[0].searched.contains("private rules"), "{e:?}");
    assert!(e.lookup[0].ended);
}

// TestSetDestinationRuleWithExportTo, "dr in the svc ns takes effect on
// proxy in root ns", and its last case: a rule neither in the client's nor
// the service's namespace does not.
#[test]
fn a_client_in_the_root_namespace_uses_the_service_namespace_rule_exported_to_it() {
    let policies = [
        root_client().to_string(),
        dr(
            "foo",
            "to-root",
            T1,
            "  host: httpbin.foo.svc.cluster.local\n  exportTo: [istio-system]\n  trafficPolicy: {tls: {mode: DISABLE}}",
        ),
        dr(
            "legacy",
            "elsewhere",
            T1,
            "  host: httpbin.bar.svc.cluster.local\n  exportTo: [istio-system]\n  trafficPolicy: {tls: {mode: DISABLE}}",
        ),
    ]
    .concat();
    let mesh = mesh_with(&policies);
    let t = translate(&mesh);
    assert_eq!(
        tls_of(&mesh, &t, "istio-system/probe", "httpbin.foo"),
        "DISABLE"
    );
    assert_eq!(
        tls_of(&mesh, &t, "istio-system/probe", "httpbin.bar"),
        "AUTO"
    );
}

// PushContext.destinationRule then SidecarScope.DestinationRule: a host
// match in the client's namespace ends the search even when its only rule
// selects other workloads, so the service namespace's rule is not used.
#[test]
fn a_selector_rule_for_other_clients_in_the_client_namespace_ends_the_lookup() {
    let policies = [
        CLIENTS.to_string(),
        dr(
            "foo",
            "for-app1",
            T1,
            "  host: httpbin.bar.svc.cluster.local\n  workloadSelector: {matchLabels: {app: app1}}\n  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}",
        ),
        dr(
            "bar",
            "public",
            T1,
            "  host: httpbin.bar.svc.cluster.local\n  trafficPolicy: {tls: {mode: DISABLE}}",
        ),
    ]
    .concat();
    let mesh = mesh_with(&policies);
    let t = translate(&mesh);
    assert_eq!(tls_of(&mesh, &t, "foo/app1", "httpbin.bar"), "ISTIO_MUTUAL");
    assert_eq!(tls_of(&mesh, &t, "foo/sleep-0", "httpbin.bar"), "AUTO");
    assert_eq!(tls_of(&mesh, &t, "bar/sleep-0", "httpbin.bar"), "DISABLE");
}

// setDestinationRules + mergeDestinationRule + SidecarScope.DestinationRule
// for a client in the root namespace with several private catch-all rules,
// followed step by step: `a` (exportTo `.`) is the base; `b` (exported to
// `istio-system` by name: private too, but another exportTo) stays apart;
// `c` (exportTo `.`) merges into `a`'s entry, and since the last entry it
// visits (`b`'s) does not take it, it is also kept on its own. The last
// entry without selector applies: `c` alone, without trafficPolicy, so auto
// mTLS. Istio's merge gives exactly this.
#[test]
fn several_private_root_rules_for_a_root_client_merge_as_istiod_merges_them() {
    let host = "  host: httpbin.foo.svc.cluster.local\n";
    let policies = [
        root_client().to_string(),
        dr(
            "istio-system",
            "a",
            T1,
            &format!("{host}  exportTo: [.]\n  trafficPolicy: {{tls: {{mode: DISABLE}}}}"),
        ),
        dr(
            "istio-system",
            "c",
            T3,
            &format!("{host}  exportTo: [.]\n  subsets: [{{name: v1}}]"),
        ),
        dr(
            "istio-system",
            "b",
            T2,
            &format!(
                "{host}  exportTo: [istio-system]\n  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}"
            ),
        ),
    ]
    .concat();
    let mesh = mesh_with(&policies);
    let t = translate(&mesh);
    assert_eq!(
        rules_of(&mesh, &t, "istio-system/probe", "httpbin.foo"),
        ["istio-system/c"]
    );
    assert_eq!(
        tls_of(&mesh, &t, "istio-system/probe", "httpbin.foo"),
        "AUTO"
    );
    let e = translator::explain::explain(&mesh, &t, "probe.istio-system", "httpbin.foo:8000")
        .expect("explains");
    let verdicts: Vec<(Vec<String>, &str)> = e.lookup[0]
        .candidates
        .iter()
        .map(|c| {
            (
                c.rules.iter().map(|r| r.name.clone()).collect(),
                c.verdict.as_str(),
            )
        })
        .collect();
    let later = "a later entry for the same host applies (istiod takes the last one)";
    assert_eq!(
        verdicts,
        [
            (vec!["a".to_string(), "c".to_string()], later),
            (vec!["b".to_string()], later),
            (vec!["c".to_string()], "applies"),
        ]
    );
    // Clients elsewhere see none of them: all are private to istio-system.
    assert_eq!(tls_of(&mesh, &t, "foo/sleep-0", "httpbin.foo"), "AUTO");
}
