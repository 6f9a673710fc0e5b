//! Per-proxy views of the current translation, plus that proxy's secrets.
//!
//! This module decides *what* a proxy should hold; the ADS server (`ads`)
//! decides *when and how* to send it. Their only contract is
//! [`crate::view::ConfigSource`]: a view per node, and a generation counter
//! that ticks when any view may have changed (new config, rotated
//! certificate). Views are built lazily for connected proxies only, and
//! cached per generation.

mod intern;

use crate::ca::{CertificateAuthority, WorkloadCert, sds_resources};
use crate::identity::{Identity, NodeId, Peer, ProxyId};
use crate::source::ConfigSnapshot;
use crate::view::{ConfigSource, ProxyView, ViewError};
use dashmap::DashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tracing::{info, warn};
use translator::model::build::Addressing;
use translator::model::{Mesh, MeshConfig};
use translator::{
    Interception, ProxyPlan, ProxyResources, Resource, ResourceMap, ResourceType, Translation,
};

/// What translation needs to know besides the objects.
#[derive(Clone, Debug)]
pub struct Settings {
    pub mesh: MeshConfig,
    pub addressing: Addressing,
    pub cert_lifetime: Duration,
}

/// One translated configuration.
#[derive(Debug)]
pub struct State {
    pub snapshot: Arc<ConfigSnapshot>,
    pub mesh: Mesh,
    pub translation: Translation,
    /// When it was translated, and how long that took.
    pub translated_at: SystemTime,
    pub translate_time: Duration,
}

struct Issued {
    cert: WorkloadCert,
    secrets: Arc<ResourceMap>,
}

/// Certificate metadata, safe to show (no key).
#[derive(Clone, Debug, serde::Serialize)]
pub struct CertInfo {
    pub identity: String,
    pub spiffe_id: String,
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
}

/// Translates each config snapshot and holds what every proxy should receive.
pub struct Snapshots {
    settings: Settings,
    ca: Arc<CertificateAuthority>,
    state: RwLock<Option<Arc<State>>>,
    generation: watch::Sender<u64>,
    certs: DashMap<Identity, Arc<Issued>>,
    views: DashMap<(ProxyId, Interception), CachedView>,
    /// Maps made of two (outbound and inbound clusters; in the capture
    /// layout also the outbound and inbound listeners), by the pointers of
    /// their two parts, shared by every proxy with the same parts: one map
    /// per group of clients, not a copy of ~1,250 names per proxy.
    merged: DashMap<(usize, usize), Merged>,
    /// Test hook: extra resources appended to one proxy's view.
    injected: DashMap<ProxyId, Vec<Arc<Resource>>>,
    certs_issued: std::sync::atomic::AtomicU64,
}

impl Snapshots {
    pub fn new(settings: Settings, ca: Arc<CertificateAuthority>) -> Snapshots {
        Snapshots {
            settings,
            ca,
            state: RwLock::new(None),
            generation: watch::channel(0).0,
            certs: DashMap::new(),
            views: DashMap::new(),
            merged: DashMap::new(),
            injected: DashMap::new(),
            certs_issued: Default::default(),
        }
    }

    /// Translate a new snapshot and make it current.
    pub fn apply(&self, snapshot: Arc<ConfigSnapshot>) {
        let started = std::time::Instant::now();
        let (mesh, build_diagnostics) =
            snapshot.build_mesh(self.settings.mesh.clone(), &self.settings.addressing);
        let mut translation = translator::translate(&mesh);
        let previous = self.state();
        intern::intern(previous.as_ref().map(|p| &p.translation), &mut translation);
        // One sorted list: diagnostics are looked up by binary search.
        translation.diagnostics.extend(build_diagnostics);
        translation.diagnostics.sort();
        translation.diagnostics.dedup();
        // Log a diagnostic when it appears, not again on every change.
        let known = |d: &translator::Diagnostic| {
            previous
                .as_ref()
                .is_some_and(|p| p.translation.diagnostics.binary_search(d).is_ok())
        };
        for d in translation.diagnostics.iter().filter(|d| !known(d)) {
            warn!(diagnostic = %d, "policy diagnostic");
        }
        let translate_time = started.elapsed();
        info!(
            proxies = translation.proxies.len(),
            workloads = mesh.workloads.len(),
            services = mesh.services.len(),
            elapsed_ms = translate_time.as_millis() as u64,
            "translated config"
        );
        let state = Arc::new(State {
            snapshot,
            mesh,
            translation,
            translated_at: SystemTime::now(),
            translate_time,
        });
        self.prune_certificates(&state.translation);
        let next = self.generation() + 1;
        self.keep_unchanged_views(&state.translation, next);
        if let Ok(mut guard) = self.state.write() {
            *guard = Some(state);
        }
        self.generation.send_modify(|g| *g = next);
    }

    /// Carries the views of proxies whose maps all stayed the same (by
    /// pointer, after [`intern::intern`]) into generation `next`, so their
    /// streams find the very same view and do nothing; drops the others.
    fn keep_unchanged_views(&self, translation: &Translation, next: u64) {
        self.views.retain(|(proxy, _), cached| {
            let unchanged = !self.injected.contains_key(proxy)
                && translation
                    .proxy(&proxy.namespace, &proxy.pod)
                    .is_some_and(|plan| {
                        plan.service_account == cached.view.identity.service_account
                            && intern::same_parts(plan, &cached.plan)
                    });
            if unchanged {
                cached.generation = next;
            }
            unchanged
        });
        // Merged maps nobody can ask for again.
        let live: std::collections::HashSet<(usize, usize)> = translation
            .proxies
            .values()
            .flat_map(merged_pairs)
            .map(|(a, b)| merged_key(a, b))
            .collect();
        self.merged.retain(|key, _| live.contains(key));
    }

    /// `a` and `b` in one map, shared with every proxy made of the same
    /// two parts.
    fn merged(&self, a: &Arc<ResourceMap>, b: &Arc<ResourceMap>) -> Arc<ResourceMap> {
        let entry = self.merged.entry(merged_key(a, b)).or_insert_with(|| {
            let mut m = (**a).clone();
            m.extend(b.iter().map(|(k, v)| (k.clone(), v.clone())));
            Merged {
                _parts: [Arc::clone(a), Arc::clone(b)],
                merged: Arc::new(m),
            }
        });
        Arc::clone(&entry.merged)
    }

    /// What `plan` serves in the `interception` layout, each map shared
    /// with the proxies made of the same parts.
    fn resources_of(&self, plan: &ProxyPlan, interception: Interception) -> ProxyResources {
        match interception {
            Interception::None => ProxyResources {
                clusters: self.merged(&plan.outbound_clusters, &plan.inbound_clusters),
                endpoints: Arc::clone(&plan.endpoints),
                listeners: Arc::clone(&plan.listeners),
                routes: Arc::clone(&plan.routes),
            },
            Interception::Redirect => ProxyResources {
                clusters: self.merged(&plan.outbound_clusters, &plan.capture.inbound_clusters),
                endpoints: Arc::clone(&plan.endpoints),
                listeners: self.merged(
                    &plan.capture.outbound_listeners,
                    &plan.capture.inbound_listener,
                ),
                routes: Arc::clone(&plan.capture.routes),
            },
        }
    }

    /// Forgets the certificates of identities no sidecar in `translation`
    /// acts as, so a workload that left the mesh has no key kept (or
    /// rotated) for it. A stream still open for it is ended by its next
    /// view lookup, which no longer finds the workload.
    fn prune_certificates(&self, translation: &Translation) {
        let live: std::collections::HashSet<Identity> = translation
            .proxies
            .values()
            .map(|p| Identity {
                namespace: p.namespace.clone(),
                service_account: p.service_account.clone(),
            })
            .collect();
        let before = self.certs.len();
        self.certs.retain(|identity, _| live.contains(identity));
        let pruned = before.saturating_sub(self.certs.len());
        if pruned > 0 {
            info!(
                pruned,
                "dropped the certificates of identities no longer in the mesh"
            );
        }
    }

    /// The CA that issues this mesh's certificates.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// Metadata of every workload certificate held, sorted by identity.
    pub fn certs_info(&self) -> Vec<CertInfo> {
        let mut ids: Vec<Identity> = self.certs.iter().map(|e| e.key().clone()).collect();
        ids.sort();
        ids.iter().filter_map(|id| self.cert_info(id)).collect()
    }

    fn bump(&self) {
        // Views are per generation: drop the old ones so proxies that left
        // the mesh do not keep theirs alive.
        self.views.clear();
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// The current state, if a config was loaded.
    pub fn state(&self) -> Option<Arc<State>> {
        self.state.read().ok().and_then(|g| g.clone())
    }

    pub fn certs_issued(&self) -> u64 {
        self.certs_issued.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn secrets_for(&self, identity: &Identity) -> Result<Arc<Issued>, ViewError> {
        if let Some(i) = self.certs.get(identity) {
            return Ok(i.clone());
        }
        let issued = self.issue(identity)?;
        // Another stream may have issued concurrently: keep the first.
        Ok(self.certs.entry(identity.clone()).or_insert(issued).clone())
    }

    fn issue(&self, identity: &Identity) -> Result<Arc<Issued>, ViewError> {
        let now = SystemTime::now();
        let cert = self
            .ca
            .issue(identity, self.settings.cert_lifetime, now)
            .map_err(|e| ViewError::CertificateUnavailable(format!("{identity}: {e:#}")))?;
        self.certs_issued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        info!(%identity, serial = %cert.serial_hex, "issued workload certificate");
        let secrets = Arc::new(sds_resources(&cert, self.ca.root_pem()));
        Ok(Arc::new(Issued { cert, secrets }))
    }

    /// Re-issue every certificate that is past half its lifetime, and tick
    /// the generation if any was. Returns the earliest time the next one is
    /// due.
    pub fn rotate(&self, now: SystemTime) -> SystemTime {
        let due: Vec<Identity> = self
            .certs
            .iter()
            .filter(|e| e.cert.needs_renewal(now))
            .map(|e| e.key().clone())
            .collect();
        let mut rotated = 0;
        for id in due {
            match self.issue(&id) {
                Ok(i) => {
                    self.certs.insert(id, i);
                    rotated += 1;
                }
                Err(e) => warn!(error = %e, "certificate rotation failed; keeping the old one"),
            }
        }
        if rotated > 0 {
            info!(rotated, "rotated workload certificates");
            self.bump();
        }
        self.certs
            .iter()
            .map(|e| e.cert.renew_at())
            .min()
            .unwrap_or(now + self.settings.cert_lifetime / 2)
    }

    /// Certificate metadata for debug output.
    pub fn cert_info(&self, identity: &Identity) -> Option<CertInfo> {
        let i = self.certs.get(identity)?;
        Some(CertInfo {
            identity: identity.to_string(),
            spiffe_id: i.cert.spiffe_id.clone(),
            serial: i.cert.serial_hex.clone(),
            not_before: fmt_time(i.cert.not_before),
            not_after: fmt_time(i.cert.not_after),
        })
    }

    /// Test hook: add a resource to one proxy's view (e.g. an invalid
    /// listener, to see Envoy NACK it). Only reachable when the server runs
    /// with test hooks enabled.
    pub fn inject(&self, proxy: ProxyId, resource: Resource) {
        self.injected
            .entry(proxy)
            .or_default()
            .push(Arc::new(resource));
        self.bump();
    }

    pub fn clear_injected(&self) {
        self.injected.clear();
        self.bump();
    }

    fn build_view(
        &self,
        state: &State,
        node_id: &str,
        node: &NodeId,
        interception: Interception,
        peer: &Peer,
    ) -> Result<ProxyView, ViewError> {
        let proxy = node.proxy_id();
        let plan = state
            .translation
            .proxy(&proxy.namespace, &proxy.pod)
            .ok_or_else(|| ViewError::UnknownWorkload {
                node_id: node_id.to_string(),
                namespace: proxy.namespace.clone(),
                pod: proxy.pod.clone(),
            })?;
        let identity = Identity {
            namespace: plan.namespace.clone(),
            service_account: plan.service_account.clone(),
        };
        match peer {
            Peer::Certificate(authenticated) if *authenticated != identity => {
                return Err(ViewError::IdentityMismatch {
                    node_id: node_id.to_string(),
                    claimed: identity.to_string(),
                    authenticated: authenticated.to_string(),
                });
            }
            Peer::Rejected(reason) => {
                return Err(ViewError::Unauthenticated {
                    node_id: node_id.to_string(),
                    reason: reason.clone(),
                });
            }
            Peer::Certificate(_) | Peer::Unauthenticated => {}
        }
        let issued = self.secrets_for(&identity)?;
        let mut resources = self.resources_of(plan, interception);
        if let Some(extra) = self.injected.get(&proxy) {
            for r in extra.iter() {
                let target = match r.kind {
                    ResourceType::Cluster => &mut resources.clusters,
                    ResourceType::Endpoint => &mut resources.endpoints,
                    ResourceType::Listener => &mut resources.listeners,
                    ResourceType::Route => &mut resources.routes,
                    ResourceType::Secret => continue,
                };
                Arc::make_mut(target).insert(r.name.clone(), r.clone());
            }
        }
        Ok(ProxyView {
            proxy,
            interception,
            identity,
            resources,
            secrets: issued.secrets.clone(),
        })
    }
}

/// A proxy's view and the plan it was built from (whose maps decide
/// whether the next translation changed it).
struct CachedView {
    generation: u64,
    view: Arc<ProxyView>,
    plan: ProxyPlan,
}

/// A merged cluster map and the two maps its key points at (held, so the
/// pointers stay theirs).
struct Merged {
    _parts: [Arc<ResourceMap>; 2],
    merged: Arc<ResourceMap>,
}

fn merged_key(a: &Arc<ResourceMap>, b: &Arc<ResourceMap>) -> (usize, usize) {
    (Arc::as_ptr(a) as usize, Arc::as_ptr(b) as usize)
}

/// The pairs of maps [`Snapshots::resources_of`] merges for `plan`, in
/// either layout.
fn merged_pairs(plan: &ProxyPlan) -> [(&Arc<ResourceMap>, &Arc<ResourceMap>); 3] {
    [
        (&plan.outbound_clusters, &plan.inbound_clusters),
        (&plan.outbound_clusters, &plan.capture.inbound_clusters),
        (
            &plan.capture.outbound_listeners,
            &plan.capture.inbound_listener,
        ),
    ]
}

fn fmt_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

impl ConfigSource for Snapshots {
    fn view(
        &self,
        node_id: &str,
        interception: Interception,
        peer: &Peer,
    ) -> Result<Arc<ProxyView>, ViewError> {
        let node = NodeId::parse(node_id).map_err(|e| ViewError::BadNodeId(e.to_string()))?;
        let generation = self.generation();
        let proxy = node.proxy_id();
        let key = (proxy.clone(), interception);
        // A cached view was built for its identity: it serves an
        // authenticated peer only if that is the identity it proved.
        if let Some(v) = self.views.get(&key)
            && v.generation == generation
            && match peer {
                Peer::Unauthenticated => true,
                Peer::Certificate(id) => *id == v.view.identity,
                Peer::Rejected(_) => false,
            }
        {
            return Ok(v.view.clone());
        }
        let state = self.state().ok_or(ViewError::NotReady)?;
        let view = Arc::new(self.build_view(&state, node_id, &node, interception, peer)?);
        if let Some(plan) = state.translation.proxy(&proxy.namespace, &proxy.pod) {
            let cached = CachedView {
                generation,
                view: view.clone(),
                plan: plan.clone(),
            };
            self.views.insert(key, cached);
        }
        Ok(view)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::files::FileLoader;
    use crate::test_support::TempDir;
    use std::path::Path;

    fn article_base(except: &[&str], dir: &TempDir) -> Arc<ConfigSnapshot> {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/article/base");
        let config = dir.path("config");
        let _ = std::fs::remove_dir_all(&config);
        std::fs::create_dir_all(&config).expect("config dir");
        for entry in std::fs::read_dir(&base).expect("article base") {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).expect("name");
            if !except.contains(&name) {
                std::fs::copy(&path, config.join(name)).expect("copy");
            }
        }
        Arc::new(FileLoader::new(vec![config]).load())
    }

    fn snapshots(dir: &TempDir) -> Snapshots {
        let ca =
            CertificateAuthority::load_or_create(&dir.path("state"), "cluster.local").expect("CA");
        Snapshots::new(
            Settings {
                mesh: MeshConfig::default(),
                addressing: Addressing {
                    pod_net: "127.16.0.0".parse().expect("net"),
                    app_net: None,
                    service_net: None,
                },
                cert_lifetime: Duration::from_secs(3600),
            },
            Arc::new(ca),
        )
    }

    fn identities(s: &Snapshots) -> Vec<String> {
        s.certs_info().into_iter().map(|c| c.identity).collect()
    }

    #[test]
    fn certificates_of_identities_that_left_the_mesh_are_dropped() {
        let dir = TempDir::new("prune");
        let s = snapshots(&dir);
        s.apply(article_base(&[], &dir));
        for pod in ["sleep-0.foo", "httpbin-0.foo"] {
            let (name, ns) = pod.split_once('.').expect("pod.ns");
            let node = NodeId::format("127.0.0.1", name, ns, "cluster.local");
            s.view(&node, Interception::None, &Peer::Unauthenticated)
                .expect("view");
        }
        assert_eq!(identities(&s), ["foo/httpbin", "foo/sleep"]);
        s.apply(article_base(&["sleep-foo.yaml"], &dir));
        assert_eq!(identities(&s), ["foo/httpbin"]);
    }

    #[test]
    fn a_certificate_peer_gets_only_its_own_identity() {
        let dir = TempDir::new("peer");
        let s = snapshots(&dir);
        s.apply(article_base(&[], &dir));
        let node = NodeId::format("127.0.0.1", "httpbin-0", "foo", "cluster.local");
        let sleep = Peer::Certificate(Identity {
            namespace: "foo".into(),
            service_account: "sleep".into(),
        });
        // A view cached for the node's own identity must not serve another.
        s.view(&node, Interception::None, &Peer::Unauthenticated)
            .expect("own view");
        let err = s
            .view(&node, Interception::None, &sleep)
            .expect_err("another identity");
        assert!(matches!(err, ViewError::IdentityMismatch { .. }), "{err}");
        let rejected = Peer::Rejected("no client certificate".into());
        let err = s
            .view(&node, Interception::None, &rejected)
            .expect_err("rejected peer");
        assert!(matches!(err, ViewError::Unauthenticated { .. }), "{err}");
    }

    fn node(pod: &str, ns: &str) -> String {
        NodeId::format("127.0.0.1", pod, ns, "cluster.local")
    }

    #[test]
    fn a_change_that_does_not_touch_a_proxy_keeps_its_view() {
        let dir = TempDir::new("keep");
        let s = snapshots(&dir);
        s.apply(article_base(&[], &dir));
        let view = |pod, ns| {
            s.view(&node(pod, ns), Interception::None, &Peer::Unauthenticated)
                .expect("view")
        };
        let (sleep_foo, httpbin_bar) = (view("sleep-0", "foo"), view("httpbin-0", "bar"));

        // The same config again: every view is kept.
        s.apply(article_base(&[], &dir));
        assert!(Arc::ptr_eq(&sleep_foo, &view("sleep-0", "foo")));
        assert!(Arc::ptr_eq(&httpbin_bar, &view("httpbin-0", "bar")));

        // STRICT in namespace bar changes bar's inbound side only.
        let config = dir.path("config");
        std::fs::write(
            config.join("strict-bar.yaml"),
            "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\n\
             metadata:\n  name: default\n  namespace: bar\nspec:\n  mtls:\n    mode: STRICT\n",
        )
        .expect("write policy");
        s.apply(Arc::new(FileLoader::new(vec![config]).load()));
        assert!(
            Arc::ptr_eq(&sleep_foo, &view("sleep-0", "foo")),
            "sleep in foo is not touched by bar's policy"
        );
        let changed = view("httpbin-0", "bar");
        assert!(!Arc::ptr_eq(&httpbin_bar, &changed));
        assert_ne!(
            set_versions(&httpbin_bar),
            set_versions(&changed),
            "its listeners changed"
        );
        // Unchanged maps of a changed view are still the old ones.
        assert!(Arc::ptr_eq(
            &httpbin_bar.resources.endpoints,
            &changed.resources.endpoints
        ));
    }

    fn set_versions(view: &ProxyView) -> Vec<String> {
        ResourceType::PUSH_ORDER
            .map(|k| translator::xds::set_version(view.of(k)))
            .to_vec()
    }
}
