//! `serve --kube` as an operator runs it: the built binary, pointed by a
//! kubeconfig with a plain-http server URL at the API server stand-in
//! (`e2e::apiserver`), and stock Envoys bootstrapped with `xds-server
//! bootstrap`. What the cluster says must reach a connected Envoy's config:
//! every kind created, changed and deleted, through watch gaps and 410
//! compactions, with the Istio kinds at older versions; readiness waits
//! for every first list; a sidecar enrolls with its service-account token;
//! replicas sharing `--ca-secret` share one root.
//!
//! Tests that start Envoy need it: without it they fail, unless the run
//! opts out with `XDS_SKIP_ENVOY=1` (see `e2e::require_envoy`).

#[path = "kube/support.rs"]
mod support;

use crds::destination_rule::{ClientTlsMode, DestinationRule};
use crds::peer_authentication::{MtlsMode, MutualTls, PeerAuthentication};
use e2e::ScratchDir;
use e2e::apiserver::{ApiServer, ApiServerOptions, Kind, RecordedRequest};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use support::{
    DEADLINE, HTTPBIN, Mesh, SLEEP, Serve, Sidecar, chains_are, destination_rule, endpoints_are,
    has_cluster, namespace, no_cluster, outbound, peer_authentication, pod, service, upstream_is,
};

/// `serve` is not ready, for any kind, until that kind's first list is
/// answered; then it is.
#[tokio::test]
async fn readiness_waits_for_every_kinds_first_list() {
    let scratch = ScratchDir::new("kube-readiness").expect("scratch dir");
    for kind in Kind::WATCHED {
        let api = ApiServer::start(ApiServerOptions::default())
            .await
            .expect("the stand-in starts");
        api.apply(&namespace("foo")).expect("apply");
        api.hold_lists(kind);
        let name = format!("serve-{}", kind.name());
        let mut serve = Serve::spawn(
            &api,
            scratch.path(),
            &name,
            &scratch.path().join(&name),
            &[],
        );
        api.wait_request(0, DEADLINE, |r| r.is_list_of(kind))
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: the first list: {e:#}\n{}", serve.log()));
        let status = serve.readyz().await;
        assert_eq!(
            status,
            503,
            "{kind:?}: /readyz with its first list held\n{}",
            serve.log()
        );
        api.release_lists(kind);
        serve.wait_ready().await;
        serve.stop().await;
    }
}

#[tokio::test]
async fn services_created_changed_and_deleted_reach_envoy() {
    let Some(mut mesh) = Mesh::start(
        "services_created_changed_and_deleted_reach_envoy",
        ApiServerOptions::default(),
        &[SLEEP],
    )
    .await
    else {
        return;
    };
    let httpbin = outbound(8000, "httpbin", "foo");
    mesh.sidecar(SLEEP)
        .wait_for("the listed mesh", has_cluster(&httpbin))
        .await;

    mesh.api
        .apply(&service("foo", "web", "web", 9000, 8080))
        .expect("create");
    let web_9000 = outbound(9000, "web", "foo");
    mesh.sidecar(SLEEP)
        .wait_for("a new Service", has_cluster(&web_9000))
        .await;

    mesh.api
        .apply(&service("foo", "web", "web", 9001, 8080))
        .expect("change");
    let web_9001 = outbound(9001, "web", "foo");
    let sleep = mesh.sidecar(SLEEP);
    sleep.wait_for("the new port", has_cluster(&web_9001)).await;
    sleep
        .wait_for("the old port gone", no_cluster(&web_9000))
        .await;

    mesh.api.delete::<Service>("foo", "web").expect("delete");
    let sleep = mesh.sidecar(SLEEP);
    sleep
        .wait_for("the Service gone", no_cluster(&web_9001))
        .await;
    sleep
        .wait_for("the others kept", has_cluster(&httpbin))
        .await;
    mesh.stop().await;
}

#[tokio::test]
async fn pods_created_made_ready_moved_and_deleted_reach_envoy_as_endpoints() {
    let Some(mut mesh) = Mesh::start(
        "pods_created_made_ready_moved_and_deleted_reach_envoy_as_endpoints",
        ApiServerOptions::default(),
        &[SLEEP],
    )
    .await
    else {
        return;
    };
    let httpbin = outbound(8000, "httpbin", "foo");
    let httpbin_ep = vec![format!("{}:8080", mesh.ip(1))];
    mesh.sidecar(SLEEP)
        .wait_for("httpbin's endpoint", endpoints_are(&httpbin, &httpbin_ep))
        .await;

    // A second httpbin pod, not ready yet: no endpoint; ready: one.
    let ip3 = mesh.ip(3);
    mesh.api
        .apply(&pod("foo", "httpbin-1", "httpbin", ip3, 8080, false))
        .expect("create");
    let both = vec![format!("{}:8080", mesh.ip(1)), format!("{ip3}:8080")];
    mesh.api
        .set_pod_ready("foo", "httpbin-1", true)
        .expect("ready");
    mesh.sidecar(SLEEP)
        .wait_for("the ready pod an endpoint", endpoints_are(&httpbin, &both))
        .await;
    mesh.api
        .set_pod_ready("foo", "httpbin-1", false)
        .expect("not ready");
    mesh.sidecar(SLEEP)
        .wait_for(
            "the unready pod no endpoint",
            endpoints_are(&httpbin, &httpbin_ep),
        )
        .await;

    // A new IP moves the endpoint.
    let ip4 = mesh.ip(4);
    mesh.api
        .set_pod_ip("foo", "httpbin-1", Some(&ip4.to_string()))
        .expect("new IP");
    mesh.api
        .set_pod_ready("foo", "httpbin-1", true)
        .expect("ready");
    let moved = vec![format!("{}:8080", mesh.ip(1)), format!("{ip4}:8080")];
    mesh.sidecar(SLEEP)
        .wait_for(
            "the endpoint at the new IP",
            endpoints_are(&httpbin, &moved),
        )
        .await;

    // A pod that has finished leaves the source's field selector
    // (status.phase!=Succeeded,status.phase!=Failed): the server sends it
    // as DELETED.
    mesh.api
        .update::<Pod>("foo", "httpbin-1", |p| {
            if let Some(status) = p.status.as_mut() {
                status.phase = Some("Failed".into());
            }
        })
        .expect("failed");
    mesh.sidecar(SLEEP)
        .wait_for("the failed pod gone", endpoints_are(&httpbin, &httpbin_ep))
        .await;
    mesh.api
        .set_pod_ready("foo", "httpbin-1", true)
        .expect("running again");
    mesh.sidecar(SLEEP)
        .wait_for("the running pod back", endpoints_are(&httpbin, &moved))
        .await;

    mesh.api.delete::<Pod>("foo", "httpbin-1").expect("delete");
    mesh.sidecar(SLEEP)
        .wait_for("the deleted pod gone", endpoints_are(&httpbin, &httpbin_ep))
        .await;
    mesh.stop().await;
}

#[tokio::test]
async fn peer_authentication_created_changed_and_deleted_reaches_the_server_sidecar() {
    let Some(mut mesh) = Mesh::start(
        "peer_authentication_created_changed_and_deleted_reaches_the_server_sidecar",
        ApiServerOptions::default(),
        &[HTTPBIN],
    )
    .await
    else {
        return;
    };
    let inbound = mesh.httpbin_inbound();
    let permissive: &[&str] = &["mtls", "plaintext"];
    mesh.sidecar(HTTPBIN)
        .wait_for("PERMISSIVE by default", chains_are(&inbound, permissive))
        .await;

    let pa = |mode| peer_authentication("foo", "httpbin", "httpbin", mode);
    mesh.api.apply(&pa(MtlsMode::Strict)).expect("create");
    mesh.sidecar(HTTPBIN)
        .wait_for("STRICT: mTLS only", chains_are(&inbound, &["mtls"]))
        .await;
    mesh.api.apply(&pa(MtlsMode::Disable)).expect("change");
    mesh.sidecar(HTTPBIN)
        .wait_for(
            "DISABLE: plaintext only",
            chains_are(&inbound, &["plaintext"]),
        )
        .await;
    mesh.api
        .delete::<PeerAuthentication>("foo", "httpbin")
        .expect("delete");
    mesh.sidecar(HTTPBIN)
        .wait_for(
            "deleted: PERMISSIVE again",
            chains_are(&inbound, permissive),
        )
        .await;
    mesh.stop().await;
}

#[tokio::test]
async fn destination_rule_created_changed_and_deleted_reaches_the_client_sidecar() {
    let Some(mut mesh) = Mesh::start(
        "destination_rule_created_changed_and_deleted_reaches_the_client_sidecar",
        ApiServerOptions::default(),
        &[SLEEP],
    )
    .await
    else {
        return;
    };
    let httpbin = outbound(8000, "httpbin", "foo");
    mesh.sidecar(SLEEP)
        .wait_for("auto mTLS by default", upstream_is(&httpbin, "auto"))
        .await;
    let dr = |mode| destination_rule("foo", "httpbin", "httpbin.foo.svc.cluster.local", mode);
    mesh.api.apply(&dr(ClientTlsMode::Disable)).expect("create");
    mesh.sidecar(SLEEP)
        .wait_for(
            "DISABLE: no transport socket",
            upstream_is(&httpbin, "plaintext"),
        )
        .await;
    mesh.api
        .apply(&dr(ClientTlsMode::IstioMutual))
        .expect("change");
    mesh.sidecar(SLEEP)
        .wait_for("ISTIO_MUTUAL: TLS", upstream_is(&httpbin, "tls"))
        .await;
    mesh.api
        .delete::<DestinationRule>("foo", "httpbin")
        .expect("delete");
    mesh.sidecar(SLEEP)
        .wait_for("deleted: auto mTLS again", upstream_is(&httpbin, "auto"))
        .await;
    mesh.stop().await;
}

/// Istio's CRDs installed after `serve` started: ready without them (the
/// kinds count as empty), and their objects take effect once discovery,
/// retried in the background, finds them.
#[tokio::test]
async fn istio_kinds_installed_after_start_are_picked_up() {
    let Some(mut mesh) = Mesh::start(
        "istio_kinds_installed_after_start_are_picked_up",
        ApiServerOptions {
            peer_authentication_versions: Vec::new(),
            destination_rule_versions: Vec::new(),
            ..ApiServerOptions::default()
        },
        &[HTTPBIN],
    )
    .await
    else {
        return;
    };
    let inbound = mesh.httpbin_inbound();
    mesh.sidecar(HTTPBIN)
        .wait_for(
            "PERMISSIVE without the CRDs",
            chains_are(&inbound, &["mtls", "plaintext"]),
        )
        .await;
    mesh.api
        .serve_versions(Kind::PeerAuthentication, &["v1", "v1beta1"])
        .expect("the CRD installed");
    mesh.api
        .apply(&peer_authentication(
            "foo",
            "httpbin",
            "httpbin",
            MtlsMode::Strict,
        ))
        .expect("create");
    mesh.sidecar(HTTPBIN)
        .wait_for("STRICT once discovered", chains_are(&inbound, &["mtls"]))
        .await;
    mesh.stop().await;
}

/// An invalid change to a policy is reported in /debug/configz and its
/// last valid version stays in force; a valid one applies again.
#[tokio::test]
async fn an_invalid_policy_keeps_its_last_good_version() {
    let Some(mut mesh) = Mesh::start(
        "an_invalid_policy_keeps_its_last_good_version",
        ApiServerOptions::default(),
        &[HTTPBIN],
    )
    .await
    else {
        return;
    };
    let inbound = mesh.httpbin_inbound();
    mesh.api
        .apply(&peer_authentication(
            "foo",
            "httpbin",
            "httpbin",
            MtlsMode::Strict,
        ))
        .expect("create");
    mesh.sidecar(HTTPBIN)
        .wait_for("STRICT", chains_are(&inbound, &["mtls"]))
        .await;
    mesh.api
        .update::<PeerAuthentication>("foo", "httpbin", |pa| {
            pa.spec.mtls = Some(MutualTls {
                mode: MtlsMode::Disable,
            });
            // A port-level mode on a port that is no number: invalid.
            pa.spec.port_level_mtls = Some(BTreeMap::from([(
                "http".to_string(),
                MutualTls {
                    mode: MtlsMode::Disable,
                },
            )]));
        })
        .expect("an invalid change");
    let serve = &mesh.serve;
    support::eventually(DEADLINE, "the rejection in /debug/configz", || async {
        let configz = serve.debug_json("/debug/configz").await?;
        let rejected = configz["rejected"].as_array().cloned().unwrap_or_default();
        if rejected
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.contains("foo/httpbin")))
        {
            Ok(())
        } else {
            Err(format!("rejected: {rejected:?}"))
        }
    })
    .await;
    // Rejected and published: Envoy has what the server has now.
    mesh.sidecar(HTTPBIN)
        .wait_for("still STRICT", chains_are(&inbound, &["mtls"]))
        .await;
    mesh.api
        .apply(&peer_authentication(
            "foo",
            "httpbin",
            "httpbin",
            MtlsMode::Disable,
        ))
        .expect("a valid change");
    mesh.sidecar(HTTPBIN)
        .wait_for(
            "the valid change applies",
            chains_are(&inbound, &["plaintext"]),
        )
        .await;
    mesh.stop().await;
}

/// A changed cluster must not wait out Envoy's EDS initial fetch timeout
/// (15 s) before it takes effect: Envoy warms a changed EDS cluster until
/// it receives its endpoints again, so the server has to send them after
/// the cluster, even when they did not change (Istio and go-control-plane
/// do); `cluster.NAME.init_fetch_timeout` counts a cluster that gave up
/// waiting. State of the world and delta.
#[tokio::test]
async fn a_changed_cluster_takes_effect_without_waiting_for_the_eds_fetch_timeout() {
    for (test, flags) in [
        (
            "a_changed_cluster_takes_effect_without_waiting_for_the_eds_fetch_timeout",
            &[][..],
        ),
        (
            "a_changed_cluster_takes_effect_without_waiting_for_the_eds_fetch_timeout_delta",
            &["--delta"][..],
        ),
    ] {
        let Some(mut mesh) =
            Mesh::start_with(test, ApiServerOptions::default(), &[SLEEP], flags).await
        else {
            return;
        };
        let httpbin = outbound(8000, "httpbin", "foo");
        mesh.sidecar(SLEEP)
            .wait_for("auto mTLS by default", upstream_is(&httpbin, "auto"))
            .await;
        mesh.api
            .apply(&destination_rule(
                "foo",
                "httpbin",
                "httpbin.foo.svc.cluster.local",
                ClientTlsMode::Disable,
            ))
            .expect("create");
        mesh.sidecar(SLEEP)
            .wait_for(
                "the changed cluster active",
                upstream_is(&httpbin, "plaintext"),
            )
            .await;
        // Not a clock: Envoy counts a cluster that gave up waiting for its
        // endpoints.
        let timeouts = mesh
            .sidecar(SLEEP)
            .admin
            .stat(&format!("cluster.{httpbin}.init_fetch_timeout"))
            .await
            .expect("Envoy stats");
        assert_eq!(
            timeouts,
            Some(0),
            "{test}: the cluster waited out its initial fetch timeout: its endpoints were not sent again"
        );
        mesh.stop().await;
    }
}

/// A namespace's services and pods reach Envoy with it, and go with it
/// (the stand-in deletes a namespace's content, as the namespace
/// controller does). A label change of a namespace changes nothing in
/// Kubernetes mode (sidecars are read from pod specs), so only create and
/// delete are checked.
#[tokio::test]
async fn a_namespace_created_and_deleted_takes_its_services_and_pods_along() {
    let Some(mut mesh) = Mesh::start(
        "a_namespace_created_and_deleted_takes_its_services_and_pods_along",
        ApiServerOptions::default(),
        &[SLEEP],
    )
    .await
    else {
        return;
    };
    let echo = outbound(7000, "echo", "bar");
    let ip5 = mesh.ip(5);
    mesh.api.apply(&namespace("bar")).expect("create");
    mesh.api
        .apply(&service("bar", "echo", "echo", 7000, 8080))
        .expect("create");
    mesh.api
        .apply(&pod("bar", "echo-0", "echo", ip5, 8080, true))
        .expect("create");
    let want = vec![format!("{ip5}:8080")];
    mesh.sidecar(SLEEP)
        .wait_for("bar's service and pod", endpoints_are(&echo, &want))
        .await;
    mesh.api.delete::<Namespace>("", "bar").expect("delete");
    mesh.sidecar(SLEEP)
        .wait_for("bar's service gone", no_cluster(&echo))
        .await;
    mesh.stop().await;
}

/// Cuts every watch off (new watches are held, as in a partition), makes
/// `changes` while they are, optionally compacts, then lets them through.
/// Returns the number of the first request after the cut.
async fn partition(mesh: &Mesh, compact: bool, changes: impl FnOnce(&ApiServer)) -> usize {
    for kind in Kind::WATCHED {
        mesh.api.hold_watches(kind);
    }
    let from = mesh.api.request_count();
    assert!(mesh.api.end_watches() >= Kind::WATCHED.len());
    for kind in Kind::WATCHED {
        mesh.api
            .wait_request(from, DEADLINE, |r| r.is_watch_of(kind))
            .await
            .unwrap_or_else(|e| panic!("{kind:?} watched again: {e:#}"));
    }
    changes(&mesh.api);
    if compact {
        mesh.api.compact();
    }
    for kind in Kind::WATCHED {
        mesh.api.release_watches(kind);
    }
    from
}

#[tokio::test]
async fn changes_during_a_watch_gap_and_after_a_compaction_reach_envoy() {
    let Some(mut mesh) = Mesh::start(
        "changes_during_a_watch_gap_and_after_a_compaction_reach_envoy",
        ApiServerOptions::default(),
        &[SLEEP],
    )
    .await
    else {
        return;
    };
    mesh.api
        .apply(&service("foo", "web-a", "web", 9100, 8080))
        .expect("create");
    let (a, b, c) = (
        outbound(9100, "web-a", "foo"),
        outbound(9200, "web-b", "foo"),
        outbound(9300, "web-c", "foo"),
    );
    mesh.sidecar(SLEEP).wait_for("web-a", has_cluster(&a)).await;

    // The watches end and resume from where they were: the events of the
    // gap are replayed, nothing is relisted.
    let from = partition(&mesh, false, |api| {
        api.delete::<Service>("foo", "web-a").expect("delete");
        api.apply(&service("foo", "web-b", "web", 9200, 8080))
            .expect("create");
    })
    .await;
    let sleep = mesh.sidecar(SLEEP);
    sleep
        .wait_for("web-b, created in the gap", has_cluster(&b))
        .await;
    sleep
        .wait_for("web-a, deleted in the gap", no_cluster(&a))
        .await;
    let relists: Vec<RecordedRequest> = mesh
        .api
        .requests_since(from)
        .into_iter()
        .filter(|r| r.is_list_of(Kind::Service))
        .collect();
    assert_eq!(relists, Vec::new(), "resumed without a relist");

    // Compacted meanwhile: the resumed watch gets 410, the source relists,
    // and an object deleted in the gap disappears.
    let from = partition(&mesh, true, |api| {
        api.delete::<Service>("foo", "web-b").expect("delete");
        api.apply(&service("foo", "web-c", "web", 9300, 8080))
            .expect("create");
    })
    .await;
    let sleep = mesh.sidecar(SLEEP);
    sleep
        .wait_for("web-c, created in the gap", has_cluster(&c))
        .await;
    sleep
        .wait_for("web-b, deleted in the gap", no_cluster(&b))
        .await;
    let relisted = mesh
        .api
        .requests_since(from)
        .iter()
        .any(|r| r.is_list_of(Kind::Service));
    assert!(relisted, "a relist after the 410");
    mesh.stop().await;
}

/// Istio's older CRDs: DestinationRule served at v1alpha3 only,
/// PeerAuthentication at v1beta1 only. Both are found, watched there, and
/// take effect.
#[tokio::test]
async fn istio_kinds_served_only_at_older_versions_take_effect() {
    let Some(mut mesh) = Mesh::start(
        "istio_kinds_served_only_at_older_versions_take_effect",
        ApiServerOptions {
            peer_authentication_versions: vec!["v1beta1".into()],
            destination_rule_versions: vec!["v1alpha3".into()],
            ..ApiServerOptions::default()
        },
        &[HTTPBIN, SLEEP],
    )
    .await
    else {
        return;
    };
    let inbound = mesh.httpbin_inbound();
    mesh.api
        .apply(&peer_authentication(
            "foo",
            "httpbin",
            "httpbin",
            MtlsMode::Strict,
        ))
        .expect("create");
    mesh.sidecar(HTTPBIN)
        .wait_for(
            "STRICT from a v1beta1 policy",
            chains_are(&inbound, &["mtls"]),
        )
        .await;
    let httpbin = outbound(8000, "httpbin", "foo");
    mesh.api
        .apply(&destination_rule(
            "foo",
            "httpbin",
            "httpbin.foo.svc.cluster.local",
            ClientTlsMode::Disable,
        ))
        .expect("create");
    mesh.sidecar(SLEEP)
        .wait_for(
            "DISABLE from a v1alpha3 rule",
            upstream_is(&httpbin, "plaintext"),
        )
        .await;
    for (kind, path) in [
        (
            Kind::PeerAuthentication,
            "/apis/security.istio.io/v1beta1/peerauthentications",
        ),
        (
            Kind::DestinationRule,
            "/apis/networking.istio.io/v1alpha3/destinationrules",
        ),
    ] {
        let paths: Vec<String> = mesh
            .api
            .requests()
            .into_iter()
            .filter(|r| r.is_collection_of(kind))
            .map(|r| r.path().to_string())
            .collect();
        assert!(!paths.is_empty(), "{kind:?} was listed and watched");
        assert!(paths.iter().all(|p| p == path), "{kind:?}: {paths:?}");
    }
    mesh.stop().await;
}

/// A pod's init step enrolls as in a cluster: its projected token (known
/// to the stand-in's TokenReview, for the audience istio-ca) is exchanged
/// at the certificate endpoint for the bootstrap client certificate,
/// trusting the root `serve` published into the pod's namespace (the
/// ConfigMap istio-ca-root-cert); Envoy then gets its config over that
/// identity. A token the API server does not know gets nothing.
#[tokio::test]
async fn a_sidecar_enrolls_with_its_service_account_token() {
    let Some(mut mesh) = Mesh::start(
        "a_sidecar_enrolls_with_its_service_account_token",
        ApiServerOptions::default(),
        &[],
    )
    .await
    else {
        return;
    };
    let published = "/api/v1/namespaces/foo/configmaps/istio-ca-root-cert";
    mesh.api
        .wait_request(0, DEADLINE, |r| {
            r.method == "PATCH" && r.path() == published && matches!(r.status, Some(200 | 201))
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "serve publishes the root into foo: {e:#}\n{}",
                mesh.serve.log()
            )
        });
    let map: ConfigMap = mesh
        .api
        .get("foo", "istio-ca-root-cert")
        .expect("get")
        .expect("the root ConfigMap");
    let root = map
        .data
        .and_then(|d| d.get("root-cert.pem").cloned())
        .expect("root-cert.pem");
    let root_file = mesh.dir.join("root-cert.pem");
    std::fs::write(&root_file, &root).expect("root file");
    let write_token = |name: &str, token: &str| {
        let path = mesh.dir.join(name);
        std::fs::write(&path, token).expect("token file");
        path
    };
    let sleep = mesh.sleep();

    let forged = write_token("forged-token", "not-a-token-the-cluster-issued");
    let reviews_before = token_reviews(&mesh.api);
    let refused = Sidecar::enroll(
        &mesh.envoy,
        &mesh.serve,
        &mesh.dir,
        &sleep,
        &forged,
        &root_file,
    )
    .await
    .err()
    .expect("a forged token gets no certificate");
    assert!(
        token_reviews(&mesh.api) > reviews_before,
        "the token was reviewed: {refused}"
    );

    mesh.api.add_token(
        "sleep-token",
        "system:serviceaccount:foo:sleep",
        &["istio-ca"],
    );
    let token = write_token("sleep-token", "sleep-token");
    let sidecar = Sidecar::enroll(
        &mesh.envoy,
        &mesh.serve,
        &mesh.dir,
        &sleep,
        &token,
        &root_file,
    )
    .await
    .unwrap_or_else(|e| panic!("enrollment: {e}\n{}", mesh.serve.log()));
    mesh.sidecars.push(sidecar);
    let httpbin = outbound(8000, "httpbin", "foo");
    mesh.sidecar(SLEEP)
        .wait_for("config over the enrolled identity", has_cluster(&httpbin))
        .await;
    mesh.stop().await;
}

fn token_reviews(api: &ApiServer) -> usize {
    api.requests()
        .iter()
        .filter(|r| {
            r.method == "POST"
                && r.path() == "/apis/authentication.k8s.io/v1/tokenreviews"
                && r.status == Some(201)
        })
        .count()
}

/// The root of `secret`'s `ca-cert.pem`.
fn secret_root(api: &ApiServer) -> String {
    let secret: Secret = api
        .get("istio-system", "xds-server-ca")
        .expect("get")
        .expect("the CA Secret exists");
    let data = secret.data.unwrap_or_default();
    for key in ["ca-cert.pem", "ca-key.pem"] {
        assert!(data.contains_key(key), "the CA Secret has {key}");
    }
    String::from_utf8(data["ca-cert.pem"].0.clone()).expect("PEM text")
}

/// Whether the xDS server at `addr` presents a certificate that chains to
/// `root_pem` (a TLS handshake trusting only that root).
async fn xds_cert_chains_to(addr: SocketAddr, root_pem: &str) -> Result<(), String> {
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("root PEM: {e}"))?;
        roots.add(cert).map_err(|e| format!("root: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    // The client's side of the handshake ends once it has checked the
    // server's certificate (the server's refusal of a client without a
    // certificate comes after).
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map(|_| ())
        .map_err(|e| format!("TLS to {addr}: {e}"))
}

/// Two replicas starting at once with `--ca-secret` create one Secret
/// between them (one create wins, the other loads it), and a replica
/// started later loads it too: all three sign with its root.
#[tokio::test]
async fn replicas_with_a_ca_secret_share_one_root() {
    let scratch = ScratchDir::new("kube-ca-secret").expect("scratch dir");
    let dir = scratch.path();
    let api = ApiServer::start(ApiServerOptions::default())
        .await
        .expect("the stand-in starts");
    api.apply(&namespace("istio-system")).expect("apply");
    let flag = ["--ca-secret", "istio-system/xds-server-ca"];
    let mut first = Serve::spawn(&api, dir, "serve-1", &dir.join("state-1"), &flag);
    let mut second = Serve::spawn(&api, dir, "serve-2", &dir.join("state-2"), &flag);
    first.wait_ready().await;
    second.wait_ready().await;
    let secrets = "/api/v1/namespaces/istio-system/secrets";
    let creates = |api: &ApiServer| -> Vec<Option<u16>> {
        api.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path() == secrets)
            .map(|r| r.status)
            .collect()
    };
    let made = creates(&api);
    assert_eq!(
        made.iter().filter(|s| **s == Some(201)).count(),
        1,
        "one create wins: {made:?}"
    );
    assert!(
        made.iter().all(|s| matches!(s, Some(201 | 409))),
        "a losing create is a 409: {made:?}"
    );
    let root = secret_root(&api);
    let rv = api
        .get::<Secret>("istio-system", "xds-server-ca")
        .expect("get")
        .and_then(|s| s.metadata.resource_version);

    let mut third = Serve::spawn(&api, dir, "serve-3", &dir.join("state-3"), &flag);
    third.wait_ready().await;
    assert_eq!(creates(&api), made, "a later replica creates nothing");
    assert_eq!(
        api.get::<Secret>("istio-system", "xds-server-ca")
            .expect("get")
            .and_then(|s| s.metadata.resource_version),
        rv,
        "the Secret is not written again"
    );
    for serve in [&first, &second, &third] {
        xds_cert_chains_to(serve.xds_addr, &root)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", serve.log()));
    }
    for serve in [first, second, third] {
        serve.stop().await;
    }
}
