//! The capture runner's probes: what the article runs, `curl` inside the
//! client's pod, through whatever the pod's iptables and sidecar do with it:
//!
//! ```text
//! curl http://httpbin.foo:8000/ip -s -o /dev/null -w "%{http_code}"
//! ```
//!
//! curl's exit status 56 (connection reset) and 52 (closed without a
//! reply, what a client sidecar passes on when the server closes a
//! passthrough connection) are `reset`, 7 `refused`, 28 `timeout`. A 2xx
//! answer is then checked for mTLS: on an HTTP port by the
//! `X-Forwarded-Client-Cert` the server's sidecar set (`/headers`, naming
//! the client's SPIFFE ID); on a TCP port, which carries no headers, by the
//! TLS handshakes the client's sidecar completed on the service's cluster
//! during the probe. Ports of a pod that no Service targets are probed at
//! the pod's address (`POD.NAMESPACE:PORT` columns): a sidecar client sends
//! them through its `PassthroughCluster`, in plaintext.

use super::admin::Admin;
use super::matrix::{ProbeRow, parse_selector, selects, target_ports};
use super::pods::Pod;
use super::probe::xfcc_uri;
use crate::snapshots::State;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::process::Command;
use translator::model::Workload;

/// What the probes need of the running mesh: the pods and their sidecars'
/// admin APIs. (A trait, so this module does not import the runner that
/// calls it.)
pub(super) trait RunningPods: Sync {
    fn pod(&self, namespace: &str, pod: &str) -> Option<&Pod>;
    fn admin(&self, namespace: &str, pod: &str) -> Option<&Admin>;
}

/// How long one curl may take.
const CURL_TIMEOUT: Duration = Duration::from_secs(10);

/// What is probed.
#[derive(Clone, Debug)]
enum Target {
    /// A Service port, by name: `NAME.NS:PORT`.
    Service {
        si: usize,
        pi: usize,
        host: String,
        port: u16,
        http: bool,
        cluster: String,
    },
    /// A pod port no Service targets, at the pod's address.
    Pod {
        label: String,
        url_host: String,
        port: u16,
    },
}

impl Target {
    fn column(&self) -> String {
        match self {
            Target::Service { host, port, .. } => format!("{host}:{port}"),
            Target::Pod { label, port, .. } => format!("{label}:{port}"),
        }
    }

    fn url(&self, path: &str) -> String {
        match self {
            Target::Service { host, port, .. } => format!("http://{host}:{port}{path}"),
            Target::Pod { url_host, port, .. } => format!("http://{url_host}:{port}{path}"),
        }
    }
}

/// curl's exit status (None: it did not finish in time) and stdout.
async fn curl(netns: &str, args: &[String]) -> (Option<i32>, String) {
    let run = Command::new("ip")
        .args(["netns", "exec", netns, "curl"])
        .args(args)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(CURL_TIMEOUT, run).await {
        Ok(Ok(out)) => (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ),
        Ok(Err(e)) => {
            tracing::warn!(%netns, error = %e, "cannot run curl");
            (Some(-1), String::new())
        }
        Err(_) => (None, String::new()),
    }
}

/// The article's command's result in the matrix's words.
fn outcome(exit: Option<i32>, stdout: &str) -> String {
    match exit {
        Some(0) => stdout.trim().to_string(),
        Some(52 | 56) => "reset".into(),
        Some(7) => "refused".into(),
        Some(28) | None => "timeout".into(),
        Some(-1) => "curl not runnable".into(),
        Some(n) => format!("curl exit {n}"),
    }
}

/// The client sidecar's completed TLS handshakes on `cluster`.
async fn handshakes(mesh: &impl RunningPods, client: &Workload, cluster: &str) -> Option<u64> {
    let admin = mesh.admin(&client.namespace, &client.name)?;
    admin
        .stat(&format!("cluster.{cluster}.ssl.handshake"))
        .await
        .ok()
        .flatten()
        .or(Some(0))
}

async fn probe(
    mesh: &impl RunningPods,
    client: &Workload,
    from: String,
    target: &Target,
    spiffe: &str,
) -> ProbeRow {
    let Some(pod) = mesh.pod(&client.namespace, &client.name) else {
        return ProbeRow {
            from,
            to: target.column(),
            outcome: "no pod".into(),
            mtls: false,
            reason: None,
        };
    };
    let netns = pod.netns.name().to_string();
    let tcp_cluster = match target {
        Target::Service {
            http: false,
            cluster,
            ..
        } if client.sidecar => Some(cluster.clone()),
        _ => None,
    };
    let before = match &tcp_cluster {
        Some(c) => handshakes(mesh, client, c).await,
        None => None,
    };
    let args: Vec<String> = [
        target.url("/ip"),
        "-s".into(),
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_code}".into(),
    ]
    .into();
    let (exit, stdout) = curl(&netns, &args).await;
    let outcome = outcome(exit, &stdout);
    let ok = outcome
        .parse::<u16>()
        .is_ok_and(|c| (200..300).contains(&c));
    let mtls = match (ok, target, &tcp_cluster) {
        (false, _, _) => false,
        (true, Target::Service { http: true, .. }, _) => {
            let (_, body) = curl(&netns, &["-s".into(), target.url("/headers")]).await;
            serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    v.get("headers")?.as_object()?.iter().find_map(|(k, v)| {
                        k.eq_ignore_ascii_case("x-forwarded-client-cert")
                            .then(|| v.as_str().map(str::to_string))
                            .flatten()
                    })
                })
                .is_some_and(|xfcc| xfcc_uri(&xfcc) == Some(spiffe))
        }
        (true, Target::Service { .. }, Some(c)) => {
            let after = handshakes(mesh, client, c).await;
            matches!((before, after), (Some(b), Some(a)) if a > b)
        }
        _ => false,
    };
    ProbeRow {
        from,
        to: target.column(),
        outcome,
        mtls,
        reason: None,
    }
}

/// Every selected client against every selected service port and pod port
/// no Service targets.
pub(super) async fn matrix(
    mesh: &impl RunningPods,
    state: &State,
    from: Option<&str>,
    to: Option<&str>,
) -> anyhow::Result<Vec<ProbeRow>> {
    let from = from.map(parse_selector).transpose()?;
    let to = to.map(parse_selector).transpose()?;
    let m = &state.mesh;
    let mut clients: BTreeMap<String, usize> = BTreeMap::new();
    for (wi, w) in m.workloads.iter().enumerate() {
        if selects(&from, &w.labels) {
            clients
                .entry(format!("{}.{}", w.display_name(), w.namespace))
                .or_insert(wi);
        }
    }
    let mut targets = Vec::new();
    for (si, s) in m.services.iter().enumerate() {
        if !selects(&to, &s.labels) {
            continue;
        }
        for (pi, p) in s.ports.iter().enumerate() {
            targets.push(Target::Service {
                si,
                pi,
                host: format!("{}.{}", s.name, s.namespace),
                port: p.port,
                http: p.protocol.is_http(),
                cluster: translator::envoy::names::outbound_cluster(p.port, m.service_fqdn(si)),
            });
        }
    }
    for (wi, w) in m.workloads.iter().enumerate() {
        if !selects(&to, &w.labels) {
            continue;
        }
        let served = target_ports(m, wi);
        for p in w.ports.iter().filter(|p| !served.contains(&p.port)) {
            targets.push(Target::Pod {
                label: format!("{}.{}", w.name, w.namespace),
                url_host: w.ip.to_string(),
                port: p.port,
            });
        }
    }
    let mut jobs = Vec::new();
    for (name, &wi) in &clients {
        let Some(w) = m.workloads.get(wi) else {
            continue;
        };
        let spiffe = m.spiffe_id(&w.namespace, &w.service_account);
        for t in &targets {
            jobs.push((name.clone(), w, t.clone(), spiffe.clone()));
        }
    }
    let rows = futures::future::join_all(jobs.into_iter().map(|(name, w, t, spiffe)| async move {
        let mut row = probe(mesh, w, name, &t, &spiffe).await;
        let ok = row
            .outcome
            .parse::<u16>()
            .is_ok_and(|c| (200..300).contains(&c));
        if let (false, Target::Service { si, pi, .. }) = (ok, &t)
            && let Some(s) = state.mesh.services.get(*si)
            && let Some(p) = s.ports.get(*pi)
        {
            row.reason = super::explain::explain(&state.mesh, &state.translation, w, s, p);
        }
        row
    }))
    .await;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curl_exits_read_as_the_article_reads_them() {
        assert_eq!(outcome(Some(0), "200"), "200");
        assert_eq!(outcome(Some(0), "503\n"), "503");
        assert_eq!(outcome(Some(56), "000"), "reset");
        assert_eq!(outcome(Some(52), "000"), "reset");
        assert_eq!(outcome(Some(7), "000"), "refused");
        assert_eq!(outcome(None, ""), "timeout");
        assert_eq!(outcome(Some(35), "000"), "curl exit 35");
    }
}
