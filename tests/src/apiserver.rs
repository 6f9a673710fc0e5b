//! A Kubernetes API server stand-in for whole-binary tests of `serve
//! --kube`: plain HTTP/1.1 on 127.0.0.1 (a free port), run in-process on a
//! tokio task, stopped on drop. No real API server can run on these
//! machines; this one speaks the real protocol for what `serve --kube`
//! uses, with the real JSON (k8s-openapi and kube-core types, the Istio
//! kinds from `crds`), so any client that works with it should work with
//! a real server:
//!
//! - one resourceVersion counter for every kind (as etcd's revision), bumped
//!   on every write; every object carries its resourceVersion, uid,
//!   creationTimestamp and (namespaced kinds) namespace;
//! - Namespaces, Services, Pods, ConfigMaps, Secrets (core v1) and
//!   PeerAuthentication, DestinationRule at the versions a test chooses
//!   ([`ApiServer::serve_versions`]), stored once and returned at the
//!   version asked for; discovery (`/api`, `/apis/GROUP[/VERSION]`);
//! - LIST with `limit` and `continue` (consistent pages: a continue token
//!   reads at its list's resourceVersion, 410 once that is compacted),
//!   `fieldSelector` (the source's pod filter on `status.phase`);
//! - WATCH from a resourceVersion, replayed from an event log, then live;
//!   BOOKMARKs, `timeoutSeconds`, ERROR 410 after [`ApiServer::compact`];
//! - GET, POST (create), PUT (replace), PATCH (server-side apply) and
//!   DELETE of single objects, with the API server's Status errors;
//! - TokenReview for tokens a test registers.
//!
//! Tests change the cluster through typed Rust calls ([`ApiServer::apply`],
//! [`ApiServer::update`], [`ApiServer::delete`]), gate lists and watches
//! ([`ApiServer::hold_lists`], [`ApiServer::hold_watches`]) and read back
//! every request ([`ApiServer::requests`]).
//!
//! Simplifications, each where a test would not notice: server-side apply
//! merges the applied object into the stored one (maps merged key by key,
//! anything else replaced) and keeps no managedFields; a Namespace delete
//! removes its content at once (the namespace controller's work, without
//! the Terminating phase); a LIST always reads the current state (its
//! `resourceVersion` and `resourceVersionMatch` are not checked); objects
//! are not validated against their schemas, and there are no finalizers,
//! `generateName` or delete preconditions; label selectors and streaming
//! lists (`sendInitialEvents`) are refused with 400 as unsupported.

mod events;
mod http;
mod kind;
mod request;
mod status;
mod store;
#[cfg(test)]
mod tests;
mod tokens;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use kube::core::DynamicObject;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{Shared, State, Write};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use kind::Kind;
pub use request::RecordedRequest;
pub use store::REQUESTS_KEPT;

/// How the stand-in behaves.
#[derive(Clone, Debug)]
pub struct ApiServerOptions {
    /// Versions of security.istio.io PeerAuthentication served; empty: not
    /// served (the group answers 404, as without Istio's CRDs).
    pub peer_authentication_versions: Vec<String>,
    /// Versions of networking.istio.io DestinationRule served.
    pub destination_rule_versions: Vec<String>,
    /// Versions of Sidecar served; empty: its CRD is not installed.
    pub sidecar_versions: Vec<String>,
    /// BOOKMARKs to every watch that allows them, this often; `None`: only
    /// on [`ApiServer::bookmark`].
    pub bookmark_interval: Option<Duration>,
    /// Watches end after `timeoutSeconds` or this, whichever is shorter
    /// (a real server ends them after its own request timeout).
    pub max_watch_timeout: Option<Duration>,
}

impl Default for ApiServerOptions {
    /// Istio's current CRDs (every version served), a bookmark a second,
    /// watches ended at `timeoutSeconds` (at most 30 minutes, as a real
    /// server's default request timeout).
    fn default() -> Self {
        ApiServerOptions {
            peer_authentication_versions: vec!["v1".into(), "v1beta1".into()],
            destination_rule_versions: vec!["v1".into(), "v1beta1".into(), "v1alpha3".into()],
            sidecar_versions: vec!["v1".into(), "v1beta1".into(), "v1alpha3".into()],
            bookmark_interval: Some(Duration::from_secs(1)),
            max_watch_timeout: None,
        }
    }
}

/// The stand-in. Dropping it stops it: the listener, every connection and
/// every open watch.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl ApiServer {
    /// Starts a server on a free port of 127.0.0.1.
    pub async fn start(opts: ApiServerOptions) -> anyhow::Result<ApiServer> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the API server stand-in to 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let mut state = State::new(addr);
        state.serve(Kind::PeerAuthentication, &opts.peer_authentication_versions)?;
        state.serve(Kind::DestinationRule, &opts.destination_rule_versions)?;
        state.serve(Kind::Sidecar, &opts.sidecar_versions)?;
        let (changes, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            changes,
            max_watch_timeout: opts.max_watch_timeout,
        });
        let mut tasks = vec![tokio::spawn(http::serve(listener, shared.clone()))];
        if let Some(every) = opts.bookmark_interval {
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    shared.lock().bookmark();
                }
            }));
        }
        Ok(ApiServer {
            addr,
            shared,
            tasks,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for this server, as a kubeconfig would make it.
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        let config = kube::Config::new(self.url().parse()?);
        Ok(kube::Client::try_from(config)?)
    }

    /// Writes a kubeconfig for this server (a plain-http cluster, a user
    /// without credentials, one current context) to `path`, for `serve
    /// --kube --kubeconfig PATH`.
    pub fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        use kube::config::{
            AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
        };
        const NAME: &str = "stand-in";
        let config = Kubeconfig {
            clusters: vec![NamedCluster {
                name: NAME.into(),
                cluster: Some(Cluster {
                    server: Some(self.url()),
                    ..Cluster::default()
                }),
                ..NamedCluster::default()
            }],
            auth_infos: vec![NamedAuthInfo {
                name: NAME.into(),
                auth_info: Some(AuthInfo::default()),
                ..NamedAuthInfo::default()
            }],
            contexts: vec![NamedContext {
                name: NAME.into(),
                context: Some(Context {
                    cluster: NAME.into(),
                    user: Some(NAME.into()),
                    namespace: Some("default".into()),
                    ..Context::default()
                }),
                ..NamedContext::default()
            }],
            current_context: Some(NAME.into()),
            ..Kubeconfig::default()
        };
        let yaml = serde_yaml::to_string(&config).context("encoding the kubeconfig")?;
        std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))
    }

    /// The current resourceVersion (of the last write).
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().resource_version()
    }

    /// Creates or replaces `object` (ADDED or MODIFIED); returns its new
    /// resourceVersion. A namespaced object names its namespace. A
    /// creationTimestamp the object carries is kept (tests order policies
    /// by age), else the server sets it.
    pub fn apply<K>(&self, object: &K) -> anyhow::Result<u64>
    where
        K: kube::Resource<DynamicType = ()> + Serialize,
    {
        let kind = kind_of::<K>()?;
        let object = to_dynamic(object)?;
        let (written, _) = self
            .shared
            .lock()
            .write(kind, object, Write::Upsert { keep_created: true })
            .map_err(status::status_error)?;
        store::rv_of(&written)
    }

    /// Changes a stored object with `change` (MODIFIED); returns its new
    /// resourceVersion. `namespace` is ignored for cluster-scoped kinds.
    pub fn update<K>(
        &self,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut K),
    ) -> anyhow::Result<u64>
    where
        K: kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        let kind = kind_of::<K>()?;
        let mut state = self.shared.lock();
        let stored = state
            .get(kind, namespace, name)
            .with_context(|| format!("no {} {namespace}/{name}", kind.name()))?;
        let mut typed: K = from_dynamic(kind, stored, &K::version(&()))?;
        change(&mut typed);
        let object = to_dynamic(&typed)?;
        let (written, _) = state
            .write(kind, object, Write::Upsert { keep_created: true })
            .map_err(status::status_error)?;
        store::rv_of(&written)
    }

    /// Deletes an object (DELETED); returns the resourceVersion of the
    /// delete. A Namespace takes everything in it along, each object with
    /// its own DELETED first.
    pub fn delete<K>(&self, namespace: &str, name: &str) -> anyhow::Result<u64>
    where
        K: kube::Resource<DynamicType = ()>,
    {
        let kind = kind_of::<K>()?;
        let deleted = self
            .shared
            .lock()
            .delete(kind, namespace, name)
            .map_err(status::status_error)?;
        store::rv_of(&deleted)
    }

    /// A stored object, as the client of its type reads it.
    pub fn get<K>(&self, namespace: &str, name: &str) -> anyhow::Result<Option<K>>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        let kind = kind_of::<K>()?;
        let state = self.shared.lock();
        state
            .get(kind, namespace, name)
            .map(|o| from_dynamic(kind, o, &K::version(&())))
            .transpose()
    }

    /// Sets a pod's readiness as the kubelet does: phase Running, the
    /// Ready and ContainersReady conditions True or False.
    pub fn set_pod_ready(&self, namespace: &str, name: &str, ready: bool) -> anyhow::Result<u64> {
        self.update::<Pod>(namespace, name, |pod| {
            let status = pod.status.get_or_insert_with(PodStatus::default);
            status.phase = Some("Running".into());
            let value = if ready { "True" } else { "False" };
            let conditions = status.conditions.get_or_insert_with(Vec::new);
            for type_ in ["Ready", "ContainersReady"] {
                conditions.retain(|c| c.type_ != type_);
                conditions.push(PodCondition {
                    type_: type_.into(),
                    status: value.into(),
                    ..PodCondition::default()
                });
            }
        })
    }

    /// Sets (or clears) a pod's IP, as the kubelet does once the sandbox
    /// has one.
    pub fn set_pod_ip(&self, namespace: &str, name: &str, ip: Option<&str>) -> anyhow::Result<u64> {
        self.update::<Pod>(namespace, name, |pod| {
            let status = pod.status.get_or_insert_with(PodStatus::default);
            status.pod_ip = ip.map(str::to_string);
            status.pod_ips = None;
        })
    }

    /// Serves a custom kind at `versions` from now on (empty: not at all).
    /// Stored objects stay, returned at whichever version is asked for.
    pub fn serve_versions(&self, kind: Kind, versions: &[&str]) -> anyhow::Result<()> {
        let versions: Vec<String> = versions.iter().map(|v| v.to_string()).collect();
        self.shared.lock().serve(kind, &versions)
    }

    /// Holds every LIST of `kind` (without an answer) until
    /// [`ApiServer::release_lists`]; the request is recorded on arrival.
    pub fn hold_lists(&self, kind: Kind) {
        self.shared.lock().hold(kind, store::Gate::List, true);
        self.shared.changed();
    }

    pub fn release_lists(&self, kind: Kind) {
        self.shared.lock().hold(kind, store::Gate::List, false);
        self.shared.changed();
    }

    /// Holds every new WATCH of `kind` until [`ApiServer::release_watches`]:
    /// a client cut off from the server (a partition); it resumes from the
    /// resourceVersion it asked for once released.
    pub fn hold_watches(&self, kind: Kind) {
        self.shared.lock().hold(kind, store::Gate::Watch, true);
        self.shared.changed();
    }

    pub fn release_watches(&self, kind: Kind) {
        self.shared.lock().hold(kind, store::Gate::Watch, false);
        self.shared.changed();
    }

    /// Sends a BOOKMARK at the current resourceVersion to every open watch
    /// that allows bookmarks; returns how many got it.
    pub fn bookmark(&self) -> usize {
        self.shared.lock().bookmark()
    }

    /// Ends every open watch now (as the server does at its request
    /// timeout); returns how many were open.
    pub fn end_watches(&self) -> usize {
        self.shared.lock().end_watches()
    }

    /// Drops the event log (etcd compaction): a watch or a list continue
    /// from an older resourceVersion gets 410 Expired. Returns the
    /// resourceVersion compacted to.
    pub fn compact(&self) -> u64 {
        self.shared.lock().compact()
    }

    /// Watches of `kind` open now.
    pub fn open_watches(&self, kind: Kind) -> usize {
        self.shared.lock().open_watches(kind)
    }

    /// Registers a bearer token for TokenReview: `username` (for a service
    /// account `system:serviceaccount:NS:NAME`) and the audiences the token
    /// was issued for.
    pub fn add_token(&self, token: &str, username: &str, audiences: &[&str]) {
        let audiences = audiences.iter().map(|a| a.to_string()).collect();
        self.shared.lock().add_token(token, username, audiences);
    }

    /// Every request so far, in order (the oldest are dropped past
    /// [`REQUESTS_KEPT`]).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests()
    }

    /// The requests numbered `from` or later (see
    /// [`ApiServer::request_count`]), in order.
    pub fn requests_since(&self, from: usize) -> Vec<RecordedRequest> {
        self.shared.lock().requests_since(from)
    }

    /// How many requests have arrived so far: an index for
    /// [`ApiServer::wait_request`].
    pub fn request_count(&self) -> usize {
        self.shared.lock().request_count()
    }

    /// Waits (up to `timeout`) for a request numbered `from` or later (see
    /// [`ApiServer::request_count`]) that satisfies `matches`; returns it
    /// and its number.
    pub async fn wait_request(
        &self,
        from: usize,
        timeout: Duration,
        matches: impl Fn(&RecordedRequest) -> bool,
    ) -> anyhow::Result<(usize, RecordedRequest)> {
        match self
            .wait_until(timeout, |state| state.find_request(from, &matches))
            .await
        {
            Some(found) => Ok(found),
            None => {
                let seen: Vec<String> = self
                    .requests_since(from)
                    .iter()
                    .map(|r| format!("{} {}", r.method, r.uri))
                    .collect();
                bail!("no such request within {timeout:?}; requests since: {seen:#?}")
            }
        }
    }

    /// Waits (up to `timeout`) until at least `count` watches of `kind`
    /// are open.
    pub async fn wait_watches(
        &self,
        kind: Kind,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let open = |state: &State| (state.open_watches(kind) >= count).then_some(());
        match self.wait_until(timeout, open).await {
            Some(()) => Ok(()),
            None => bail!(
                "{} watches of {} open after {timeout:?}, want {count}",
                self.open_watches(kind),
                kind.name()
            ),
        }
    }

    /// Re-evaluates `found` on every change (a request arriving or
    /// answered, a gate moved) until it gives a value or `timeout` passes.
    async fn wait_until<T>(
        &self,
        timeout: Duration,
        found: impl Fn(&State) -> Option<T>,
    ) -> Option<T> {
        let mut changes = self.shared.changes.subscribe();
        let wait = async {
            loop {
                let now = found(&self.shared.lock());
                if now.is_some() {
                    return now;
                }
                // The sender lives in `self.shared`: never closed here.
                if changes.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }
}

/// The stand-in's kind of `K`, or an error for kinds it does not serve.
fn kind_of<K: kube::Resource<DynamicType = ()>>() -> anyhow::Result<Kind> {
    Kind::of::<K>().with_context(|| {
        format!(
            "the API server stand-in serves no {} ({})",
            K::kind(&()),
            K::api_version(&())
        )
    })
}

fn to_dynamic<K: Serialize>(object: &K) -> anyhow::Result<DynamicObject> {
    let value = serde_json::to_value(object).context("encoding the object")?;
    serde_json::from_value(value).context("the object is not a Kubernetes object")
}

fn from_dynamic<K: DeserializeOwned>(
    kind: Kind,
    object: &DynamicObject,
    version: &str,
) -> anyhow::Result<K> {
    let rendered = kind::render(kind, object, version);
    let value = serde_json::to_value(&rendered).context("encoding the stored object")?;
    serde_json::from_value(value)
        .with_context(|| format!("the stored {} does not decode as its type", kind.name()))
}
