//! One simulated sidecar over a real stream: connect, send the opening
//! requests, handle each response with its [`Protocol`] and send what it
//! says, record everything; on any failure record a reset, wait a jittered
//! exponential backoff (as Envoy's ADS client does) and reconnect, keeping
//! what it holds. Ends when told to stop, or after [`MAX_ATTEMPTS`].

use super::grpc;
use super::protocol::{AdsTransport, MAX_RESPONSE_BYTES, Protocol};
use super::record::{Recorder, ResponseRecord};
use rand::{RngExt, SeedableRng};
use rand_xorshift::XorShiftRng;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

/// Connection attempts per proxy before it gives up: a bound, far above
/// what a run needs.
pub const MAX_ATTEMPTS: u32 = 1000;

/// Requests queued per stream before the sidecar waits for the transport.
const REQUEST_QUEUE: usize = 64;

/// Who a simulated sidecar is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySpec {
    /// Its index in the [`Recorder`].
    pub index: usize,
    pub node_id: String,
    pub namespace: String,
    pub pod: String,
    /// The identity its client certificate carries.
    pub identity: crate::identity::Identity,
}

/// Opens the gRPC transport of one proxy's stream: a TLS connection with
/// its certificate, or the server in-process (tests).
pub trait Connect: Send + Sync + 'static {
    type Transport: AdsTransport;
    fn connect(
        &self,
        proxy: &ProxySpec,
    ) -> impl Future<Output = anyhow::Result<Self::Transport>> + Send;
}

/// Reconnect pauses: uniformly random below `base * 2^attempt`, capped at
/// `max` (Envoy's jittered exponential backoff).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Envoy's defaults for its xDS stream (500 ms base), with a lower cap
    /// (5 s instead of 30 s) so a benchmark does not wait for long.
    pub const DEFAULT: Backoff = Backoff {
        base: Duration::from_millis(500),
        max: Duration::from_secs(5),
    };

    fn pause(&self, attempt: u32, rng: &mut XorShiftRng) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        let millis = u64::try_from(ceiling.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Duration::from_millis(rng.random_range(0..millis))
    }
}

/// Runs `proxy` until `stop` turns true (or is dropped): connect, stream,
/// and reconnect after each failure.
pub async fn run<P: Protocol, C: Connect>(
    proxy: ProxySpec,
    mut protocol: P,
    connector: Arc<C>,
    recorder: Arc<Recorder>,
    backoff: Backoff,
    mut stop: watch::Receiver<bool>,
) {
    let index = proxy.index;
    let mut rng = XorShiftRng::seed_from_u64(index as u64);
    let mut failures: u32 = 0;
    for _attempt in 0..MAX_ATTEMPTS {
        if *stop.borrow() {
            return;
        }
        let outcome = tokio::select! {
            outcome = stream_once(&proxy, &mut protocol, connector.as_ref(), &recorder) => outcome,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Failure { why, progressed } = outcome;
        // A stream that got somewhere starts the backoff over.
        failures = if progressed { 0 } else { failures + 1 };
        tracing::debug!(node = %proxy.node_id, reason = %why, "stream reset; reconnecting");
        let at = recorder.now();
        recorder.update(index, |r| r.reset(at, why));
        let pause = backoff.pause(failures, &mut rng);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
    tracing::warn!(node = %proxy.node_id, attempts = MAX_ATTEMPTS, "giving up reconnecting");
}

/// Why a connection or stream failed or ended; `progressed` if at least
/// one response was handled on it.
struct Failure {
    why: String,
    progressed: bool,
}

/// One connection and stream, until it fails.
async fn stream_once<P: Protocol, C: Connect>(
    proxy: &ProxySpec,
    protocol: &mut P,
    connector: &C,
    recorder: &Recorder,
) -> Failure {
    let index = proxy.index;
    let failed = |why: String| Failure {
        why,
        progressed: false,
    };
    let transport = match connector.connect(proxy).await {
        Ok(t) => t,
        Err(error) => return failed(format!("connect: {}", error.root_cause())),
    };
    let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
    for request in protocol.open() {
        // Fits: the queue is longer than the five types.
        if tx.try_send(request).is_err() {
            return failed("the request queue is full before the stream opened".into());
        }
    }
    let call = grpc::call::<_, P::Request, P::Response>(
        transport,
        P::PATH,
        ReceiverStream::new(rx),
        MAX_RESPONSE_BYTES,
    );
    let mut responses = match call.await {
        Ok(s) => s,
        Err(status) => return failed(format!("open: {status}")),
    };
    recorder.update(index, |r| {
        r.streams_opened += 1;
        r.connected = true;
    });
    let mut progressed = false;
    loop {
        let (response, bytes) = match responses.message().await {
            Ok(Some((response, bytes))) => (response, bytes),
            Ok(None) => {
                return Failure {
                    why: "the server ended the stream".into(),
                    progressed,
                };
            }
            Err(status) => {
                return Failure {
                    why: format!("stream: {status}"),
                    progressed,
                };
            }
        };
        let received = recorder.now();
        let handled = protocol.on_response(response);
        let mut sent = true;
        for request in handled.requests {
            if tx.send(request).await.is_err() {
                sent = false;
                break;
            }
        }
        progressed = true;
        let acked = sent.then(|| recorder.now());
        let synced = protocol.synced();
        if let Some(kind) = handled.kind {
            if let Some(message) = &handled.nack {
                tracing::warn!(node = %proxy.node_id, %kind, %message, "NACK");
            }
            recorder.update(index, |r| {
                r.response(ResponseRecord {
                    kind,
                    version: handled.version,
                    bytes,
                    resources: handled.resources,
                    received,
                    acked,
                    nack: handled.nack.is_some(),
                });
                r.synced = synced;
                if synced && r.first_synced.is_none() {
                    r.first_synced = acked;
                }
            });
        }
        if !sent {
            return Failure {
                why: "the request stream closed".into(),
                progressed,
            };
        }
    }
}

/// The sidecars of the mesh in `config_dir`, as the server sees them:
/// every workload with a sidecar, sorted by namespace and name.
pub fn proxies_of(
    config_dir: &std::path::Path,
    mesh: &translator::model::MeshConfig,
    addressing: &translator::model::build::Addressing,
) -> anyhow::Result<Vec<ProxySpec>> {
    let snapshot = crate::source::files::FileLoader::new(vec![config_dir.to_path_buf()]).load();
    if let Some(error) = snapshot.errors.first() {
        anyhow::bail!(
            "{} has {} invalid object(s), the first: {error}",
            config_dir.display(),
            snapshot.errors.len()
        );
    }
    let (built, _) = snapshot.build_mesh(mesh.clone(), addressing);
    Ok(built
        .workloads
        .iter()
        .filter(|w| w.sidecar)
        .enumerate()
        .map(|(index, w)| ProxySpec {
            index,
            node_id: crate::identity::NodeId::format(
                &w.ip.to_string(),
                &w.name,
                &w.namespace,
                &mesh.cluster_domain,
            ),
            namespace: w.namespace.clone(),
            pod: w.name.clone(),
            identity: crate::identity::Identity {
                namespace: w.namespace.clone(),
                service_account: w.service_account.clone(),
            },
        })
        .collect())
}
