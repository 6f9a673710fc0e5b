use super::*;

fn docs(yaml: &str) -> Vec<Value> {
    let (docs, errors) = crds::read_documents(yaml, "test.yaml");
    assert!(errors.is_empty(), "{errors:?}");
    docs.into_iter().map(|(_, v)| v).collect()
}

fn run(yaml: &str) -> (Vec<Value>, Result<Report, Vec<String>>) {
    let mut d = docs(yaml);
    let namespaces = namespace_labels(&d);
    let r = inject_documents(&mut d, &namespaces, &Settings::default());
    (d, r)
}

const NAMESPACES: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: foo, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
";

fn deployment(ns: &str, extra_annotations: &str) -> String {
    format!(
        "
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata:
      labels: {{app: web}}
      annotations: {{{extra_annotations}}}
    spec:
      containers:
      - name: web
        image: example/web
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{httpGet: {{path: /ready, port: http}}}}
"
    )
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
        .collect()
}

#[test]
fn a_pod_template_in_an_injection_namespace_gets_the_sidecar() {
    let (d, r) = run(&format!("{NAMESPACES}{}", deployment("foo", "")));
    let report = r.expect("injects");
    assert_eq!(
        report.decisions,
        [Decision {
            object: "Deployment foo/web".into(),
            action: Action::Injected(Interception::Redirect)
        }]
    );
    let t = &d[2]["spec"]["template"];
    assert_eq!(
        t["metadata"]["labels"]["security.istio.io/tlsMode"],
        "istio"
    );
    assert_eq!(t["metadata"]["labels"]["app"], "web", "user labels kept");
    assert_eq!(
        t["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"],
        "web"
    );
    let status: Value = serde_json::from_str(
        t["metadata"]["annotations"]["sidecar.istio.io/status"]
            .as_str()
            .expect("status"),
    )
    .expect("JSON");
    assert_eq!(status["containers"], json!(["istio-proxy"]));
    assert_eq!(
        names(&t["spec"]["initContainers"]),
        ["istio-init", "xds-bootstrap"]
    );
    assert_eq!(names(&t["spec"]["containers"]), ["web", "istio-proxy"]);
    assert_eq!(
        names(&t["spec"]["volumes"]),
        ["istio-envoy", "istio-token", "istiod-ca-cert"]
    );
    let init = &t["spec"]["initContainers"][0];
    assert_eq!(
        init["args"],
        json!([
            "iptables",
            "--proxy-uid",
            "1337",
            "--proxy-gid",
            "1337",
            "--inbound-ports",
            "*"
        ])
    );
    assert_eq!(
        init["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    let boot = &t["spec"]["initContainers"][1];
    let args: Vec<&str> = boot["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--interception-mode", "REDIRECT"]),
        "{args:?}"
    );
    let proxy = &t["spec"]["containers"][1];
    assert_eq!(proxy["image"], "envoyproxy/envoy:v1.40.0");
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    assert_eq!(proxy["securityContext"]["runAsGroup"], 1337);
    // The readiness probe on the (named) app port is captured: said.
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(
        report.warnings[0].contains("readinessProbe on port 8080"),
        "{:?}",
        report.warnings
    );
}

#[test]
fn pods_outside_injection_namespaces_or_opting_out_are_left_alone_and_said_why() {
    let yaml = format!(
        "{NAMESPACES}{}{}",
        deployment("legacy", ""),
        deployment("foo", "sidecar.istio.io/inject: \"false\"").replace("name: web,", "name: off,")
    );
    let (d, r) = run(&yaml);
    let report = r.expect("no error");
    let before = docs(&yaml);
    assert_eq!(d, before, "nothing changed");
    assert_eq!(report.decisions.len(), 2);
    assert!(
        matches!(&report.decisions[0].action, Action::Left(w) if w.contains("istio-injection"))
    );
    assert!(
        matches!(&report.decisions[1].action, Action::Left(w) if w.contains("\"false\"")),
        "{:?}",
        report.decisions
    );
}

#[test]
fn injecting_twice_changes_nothing_the_second_time() {
    let (once, r) = run(&format!("{NAMESPACES}{}", deployment("foo", "")));
    r.expect("first");
    let mut twice = once.clone();
    let namespaces = namespace_labels(&twice);
    let report = inject_documents(&mut twice, &namespaces, &Settings::default()).expect("second");
    assert_eq!(twice, once);
    assert!(
        matches!(&report.decisions[0].action, Action::Left(w) if w.contains("already injected"))
    );
}

#[test]
fn interception_mode_none_gets_no_iptables_and_tproxy_is_refused() {
    let (d, r) = run(&format!(
        "{NAMESPACES}{}",
        deployment("foo", "sidecar.istio.io/interceptionMode: NONE")
    ));
    let report = r.expect("injects");
    assert_eq!(
        report.decisions[0].action,
        Action::Injected(Interception::None)
    );
    assert!(report.warnings.is_empty(), "nothing is captured");
    let t = &d[2]["spec"]["template"]["spec"];
    assert_eq!(names(&t["initContainers"]), ["xds-bootstrap"]);
    assert!(
        t["initContainers"][0]["args"]
            .to_string()
            .contains("\"--interception-mode\",\"NONE\"")
    );

    let (_, r) = run(&format!(
        "{NAMESPACES}{}",
        deployment("foo", "sidecar.istio.io/interceptionMode: TPROXY")
    ));
    let errors = r.expect_err("refused");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with(
            "Deployment foo/web: spec.template.metadata.annotations.sidecar.istio.io/interceptionMode: INTERCEPTION_MODE TPROXY is not supported"
        ),
        "{errors:?}"
    );
}

#[test]
fn traffic_annotations_reach_the_iptables_step_and_bad_ones_are_errors() {
    let (d, r) = run(&format!(
        "{NAMESPACES}{}",
        deployment(
            "foo",
            "traffic.sidecar.istio.io/excludeInboundPorts: \"8080,9090\", \
             traffic.sidecar.istio.io/excludeOutboundIPRanges: \"10.0.0.0/8\""
        )
    ));
    let report = r.expect("injects");
    // The probe's port is excluded now: no warning.
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(
        d[2]["spec"]["template"]["spec"]["initContainers"][0]["args"],
        json!([
            "iptables",
            "--proxy-uid",
            "1337",
            "--proxy-gid",
            "1337",
            "--inbound-ports",
            "*",
            "--exclude-inbound-ports",
            "8080,9090",
            "--exclude-outbound-cidrs",
            "10.0.0.0/8"
        ])
    );
    let (_, r) = run(&format!(
        "{NAMESPACES}{}",
        deployment(
            "foo",
            "traffic.sidecar.istio.io/excludeOutboundIPRanges: \"10.0.0/8\""
        )
    ));
    let errors = r.expect_err("bad CIDR");
    assert!(
        errors[0].contains("excludeOutboundIPRanges") && errors[0].contains("\"10.0.0/8\""),
        "{errors:?}"
    );
}

#[test]
fn every_kind_with_a_pod_template_and_lists_are_covered() {
    let yaml = format!(
        "{NAMESPACES}
---
apiVersion: v1
kind: Pod
metadata: {{name: p, namespace: foo}}
spec: {{containers: [{{name: c, image: x}}]}}
---
apiVersion: batch/v1
kind: CronJob
metadata: {{name: cj, namespace: foo}}
spec:
  schedule: '* * * * *'
  jobTemplate: {{spec: {{template: {{spec: {{restartPolicy: Never, containers: [{{name: c, image: x}}]}}}}}}}}
---
apiVersion: v1
kind: List
items:
- apiVersion: apps/v1
  kind: StatefulSet
  metadata: {{name: s, namespace: foo}}
  spec: {{serviceName: s, selector: {{matchLabels: {{a: b}}}}, template: {{metadata: {{labels: {{a: b}}}}, spec: {{containers: [{{name: c, image: x}}]}}}}}}
- apiVersion: v1
  kind: Pod
  metadata: {{name: host, namespace: foo}}
  spec: {{hostNetwork: true, containers: [{{name: c, image: x}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: svc, namespace: foo}}
spec: {{ports: [{{port: 80}}]}}
"
    );
    let (d, r) = run(&yaml);
    let report = r.expect("injects");
    let got: Vec<(String, bool)> = report
        .decisions
        .iter()
        .map(|d| (d.object.clone(), matches!(d.action, Action::Injected(_))))
        .collect();
    assert_eq!(
        got,
        [
            ("Pod foo/p".to_string(), true),
            ("CronJob foo/cj".to_string(), true),
            ("StatefulSet foo/s".to_string(), true),
            ("Pod foo/host".to_string(), false),
        ]
    );
    assert_eq!(names(&d[2]["spec"]["containers"]), ["c", "istio-proxy"]);
    assert_eq!(
        names(&d[3]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]),
        ["c", "istio-proxy"]
    );
    assert_eq!(d[5], docs(&yaml)[5], "the Service is untouched");
}

#[test]
fn a_template_of_the_wrong_shape_is_an_error_and_is_left_unchanged() {
    let yaml = format!(
        "{NAMESPACES}
---
apiVersion: v1
kind: Pod
metadata: {{name: p, namespace: foo}}
spec: {{containers: [{{name: c, image: x}}], volumes: {{not: a-list}}}}
"
    );
    let (d, r) = run(&yaml);
    let errors = r.expect_err("bad shape");
    assert_eq!(errors, ["Pod foo/p: spec.volumes: must be a list"]);
    assert_eq!(d, docs(&yaml));
}

#[test]
fn the_default_proxy_image_is_the_envoy_release_the_scripts_pin() {
    let script = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-envoy.sh"),
    )
    .expect("scripts/install-envoy.sh");
    let pinned = script
        .lines()
        .find_map(|l| l.strip_prefix("ENVOY_VERSION=\"${ENVOY_VERSION:-"))
        .and_then(|rest| rest.strip_suffix("}\""))
        .expect("ENVOY_VERSION line");
    assert_eq!(pinned, template::PINNED_ENVOY_VERSION);
}
