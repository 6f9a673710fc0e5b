//! Parsing what a user would `kubectl apply`: the article's policies, every
//! accepted API version, and every way a file can be wrong.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use crds::{
    ClientTlsMode, MtlsMode, Object, ObjectError, Parsed, PeerAuthentication, Skipped,
    parse_documents,
};
use serde_json::json;

/// The article's four policies (stages 1, 2 and 3), as written there.
const STAGE1_MESH_STRICT: &str = "\
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
";

const STAGE2_NAMESPACE_STRICT: &str = "\
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: foo
spec:
  mtls:
    mode: STRICT
";

const STAGE3_WORKLOAD_STRICT_AND_DR: &str = "\
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: httpbin
  namespace: bar
spec:
  selector:
    matchLabels:
      app: httpbin
  mtls:
    mode: STRICT
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: httpbin
  namespace: bar
spec:
  host: httpbin.bar.svc.cluster.local
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
";

fn parse_ok(text: &str) -> Vec<Parsed> {
    let (parsed, errors) = parse_documents(text, "test.yaml");
    assert_eq!(errors, [], "unexpected errors");
    parsed
}

fn parse_errors(text: &str) -> Vec<String> {
    let (_, errors) = parse_documents(text, "policies.yaml");
    errors.iter().map(ObjectError::to_string).collect()
}

fn only_pa(text: &str) -> PeerAuthentication {
    match parse_ok(text).as_slice() {
        [
            Parsed {
                object: Object::PeerAuthentication(pa),
                ..
            },
        ] => pa.clone(),
        other => panic!("expected one PeerAuthentication, got {other:?}"),
    }
}

fn yaml_value(text: &str) -> serde_json::Value {
    serde_yaml::from_str(text).unwrap()
}

#[test]
fn the_articles_mesh_and_namespace_policies_parse_as_strict() {
    let mesh = only_pa(STAGE1_MESH_STRICT);
    assert_eq!(mesh.metadata.namespace.as_deref(), Some("istio-system"));
    assert_eq!(mesh.mode(), MtlsMode::Strict);
    assert_eq!(mesh.selector_labels(), None);
    let ns = only_pa(STAGE2_NAMESPACE_STRICT);
    assert_eq!(ns.metadata.namespace.as_deref(), Some("foo"));
    assert_eq!(ns.mode(), MtlsMode::Strict);
}

#[test]
fn the_articles_workload_policy_and_destination_rule_parse() {
    let parsed = parse_ok(STAGE3_WORKLOAD_STRICT_AND_DR);
    let [pa, dr] = parsed.as_slice() else {
        panic!("expected two objects, got {parsed:?}");
    };
    let Object::PeerAuthentication(pa_obj) = &pa.object else {
        panic!("not a PA: {pa:?}")
    };
    assert_eq!(
        (pa.index, pa.api_version.as_str()),
        (0, "security.istio.io/v1beta1")
    );
    assert_eq!(
        pa_obj
            .selector_labels()
            .and_then(|l| l.get("app"))
            .map(String::as_str),
        Some("httpbin")
    );
    assert_eq!(pa_obj.mode(), MtlsMode::Strict);
    let Object::DestinationRule(dr_obj) = &dr.object else {
        panic!("not a DR: {dr:?}")
    };
    assert_eq!(
        (dr.index, dr.api_version.as_str()),
        (1, "networking.istio.io/v1alpha3")
    );
    assert_eq!(dr_obj.spec.host, "httpbin.bar.svc.cluster.local");
    let tls = dr_obj
        .spec
        .traffic_policy
        .as_ref()
        .and_then(|p| p.tls.as_ref());
    assert_eq!(tls.map(|t| t.mode), Some(ClientTlsMode::IstioMutual));
}

#[test]
fn the_articles_policies_round_trip_to_the_same_fields() {
    for text in STAGE3_WORKLOAD_STRICT_AND_DR
        .split("---\n")
        .chain([STAGE1_MESH_STRICT])
    {
        let input = yaml_value(text);
        let out = match &parse_ok(text)[0].object {
            Object::PeerAuthentication(o) => serde_json::to_value(o).unwrap(),
            Object::DestinationRule(o) => serde_json::to_value(o).unwrap(),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(out["spec"], input["spec"]);
        assert_eq!(out["metadata"], input["metadata"]);
    }
}

#[test]
fn peer_authentication_is_accepted_in_v1_and_v1beta1() {
    for version in ["v1", "v1beta1"] {
        let text = STAGE2_NAMESPACE_STRICT.replace("v1beta1", version);
        let parsed = parse_ok(&text);
        assert_eq!(
            parsed[0].api_version,
            format!("security.istio.io/{version}")
        );
        assert!(matches!(parsed[0].object, Object::PeerAuthentication(_)));
    }
}

#[test]
fn destination_rule_is_accepted_in_v1_v1beta1_and_v1alpha3() {
    for version in ["v1", "v1beta1", "v1alpha3"] {
        let text = format!(
            "apiVersion: networking.istio.io/{version}\nkind: DestinationRule\n\
             metadata: {{name: d, namespace: bar}}\nspec: {{host: httpbin}}\n"
        );
        let parsed = parse_ok(&text);
        assert!(matches!(parsed[0].object, Object::DestinationRule(_)));
    }
}

#[test]
fn an_unsupported_api_version_of_a_known_kind_is_an_error() {
    let text = STAGE2_NAMESPACE_STRICT.replace("v1beta1", "v2");
    assert_eq!(
        parse_errors(&text),
        [
            "policies.yaml (document 0): PeerAuthentication foo/default: apiVersion: unsupported \
          apiVersion \"security.istio.io/v2\" for PeerAuthentication (expected one of \
          security.istio.io/v1, security.istio.io/v1beta1)"
        ]
    );
    let dr = "apiVersion: security.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec: {host: h}\n";
    assert_eq!(parse_errors(dr).len(), 1);
}

#[test]
fn a_misspelt_mode_is_an_error_naming_the_field() {
    let text = STAGE2_NAMESPACE_STRICT.replace("STRICT", "STRCT");
    let (parsed, errors) = parse_documents(&text, "policies.yaml");
    assert_eq!(parsed, []);
    let [error] = errors.as_slice() else {
        panic!("expected one error: {errors:?}")
    };
    assert_eq!(error.field.as_deref(), Some("spec.mtls.mode"));
    assert_eq!(error.name.as_deref(), Some("default"));
    assert!(error.reason.contains("unknown variant"), "{error}");
    assert!(error.reason.contains("STRCT"), "{error}");
    assert!(error.reason.contains("PERMISSIVE"), "{error}");
}

#[test]
fn a_port_level_policy_without_selector_is_reported_with_file_document_object_and_field() {
    let text = format!(
        "{STAGE1_MESH_STRICT}---\n{STAGE2_NAMESPACE_STRICT}---\n\
         apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata: {{name: broken, namespace: foo}}\nspec:\n  portLevelMtls:\n    80:\n      mode: DISABLE\n"
    );
    let (parsed, errors) = parse_documents(&text, "policies.yaml");
    assert_eq!(parsed.len(), 2, "the valid policies still load");
    assert_eq!(
        errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "policies.yaml (document 2): PeerAuthentication foo/broken: spec.portLevelMtls: \
          mesh/namespace peer authentication cannot have port level mTLS"
        ]
    );
}

#[test]
fn integer_port_keys_become_port_level_modes() {
    let pa = only_pa(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: bar}\n\
         spec:\n  selector: {matchLabels: {app: httpbin}}\n  mtls: {mode: STRICT}\n\
         \x20 portLevelMtls:\n    80: {mode: DISABLE}\n    \"8080\": {mode: PERMISSIVE}\n",
    );
    assert_eq!(
        pa.port_modes().into_iter().collect::<Vec<_>>(),
        [(80, MtlsMode::Disable), (8080, MtlsMode::Permissive)]
    );
}

#[test]
fn a_bad_port_key_is_a_validation_error_not_a_parse_error() {
    let errors = parse_errors(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: bar}\n\
         spec:\n  selector: {matchLabels: {app: x}}\n  portLevelMtls:\n    http: {mode: DISABLE}\n",
    );
    assert_eq!(
        errors,
        [
            "policies.yaml (document 0): PeerAuthentication bar/p: spec.portLevelMtls[http]: \
          port must be an integer between 1 and 65535"
        ]
    );
}

#[test]
fn a_destination_rule_with_unused_traffic_policy_fields_round_trips() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: bar
spec:
  host: reviews
  exportTo: [\".\"]
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpCookie: {name: user, ttl: 0s}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 30ms}
      http: {http2MaxRequests: 1000}
    outlierDetection:
      consecutive5xxErrors: 7
      interval: 5m
      baseEjectionTime: 15m
    tls:
      mode: SIMPLE
      sni: reviews.example.com
      subjectAltNames: [a.example.com]
      insecureSkipVerify: false
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {simple: LEAST_REQUEST}
      tls: {mode: DISABLE}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      connectionPool: {tcp: {maxConnections: 5}}
";
    let parsed = parse_ok(text);
    let Object::DestinationRule(dr) = &parsed[0].object else {
        panic!("not a DR")
    };
    let out = serde_json::to_value(dr).unwrap();
    let input = yaml_value(text);
    assert_eq!(out["spec"], input["spec"]);
    let again: crds::DestinationRule = serde_json::from_value(out.clone()).unwrap();
    assert_eq!(&again, &**dr);
}

#[test]
fn a_yaml_syntax_error_names_file_and_document_and_keeps_earlier_documents() {
    let text = format!("{STAGE1_MESH_STRICT}---\nkind: [unclosed\n---\n{STAGE2_NAMESPACE_STRICT}");
    let (parsed, errors) = parse_documents(&text, "broken.yaml");
    assert_eq!(parsed.len(), 1);
    let [error] = errors.as_slice() else {
        panic!("expected one error: {errors:?}")
    };
    assert_eq!((error.file.as_str(), error.index), ("broken.yaml", 1));
    assert!(
        error
            .to_string()
            .starts_with("broken.yaml (document 1): invalid YAML"),
        "{error}"
    );
}

#[test]
fn an_unknown_anchor_is_an_error_and_does_not_panic() {
    let (parsed, errors) = parse_documents("a: *nope\n---\nb: {c: 1}\n", "f.yaml");
    assert_eq!(parsed, []);
    assert_eq!(errors.len(), 1);
}

#[test]
fn a_list_is_expanded_into_its_items() {
    let text = "\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: foo, labels: {istio-injection: enabled}}
- apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: default, namespace: foo}
  spec: {mtls: {mode: STRICT}}
- apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: bad, namespace: foo}
  spec: {mtls: {mode: NOPE}}
";
    let (parsed, errors) = parse_documents(text, "list.yaml");
    let kinds: Vec<_> = parsed.iter().map(|p| (p.object.kind(), p.item)).collect();
    assert_eq!(
        kinds,
        [("Namespace", Some(0)), ("PeerAuthentication", Some(1))]
    );
    let [error] = errors.as_slice() else {
        panic!("expected one error: {errors:?}")
    };
    assert!(
        error.to_string().starts_with(
            "list.yaml (document 0, item 2): PeerAuthentication foo/bad: spec.mtls.mode: "
        ),
        "{error}"
    );
}

#[test]
fn unknown_kinds_are_skipped_not_errors() {
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n\
                apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\n";
    let parsed = parse_ok(text);
    let skipped: Vec<_> = parsed
        .iter()
        .map(|p| match &p.object {
            Object::Skipped(s) => s.clone(),
            other => panic!("not skipped: {other:?}"),
        })
        .collect();
    assert_eq!(
        skipped,
        [
            Skipped {
                file: "test.yaml".into(),
                index: 0,
                api_version: "v1".into(),
                kind: "ConfigMap".into()
            },
            Skipped {
                file: "test.yaml".into(),
                index: 1,
                api_version: "security.istio.io/v1".into(),
                kind: "AuthorizationPolicy".into()
            },
        ]
    );
}

#[test]
fn objects_without_namespace_go_to_default_but_namespaces_stay_cluster_scoped() {
    let text = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\n---\n\
                apiVersion: v1\nkind: Namespace\nmetadata: {name: foo}\n";
    let parsed = parse_ok(text);
    let namespaces: Vec<_> = parsed
        .iter()
        .map(|p| p.object.metadata().and_then(|m| m.namespace.clone()))
        .collect();
    assert_eq!(namespaces, [Some("default".to_string()), None]);
}

#[test]
fn a_policy_without_spec_is_an_empty_policy() {
    let pa = only_pa(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: x}\n",
    );
    assert_eq!(pa.mode(), MtlsMode::Unset);
}

#[test]
fn empty_documents_are_skipped_but_counted() {
    let text = format!("---\n# nothing here\n---\n{STAGE1_MESH_STRICT}---\n");
    let parsed = parse_ok(&text);
    assert_eq!(parsed.iter().map(|p| p.index).collect::<Vec<_>>(), [1]);
}

#[test]
fn a_missing_name_is_an_error() {
    assert_eq!(
        parse_errors(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {namespace: foo}\n"
        ),
        ["policies.yaml (document 0): PeerAuthentication: metadata.name: name is required"]
    );
}

#[test]
fn a_destination_rule_without_host_is_an_error() {
    assert_eq!(
        parse_errors(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: bar}\nspec: {}\n"
        ),
        ["policies.yaml (document 0): DestinationRule bar/d: spec.host: host is required"]
    );
}

#[test]
fn unknown_fields_in_a_policy_are_errors_so_typos_do_not_weaken_it() {
    let text = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: foo}\n\
                spec:\n  mtsl: {mode: STRICT}\n  selector: {matchLabel: {app: x}}\n";
    assert_eq!(
        parse_errors(text),
        [
            "policies.yaml (document 0): PeerAuthentication foo/p: spec.mtsl: unknown field \"mtsl\"",
            "policies.yaml (document 0): PeerAuthentication foo/p: spec.selector.matchLabel: unknown field \"matchLabel\"",
        ]
    );
}

#[test]
fn missing_kind_or_api_version_and_non_mapping_documents_are_errors() {
    assert_eq!(
        parse_errors("apiVersion: v1\nmetadata: {name: x}\n---\nkind: Service\n---\n- a\n- b\n"),
        [
            "policies.yaml (document 0): kind: kind is required",
            "policies.yaml (document 1): Service: apiVersion: apiVersion is required",
            "policies.yaml (document 2): document is not a mapping (expected an object with apiVersion and kind)",
        ]
    );
}

#[test]
fn duplicate_keys_after_yaml_to_json_conversion_are_errors() {
    let errors = parse_errors(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\n\
         spec:\n  selector: {matchLabels: {app: x}}\n  portLevelMtls:\n    80: {mode: STRICT}\n    \"80\": {mode: DISABLE}\n",
    );
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("duplicate key \"80\""), "{errors:?}");
}

#[test]
fn the_articles_kubernetes_objects_parse() {
    let text = "\
apiVersion: v1
kind: Namespace
metadata: {name: foo, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: httpbin, namespace: foo}
---
apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: foo, labels: {app: httpbin}}
spec:
  ports: [{name: http, port: 8000, targetPort: 80}]
  selector: {app: httpbin}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: httpbin, namespace: foo}
spec:
  replicas: 1
  selector: {matchLabels: {app: httpbin, version: v1}}
  template:
    metadata: {labels: {app: httpbin, version: v1}}
    spec:
      serviceAccountName: httpbin
      containers:
      - name: httpbin
        image: docker.io/kennethreitz/httpbin
        ports: [{containerPort: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: sleep-1, namespace: legacy, labels: {app: sleep}}
spec:
  containers: [{name: sleep, image: curlimages/curl}]
";
    let parsed = parse_ok(text);
    let kinds: Vec<_> = parsed.iter().map(|p| p.object.kind()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "Service",
            "Deployment",
            "Pod"
        ]
    );
    let Object::Service(svc) = &parsed[2].object else {
        panic!("not a service")
    };
    let port = &svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    assert_eq!(port.port, 8000);
    assert_eq!(serde_json::to_value(&port.target_port).unwrap(), json!(80));
}

#[test]
fn a_type_error_in_a_kubernetes_object_names_the_field() {
    let errors = parse_errors(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports: [{port: eighty}]\n",
    );
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .starts_with("policies.yaml (document 0): Service default/s: spec.ports[0].port: "),
        "{errors:?}"
    );
}

#[test]
fn sidecar_is_accepted_in_v1_v1beta1_and_v1alpha3_with_istios_selector_labels() {
    for version in ["v1", "v1beta1", "v1alpha3"] {
        let text = format!(
            "apiVersion: networking.istio.io/{version}\nkind: Sidecar\n\
             metadata: {{name: s, namespace: foo}}\n\
             spec:\n  workloadSelector: {{labels: {{app: sleep}}}}\n  \
             egress:\n  - port: {{number: 8000, protocol: HTTP, name: http}}\n    hosts: [bar/*]\n  \
             - hosts: [./*, istio-system/*]\n  outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}\n"
        );
        let parsed = parse_ok(&text);
        let Object::Sidecar(sc) = &parsed[0].object else {
            panic!("a Sidecar: {parsed:?}")
        };
        assert_eq!(
            sc.selector_labels()
                .and_then(|l| l.get("app"))
                .map(String::as_str),
            Some("sleep")
        );
        assert_eq!(sc.spec.egress[1].hosts, ["./*", "istio-system/*"]);
    }
}

#[test]
fn a_sidecar_with_a_bad_host_is_an_error_naming_object_and_field() {
    assert_eq!(
        parse_errors(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s, namespace: foo}\n\
             spec: {egress: [{hosts: [httpbin.bar.svc.cluster.local]}]}\n"
        ),
        [
            "policies.yaml (document 0): Sidecar foo/s: spec.egress[0].hosts[0]: host \
             \"httpbin.bar.svc.cluster.local\" must be of form namespace/dnsName"
        ]
    );
    // `matchLabels` is PeerAuthentication's selector, not the Sidecar's.
    let errors = parse_errors(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s, namespace: foo}\n\
         spec: {workloadSelector: {matchLabels: {app: a}}, egress: [{hosts: [./*]}]}\n",
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("spec.workloadSelector.matchLabels: unknown field"),
        "{errors:?}"
    );
}
