//! The control plane survives faults and its own restarts, and the
//! sidecars' traffic does not notice: `xds-server serve` run as the
//! operator runs it (child processes, one or two replicas on one state
//! directory), stock Envoys bootstrapped with `xds-server bootstrap`, and a
//! steady loop of sidecar-to-sidecar probes (sleep.{foo,bar} ->
//! httpbin.{foo,bar}:8000, each checked for 200 over mTLS with both
//! identities) running through every fault. Needs Envoy: without it these
//! tests fail, unless the run opts out with `XDS_SKIP_ENVOY=1`.
//!
//! The harness is `e2e::external`; these tests live in this package because
//! they run the built binary (`CARGO_BIN_EXE_xds-server`).

use e2e::external::{ExternalMesh, ExternalOptions, ProbeLoop, copy_dir};
use e2e::mesh::{STAGE0, STAGE1, assert_matrix};
use e2e::{ScratchDir, require_envoy, workspace_root};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;

const CONVERGE: Duration = Duration::from_secs(60);
/// A probe round (four probes) every 100 ms, at most this many rounds.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
const MAX_ROUNDS: usize = 1500;
/// Rounds to wait for; each takes ~0.1 s, so this bounds a wait generously.
const ROUNDS_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `serve` may take to exit on SIGTERM or SIGINT: its grace for
/// open streams is 5 s, after which it stops regardless.
const EXIT_BOUND: Duration = Duration::from_secs(5);

/// The Envoy log line of an ADS stream the server ended cleanly on
/// shutdown: gRPC status 14 (UNAVAILABLE) with the server's message, as
/// Envoy prints it (`closed: 14, xds-server%20is%20shutting%20down`).
fn clean_closes(envoy_log: &str) -> usize {
    envoy_log
        .lines()
        .filter(|l| {
            l.contains("gRPC config stream")
                && l.contains("closed: 14, ")
                && l.contains(&xds_server::server::SHUTDOWN_MESSAGE.replace(' ', "%20"))
        })
        .count()
}

/// The Envoy process of each sidecar, to check at the end that none restarted.
type EnvoyPids = BTreeMap<String, Option<u32>>;

/// Starts the mesh and waits until every sidecar syncs; `None` when the
/// test is skipped for want of Envoy.
async fn start(
    test: &str,
    scratch: &ScratchDir,
    replicas: usize,
    config_dirs: Vec<PathBuf>,
) -> Option<(ExternalMesh, EnvoyPids)> {
    let envoy = require_envoy(test)?;
    let mut mesh = ExternalMesh::start(ExternalOptions {
        xds_server: PathBuf::from(env!("CARGO_BIN_EXE_xds-server")),
        envoy,
        config_dirs,
        work_dir: scratch.path().join("work"),
        replicas,
    })
    .await
    .expect("the control plane, sidecars and apps start");
    let all: Vec<usize> = (0..replicas).collect();
    mesh.wait_converged(&all, CONVERGE)
        .await
        .expect("every sidecar syncs");
    assert_eq!(mesh.sidecars.len(), 4, "the article's four sidecars");
    let pids = mesh.envoy_pids();
    Some((mesh, pids))
}

fn base() -> Vec<PathBuf> {
    vec![workspace_root().join("examples/article/base")]
}

/// Starts the steady probe loop and lets it prove the traffic works
/// before any fault.
async fn steady_probes(mesh: &ExternalMesh) -> ProbeLoop {
    let specs = mesh.sidecar_probes();
    assert_eq!(specs.len(), 4, "sleep.{{foo,bar}} -> httpbin.{{foo,bar}}");
    let probes = ProbeLoop::start(specs, PROBE_INTERVAL, MAX_ROUNDS);
    assert_rounds_pass(&probes, 5, "before any fault").await;
    probes
}

/// Waits for `rounds` more probe rounds; none may have failed so far.
async fn assert_rounds_pass(probes: &ProbeLoop, rounds: usize, when: &str) {
    probes
        .wait_rounds(rounds, ROUNDS_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("probe rounds {when}: {e:#}"));
    assert_eq!(probes.failures(), Vec::<String>::new(), "{when}");
}

/// Every test's end: `rounds` more probe rounds after the fault, then no
/// probe failed (at least `at_least` rounds ran), the Envoys are the ones
/// started with no update rejected, and the mesh stops.
async fn finish(
    mut mesh: ExternalMesh,
    pids: &EnvoyPids,
    probes: ProbeLoop,
    rounds: usize,
    at_least: usize,
) {
    probes
        .wait_rounds(rounds, ROUNDS_TIMEOUT)
        .await
        .expect("probe rounds after the fault");
    assert_no_failed_probe(probes, at_least).await;
    assert_envoys_untouched(&mut mesh, pids).await;
    mesh.stop().await;
}

/// Stops the loop: no probe may have failed, and it must have run.
async fn assert_no_failed_probe(probes: ProbeLoop, at_least: usize) -> usize {
    let log = probes.stop().await;
    assert!(
        log.failures.is_empty(),
        "{} of {} probes failed:\n{}",
        log.failures.len(),
        log.probes,
        log.failures.join("\n")
    );
    assert!(
        log.rounds >= at_least,
        "only {} probe rounds ran (want {at_least})",
        log.rounds
    );
    log.probes
}

/// The same Envoy processes as at `pids`, none exited, and no xDS update
/// ever rejected.
async fn assert_envoys_untouched(mesh: &mut ExternalMesh, pids: &EnvoyPids) {
    let exited = mesh.exited_envoys().await;
    assert!(exited.is_empty(), "Envoys exited: {exited:#?}");
    assert_eq!(&mesh.envoy_pids(), pids, "the same Envoy processes");
    let rejected = mesh.rejected_updates().await.expect("Envoy stats");
    assert!(rejected.is_empty(), "Envoy rejected updates: {rejected:#?}");
}

/// Polls until every sidecar's Envoy reports its ADS stream down.
async fn wait_all_disconnected(mesh: &ExternalMesh) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let states = mesh.connected_states().await;
        if states.values().all(|s| *s == Some(0)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Envoys still report a control plane: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every Envoy is SYNCED on replica `i`, then checks its
/// `/debug/syncz` says so with no NACK; `what` says why they converge.
async fn converge_on(mesh: &mut ExternalMesh, i: usize, what: &str) {
    mesh.wait_converged(&[i], CONVERGE)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    assert_syncz_clean(mesh, i).await;
}

/// Every proxy in replica `i`'s `/debug/syncz` SYNCED, no NACK recorded.
async fn assert_syncz_clean(mesh: &ExternalMesh, i: usize) {
    let proxies = mesh.proxies_on(i).await.expect("syncz");
    assert_eq!(
        proxies.len(),
        4,
        "four proxies on replica {i}: {proxies:#?}"
    );
    for p in &proxies {
        assert_eq!(p["status"], "SYNCED", "{p}");
        assert_eq!(p["up_to_date"], true, "{p}");
        let types = p["types"].as_object().expect("types");
        for (kind, t) in types {
            assert_eq!(t["status"], "SYNCED", "{kind} of {p}");
            assert!(t["last_nack"].is_null(), "{kind} of {p}: NACK");
        }
    }
}

/// (a) SIGTERM, then (after a restart) SIGINT: `serve` exits 0 promptly,
/// says every open stream ended cleanly, each Envoy saw its stream end with
/// UNAVAILABLE and the server's message (not a reset), and the sidecars
/// kept serving on their last config throughout, with no control plane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigint_end_every_stream_cleanly_and_traffic_continues() {
    let test = "sigterm_and_sigint_end_every_stream_cleanly_and_traffic_continues";
    let scratch = ScratchDir::new("faults-signals").expect("scratch dir");
    let Some((mut mesh, pids)) = start(test, &scratch, 1, base()).await else {
        return;
    };
    let probes = steady_probes(&mesh).await;

    for (round, signal) in ["TERM", "INT"].into_iter().enumerate() {
        mesh.signal_replica(0, signal).expect("signal serve");
        let (status, took) = mesh
            .wait_replica_exit(0, EXIT_BOUND + Duration::from_secs(5))
            .await
            .expect("serve exits");
        eprintln!("SIG{signal}: serve exited with {status} after {took:?}");
        assert!(status.success(), "SIG{signal}: exit status {status}");
        assert!(took < EXIT_BOUND, "SIG{signal}: took {took:?}");
        let log = mesh.replica_log(0);
        assert!(
            log.contains(&format!("signal=\"SIG{signal}\"")),
            "the log names the signal:\n{log}"
        );
        assert!(
            log.contains("every open stream ended cleanly") && log.contains("streams=4"),
            "the log says all four streams ended cleanly:\n{log}"
        );
        // Each Envoy saw its stream end with the server's status: one
        // clean close per signal so far (polled: Envoy may log it a moment
        // after the server is gone).
        for s in &mesh.sidecars {
            let deadline = Instant::now() + Duration::from_secs(10);
            while clean_closes(&mesh.envoy_log(&s.name)) <= round && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(
                clean_closes(&mesh.envoy_log(&s.name)),
                round + 1,
                "{}: its ADS stream ended with UNAVAILABLE from the server, not a reset",
                s.name
            );
        }
        wait_all_disconnected(&mesh).await;
        // Traffic with no control plane at all: the last config serves.
        assert_rounds_pass(&probes, 10, &format!("after SIG{signal}")).await;

        mesh.restart_replica(0).await.expect("serve starts again");
        converge_on(&mut mesh, 0, "every Envoy re-syncs").await;
    }
    finish(mesh, &pids, probes, 3, 30).await;
}

/// (b) SIGKILL: requests between sidecars keep succeeding on the last
/// config while no control plane runs; `serve` started again with the same
/// state directory, port and config gets every Envoy back, SYNCED with no
/// NACK (its /debug/syncz, and Envoy's own update_rejected counters), with
/// no failed probe during the whole sequence and the same root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_keeps_traffic_on_the_last_config_and_a_restart_resyncs_without_nack() {
    let test = "sigkill_keeps_traffic_on_the_last_config_and_a_restart_resyncs_without_nack";
    let scratch = ScratchDir::new("faults-sigkill").expect("scratch dir");
    let Some((mut mesh, pids)) = start(test, &scratch, 1, base()).await else {
        return;
    };
    let root = mesh.state_root_pem().expect("root on disk");
    let probes = steady_probes(&mesh).await;

    mesh.kill_replica(0).await.expect("SIGKILL serve");
    wait_all_disconnected(&mesh).await;
    assert_rounds_pass(&probes, 10, "with serve dead").await;

    let restarted = Instant::now();
    mesh.restart_replica(0).await.expect("serve starts again");
    converge_on(&mut mesh, 0, "every Envoy reconnects and re-syncs").await;
    eprintln!(
        "all four Envoys re-synced {:?} after the restart",
        restarted.elapsed()
    );
    assert!(
        mesh.replica_log(0).contains("loaded root CA"),
        "the restarted server loads the root it had"
    );
    assert_eq!(mesh.state_root_pem().expect("root on disk"), root);
    for s in &mesh.sidecars {
        let held = mesh
            .envoy_secret_pem(&s.name, "ROOTCA")
            .await
            .expect("ROOTCA");
        assert_eq!(held, root, "{}: trusts the one root", s.name);
    }
    finish(mesh, &pids, probes, 5, 20).await;
}

/// Whether `cert_pem`'s signature verifies with `root_pem`'s key.
fn signed_by(cert_pem: &str, root_pem: &str) -> bool {
    let der = |pem: &str| {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map(|(_, p)| p.contents)
            .expect("PEM")
    };
    let (cert_der, root_der) = (der(cert_pem), der(root_pem));
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).expect("certificate");
    let (_, root) = x509_parser::parse_x509_certificate(&root_der).expect("root");
    cert.verify_signature(Some(root.public_key())).is_ok()
}

/// The certificate `sidecar`'s Envoy holds, after checking that it trusts
/// `root` and that the certificate chains to it (`on`: the replica it got
/// them from).
async fn cert_from_root(mesh: &ExternalMesh, sidecar: &str, root: &str, on: usize) -> String {
    let trusted = mesh
        .envoy_secret_pem(sidecar, "ROOTCA")
        .await
        .expect("ROOTCA");
    let cert = mesh
        .envoy_secret_pem(sidecar, "default")
        .await
        .expect("certificate");
    assert_eq!(trusted, root, "{sidecar}: ROOTCA from replica {on}");
    assert!(signed_by(&cert, root), "{sidecar}: cert from replica {on}");
    cert
}

/// (c) Two replicas on one state directory, started at once on an empty
/// one: they settle on one root. Every bootstrap lists both; the replica
/// sleep.foo's Envoy is connected to is killed, and it (with every other
/// Envoy that was there) fails over to the other, which then shows all
/// four SYNCED. Certificates from both replicas chain to the one root, and
/// the probes never fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_fails_over_to_the_other_replica_and_both_replicas_share_one_root() {
    let test = "an_envoy_fails_over_to_the_other_replica_and_both_replicas_share_one_root";
    let scratch = ScratchDir::new("faults-replicas").expect("scratch dir");
    let Some((mut mesh, pids)) = start(test, &scratch, 2, base()).await else {
        return;
    };
    let created = (0..2)
        .filter(|&i| mesh.replica_log(i).contains("created a new root CA"))
        .count();
    assert_eq!(created, 1, "exactly one replica created the root");
    let root = mesh.state_root_pem().expect("root on disk");

    // Before: which replica each sidecar is on, what it trusts and holds.
    let mut before = BTreeMap::new();
    for s in &mesh.sidecars {
        let on = mesh.replica_of(&s.node_id).await.expect("connected");
        let cert = cert_from_root(&mesh, &s.name, &root, on).await;
        before.insert(s.name.clone(), (on, cert));
    }
    eprintln!(
        "before: {:?}",
        before.iter().map(|(k, v)| (k, v.0)).collect::<Vec<_>>()
    );
    let probes = steady_probes(&mesh).await;

    let target = "sleep-0.foo";
    let dead = before[target].0;
    let other = 1 - dead;
    mesh.kill_replica(dead).await.expect("SIGKILL the replica");
    let killed = Instant::now();
    converge_on(&mut mesh, other, "every Envoy is on the other replica").await;
    eprintln!(
        "all four Envoys SYNCED on replica {other} {:?} after replica {dead} was killed",
        killed.elapsed()
    );
    let node = mesh.sidecar(target).expect("sleep.foo").node_id.clone();
    assert_eq!(mesh.replica_of(&node).await, Some(other));

    for s in &mesh.sidecars {
        let cert = cert_from_root(&mesh, &s.name, &root, other).await;
        let (was_on, old_cert) = &before[&s.name];
        if *was_on == dead {
            assert_ne!(
                &cert, old_cert,
                "{}: moved, so it holds a certificate the other replica issued",
                s.name
            );
        }
    }
    finish(mesh, &pids, probes, 10, 15).await;
}

/// (d) Every Envoy reconnecting at once while the config changes: `serve`
/// is killed and started again, and at that moment the article's stage 1
/// (mesh-wide STRICT) lands in the watched config directory. Every Envoy
/// converges to the new config (the article matrix is stage 1's; every
/// proxy SYNCED), and sidecar-to-sidecar traffic never fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_change_while_every_envoy_reconnects_converges_to_the_new_config() {
    let test = "a_config_change_while_every_envoy_reconnects_converges_to_the_new_config";
    let scratch = ScratchDir::new("faults-reconnect-change").expect("scratch dir");
    let config = scratch.path().join("config");
    copy_dir(&workspace_root().join("examples/article/base"), &config).expect("copy base");
    let Some((mut mesh, pids)) = start(test, &scratch, 1, vec![config.clone()]).await else {
        return;
    };
    assert_matrix(&mesh.article_matrix().await, STAGE0);
    let probes = steady_probes(&mesh).await;

    mesh.kill_replica(0).await.expect("SIGKILL serve");
    mesh.spawn_replica_again(0).expect("start serve again");
    std::fs::copy(
        workspace_root().join("examples/article/mesh-strict/peer-authentication.yaml"),
        config.join("mesh-strict.yaml"),
    )
    .expect("add the mesh-wide STRICT policy");
    mesh.wait_ready(0).await.expect("serve is ready");

    // The server has the policy (whether it saw it at start or from the
    // watch), then every Envoy has acknowledged what it has now.
    let deadline = Instant::now() + CONVERGE;
    loop {
        let configz = e2e_configz(&mesh).await;
        let has_policy = configz["loaded"].as_array().is_some_and(|objects| {
            objects
                .iter()
                .any(|o| o["kind"] == "PeerAuthentication" && o["namespace"] == "istio-system")
        });
        if has_policy {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the policy was never loaded: {configz}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    converge_on(&mut mesh, 0, "every Envoy converges on the new config").await;
    assert_matrix(&mesh.article_matrix().await, STAGE1);
    finish(mesh, &pids, probes, 5, 10).await;
}

/// `/debug/configz` of replica 0.
async fn e2e_configz(mesh: &ExternalMesh) -> serde_json::Value {
    let debug = mesh.replicas[0].debug_addr;
    xds_server::runner::envoy::Admin::new(debug)
        .get_json("/debug/configz")
        .await
        .expect("configz")
}
