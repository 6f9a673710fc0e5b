//! Outbound scope: which Sidecar applies to a workload, and which service
//! ports it imports. Listener, route and cluster building ask this; they
//! never read Sidecar objects themselves.
//!
//! Selection, as Istio implements it (`PushContext.getSidecarScope`,
//! `initSidecarScopes`):
//! 1. Candidates are the Sidecars of the workload's namespace, oldest first
//!    (creation time, then name, then namespace).
//! 2. The oldest one with a `workloadSelector` whose labels the workload
//!    carries wins (`workloadSelector: {}` selects every workload).
//! 3. Else the oldest one without `workloadSelector` (the namespace default).
//! 4. Else, when the namespace has none, the oldest Sidecar without
//!    `workloadSelector` in the root namespace (the mesh default), with `.`
//!    in its hosts meaning the workload's namespace.
//! 5. Else no Sidecar applies and the workload gets every service.
//!
//! Import, as `convertIstioListenerToWrapper` and `selectServices`:
//! - A Sidecar without `egress` imports `*/*`. Every listener's hosts are
//!   `namespace/dnsName`; namespace `.` is the namespace the scope is for,
//!   `*` any; dnsName `*` any, `*.suffix` a suffix, else an exact FQDN.
//! - A `~` prefix on the namespace excludes instead (`~/host`: from every
//!   namespace): an excluded service is not imported by that listener.
//! - A service is imported when the hosts of its own namespace match it,
//!   else when the `*` namespace's hosts do.
//! - A listener with a port imports only that port of each service (a
//!   service without it is not imported); the scope is the union over the
//!   listeners.

use crate::diag::Diagnostic;
use crate::model::{Mesh, ObjectRef, Sidecar, Workload};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// The service ports a Sidecar imports: service index -> ports, sorted.
pub type Imports = BTreeMap<usize, Vec<u16>>;

/// The outbound scope of the workloads one Sidecar applies to in one
/// namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarScope {
    /// The Sidecar that decided.
    pub by: ObjectRef,
    /// Identifies `imports` among the scopes of one translation: equal
    /// imports, equal id, so proxies with the same imports share maps.
    pub imports_id: usize,
    pub imports: Arc<Imports>,
}

impl SidecarScope {
    /// Whether port `port` of service `si` is in scope.
    pub fn imports(&self, si: usize, port: u16) -> bool {
        self.imports.get(&si).is_some_and(|p| p.contains(&port))
    }
}

/// Whether `port` of service `si` is in `scope` (`None`: no Sidecar, so
/// everything is).
pub fn in_scope(scope: Option<&SidecarScope>, si: usize, port: u16) -> bool {
    scope.is_none_or(|s| s.imports(si, port))
}

/// One egress host entry, parsed.
struct HostEntry {
    /// The namespace after `~`/`.` handling; `*` for any.
    namespace: String,
    name: String,
    excluded: bool,
    /// Index in `hosts`, for diagnostics.
    at: usize,
}

/// The Sidecars of a mesh, sorted into the levels of the selection rule,
/// and the scopes computed so far.
pub struct SidecarScopes<'m> {
    mesh: &'m Mesh,
    /// Per namespace: Sidecars with a selector, oldest first.
    selected: HashMap<&'m str, Vec<usize>>,
    /// Per namespace: the oldest Sidecar without selector.
    namespace_default: HashMap<&'m str, usize>,
    /// The oldest Sidecar without selector in the root namespace.
    root_default: Option<usize>,
    /// (Sidecar, namespace) -> scope.
    scopes: HashMap<(usize, String), Arc<SidecarScope>>,
    imports_ids: HashMap<Arc<Imports>, usize>,
    /// (Sidecar, egress listener, host entry) that imported or excluded
    /// a service somewhere.
    matched: BTreeSet<(usize, usize, usize)>,
    /// (newer Sidecar, workload) pairs already reported.
    shadowed: BTreeSet<(usize, usize)>,
}

impl<'m> SidecarScopes<'m> {
    pub fn new(mesh: &'m Mesh, diags: &mut Vec<Diagnostic>) -> SidecarScopes<'m> {
        let root = mesh.config.root_namespace.as_str();
        let mut out = SidecarScopes {
            mesh,
            selected: HashMap::new(),
            namespace_default: HashMap::new(),
            root_default: None,
            scopes: HashMap::new(),
            imports_ids: HashMap::new(),
            matched: BTreeSet::new(),
            shadowed: BTreeSet::new(),
        };
        // Oldest first, so the first seen at a level wins.
        for (i, sc) in mesh.sidecars.iter().enumerate() {
            let ns = sc.meta.namespace.as_str();
            for (field, why) in &sc.ignored {
                diags.push(Diagnostic::warning(
                    sc.object_ref(),
                    Some(field.clone()),
                    why.clone(),
                ));
            }
            if sc.selector.is_some() {
                out.selected.entry(ns).or_default().push(i);
                continue;
            }
            match out.namespace_default.get(ns) {
                None => {
                    out.namespace_default.insert(ns, i);
                    if ns == root {
                        out.root_default = Some(i);
                    }
                }
                Some(&winner) => {
                    let scope = if ns == root {
                        "mesh-wide default (root namespace)"
                    } else {
                        "namespace default"
                    };
                    diags.push(Diagnostic::warning(
                        sc.object_ref(),
                        Some("spec.workloadSelector".into()),
                        format!(
                            "is ignored: the older {} is the {scope} already (only one Sidecar without workloadSelector applies per namespace; the oldest wins)",
                            mesh.sidecars
                                .get(winner)
                                .map(Sidecar::object_ref)
                                .map(|r| r.to_string())
                                .unwrap_or_default()
                        ),
                    ));
                }
            }
        }
        // Istio converts every Sidecar for its own namespace; doing the
        // same here finds hosts that match nothing even when no workload
        // uses the Sidecar yet.
        for (i, sc) in mesh.sidecars.iter().enumerate() {
            out.scope(i, &sc.meta.namespace);
        }
        out
    }

    /// The Sidecar and scope that apply to `w`, `None` when none does.
    pub fn for_workload(
        &mut self,
        wi: usize,
        w: &Workload,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Arc<SidecarScope>> {
        let ns = w.namespace.as_str();
        let selecting: Vec<usize> = self
            .selected
            .get(ns)
            .into_iter()
            .flatten()
            .copied()
            .filter(|&i| {
                self.mesh.sidecars.get(i).is_some_and(|sc| {
                    sc.selector
                        .as_ref()
                        .is_some_and(|sel| sel.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
                })
            })
            .collect();
        if let Some((&winner, newer)) = selecting.split_first() {
            for &n in newer {
                if self.shadowed.insert((n, wi))
                    && let (Some(sc), Some(win)) =
                        (self.mesh.sidecars.get(n), self.mesh.sidecars.get(winner))
                {
                    diags.push(Diagnostic::warning(
                        sc.object_ref(),
                        Some("spec.workloadSelector".into()),
                        format!(
                            "is ignored for {}/{}: the older {} selects it too (the oldest wins)",
                            w.namespace,
                            w.name,
                            win.object_ref()
                        ),
                    ));
                }
            }
            return Some(self.scope(winner, ns));
        }
        if let Some(&i) = self.namespace_default.get(ns) {
            return Some(self.scope(i, ns));
        }
        let root = self.root_default?;
        Some(self.scope(root, ns))
    }

    /// Warnings for egress hosts that matched no service in any namespace
    /// the Sidecar was applied to. Call after every workload was resolved.
    pub fn unmatched_hosts(&self, diags: &mut Vec<Diagnostic>) {
        for (i, sc) in self.mesh.sidecars.iter().enumerate() {
            for (li, l) in sc.egress.iter().enumerate() {
                for (hi, h) in l.hosts.iter().enumerate() {
                    if self.matched.contains(&(i, li, hi)) || !h.contains('/') {
                        continue;
                    }
                    let verb = if h.starts_with('~') {
                        "excludes"
                    } else {
                        "imports"
                    };
                    let port = l.port.map(|p| format!(" on port {p}")).unwrap_or_default();
                    diags.push(Diagnostic::warning(
                        sc.object_ref(),
                        Some(format!("spec.egress[{li}].hosts[{hi}]")),
                        format!("{h:?} {verb} no service{port}: it matches no service of the mesh"),
                    ));
                }
            }
        }
    }

    /// The scope of Sidecar `i` for workloads of `namespace`, computed once.
    fn scope(&mut self, i: usize, namespace: &str) -> Arc<SidecarScope> {
        if let Some(s) = self.scopes.get(&(i, namespace.to_string())) {
            return s.clone();
        }
        let mesh = self.mesh;
        let mut imports = Imports::new();
        let (by, listeners) = match mesh.sidecars.get(i) {
            Some(sc) => (sc.object_ref(), sc.egress.as_slice()),
            None => (ObjectRef::new("Sidecar", namespace, ""), &[][..]),
        };
        let default = [crate::model::EgressListener {
            port: None,
            hosts: vec!["*/*".into()],
        }];
        let listeners = if listeners.is_empty() {
            &default[..]
        } else {
            listeners
        };
        for (li, l) in listeners.iter().enumerate() {
            let entries = parse_hosts(&l.hosts, namespace);
            for (si, svc) in mesh.services.iter().enumerate() {
                let fqdn = mesh.service_fqdn(si);
                let own: Vec<&HostEntry> = entries
                    .iter()
                    .filter(|e| e.namespace == svc.namespace)
                    .collect();
                let any: Vec<&HostEntry> = entries.iter().filter(|e| e.namespace == "*").collect();
                let excluded: Vec<usize> = own
                    .iter()
                    .chain(&any)
                    .filter(|e| e.excluded && host_matches(fqdn, &e.name))
                    .map(|e| e.at)
                    .collect();
                if !excluded.is_empty() {
                    self.matched
                        .extend(excluded.into_iter().map(|h| (i, li, h)));
                    continue;
                }
                let matching = |set: &[&HostEntry]| -> Vec<usize> {
                    set.iter()
                        .filter(|e| !e.excluded && host_matches(fqdn, &e.name))
                        .map(|e| e.at)
                        .collect()
                };
                let mut hits = matching(&own);
                if hits.is_empty() {
                    hits = matching(&any);
                }
                if hits.is_empty() {
                    continue;
                }
                let ports: Vec<u16> = match l.port {
                    Some(p) => svc
                        .ports
                        .iter()
                        .map(|sp| sp.port)
                        .filter(|&sp| sp == p)
                        .collect(),
                    None => svc.ports.iter().map(|sp| sp.port).collect(),
                };
                if ports.is_empty() {
                    continue;
                }
                self.matched.extend(hits.into_iter().map(|h| (i, li, h)));
                let entry = imports.entry(si).or_default();
                entry.extend(ports);
                entry.sort_unstable();
                entry.dedup();
            }
        }
        let imports = Arc::new(imports);
        let next = self.imports_ids.len();
        let imports_id = *self.imports_ids.entry(imports.clone()).or_insert(next);
        let scope = Arc::new(SidecarScope {
            by,
            imports_id,
            imports,
        });
        self.scopes
            .insert((i, namespace.to_string()), scope.clone());
        scope
    }
}

/// Parses `namespace/dnsName` entries for a scope in `namespace`. Entries
/// without `/` were rejected by validation; they are skipped here, as
/// istiod does.
fn parse_hosts(hosts: &[String], namespace: &str) -> Vec<HostEntry> {
    hosts
        .iter()
        .enumerate()
        .filter_map(|(at, h)| {
            let (ns, name) = h.split_once('/')?;
            let (excluded, ns) = match ns.strip_prefix('~') {
                Some("") => (true, "*"),
                Some(rest) => (true, rest),
                None => (false, ns),
            };
            let ns = if ns == "." { namespace } else { ns };
            Some(HostEntry {
                namespace: ns.to_string(),
                name: name.to_string(),
                excluded,
                at,
            })
        })
        .collect()
}

/// Istio's `host.Name.SubsetOf`: `*` matches every name, `*.suffix` every
/// name ending in `.suffix`, anything else only itself.
fn host_matches(fqdn: &str, pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => fqdn.len() > suffix.len() && fqdn.ends_with(suffix),
        None => fqdn == pattern,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::build::{Addressing, mesh_from_yaml};

    /// Services a.foo (80, 8080), b.bar (80), c.baz (80); a sidecar pod
    /// per namespace (`app: x`), plus `app: y` in foo.
    const BASE: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: foo, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: bar, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: baz, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: a, namespace: foo}
spec: {selector: {app: x}, ports: [{name: http, port: 80}, {name: http-alt, port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: bar}
spec: {selector: {app: x}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: c, namespace: baz}
spec: {selector: {app: x}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: x, namespace: foo, labels: {app: x}}
spec: {containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata: {name: y, namespace: foo, labels: {app: y}}
spec: {containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata: {name: x, namespace: bar, labels: {app: x}}
spec: {containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata: {name: x, namespace: baz, labels: {app: x}}
spec: {containers: [{name: c, image: i}]}
";

    fn sidecar(ns: &str, name: &str, age: u8, selector: Option<&str>, hosts: &[&str]) -> String {
        let sel = selector
            .map(|app| format!("  workloadSelector: {{labels: {{app: {app}}}}}\n"))
            .unwrap_or_default();
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\n\
             metadata: {{name: {name}, namespace: {ns}, creationTimestamp: '2024-01-{age:02}T00:00:00Z'}}\n\
             spec:\n{sel}  egress:\n  - hosts: {hosts:?}\n"
        )
    }

    /// Per workload `ns/pod`: the deciding Sidecar and `svc.ns:port` in scope
    /// (`None`: no Sidecar), and the diagnostics.
    /// Per workload: (deciding Sidecar, service ports in scope).
    type Resolved = BTreeMap<String, Option<(String, Vec<String>)>>;

    fn resolve(extra: &[String]) -> (Resolved, Vec<String>) {
        let yaml = format!("{BASE}{}", extra.concat());
        let mesh = mesh_from_yaml(
            &[("t.yaml".into(), yaml)],
            Default::default(),
            &Addressing::default(),
        )
        .expect("valid");
        let mut diags = Vec::new();
        let mut scopes = SidecarScopes::new(&mesh, &mut diags);
        let mut out = BTreeMap::new();
        for (wi, w) in mesh.workloads.iter().enumerate() {
            let scope = scopes.for_workload(wi, w, &mut diags).map(|s| {
                let names = s
                    .imports
                    .iter()
                    .flat_map(|(&si, ports)| {
                        let svc = &mesh.services[si];
                        ports
                            .iter()
                            .map(move |p| format!("{}.{}:{p}", svc.name, svc.namespace))
                    })
                    .collect();
                (s.by.to_string(), names)
            });
            out.insert(format!("{}/{}", w.namespace, w.name), scope);
        }
        scopes.unmatched_hosts(&mut diags);
        diags.sort();
        (out, diags.iter().map(ToString::to_string).collect())
    }

    fn got<'a>(r: &'a Resolved, w: &str) -> Option<(&'a str, Vec<&'a str>)> {
        r[w].as_ref()
            .map(|(by, s)| (by.as_str(), s.iter().map(String::as_str).collect()))
    }

    #[test]
    fn without_any_sidecar_every_workload_gets_every_service() {
        let (r, diags) = resolve(&[]);
        assert!(r.values().all(Option::is_none), "{r:?}");
        assert_eq!(diags, Vec::<String>::new());
    }

    #[test]
    fn a_selector_sidecar_beats_the_namespace_default_which_beats_the_root_default() {
        let (r, _) = resolve(&[
            sidecar("istio-system", "mesh", 1, None, &["./*"]),
            sidecar("foo", "default", 2, None, &["bar/*"]),
            sidecar("foo", "for-y", 3, Some("y"), &["baz/*"]),
        ]);
        assert_eq!(
            got(&r, "foo/y"),
            Some(("Sidecar foo/for-y", vec!["c.baz:80"]))
        );
        assert_eq!(
            got(&r, "foo/x"),
            Some(("Sidecar foo/default", vec!["b.bar:80"]))
        );
        // No Sidecar in bar or baz: the root default, `.` = their own namespace.
        assert_eq!(
            got(&r, "bar/x"),
            Some(("Sidecar istio-system/mesh", vec!["b.bar:80"]))
        );
        assert_eq!(
            got(&r, "baz/x"),
            Some(("Sidecar istio-system/mesh", vec!["c.baz:80"]))
        );
    }

    #[test]
    fn a_root_sidecar_with_a_selector_is_no_mesh_default() {
        let (r, _) = resolve(&[sidecar("istio-system", "sel", 1, Some("x"), &["*/*"])]);
        assert!(r.values().all(Option::is_none), "{r:?}");
    }

    #[test]
    fn the_oldest_wins_at_each_level_and_the_others_are_reported() {
        let (r, diags) = resolve(&[
            sidecar("foo", "newer", 5, None, &["baz/*"]),
            sidecar("foo", "older", 4, None, &["bar/*"]),
            sidecar("foo", "sel-newer", 3, Some("x"), &["baz/*"]),
            sidecar("foo", "sel-older", 2, Some("x"), &["foo/*"]),
        ]);
        assert_eq!(
            got(&r, "foo/x"),
            Some(("Sidecar foo/sel-older", vec!["a.foo:80", "a.foo:8080"]))
        );
        assert_eq!(
            got(&r, "foo/y"),
            Some(("Sidecar foo/older", vec!["b.bar:80"]))
        );
        assert!(
            diags.iter().any(|d| d.contains(
                "Sidecar foo/newer: spec.workloadSelector: is ignored: the older Sidecar foo/older"
            )),
            "{diags:#?}"
        );
        assert!(
            diags.iter().any(|d| d.contains("Sidecar foo/sel-newer: spec.workloadSelector: is ignored for foo/x: the older Sidecar foo/sel-older")),
            "{diags:#?}"
        );
    }

    #[test]
    fn own_namespace_hosts_first_then_wildcard_namespace_and_exclusions_win() {
        let (r, _) = resolve(&[sidecar(
            "foo",
            "s",
            1,
            None,
            &["bar/nothing.bar.svc.cluster.local", "*/*", "~baz/*"],
        )]);
        // bar/ names no b, but */* still imports it (Istio falls back); baz
        // is excluded; a.foo comes from */*.
        assert_eq!(
            got(&r, "foo/x"),
            Some(("Sidecar foo/s", vec!["b.bar:80", "a.foo:80", "a.foo:8080"]))
        );
    }

    #[test]
    fn an_egress_port_imports_only_that_port() {
        let yaml = "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\n\
             metadata: {name: s, namespace: foo}\nspec:\n  egress:\n  \
             - port: {number: 8080, protocol: HTTP, name: http}\n    hosts: [\"./*\"]\n";
        let (r, diags) = resolve(&[yaml.to_string()]);
        assert_eq!(
            got(&r, "foo/x"),
            Some(("Sidecar foo/s", vec!["a.foo:8080"]))
        );
        assert!(
            diags
                .iter()
                .any(|d| d.contains("spec.egress[0].port: imports only service port 8080")),
            "{diags:#?}"
        );
    }

    #[test]
    fn hosts_that_match_no_service_are_reported() {
        let (_, diags) = resolve(&[sidecar(
            "foo",
            "s",
            1,
            None,
            &["./*", "bar/typo.bar.svc.cluster.local", "*/*.example.com"],
        )]);
        assert_eq!(
            diags,
            [
                "warning: Sidecar foo/s: spec.egress[0].hosts[1]: \"bar/typo.bar.svc.cluster.local\" imports no service: it matches no service of the mesh",
                "warning: Sidecar foo/s: spec.egress[0].hosts[2]: \"*/*.example.com\" imports no service: it matches no service of the mesh",
            ]
        );
    }

    #[test]
    fn wildcard_hosts_match_as_istio_hostnames_do() {
        assert!(host_matches("a.b.svc.cluster.local", "*"));
        assert!(host_matches("a.b.svc.cluster.local", "*.svc.cluster.local"));
        assert!(host_matches(
            "a.b.svc.cluster.local",
            "*.b.svc.cluster.local"
        ));
        assert!(!host_matches(
            "a.b.svc.cluster.local",
            "*.c.svc.cluster.local"
        ));
        assert!(host_matches(
            "a.b.svc.cluster.local",
            "a.b.svc.cluster.local"
        ));
        assert!(!host_matches("a.b.svc.cluster.local", "a.b"));
    }

    #[test]
    fn dot_means_the_scope_namespace_and_tilde_alone_every_namespace() {
        let e = parse_hosts(&["./*".into(), "~/x.y".into(), "~bar/*".into()], "foo");
        let got: Vec<_> = e
            .iter()
            .map(|e| (e.namespace.as_str(), e.name.as_str(), e.excluded))
            .collect();
        assert_eq!(
            got,
            [("foo", "*", false), ("*", "x.y", true), ("bar", "*", true)]
        );
    }
}
