//! The Kubernetes config source: Namespaces, Services, Pods,
//! PeerAuthentications, DestinationRules and Sidecars, watched through kube-rs's
//! `watcher` into `reflector` stores, published as the same
//! [`ConfigSnapshot`](super::ConfigSnapshot) the directory source makes.
//!
//! - Nothing is published until every store has completed its first list:
//!   [`watch_cluster`] returns then, with that first snapshot, so a
//!   half-listed mesh (say, pods without their STRICT policy) is never
//!   served. After that every change publishes a new snapshot, batched over
//!   the debounce window; a change that leaves the snapshot equal (a pod's
//!   unrelated status) publishes nothing.
//! - The watchers back off on errors (kube-rs's default backoff), resume
//!   from the last resource version when a watch ends, and relist on 410
//!   Gone; the stores keep their content until a relist completes.
//! - The Istio kinds are watched at the newest version the cluster serves.
//!   A kind that is not served (CRDs not installed) counts as empty, with
//!   one warning, and discovery is retried in the background.
//! - An invalid Istio object is reported in the snapshot's errors and its
//!   last valid version stays in force until it is fixed or deleted.
//! - Cached objects are trimmed (managedFields, kubectl's last-applied
//!   copy; pods to what the model reads).

mod discover;
mod snapshot;

#[cfg(test)]
mod fake_api;
#[cfg(test)]
mod tests;

use super::SharedSnapshot;
use anyhow::Context;
use discover::{DESTINATION_RULE, Discovered, IstioKind, PEER_AUTHENTICATION, SIDECAR};
use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{Store, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use snapshot::{Builder, Inputs, PolicyInput};
use std::collections::BTreeSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::path::Path;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{Instrument, debug, error, info, info_span, warn};

/// How the Kubernetes source behaves.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// How long changes are collected before a new snapshot is published
    /// (the directory source's debounce).
    pub debounce: Duration,
    /// Objects per page of a list (the first list and every relist).
    pub page_size: u32,
    /// First wait before discovery of an Istio kind is retried; it doubles
    /// up to `rediscover_max`.
    pub rediscover_min: Duration,
    pub rediscover_max: Duration,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            debounce: Duration::from_millis(100),
            // client-go's page size.
            page_size: 500,
            rediscover_min: Duration::from_secs(1),
            rediscover_max: Duration::from_secs(60),
        }
    }
}

/// A client from `kubeconfig`, else from the environment: the pod's service
/// account in a cluster, then `$KUBECONFIG` or `~/.kube/config`.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using the kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes configuration: not in a pod, and no kubeconfig in $KUBECONFIG or ~/.kube/config",
        )?,
    };
    let server = config.cluster_url.to_string();
    Client::try_from(config).with_context(|| format!("creating a Kubernetes client for {server}"))
}

/// Watches the cluster `client` talks to. Returns once every kind has been
/// listed (each served Istio kind included), with that first snapshot in
/// the receiver; then publishes a new snapshot per batch of changes. The
/// watches live as long as the returned task; dropping the future before
/// it returns stops them.
pub async fn watch_cluster(
    client: Client,
    opts: KubeOptions,
) -> anyhow::Result<(watch::Receiver<SharedSnapshot>, JoinHandle<()>)> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let mut task = AbortOnDrop(Some(tokio::spawn(run(client, opts, ready_tx))));
    match ready_rx.await {
        Ok(rx) => {
            let handle = task
                .0
                .take()
                .context("the source task is held until returned")?;
            Ok((rx, handle))
        }
        Err(_) => {
            let reason = match task.0.take() {
                Some(handle) => match handle.await {
                    Err(e) if e.is_panic() => "it panicked".to_string(),
                    Err(e) => e.to_string(),
                    Ok(()) => "a watch task ended".to_string(),
                },
                None => "it was gone".to_string(),
            };
            anyhow::bail!("the Kubernetes source stopped before its first snapshot: {reason}")
        }
    }
}

/// Aborts the task when dropped, unless taken.
struct AbortOnDrop(Option<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}

/// Where an Istio kind stands.
#[derive(Clone)]
enum Slot {
    /// Not known yet: discovery has not answered.
    Discovering,
    /// Not served: empty (discovery goes on in the background).
    Absent,
    /// Served at this version, cached in this store.
    Watching(ApiResource, Store<DynamicObject>),
}

/// The stores a snapshot is built from.
struct Sources {
    namespaces: Store<Namespace>,
    services: Store<Service>,
    pods: Store<Pod>,
    policies: Vec<(&'static IstioKind, watch::Receiver<Slot>)>,
}

impl Sources {
    fn inputs(&self) -> Inputs {
        let policies = self
            .policies
            .iter()
            .filter_map(|(kind, slot)| match &*slot.borrow() {
                Slot::Watching(resource, store) => Some(PolicyInput {
                    kind,
                    resource: resource.clone(),
                    objects: store.state(),
                }),
                Slot::Discovering | Slot::Absent => None,
            })
            .collect();
        Inputs {
            namespaces: self.namespaces.state(),
            services: self.services.state(),
            pods: self.pods.state(),
            policies,
        }
    }

    /// Waits until every store has completed its first list (and every
    /// Istio kind is found served and listed, or found not served), logging
    /// what is still missing every `every`.
    async fn first_lists(&self, every: Duration) -> anyhow::Result<()> {
        let mut waits: Vec<(&'static str, BoxFuture<'_, anyhow::Result<()>>)> = vec![
            ("Namespace", Box::pin(wait_ready(&self.namespaces))),
            ("Service", Box::pin(wait_ready(&self.services))),
            ("Pod", Box::pin(wait_ready(&self.pods))),
        ];
        for (kind, slot) in &self.policies {
            waits.push((kind.kind, Box::pin(wait_policy(kind, slot.clone()))));
        }
        let pending: Mutex<BTreeSet<&'static str>> =
            Mutex::new(waits.iter().map(|(what, _)| *what).collect());
        let pending = &pending;
        let all = waits.into_iter().map(|(what, wait)| async move {
            wait.await?;
            if let Ok(mut p) = pending.lock() {
                p.remove(what);
            }
            anyhow::Ok(())
        });
        let mut all = pin!(futures::future::try_join_all(all));
        loop {
            match tokio::time::timeout(every, &mut all).await {
                Ok(result) => return result.map(|_| ()),
                Err(_) => {
                    let missing: Vec<&str> = pending
                        .lock()
                        .map(|p| p.iter().copied().collect())
                        .unwrap_or_default();
                    warn!(
                        waiting_for = ?missing,
                        "the cluster is not fully listed yet; not publishing a partial mesh"
                    );
                }
            }
        }
    }
}

/// Waits until an Istio kind is known not to be served, or is listed.
async fn wait_policy(kind: &IstioKind, mut slot: watch::Receiver<Slot>) -> anyhow::Result<()> {
    let store = {
        let known = slot
            .wait_for(|s| !matches!(s, Slot::Discovering))
            .await
            .with_context(|| format!("discovery of {} stopped", kind.kind))?;
        match &*known {
            Slot::Watching(_, store) => Some(store.clone()),
            Slot::Discovering | Slot::Absent => None,
        }
    };
    if let Some(store) = store {
        store
            .wait_until_ready()
            .await
            .with_context(|| format!("the {} watch stopped", kind.kind))?;
    }
    Ok(())
}

async fn wait_ready<K>(store: &Store<K>) -> anyhow::Result<()>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .wait_until_ready()
        .await
        .with_context(|| format!("the {} watch stopped", K::kind(&())))
}

/// Runs one watcher into `writer` until the task is dropped: errors are
/// logged and retried with kube-rs's default backoff; every change that
/// reaches the store wakes `changed`.
async fn run_watcher<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    trim: fn(&mut K),
    changed: Arc<Notify>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    let events = kube::runtime::watcher(api, config)
        .default_backoff()
        .modify(trim)
        .reflect(writer);
    let mut events = pin!(events);
    let mut listed = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::InitDone) => {
                if listed {
                    info!("relisted");
                } else {
                    info!("first list complete");
                    listed = true;
                }
                changed.notify_one();
            }
            Ok(Event::Apply(_) | Event::Delete(_)) => changed.notify_one(),
            Ok(Event::Init) => debug!("listing"),
            // Buffered by the store until the list completes.
            Ok(Event::InitApply(_)) => {}
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                info!(reason = %status.message, "resource version too old; relisting");
            }
            Err(e) => warn!(error = %e, "watch failed; retrying with backoff"),
        }
    }
}

/// Starts a watcher for a built-in kind; returns its store.
fn spawn_typed<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
    changed: &Arc<Notify>,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let writer: Writer<K> = Writer::default();
    let store = writer.as_reader();
    let span = info_span!("kube_watch", kind = %K::kind(&()), path = %api.resource_url());
    tasks.spawn(run_watcher(api, config, writer, trim, changed.clone()).instrument(span));
    store
}

/// Discovers an Istio kind (retrying with backoff while it is not served
/// or discovery fails), then watches it.
async fn run_istio_kind(
    client: Client,
    kind: &'static IstioKind,
    config: watcher::Config,
    opts: KubeOptions,
    slot: watch::Sender<Slot>,
    changed: Arc<Notify>,
) {
    let mut wait = opts.rediscover_min;
    let mut warned = false;
    let resource = loop {
        match discover::discover(&client, kind).await {
            Ok(Discovered::Served(resource)) => break resource,
            Ok(Discovered::NotServed(why)) => {
                if warned {
                    debug!(%why, "still not served");
                } else {
                    warn!(
                        %why,
                        "not served by the cluster (are Istio's CRDs installed?): treated as \
                         empty; discovery is retried in the background"
                    );
                    warned = true;
                }
                if !matches!(*slot.borrow(), Slot::Absent) {
                    slot.send_replace(Slot::Absent);
                    changed.notify_one();
                }
            }
            Err(e) => warn!(error = %e, retry_in = ?wait, "discovery failed"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(opts.rediscover_max);
    };
    let writer = Writer::new(resource.clone());
    let store = writer.as_reader();
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let span = info_span!("kube_watch", kind = %kind.kind, path = %api.resource_url());
    span.in_scope(|| info!(version = %resource.version, "watching"));
    slot.send_replace(Slot::Watching(resource, store));
    run_watcher(api, config, writer, snapshot::trim_policy, changed)
        .instrument(span)
        .await;
}

/// The source: starts the watchers, sends the first snapshot's receiver on
/// `ready` once everything is listed, then publishes changes.
async fn run(
    client: Client,
    opts: KubeOptions,
    ready: oneshot::Sender<watch::Receiver<SharedSnapshot>>,
) {
    let changed = Arc::new(Notify::new());
    let mut tasks = JoinSet::new();
    let config = watcher::Config::default().page_size(opts.page_size);
    let namespaces = spawn_typed(
        &mut tasks,
        Api::<Namespace>::all(client.clone()),
        config.clone(),
        snapshot::trim_namespace,
        &changed,
    );
    let services = spawn_typed(
        &mut tasks,
        Api::<Service>::all(client.clone()),
        config.clone(),
        snapshot::trim_service,
        &changed,
    );
    let pods = spawn_typed(
        &mut tasks,
        Api::<Pod>::all(client.clone()),
        config.clone().fields(snapshot::POD_FIELD_SELECTOR),
        snapshot::trim_pod,
        &changed,
    );
    let mut policies = Vec::new();
    for kind in [&PEER_AUTHENTICATION, &DESTINATION_RULE, &SIDECAR] {
        let (slot_tx, slot_rx) = watch::channel(Slot::Discovering);
        let span = info_span!("kube_discover", kind = %kind.kind, group = %kind.group);
        tasks.spawn(
            run_istio_kind(
                client.clone(),
                kind,
                config.clone(),
                opts.clone(),
                slot_tx,
                changed.clone(),
            )
            .instrument(span),
        );
        policies.push((kind, slot_rx));
    }
    let sources = Sources {
        namespaces,
        services,
        pods,
        policies,
    };

    // A watch task only ends by panicking; then this source is broken.
    let synced = tokio::select! {
        r = sources.first_lists(Duration::from_secs(10)) => r,
        Some(ended) = tasks.join_next() => Err(anyhow::anyhow!("a watch task ended: {ended:?}")),
    };
    if let Err(e) = synced {
        error!(error = %format!("{e:#}"), "the Kubernetes source failed before its first snapshot");
        return;
    }
    let mut builder = Builder::default();
    let first = builder.build(sources.inputs());
    log_snapshot(&first, "cluster config listed");
    let (tx, rx) = watch::channel(Arc::new(first));
    if ready.send(rx).is_err() {
        return;
    }
    loop {
        tokio::select! {
            () = changed.notified() => {}
            Some(ended) = tasks.join_next() => {
                error!(?ended, "a Kubernetes watch task ended; the source stops");
                return;
            }
        }
        // Collect the rest of the burst.
        tokio::time::sleep(opts.debounce).await;
        let next = builder.build(sources.inputs());
        if snapshot::same_content(&next, &tx.borrow()) {
            debug!("cluster changed, config did not");
            continue;
        }
        log_snapshot(&next, "cluster config changed");
        if tx.send(Arc::new(next)).is_err() {
            return;
        }
    }
}

fn log_snapshot(s: &super::ConfigSnapshot, what: &str) {
    info!(
        objects = s.objects.len(),
        rejected = s.errors.len(),
        "{what}"
    );
}
