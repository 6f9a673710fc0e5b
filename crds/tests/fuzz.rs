//! Fuzzing the parser and validation with proptest: arbitrary text, YAML
//! token soup, generated documents with Kubernetes-looking keys, and valid
//! objects with random parts replaced. `parse_documents` must never panic;
//! what it accepts must pass validation and read back the same.
//!
//! Each target runs `PROPTEST_CASES` cases (proptest's default, 256), so
//! `cargo test` stays quick; with `XDS_FUZZ_SECONDS=N` each runs batches of
//! new random cases for N seconds (CI). A failing case's seed is kept in
//! `tests/proptest-regressions/` and replayed first on every later run.

use crds::{Object, parse_documents};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use serde_yaml::value::{Tag, TaggedValue};
use serde_yaml::{Mapping, Value};

const FILE: &str = "fuzz.yaml";

/// Runs `test` on cases from `strategy`; see the module docs for how many.
fn fuzz<S: Strategy>(
    name: &str,
    regressions: &'static str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let config = Config::with_failure_persistence(FileFailurePersistence::Direct(regressions));
    crds::test_support::run_batches(name, || {
        // A fresh runner draws a fresh random seed: each batch is new input.
        TestRunner::new(config.clone())
            .run(&strategy, &test)
            .map(|()| config.cases)
            .map_err(|e| e.to_string())
    });
}

/// What must hold for any input: every error names the file, and every
/// object accepted is valid and reads back as itself.
fn check(text: &str) -> Result<(), TestCaseError> {
    let (parsed, errors) = parse_documents(text, FILE);
    for e in &errors {
        prop_assert_eq!(&e.file, FILE);
        prop_assert!(!e.reason.is_empty(), "an error without a reason: {:?}", e);
    }
    for p in &parsed {
        match &p.object {
            Object::PeerAuthentication(pa) => {
                prop_assert_eq!(crds::validate::peer_authentication(pa), []);
                round_trip(&p.object, &serde_yaml::to_string(pa))?;
            }
            Object::DestinationRule(dr) => {
                prop_assert_eq!(crds::validate::destination_rule(dr), []);
                round_trip(&p.object, &serde_yaml::to_string(&**dr))?;
            }
            Object::Deployment(d) => {
                prop_assert_eq!(crds::validate::deployment(d), []);
            }
            _ => {}
        }
    }
    Ok(())
}

/// An accepted policy, written out and parsed again, is the same policy.
fn round_trip(
    object: &Object,
    yaml: &Result<String, serde_yaml::Error>,
) -> Result<(), TestCaseError> {
    let yaml = match yaml {
        Ok(yaml) => yaml,
        Err(e) => return Err(TestCaseError::fail(format!("cannot write {object:?}: {e}"))),
    };
    let (again, errors) = parse_documents(yaml, FILE);
    prop_assert_eq!(errors, [], "written as:\n{}", yaml);
    prop_assert_eq!(again.len(), 1);
    prop_assert_eq!(&again[0].object, object, "written as:\n{}", yaml);
    Ok(())
}

/// Keys of the kinds this crate reads, and some it does not.
const KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "labels",
    "annotations",
    "creationTimestamp",
    "spec",
    "status",
    "items",
    "mtls",
    "mode",
    "portLevelMtls",
    "selector",
    "matchLabels",
    "trafficPolicy",
    "tls",
    "host",
    "exportTo",
    "workloadSelector",
    "subsets",
    "portLevelSettings",
    "port",
    "number",
    "sni",
    "subjectAltNames",
    "credentialName",
    "insecureSkipVerify",
    "loadBalancer",
    "replicas",
    "template",
    "containers",
    "ports",
    "containerPort",
    "targetPort",
    "protocol",
    "appProtocol",
    "podIP",
    "serviceAccountName",
    "<<",
    "app",
    "version",
    "sidecar.istio.io/inject",
    "istio-injection",
];

/// Scalars that mean something to some field.
const WORDS: &[&str] = &[
    "STRICT",
    "PERMISSIVE",
    "DISABLE",
    "UNSET",
    "SIMPLE",
    "MUTUAL",
    "ISTIO_MUTUAL",
    "*",
    ".",
    "~",
    "",
    "v1",
    "v1beta1",
    "v1alpha3",
    "apps/v1",
    "security.istio.io/v1",
    "security.istio.io/v1beta1",
    "networking.istio.io/v1",
    "networking.istio.io/v1alpha3",
    "PeerAuthentication",
    "DestinationRule",
    "Deployment",
    "Service",
    "Pod",
    "Namespace",
    "ServiceAccount",
    "List",
    "ConfigMap",
    "80",
    "8080",
    "http",
    "http-web",
    "tcp",
    "grpc",
    "foo",
    "bar",
    "istio-system",
    "httpbin",
    "enabled",
    "true",
    "false",
    "10.0.0.1",
    "0.0.0.0",
    "2020-01-01T00:00:00Z",
    "not a time",
    "a.b.svc.cluster.local",
    "Foo",
    "-x",
    "TCP",
    "UDP",
];

/// The kinds and versions that reach the typed parsers.
const KINDS: &[(&str, &str)] = &[
    ("security.istio.io/v1", "PeerAuthentication"),
    ("security.istio.io/v1beta1", "PeerAuthentication"),
    ("networking.istio.io/v1", "DestinationRule"),
    ("networking.istio.io/v1alpha3", "DestinationRule"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("v1", "Pod"),
    ("v1", "Namespace"),
    ("v1", "ServiceAccount"),
    ("v1", "List"),
    ("v1", "ConfigMap"),
];

fn scalar() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(1),
            Just(80),
            Just(65535),
            Just(65536),
            Just(i64::from(i32::MAX)),
            Just(i64::MAX),
            Just(i64::MIN),
            any::<i64>(),
        ]
        .prop_map(|n| Value::Number(n.into())),
        any::<u64>().prop_map(|n| Value::Number(n.into())),
        prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(0.5),
            Just(-0.0),
            any::<f64>()
        ]
        .prop_map(|f| Value::Number(f.into())),
        prop::sample::select(WORDS).prop_map(|w| Value::String(w.to_string())),
        prop::sample::select(KEYS).prop_map(|w| Value::String(w.to_string())),
        ".{0,12}".prop_map(Value::String),
    ]
    .boxed()
}

fn key() -> BoxedStrategy<Value> {
    prop_oneof![
        8 => prop::sample::select(KEYS).prop_map(|k| Value::String(k.to_string())),
        1 => (0u32..70000).prop_map(|n| Value::Number(n.into())),
        1 => scalar(),
    ]
    .boxed()
}

/// Any YAML value: maps with Kubernetes-looking keys, lists, scalars, and
/// now and then a tag.
fn tree() -> BoxedStrategy<Value> {
    scalar()
        .prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Sequence),
                prop::collection::vec((key(), inner.clone()), 0..6)
                    .prop_map(|entries| Value::Mapping(entries.into_iter().collect::<Mapping>())),
                ("[a-z]{1,5}", inner).prop_map(|(tag, value)| {
                    Value::Tagged(Box::new(TaggedValue {
                        tag: Tag::new(tag),
                        value,
                    }))
                }),
            ]
        })
        .boxed()
}

/// Strings that are often valid labels, ports, namespaces or modes.
fn word() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => prop::sample::select(WORDS).prop_map(|w| Value::String(w.to_string())),
        2 => "[a-z][a-z0-9-]{0,6}".prop_map(Value::String),
        1 => prop_oneof![Just(0u32), Just(1), Just(80), Just(8080), Just(65535), Just(65536)]
            .prop_map(|n| Value::Number(n.into())),
        1 => scalar(),
    ]
    .boxed()
}

fn map_of(entries: Vec<(&str, Option<Value>)>) -> Value {
    Value::Mapping(
        entries
            .into_iter()
            .filter_map(|(k, v)| Some((Value::String(k.to_string()), v?)))
            .collect(),
    )
}

fn labels() -> BoxedStrategy<Value> {
    prop::collection::vec((word(), word()), 0..3)
        .prop_map(|pairs| Value::Mapping(pairs.into_iter().collect()))
        .boxed()
}

fn selector() -> BoxedStrategy<Value> {
    labels()
        .prop_map(|l| map_of(vec![("matchLabels", Some(l))]))
        .boxed()
}

fn mode() -> BoxedStrategy<Value> {
    word().prop_map(|m| map_of(vec![("mode", Some(m))])).boxed()
}

/// A PeerAuthentication spec with the fields Istio defines, values at random.
fn pa_spec() -> BoxedStrategy<Value> {
    (
        prop::option::of(selector()),
        prop::option::of(mode()),
        prop::option::of(prop::collection::vec((word(), mode()), 0..3)),
    )
        .prop_map(|(selector, mtls, ports)| {
            map_of(vec![
                ("selector", selector),
                ("mtls", mtls),
                (
                    "portLevelMtls",
                    ports.map(|p| Value::Mapping(p.into_iter().collect())),
                ),
            ])
        })
        .boxed()
}

fn client_tls() -> BoxedStrategy<Value> {
    (
        word(),
        prop::option::of(word()),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(mode, sni, skip)| {
            map_of(vec![
                ("mode", Some(mode)),
                ("sni", sni),
                ("insecureSkipVerify", skip.map(Value::Bool)),
            ])
        })
        .boxed()
}

fn traffic_policy() -> BoxedStrategy<Value> {
    (
        prop::option::of(client_tls()),
        prop::collection::vec(
            (prop::option::of(word()), prop::option::of(client_tls())),
            0..3,
        ),
    )
        .prop_map(|(tls, ports)| {
            let settings = ports
                .into_iter()
                .map(|(number, tls)| {
                    map_of(vec![
                        ("port", number.map(|n| map_of(vec![("number", Some(n))]))),
                        ("tls", tls),
                    ])
                })
                .collect();
            map_of(vec![
                ("tls", tls),
                ("portLevelSettings", Some(Value::Sequence(settings))),
            ])
        })
        .boxed()
}

/// A DestinationRule spec with the fields Istio defines, values at random.
fn dr_spec() -> BoxedStrategy<Value> {
    (
        word(),
        prop::collection::vec(word(), 0..3),
        prop::option::of(selector()),
        prop::option::of(traffic_policy()),
        prop::collection::vec((word(), labels(), prop::option::of(traffic_policy())), 0..3),
    )
        .prop_map(|(host, export_to, workload_selector, policy, subsets)| {
            let subsets = subsets
                .into_iter()
                .map(|(name, labels, policy)| {
                    map_of(vec![
                        ("name", Some(name)),
                        ("labels", Some(labels)),
                        ("trafficPolicy", policy),
                    ])
                })
                .collect();
            map_of(vec![
                ("host", Some(host)),
                ("exportTo", Some(Value::Sequence(export_to))),
                ("workloadSelector", workload_selector),
                ("trafficPolicy", policy),
                ("subsets", Some(Value::Sequence(subsets))),
            ])
        })
        .boxed()
}

/// A document that gets past the kind dispatch: a known apiVersion and kind,
/// metadata that is mostly right, a spec shaped for the kind or random, and
/// now and then extra keys.
fn object() -> BoxedStrategy<Value> {
    let kind_and_spec = prop_oneof![
        2 => (prop::sample::select(&KINDS[..2]), pa_spec()),
        2 => (prop::sample::select(&KINDS[2..4]), dr_spec()),
        1 => (prop::sample::select(KINDS), tree()),
    ];
    (
        kind_and_spec,
        (word(), prop::option::of(word()), prop::option::of(labels())),
        prop::collection::vec((key(), tree()), 0..2),
    )
        .prop_map(|(((api, kind), spec), (name, namespace, labels), extra)| {
            let mut m = Mapping::new();
            m.insert("apiVersion".into(), api.into());
            m.insert("kind".into(), kind.into());
            m.insert(
                "metadata".into(),
                map_of(vec![
                    ("name", Some(name)),
                    ("namespace", namespace),
                    ("labels", labels),
                ]),
            );
            m.insert(if kind == "List" { "items" } else { "spec" }.into(), spec);
            for (k, v) in extra {
                m.insert(k, v);
            }
            Value::Mapping(m)
        })
        .boxed()
}

/// Valid objects of each kind, to mutate.
const TEMPLATES: &str = "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: p, namespace: foo, labels: {app: x}}
spec:
  selector: {matchLabels: {app: httpbin, version: v1}}
  mtls: {mode: STRICT}
  portLevelMtls:
    80: {mode: DISABLE}
    8080: {mode: PERMISSIVE}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: d, namespace: foo}
spec:
  host: httpbin.foo.svc.cluster.local
  exportTo: ['.', bar]
  workloadSelector: {matchLabels: {app: sleep}}
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL, sni: x, subjectAltNames: [a]}
    loadBalancer: {simple: ROUND_ROBIN}
    portLevelSettings:
    - port: {number: 8000}
      tls: {mode: DISABLE}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {tls: {mode: SIMPLE}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}, annotations: {sidecar.istio.io/inject: 'true'}}
    spec:
      serviceAccountName: web
      containers: [{name: web, image: x, ports: [{containerPort: 80, name: http}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  selector: {app: web}
  ports: [{name: http, port: 8000, targetPort: http, protocol: TCP, appProtocol: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: p-0, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: shop, labels: {istio-injection: enabled}}
";

fn templates() -> Vec<Value> {
    serde_yaml::Deserializer::from_str(TEMPLATES)
        .map(|d| serde::Deserialize::deserialize(d).expect("the templates are valid YAML"))
        .collect()
}

/// Replaces the node reached by following `steps` (each picks a child by
/// remainder) with `with`.
fn mutate(value: &mut Value, steps: &[usize], with: Value) {
    if let Some((&step, rest)) = steps.split_first() {
        match value {
            Value::Mapping(m) if !m.is_empty() => {
                let i = step % m.len();
                if let Some(child) = m.values_mut().nth(i) {
                    return mutate(child, rest, with);
                }
            }
            Value::Sequence(s) if !s.is_empty() => {
                let i = step % s.len();
                if let Some(child) = s.get_mut(i) {
                    return mutate(child, rest, with);
                }
            }
            _ => {}
        }
    }
    *value = with;
}

fn mutated() -> BoxedStrategy<Value> {
    let templates = templates();
    let count = templates.len();
    (
        0..count,
        prop::collection::vec(
            (
                prop::collection::vec(any::<usize>(), 1..7),
                prop_oneof![4 => word(), 1 => tree()],
            ),
            0..3,
        ),
    )
        .prop_map(move |(which, mutations)| {
            let mut doc = templates[which].clone();
            for (steps, with) in mutations {
                mutate(&mut doc, &steps, with);
            }
            doc
        })
        .boxed()
}

/// Documents as text: serialized, and now and then cut short.
fn documents(doc: impl Strategy<Value = Value>) -> impl Strategy<Value = String> {
    (
        prop::collection::vec(doc, 1..4),
        any::<bool>(),
        any::<usize>(),
    )
        .prop_map(|(docs, cut, at)| {
            let mut text = docs
                .iter()
                .filter_map(|d| serde_yaml::to_string(d).ok())
                .collect::<Vec<_>>()
                .join("---\n");
            if cut && !text.is_empty() {
                let mut at = at % text.len();
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                text.truncate(at);
            }
            text
        })
}

/// Pieces of YAML syntax, to glue at random.
const TOKENS: &[&str] = &[
    "apiVersion: security.istio.io/v1\n",
    "kind: PeerAuthentication\n",
    "kind: List\n",
    "metadata:\n",
    "  name: a\n",
    "spec:\n",
    "  mtls:\n",
    "    mode: STRICT\n",
    "- ",
    "  ",
    "\n",
    ": ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&a ",
    "*a",
    "<<: ",
    "!t ",
    "!!str ",
    "!!binary ",
    "---\n",
    "...\n",
    "'",
    "\"",
    "#",
    "|\n",
    ">-\n",
    "? ",
    "80",
    "0x1F",
    "1e400",
    ".nan",
    "-.inf",
    "~",
    "null",
    "\t",
    "\\u0000",
    "\u{feff}",
    "%YAML 1.2\n",
    "%TAG ! tag:x:\n",
    "@",
    "`",
    "items:\n",
    "portLevelMtls:\n",
    "replicas: 2147483647\n",
];

fn token_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..40).prop_map(|t| t.concat())
}

#[test]
fn fuzz_parse_arbitrary_text() {
    fuzz(
        "fuzz_parse_arbitrary_text",
        "tests/proptest-regressions/fuzz_parse_arbitrary_text.txt",
        prop_oneof![any::<String>(), token_soup()],
        |text| check(&text),
    );
}

#[test]
fn fuzz_parse_generated_documents() {
    fuzz(
        "fuzz_parse_generated_documents",
        "tests/proptest-regressions/fuzz_parse_generated_documents.txt",
        documents(prop_oneof![1 => tree(), 4 => object()]),
        |text| check(&text),
    );
}

#[test]
fn fuzz_parse_mutated_objects() {
    fuzz(
        "fuzz_parse_mutated_objects",
        "tests/proptest-regressions/fuzz_parse_mutated_objects.txt",
        documents(mutated()),
        |text| check(&text),
    );
}
