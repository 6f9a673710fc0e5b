//! DestinationRule fidelity with istiod, part two: the TLS contexts SIMPLE
//! and MUTUAL build, `credentialName` on sidecars, what `/debug/mtlsz`
//! shows for each decision, and `explain`. Each test names the Istio
//! function it mirrors (pilot/pkg/networking/core/cluster_tls.go,
//! pilot/pkg/xds/endpoints/mtls_checker.go).

mod support;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{data_source, transport_socket};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    UpstreamTlsContext, common_tls_context, subject_alt_name_matcher::SanType,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use prost::Message;
use support::dr::*;
use support::sim::{Outcome::*, call};
use translator::model::{Mesh, MeshConfig};
use translator::resolve::Sends;
use translator::{Severity, Translation, translate};

// --- TLS contexts --------------------------------------------------------------

fn cluster(t: &Translation, client: (&str, &str), name: &str) -> Cluster {
    let plan = t.proxy(client.0, client.1).expect("client sidecar");
    let r = plan.outbound_clusters.get(name).expect("cluster exists");
    Cluster::decode(r.body.value.as_slice()).expect("cluster decodes")
}

fn upstream_tls(c: &Cluster) -> Option<UpstreamTlsContext> {
    let socket = c.transport_socket.as_ref()?;
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
        return None;
    };
    Some(UpstreamTlsContext::decode(any.value.as_slice()).expect("tls context decodes"))
}

fn http_options(c: &Cluster) -> Option<HttpProtocolOptions> {
    let any = c
        .typed_extension_protocol_options
        .get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")?;
    Some(HttpProtocolOptions::decode(any.value.as_slice()).expect("options decode"))
}

const CLUSTER: &str = "outbound|8000||httpbin.legacy.svc.cluster.local";

fn simple_to_legacy(tls: &str, config: MeshConfig) -> (Mesh, Translation) {
    let policies = dr(
        "foo",
        "ext",
        T1,
        &format!("  host: httpbin.legacy.svc.cluster.local\n  trafficPolicy: {{tls: {tls}}}"),
    );
    let mesh = mesh_with_config(&policies, config);
    let t = translate(&mesh);
    (mesh, t)
}

// constructUpstreamTLS: without caCertificates the CA is `file-root:system`
// (here the configured trust bundle); setAutoSniAndAutoSanValidation turns
// on auto_sni and auto_san_validation when sni and SANs are not set.
#[test]
fn simple_without_ca_certificates_verifies_against_the_trust_bundle() {
    let config = MeshConfig {
        trust_bundle: "/etc/pki/tls/certs/ca-bundle.crt".into(),
        ..Default::default()
    };
    let (_, t) = simple_to_legacy("{mode: SIMPLE}", config);
    let c = cluster(&t, ("foo", "sleep-0"), CLUSTER);
    let ctx = upstream_tls(&c).expect("TLS is originated");
    let common = ctx.common_tls_context.expect("common context");
    let Some(common_tls_context::ValidationContextType::ValidationContext(v)) =
        common.validation_context_type
    else {
        panic!("a validation context");
    };
    let ca = v.trusted_ca.and_then(|d| d.specifier);
    assert_eq!(
        ca,
        Some(data_source::Specifier::Filename(
            "/etc/pki/tls/certs/ca-bundle.crt".into()
        ))
    );
    assert_eq!(ctx.sni, "");
    let up = http_options(&c)
        .and_then(|o| o.upstream_http_protocol_options)
        .expect("auto SNI options");
    assert!(up.auto_sni && up.auto_san_validation);
}

// constructUpstreamTLS: insecureSkipVerify leaves an empty validation
// context, and setAutoSniAndAutoSanValidation no SAN validation.
#[test]
fn insecure_skip_verify_turns_verification_off() {
    let (_, t) = simple_to_legacy(
        "{mode: SIMPLE, insecureSkipVerify: true}",
        MeshConfig::default(),
    );
    let c = cluster(&t, ("foo", "sleep-0"), CLUSTER);
    let common = upstream_tls(&c)
        .and_then(|x| x.common_tls_context)
        .expect("TLS");
    let Some(common_tls_context::ValidationContextType::ValidationContext(v)) =
        common.validation_context_type
    else {
        panic!("a validation context");
    };
    assert_eq!(v, Default::default(), "nothing is verified");
    let up = http_options(&c)
        .and_then(|o| o.upstream_http_protocol_options)
        .expect("auto SNI");
    assert!(up.auto_sni && !up.auto_san_validation);
}

// constructUpstreamTLS: the rule's sni and subjectAltNames reach the
// context, caCertificates replaces the trust bundle, MUTUAL files become the
// client certificate, and no auto SNI is set.
#[test]
fn sni_sans_ca_and_client_certificate_reach_the_upstream_context() {
    let (_, t) = simple_to_legacy(
        "{mode: MUTUAL, sni: api.example.com, subjectAltNames: [api.example.com, 'spiffe://ext/sa/api', 10.0.0.1], caCertificates: /etc/ca.pem, clientCertificate: /etc/c.pem, privateKey: /etc/k.pem}",
        MeshConfig::default(),
    );
    let c = cluster(&t, ("foo", "sleep-0"), CLUSTER);
    let ctx = upstream_tls(&c).expect("TLS");
    assert_eq!(ctx.sni, "api.example.com");
    let common = ctx.common_tls_context.expect("common");
    let cert = common.tls_certificates.first().expect("client certificate");
    assert_eq!(
        cert.certificate_chain.clone().and_then(|d| d.specifier),
        Some(data_source::Specifier::Filename("/etc/c.pem".into()))
    );
    let Some(common_tls_context::ValidationContextType::ValidationContext(v)) =
        common.validation_context_type
    else {
        panic!("a validation context");
    };
    assert_eq!(
        v.trusted_ca.and_then(|d| d.specifier),
        Some(data_source::Specifier::Filename("/etc/ca.pem".into()))
    );
    let sans: Vec<(i32, String)> = v
        .match_typed_subject_alt_names
        .iter()
        .map(|m| {
            let pattern = m.matcher.as_ref().and_then(|s| s.match_pattern.clone());
            let text = match pattern {
                Some(envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Exact(e)) => e,
                other => panic!("exact match expected: {other:?}"),
            };
            (m.san_type, text)
        })
        .collect();
    assert_eq!(
        sans,
        [
            (SanType::Dns as i32, "api.example.com".to_string()),
            (SanType::Uri as i32, "spiffe://ext/sa/api".to_string()),
            (SanType::IpAddress as i32, "10.0.0.1".to_string()),
        ]
    );
    assert!(
        http_options(&c).is_none(),
        "no auto SNI with an explicit sni"
    );
}

// buildUpstreamClusterTLSContext's "hack to avoid egress sds cluster config
// generation for sidecar": credentialName with SIMPLE/MUTUAL on a rule
// without workloadSelector gives sidecars no TLS at all.
#[test]
fn credential_name_without_selector_builds_no_tls_for_sidecars() {
    let (mesh, t) = simple_to_legacy(
        "{mode: MUTUAL, credentialName: client-cert}",
        MeshConfig::default(),
    );
    let c = cluster(&t, ("foo", "sleep-0"), CLUSTER);
    assert!(c.transport_socket.is_none() && c.transport_socket_matches.is_empty());
    let r = row(&mesh, &t, "foo/sleep-0", "httpbin.legacy", 8000);
    assert_eq!(r.endpoints[0].sends, Sends::Plaintext);
    assert!(
        r.note
            .as_deref()
            .is_some_and(|n| n.contains("ignored for sidecars"))
    );
    assert!(t.diagnostics.iter().any(|d| d.severity == Severity::Warning
        && d.field.as_deref() == Some("spec.trafficPolicy.tls.credentialName")
        && d.message.contains("send plaintext")));
    assert_eq!(
        call(
            &mesh,
            &t,
            ("foo", "sleep-0"),
            ("httpbin", "legacy"),
            8000,
            0
        ),
        Plain
    );
}

// With a workloadSelector istiod keeps credentialName for sidecars and sends
// SDS configs for `kubernetes://NAME` and `NAME-cacert` (its
// ApplyCustomSDSToClientCommonTLSContext); this control plane serves no
// Secrets yet, and says so.
#[test]
fn credential_name_with_selector_asks_for_the_secret_over_sds() {
    let policies = dr(
        "foo",
        "ext",
        T1,
        "  host: httpbin.legacy.svc.cluster.local\n  workloadSelector: {matchLabels: {app: sleep}}\n  trafficPolicy: {tls: {mode: MUTUAL, credentialName: client-cert}}",
    );
    let mesh = mesh_with(&policies);
    let t = translate(&mesh);
    let c = cluster(&t, ("foo", "sleep-0"), CLUSTER);
    let common = upstream_tls(&c)
        .and_then(|x| x.common_tls_context)
        .expect("TLS");
    let names: Vec<&str> = common
        .tls_certificate_sds_secret_configs
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["kubernetes://client-cert"]);
    let Some(common_tls_context::ValidationContextType::CombinedValidationContext(v)) =
        common.validation_context_type
    else {
        panic!("combined validation context");
    };
    assert_eq!(
        v.validation_context_sds_secret_config.map(|s| s.name),
        Some("kubernetes://client-cert-cacert".into())
    );
    let r = row(&mesh, &t, "foo/sleep-0", "httpbin.legacy", 8000);
    assert_eq!(r.endpoints[0].sends, Sends::Mutual);
    assert!(
        r.note
            .as_deref()
            .is_some_and(|n| n.contains("does not serve"))
    );
}

// --- what /debug/mtlsz shows ---------------------------------------------------

// Every auto mTLS decision names the endpoint fact (sidecar or not) and the
// mode the server resolved for the target port (mtls_checker.go reads the
// same two).
#[test]
fn auto_mtls_rows_name_the_endpoint_fact_and_the_server_mode() {
    let mesh = mesh_with(
        "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin, namespace: bar}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: STRICT}
  portLevelMtls: {80: {mode: DISABLE}}
",
    );
    let t = translate(&mesh);
    let bar = row(&mesh, &t, "foo/sleep-0", "httpbin.bar", 8000);
    let e = &bar.endpoints[0];
    assert_eq!(
        (e.sidecar, e.server_mode, e.sends),
        (
            true,
            Some(translator::resolve::ServerMode::Disable),
            Sends::Plaintext
        )
    );
    assert!(e.why.contains("port 80 is DISABLE"), "{}", e.why);
    let legacy = row(&mesh, &t, "foo/sleep-0", "httpbin.legacy", 8000);
    let e = &legacy.endpoints[0];
    assert_eq!((e.sidecar, e.server_mode), (false, None));
    assert!(e.why.contains("no sidecar"), "{}", e.why);
}

// --- explain -----------------------------------------------------------------------

#[test]
fn explain_predicts_a_reset_for_plaintext_to_strict_and_names_the_policy() {
    let mesh = mesh_with(
        "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
",
    );
    let t = translate(&mesh);
    let e = translator::explain::explain(&mesh, &t, "sleep.legacy", "httpbin.bar:8000")
        .expect("explains");
    assert!(!e.client.sidecar);
    assert_eq!(e.outcome, "reset: server STRICT, client sends plaintext");
    assert_eq!(
        e.reason.as_deref(),
        Some(
            "bar/httpbin-0:80 accepts only mTLS (PeerAuthentication istio-system/default, mesh-wide) and legacy/sleep has no sidecar, so it sends plaintext"
        )
    );
    let ok =
        translator::explain::explain(&mesh, &t, "sleep.foo", "httpbin.bar:8000").expect("explains");
    assert_eq!((ok.outcome.as_str(), ok.reason), ("200 mTLS", None));
    let text = translator::explain::render_text(&e);
    assert!(
        text.contains("OUTCOME\n  reset: server STRICT, client sends plaintext"),
        "{text}"
    );
    // The JSON `/debug/explain` returns reads back the same.
    let json = serde_json::to_string(&e).expect("serializes");
    let back: translator::explain::Explanation = serde_json::from_str(&json).expect("parses");
    assert_eq!(back, e);
}

#[test]
fn explain_names_the_rule_and_the_server_policy_of_a_503() {
    let mesh = mesh_with(
        "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec: {mtls: {mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bad-rule, namespace: foo}
spec:
  host: httpbin.foo.svc.cluster.local
  trafficPolicy: {tls: {mode: DISABLE}}
",
    );
    let t = translate(&mesh);
    let e =
        translator::explain::explain(&mesh, &t, "sleep.bar", "httpbin.foo:8000").expect("explains");
    assert_eq!(
        e.outcome,
        "503: server STRICT, client sidecar sends plaintext"
    );
    let reason = e.reason.expect("a reason");
    assert!(
        reason.contains("DestinationRule foo/bad-rule") && reason.contains("accepts only mTLS"),
        "{reason}"
    );
    // Found in the service's namespace, after nothing in the client's.
    assert_eq!(e.lookup.len(), 2);
    assert!(e.lookup[0].host.is_none() && e.lookup[1].ended);
    assert_eq!(e.lookup[1].candidates[0].verdict, "applies");
}

#[test]
fn explain_refuses_what_does_not_exist_naming_it() {
    let mesh = mesh_with("");
    let t = translate(&mesh);
    let err = |from: &str, to: &str| {
        translator::explain::explain(&mesh, &t, from, to)
            .expect_err("an error")
            .to_string()
    };
    assert_eq!(
        err("nobody.foo", "httpbin.foo:8000"),
        "--from \"nobody.foo\": no workload nobody in namespace foo"
    );
    assert_eq!(
        err("sleep.foo", "httpbin.foo:9"),
        "--to \"httpbin.foo:9\": service httpbin.foo has no port 9 (ports: 8000)"
    );
    assert!(err("sleep", "httpbin.foo:8000").contains("expected WORKLOAD.NAMESPACE"));
    assert!(err("sleep.foo", "httpbin.foo").contains("expected SERVICE.NAMESPACE:PORT"));
}

// constructUpstreamTLS: "client certificate and private key must not be
// empty" fails the context and istiod's applyUpstreamTLSSettings leaves the
// cluster without TLS. Validation refuses such a rule, so it can only come
// from a source that does not validate (here: the builder fed directly).
#[test]
fn mutual_without_a_client_certificate_from_an_unvalidated_source_builds_no_tls() {
    use translator::model::{ClientTls, ClientTlsMode, DestinationRule, PolicyMeta, TrafficPolicy};
    let base = mesh_with("");
    let mut rules = base.destination_rules.clone();
    rules.push(DestinationRule {
        meta: PolicyMeta {
            namespace: "foo".into(),
            name: "ext".into(),
            created: 0,
        },
        host: "httpbin.legacy.svc.cluster.local".into(),
        export_to: Vec::new(),
        workload_selector: None,
        traffic_policy: Some(TrafficPolicy {
            tls: Some(ClientTls {
                mode: Some(ClientTlsMode::Mutual),
                ..Default::default()
            }),
            port_tls: Default::default(),
        }),
        subsets: Vec::new(),
    });
    let mesh = Mesh::new(
        base.config.clone(),
        base.namespaces.values().cloned().collect(),
        base.services.clone(),
        base.workloads.clone(),
        base.peer_authentications.clone(),
        rules,
    );
    let t = translate(&mesh);
    let c = cluster(&t, ("foo", "sleep-0"), CLUSTER);
    assert!(c.transport_socket.is_none());
    let r = row(&mesh, &t, "foo/sleep-0", "httpbin.legacy", 8000);
    assert_eq!(r.endpoints[0].sends, Sends::Plaintext);
    assert!(
        r.note
            .as_deref()
            .is_some_and(|n| n.contains("without clientCertificate"))
    );
}
