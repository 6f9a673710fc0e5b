//! Hostile input: every case is a clear error naming the document, the field
//! and the reason, never a panic, a stack overflow, a hang or a runaway
//! allocation; the documents around a bad one still load where the parser
//! can go on.

use std::time::{Duration, Instant};

use crds::validate::MAX_REPLICAS;
use crds::yaml::{MAX_DEPTH, MAX_VALUES};
use crds::{Object, ObjectError, parse_documents};

const STACK: usize = 512 * 1024;

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: after}\n";

/// Parses `text` on a thread with a quarter of a tokio worker's stack, so a
/// parser or walker that recursed once per nesting level would overflow here
/// rather than pass by luck, and within `limit`.
fn parse_bounded(text: String, limit: Duration) -> (Vec<crds::Parsed>, Vec<ObjectError>) {
    let started = Instant::now();
    let out = std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(move || parse_documents(&text, "hostile.yaml"))
        .expect("spawn parser thread")
        .join()
        .expect("parse_documents does not panic");
    assert!(
        started.elapsed() < limit,
        "took {:?}, more than {limit:?}",
        started.elapsed()
    );
    out
}

fn one_error(errors: &[ObjectError]) -> &ObjectError {
    let [error] = errors else {
        panic!("expected exactly one error: {errors:#?}")
    };
    error
}

fn names(parsed: &[crds::Parsed]) -> Vec<String> {
    parsed
        .iter()
        .filter_map(|p| p.object.metadata()?.name.clone())
        .collect()
}

#[test]
fn ten_thousand_nested_flow_lists_are_an_error_not_a_stack_overflow() {
    let deep = format!("{}{}\n", "[".repeat(10_000), "]".repeat(10_000));
    let (parsed, errors) =
        parse_bounded(format!("{deep}---\n{NAMESPACE}"), Duration::from_secs(10));
    let error = one_error(&errors);
    assert_eq!(error.index, 0);
    assert_eq!(
        error.reason,
        format!("nested more than {MAX_DEPTH} levels deep")
    );
    let field = error
        .field
        .as_deref()
        .expect("the path where it got too deep");
    assert!(field.starts_with("[0][0][0]"), "{field}");
    assert!(
        field.ends_with(&format!("... ({MAX_DEPTH} levels)")),
        "{field}"
    );
    // The document was read to its end, so the next one loads.
    assert_eq!(names(&parsed), ["after"]);
}

#[test]
fn ten_thousand_nested_flow_maps_are_an_error_not_a_stack_overflow() {
    let deep = format!("a: {}1{}\n", "{a: ".repeat(10_000), "}".repeat(10_000));
    let (parsed, errors) =
        parse_bounded(format!("{deep}---\n{NAMESPACE}"), Duration::from_secs(10));
    let error = one_error(&errors);
    assert_eq!(
        error.reason,
        format!("nested more than {MAX_DEPTH} levels deep")
    );
    assert!(
        error
            .field
            .as_deref()
            .is_some_and(|f| f.starts_with("a.a.a")),
        "{error}"
    );
    assert_eq!(names(&parsed), ["after"]);
}

#[test]
fn unclosed_nesting_is_a_syntax_error_that_ends_the_file() {
    for open in ["[", "{a: ", "[{a: "] {
        let text = format!("{}\n---\n{NAMESPACE}", open.repeat(10_000));
        let (parsed, errors) = parse_bounded(text, Duration::from_secs(10));
        let error = one_error(&errors);
        assert!(
            error
                .reason
                .contains("later documents in this file were not read"),
            "{open}: {error}"
        );
        assert_eq!(parsed, [], "{open}");
    }
}

#[test]
fn deeply_nested_block_maps_in_a_policy_name_the_field() {
    // 1,000 levels of block mapping below spec.mtls.
    let mut text = String::from(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: deep, namespace: foo}\nspec:\n  mtls:\n",
    );
    for level in 0..1_000 {
        text.push_str(&" ".repeat(4 + level));
        text.push_str("x:\n");
    }
    text.push_str(&format!("---\n{NAMESPACE}"));
    let (parsed, errors) = parse_bounded(text, Duration::from_secs(10));
    let error = one_error(&errors);
    assert_eq!(error.index, 0);
    let field = error.field.as_deref().expect("field");
    assert!(field.starts_with("spec.mtls.x.x"), "{field}");
    assert!(
        error
            .to_string()
            .contains(&format!("nested more than {MAX_DEPTH} levels deep"))
    );
    assert_eq!(names(&parsed), ["after"]);
}

#[test]
fn nesting_up_to_the_limit_is_read() {
    // A skipped kind, so only the YAML layer judges the depth: the document
    // root is level 1 and the lists under `data` levels 2 and on.
    let inner = MAX_DEPTH - 1;
    let ok = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata: {}{}\n",
        "[".repeat(inner),
        "]".repeat(inner)
    );
    let (parsed, errors) = parse_bounded(ok, Duration::from_secs(10));
    assert_eq!(errors, []);
    assert!(matches!(parsed[0].object, Object::Skipped(_)));

    let one_more = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata: {}{}\n",
        "[".repeat(inner + 1),
        "]".repeat(inner + 1)
    );
    let (_, errors) = parse_bounded(one_more, Duration::from_secs(10));
    assert!(one_error(&errors).reason.contains("nested more than"));
}

#[test]
fn a_field_kept_as_raw_json_nested_to_the_limit_deserializes_within_the_stack() {
    // `loadBalancer` is kept as written (preserve-unknown-fields), so the
    // typed step deserializes all of it: levels 1-4 are the document, spec,
    // trafficPolicy and loadBalancer.
    let inner = MAX_DEPTH - 4;
    let text = format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: d}}\n\
         spec:\n  host: x\n  trafficPolicy:\n    loadBalancer: {{a: {}1{}}}\n",
        "{a: ".repeat(inner - 1),
        "}".repeat(inner - 1)
    );
    let (parsed, errors) = parse_bounded(text, Duration::from_secs(10));
    assert_eq!(errors, []);
    assert_eq!(parsed.len(), 1);
}

#[test]
fn a_duplicate_key_names_the_key_and_where_and_the_next_document_still_loads() {
    let cases = [
        // (document, field, key)
        (
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  name: b\n",
            Some("metadata"),
            "name",
        ),
        ("kind: Namespace\napiVersion: v1\nkind: Pod\n", None, "kind"),
        (
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\n\
             spec:\n  mtls:\n    mode: STRICT\n    mode: DISABLE\n",
            Some("spec.mtls"),
            "mode",
        ),
        (
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  \
             metadata: {name: x, labels: {a: '1', a: '2'}}\n",
            Some("items[0].metadata.labels"),
            "a",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\n\
             spec:\n  host: a\n  host: b\n",
            Some("spec"),
            "host",
        ),
    ];
    for (doc, field, key) in cases {
        let (parsed, errors) =
            parse_bounded(format!("{doc}---\n{NAMESPACE}"), Duration::from_secs(5));
        let error = one_error(&errors);
        assert_eq!(error.index, 0, "{doc}");
        assert_eq!(error.field.as_deref(), field, "{doc}");
        assert_eq!(error.reason, format!("duplicate key {key:?}"), "{doc}");
        // Silently taking the first or the last value is what must not happen.
        assert_eq!(names(&parsed), ["after"], "{doc}");
    }
}

#[test]
fn aliases_that_expand_quadratically_hit_the_value_budget_quickly() {
    // 3,000 values and 3,000 aliases to them: 9 million values from 25 KB,
    // within serde_yaml's own alias limit (100 jumps per event).
    let mut text =
        String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata:\n  a: &a [");
    text.push_str(&"1,".repeat(3_000));
    text.push_str("]\n  b: [");
    text.push_str(&"*a,".repeat(3_000));
    text.push_str(&format!("]\n---\n{NAMESPACE}"));
    let (parsed, errors) = parse_bounded(text, Duration::from_secs(20));
    let error = one_error(&errors);
    assert!(
        error.reason.starts_with(&format!(
            "the file expands to more than {MAX_VALUES} values"
        )),
        "{error}"
    );
    assert!(
        error
            .field
            .as_deref()
            .is_some_and(|f| f.starts_with("data.b[")),
        "{error}"
    );
    // The budget is per file: reading on could only spend more.
    assert!(
        error
            .reason
            .ends_with("later documents in this file were not read")
    );
    assert_eq!(parsed, []);
}

#[test]
fn the_value_budget_wins_over_an_earlier_duplicate_key_in_the_same_document() {
    let mut text = String::from("a: 1\na: 2\nb: &b [");
    text.push_str(&"1,".repeat(3_000));
    text.push_str("]\nc: [");
    text.push_str(&"*b,".repeat(3_000));
    text.push_str("]\n");
    let (_, errors) = parse_bounded(text, Duration::from_secs(20));
    let error = one_error(&errors);
    assert!(
        error.reason.starts_with("the file expands to more than"),
        "{error}"
    );
}

#[test]
fn a_billion_laughs_stops_at_serde_yamls_repetition_limit() {
    let mut text = String::from("a: &a [x,x,x,x,x,x,x,x,x,x]\n");
    for (name, prev) in ["b", "c", "d", "e", "f", "g", "h", "i"]
        .iter()
        .zip(["a", "b", "c", "d", "e", "f", "g", "h"])
    {
        text.push_str(&format!(
            "{name}: &{name} [{}]\n",
            format!("*{prev},").repeat(10)
        ));
    }
    let (_, errors) = parse_bounded(text, Duration::from_secs(20));
    let error = one_error(&errors);
    assert!(
        error.reason.contains("repetition limit exceeded")
            || error.reason.contains("the file expands to more than"),
        "{error}"
    );
}

#[test]
fn ordinary_anchors_and_merge_keys_still_work() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: d, namespace: foo, labels: &labels {app: x, tier: web}}
spec:
  host: x
  subsets:
  - name: v1
    labels:
      <<: *labels
      version: v1
";
    let (parsed, errors) = parse_bounded(text.to_string(), Duration::from_secs(5));
    assert_eq!(errors, []);
    let Object::DestinationRule(dr) = &parsed[0].object else {
        panic!("a DestinationRule: {parsed:?}")
    };
    assert_eq!(dr.spec.subsets[0].labels.len(), 3);
}

fn deployment(name: &str, replicas: i64) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  \
         template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec: {{containers: [{{name: c, image: x}}]}}\n"
    )
}

#[test]
fn huge_or_negative_replicas_are_an_error_naming_the_deployment_and_field() {
    for replicas in [i64::from(i32::MAX), i64::from(MAX_REPLICAS) + 1, -1] {
        let text = format!(
            "{}---\n{}---\n{NAMESPACE}",
            deployment("huge", replicas),
            deployment("fine", i64::from(MAX_REPLICAS))
        );
        let (parsed, errors) = parse_bounded(text, Duration::from_secs(5));
        let error = one_error(&errors);
        assert_eq!(
            (
                error.kind.as_deref(),
                error.namespace.as_deref(),
                error.name.as_deref(),
                error.field.as_deref()
            ),
            (
                Some("Deployment"),
                Some("shop"),
                Some("huge"),
                Some("spec.replicas")
            ),
            "{error}"
        );
        assert!(error.reason.contains(&replicas.to_string()), "{error}");
        // The rest of the file applies.
        assert_eq!(names(&parsed), ["fine", "after"]);
    }
    let text = deployment("huge", i64::from(i32::MAX));
    let (_, errors) = parse_bounded(text, Duration::from_secs(5));
    assert_eq!(
        one_error(&errors).to_string(),
        "hostile.yaml (document 0): Deployment shop/huge: spec.replicas: replicas 2147483647 is more than 1000, \
         the most this control plane runs for one Deployment (each replica is a workload with its own address, \
         certificate and sidecar config)"
    );
}

#[test]
fn replicas_beyond_i32_are_a_type_error_naming_the_field() {
    let (parsed, errors) = parse_bounded(deployment("huge", 1 << 40), Duration::from_secs(5));
    assert_eq!(parsed, []);
    let error = one_error(&errors);
    assert_eq!(error.field.as_deref(), Some("spec.replicas"), "{error}");
}

#[test]
fn ten_thousand_policies_in_one_file_parse() {
    let text = crds::test_support::many_peer_authentications(10_000);
    let (parsed, errors) = parse_bounded(text, Duration::from_secs(30));
    assert_eq!(errors, []);
    assert_eq!(parsed.len(), 10_000);
}

#[test]
fn a_service_with_one_port_twice_is_an_error_naming_the_port() {
    // Found by the translator's fuzzing: such a Service gave every sidecar
    // a route configuration with one virtual host twice, which Envoy
    // rejects whole, so one bad Service broke routing for every client.
    let text = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\n\
         spec:\n  selector: {{app: web}}\n  ports:\n  - {{name: http, port: 80}}\n  - {{name: web, port: 80}}\n\
         ---\n{NAMESPACE}"
    );
    let (parsed, errors) = parse_bounded(text, Duration::from_secs(5));
    let error = one_error(&errors);
    assert_eq!(
        error.to_string(),
        "hostile.yaml (document 0): Service shop/web: spec.ports[1].port: duplicate port 80/TCP (also spec.ports[0])"
    );
    assert_eq!(names(&parsed), ["after"]);
}
