//! `xds-load gen-mesh`: a synthetic mesh as YAML for the directory source,
//! the size of the benchmark's (Istio's published sizing point is 1,000
//! services and 2,000 sidecars), with the policy mix a real mesh has.
//!
//! What it writes, for `S` services in `K` namespaces and `W` workloads:
//! - `namespaces.yaml`: `ns-000` .. with `istio-injection: enabled`, and
//!   `legacy` (no sidecars) when legacy workloads are asked for;
//! - `NS/workloads.yaml` per namespace: a ServiceAccount, a Service (port
//!   `http` 8000 -> 80; a fifth also `grpc` 9000 -> 9090, a twentieth also
//!   `tcp` 5432) and its Pods, each with a `status.podIP` in 10.0.0.0/8;
//!   workload `w` belongs to service `w % S`, service `s` to namespace
//!   `s % K`;
//! - [`MESH_POLICY_FILE`]: the mesh-wide PeerAuthentication, STRICT;
//! - `NS/peer-authentication.yaml`: a namespace-wide PeerAuthentication in
//!   [`CHANGE_NAMESPACE`] (PERMISSIVE, the target of the benchmark's
//!   namespace change) and in about a fifth of the other namespaces;
//! - `NS/policies.yaml`: workload PeerAuthentications (a tenth of the
//!   services, half of them with a port-level override) and
//!   DestinationRules (ISTIO_MUTUAL for a tenth of the services; DISABLE
//!   only for services whose own policy is PERMISSIVE on every port, so
//!   the mesh has no client/server conflict whatever the mesh-wide and
//!   namespace modes are toggled to).
//!
//! The same spec and seed give the same bytes (a xorshift generator: a
//! fixed algorithm, unlike `StdRng`).

use anyhow::{Context, bail};
use rand::{RngExt, SeedableRng};
use rand_xorshift::XorShiftRng;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The mesh-wide policy, relative to the mesh directory.
pub const MESH_POLICY_FILE: &str = "istio-system/peer-authentication.yaml";

/// The namespace whose namespace-wide policy the benchmark toggles; it
/// always has one.
pub const CHANGE_NAMESPACE: &str = "ns-000";

/// Marks a directory this generator wrote, so it may replace it.
const MARKER: &str = ".xds-load-mesh";

/// The root namespace the mesh-wide policy lives in.
const ROOT_NAMESPACE: &str = "istio-system";

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshSpec {
    pub services: usize,
    pub namespaces: usize,
    /// Workloads with a sidecar.
    pub workloads: usize,
    /// Workloads without a sidecar, in namespace `legacy` (one service
    /// each): plaintext endpoints for auto mTLS.
    pub legacy_workloads: usize,
    pub seed: u64,
}

/// A generated mesh: file path (relative) -> YAML.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GeneratedMesh {
    pub files: BTreeMap<PathBuf, String>,
}

/// Peer authentication modes the generator writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Strict,
    Permissive,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Strict => "STRICT",
            Mode::Permissive => "PERMISSIVE",
        }
    }

    pub fn toggled(self) -> Mode {
        match self {
            Mode::Strict => Mode::Permissive,
            Mode::Permissive => Mode::Strict,
        }
    }
}

/// The mode [`MESH_POLICY_FILE`] is generated with.
pub const MESH_MODE: Mode = Mode::Strict;
/// The mode of [`CHANGE_NAMESPACE`]'s namespace-wide policy as generated.
pub const CHANGE_NAMESPACE_MODE: Mode = Mode::Permissive;

/// The namespace-wide policy file of `namespace`, relative to the mesh
/// directory.
pub fn namespace_policy_file(namespace: &str) -> PathBuf {
    Path::new(namespace).join("peer-authentication.yaml")
}

/// The mesh-wide PeerAuthentication with `mode`.
pub fn mesh_policy_yaml(mode: Mode) -> String {
    format!(
        "# Mesh-wide: a policy without selector in the root namespace.\n\
         apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata:\n  name: default\n  namespace: {ROOT_NAMESPACE}\n\
         spec:\n  mtls:\n    mode: {}\n",
        mode.as_str()
    )
}

/// The namespace-wide PeerAuthentication of `namespace` with `mode`.
pub fn namespace_policy_yaml(namespace: &str, mode: Mode) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata:\n  name: default\n  namespace: {namespace}\n\
         spec:\n  mtls:\n    mode: {}\n",
        mode.as_str()
    )
}

fn namespace_name(i: usize) -> String {
    format!("ns-{i:03}")
}

fn service_name(i: usize) -> String {
    format!("svc-{i:04}")
}

/// Workload `w`'s address: 10.0.0.1 onwards (a /8 holds 16 million).
fn pod_ip(w: usize) -> anyhow::Result<Ipv4Addr> {
    let base = u32::from(Ipv4Addr::new(10, 0, 0, 1));
    let offset = u32::try_from(w).context("too many workloads")?;
    if offset >= (1 << 24) - 2 {
        bail!("at most {} workloads fit in 10.0.0.0/8", (1u32 << 24) - 2);
    }
    Ok(Ipv4Addr::from(base + offset))
}

/// One generated service and what the policies decided for it.
struct ServicePlan {
    name: String,
    namespace: String,
    service_account: String,
    grpc: bool,
    tcp: bool,
}

impl MeshSpec {
    fn check(&self) -> anyhow::Result<()> {
        if self.namespaces == 0 || self.services == 0 {
            bail!("a mesh needs at least one namespace and one service");
        }
        if self.namespaces > 1000 {
            bail!("at most 1000 namespaces (ns-000 .. ns-999)");
        }
        if self.services > 10_000 {
            bail!("at most 10000 services (svc-0000 .. svc-9999)");
        }
        if self.services < self.namespaces {
            bail!(
                "{} services cannot fill {} namespaces",
                self.services,
                self.namespaces
            );
        }
        // Legacy workloads get addresses after the others.
        pod_ip(self.workloads + self.legacy_workloads)?;
        Ok(())
    }
}

/// Generates the mesh `spec` describes.
pub fn generate(spec: &MeshSpec) -> anyhow::Result<GeneratedMesh> {
    spec.check()?;
    let mut rng = XorShiftRng::seed_from_u64(spec.seed);
    let mut files: BTreeMap<PathBuf, String> = BTreeMap::new();

    let mut namespaces = String::new();
    for k in 0..spec.namespaces {
        let _ = write!(
            namespaces,
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n  labels:\n    istio-injection: enabled\n",
            namespace_name(k)
        );
    }
    if spec.legacy_workloads > 0 {
        namespaces.push_str("---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: legacy\n");
    }
    files.insert("namespaces.yaml".into(), namespaces);
    files.insert(MESH_POLICY_FILE.into(), mesh_policy_yaml(MESH_MODE));

    let services: Vec<ServicePlan> = (0..spec.services)
        .map(|s| {
            let name = service_name(s);
            // Most workloads run as their own service account; some as
            // their namespace's `default`, as in real clusters.
            let service_account = if rng.random_bool(0.2) {
                "default".to_string()
            } else {
                name.clone()
            };
            let roll = rng.random_range(0..100u32);
            ServicePlan {
                namespace: namespace_name(s % spec.namespaces),
                name,
                service_account,
                grpc: roll < 20,
                tcp: roll >= 95,
            }
        })
        .collect();

    // Per namespace: workloads file, policies file.
    let mut workloads: BTreeMap<String, String> = BTreeMap::new();
    let mut policies: BTreeMap<String, String> = BTreeMap::new();
    for svc in &services {
        let text = workloads.entry(svc.namespace.clone()).or_default();
        if svc.service_account != "default" {
            let _ = write!(
                text,
                "---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {}\n  namespace: {}\n",
                svc.service_account, svc.namespace
            );
        }
        text.push_str(&service_yaml(svc));
    }
    for w in 0..spec.workloads {
        let Some(svc) = services.get(w % spec.services) else {
            continue;
        };
        let replica = w / spec.services;
        let text = workloads.entry(svc.namespace.clone()).or_default();
        text.push_str(&pod_yaml(svc, replica, pod_ip(w)?));
    }

    // Namespace-wide policies: the change target always, a fifth of the
    // others, mostly PERMISSIVE (a namespace migrating to mTLS).
    for k in 0..spec.namespaces {
        let ns = namespace_name(k);
        let mode = if ns == CHANGE_NAMESPACE {
            Some(CHANGE_NAMESPACE_MODE)
        } else if rng.random_bool(0.2) {
            Some(if rng.random_bool(0.7) {
                Mode::Permissive
            } else {
                Mode::Strict
            })
        } else {
            None
        };
        if let Some(mode) = mode {
            files.insert(namespace_policy_file(&ns), namespace_policy_yaml(&ns, mode));
        }
    }

    // Workload policies and DestinationRules.
    for svc in &services {
        let text = policies.entry(svc.namespace.clone()).or_default();
        let mut all_permissive = false;
        if rng.random_bool(0.1) {
            let mode = if rng.random_bool(0.5) {
                Mode::Strict
            } else {
                Mode::Permissive
            };
            let port_override = rng.random_bool(0.5);
            all_permissive = mode == Mode::Permissive && !port_override;
            text.push_str(&workload_policy_yaml(svc, mode, port_override));
        }
        if rng.random_bool(0.1) {
            text.push_str(&destination_rule_yaml(svc, "ISTIO_MUTUAL"));
        } else if all_permissive && rng.random_bool(0.5) {
            text.push_str(&destination_rule_yaml(svc, "DISABLE"));
        }
    }

    for (ns, text) in workloads {
        files.insert(Path::new(&ns).join("workloads.yaml"), text);
    }
    for (ns, text) in policies.into_iter().filter(|(_, t)| !t.is_empty()) {
        files.insert(Path::new(&ns).join("policies.yaml"), text);
    }

    if spec.legacy_workloads > 0 {
        let mut text = String::new();
        for l in 0..spec.legacy_workloads {
            let svc = ServicePlan {
                name: format!("legacy-{l:03}"),
                namespace: "legacy".to_string(),
                service_account: "default".to_string(),
                grpc: false,
                tcp: false,
            };
            text.push_str(&service_yaml(&svc));
            text.push_str(&pod_yaml(&svc, 0, pod_ip(spec.workloads + l)?));
        }
        files.insert("legacy/workloads.yaml".into(), text);
    }
    Ok(GeneratedMesh { files })
}

fn service_yaml(svc: &ServicePlan) -> String {
    let mut ports = String::from("  - name: http\n    port: 8000\n    targetPort: 80\n");
    if svc.grpc {
        ports.push_str("  - name: grpc-api\n    port: 9000\n    targetPort: 9090\n");
    }
    if svc.tcp {
        ports.push_str("  - name: tcp-db\n    port: 5432\n    targetPort: 5432\n");
    }
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    app: {name}\n\
         spec:\n  selector:\n    app: {name}\n  ports:\n{ports}",
        name = svc.name,
        ns = svc.namespace,
    )
}

fn pod_yaml(svc: &ServicePlan, replica: usize, ip: Ipv4Addr) -> String {
    let mut ports = String::from("    - containerPort: 80\n");
    if svc.grpc {
        ports.push_str("    - containerPort: 9090\n");
    }
    if svc.tcp {
        ports.push_str("    - containerPort: 5432\n");
    }
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}-{replica}\n  namespace: {ns}\n  labels:\n    app: {name}\n    version: v1\n\
         spec:\n  serviceAccountName: {sa}\n  containers:\n  - name: app\n    image: registry.example/{name}:1.0\n    ports:\n{ports}\
         status:\n  podIP: {ip}\n",
        name = svc.name,
        ns = svc.namespace,
        sa = svc.service_account,
    )
}

/// A workload policy for `svc`'s pods; with `port_override`, its target
/// port 80 gets the other of STRICT and PERMISSIVE.
fn workload_policy_yaml(svc: &ServicePlan, mode: Mode, port_override: bool) -> String {
    let mut text = format!(
        "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
         spec:\n  selector:\n    matchLabels:\n      app: {name}\n  mtls:\n    mode: {mode}\n",
        name = svc.name,
        ns = svc.namespace,
        mode = mode.as_str(),
    );
    if port_override {
        let _ = write!(
            text,
            "  portLevelMtls:\n    80:\n      mode: {}\n",
            mode.toggled().as_str()
        );
    }
    text
}

fn destination_rule_yaml(svc: &ServicePlan, tls_mode: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
         spec:\n  host: {name}.{ns}.svc.cluster.local\n  trafficPolicy:\n    tls:\n      mode: {tls_mode}\n",
        name = svc.name,
        ns = svc.namespace,
    )
}

/// Writes `mesh` into `out`, which must be empty, absent, or a directory
/// this generator wrote before (then it is replaced).
pub fn write(mesh: &GeneratedMesh, out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        let empty = std::fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))?
            .next()
            .is_none();
        if !empty {
            if !out.join(MARKER).exists() {
                bail!(
                    "{} is not empty and was not written by gen-mesh; not touching it",
                    out.display()
                );
            }
            std::fs::remove_dir_all(out)
                .with_context(|| format!("removing the old mesh in {}", out.display()))?;
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // Hidden: the directory source skips it.
    std::fs::write(out.join(MARKER), "written by xds-load gen-mesh\n")
        .with_context(|| format!("writing the marker in {}", out.display()))?;
    for (rel, text) in &mesh.files {
        let path = out.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Replaces `path` with `text` in one step (a hidden temporary file
/// renamed over it), so a watching server never reads half a file.
pub fn replace_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::files::FileLoader;
    use crate::test_support::TempDir;
    use translator::Severity;
    use translator::model::MeshConfig;
    use translator::model::build::Addressing;

    fn spec(seed: u64) -> MeshSpec {
        MeshSpec {
            services: 100,
            namespaces: 10,
            workloads: 200,
            legacy_workloads: 5,
            seed,
        }
    }

    fn addressing() -> Addressing {
        Addressing {
            pod_net: Ipv4Addr::new(127, 16, 0, 0),
            app_net: None,
            service_net: None,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_files_and_another_seed_other_policies() {
        let a = generate(&spec(7)).expect("generate");
        assert_eq!(a, generate(&spec(7)).expect("generate"));
        let b = generate(&spec(8)).expect("generate");
        assert_ne!(a, b);
        // Only the choices differ, not what the spec fixes.
        let workload_files = |m: &GeneratedMesh| {
            m.files
                .keys()
                .filter(|p| p.ends_with("workloads.yaml"))
                .count()
        };
        assert_eq!(workload_files(&a), workload_files(&b));
    }

    #[test]
    fn a_generated_mesh_loads_without_errors_or_diagnostics_and_has_the_asked_size() {
        let dir = TempDir::new("gen-mesh");
        let spec = spec(42);
        let mesh = generate(&spec).expect("generate");
        write(&mesh, dir.root()).expect("write");

        let snapshot = FileLoader::new(vec![dir.root().to_path_buf()]).load();
        assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
        assert!(snapshot.skipped.is_empty(), "{:?}", snapshot.skipped);
        let (built, build_diagnostics) = snapshot.build_mesh(MeshConfig::default(), &addressing());
        assert!(build_diagnostics.is_empty(), "{build_diagnostics:?}");
        let translation = translator::translate(&built);
        let conflicts: Vec<_> = translation
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Conflict)
            .collect();
        assert!(conflicts.is_empty(), "{conflicts:?}");

        assert_eq!(built.services.len(), spec.services + spec.legacy_workloads);
        let with_sidecar = built.workloads.iter().filter(|w| w.sidecar).count();
        assert_eq!(with_sidecar, spec.workloads);
        assert_eq!(
            built.workloads.len(),
            spec.workloads + spec.legacy_workloads
        );
        assert_eq!(translation.proxies.len(), spec.workloads);
        // The policy mix: mesh-wide, the change namespace's, workload ones,
        // both DestinationRule modes.
        let scopes = |selector: bool| {
            built
                .peer_authentications
                .iter()
                .filter(|p| p.selector.is_some() == selector)
                .count()
        };
        assert!(scopes(false) >= 2, "mesh-wide and namespace-wide");
        assert!(scopes(true) > 0, "workload policies");
        assert!(
            built
                .peer_authentications
                .iter()
                .any(|p| !p.port_modes.is_empty()),
            "a port-level override"
        );
        assert!(built.destination_rules.len() > 1);
    }

    #[test]
    fn toggling_the_mesh_and_namespace_modes_keeps_the_mesh_free_of_conflicts() {
        let dir = TempDir::new("gen-mesh-toggle");
        write(&generate(&spec(3)).expect("generate"), dir.root()).expect("write");
        replace_file(
            &dir.root().join(MESH_POLICY_FILE),
            &mesh_policy_yaml(MESH_MODE.toggled()),
        )
        .expect("mesh change");
        replace_file(
            &dir.root().join(namespace_policy_file(CHANGE_NAMESPACE)),
            &namespace_policy_yaml(CHANGE_NAMESPACE, CHANGE_NAMESPACE_MODE.toggled()),
        )
        .expect("namespace change");
        let snapshot = FileLoader::new(vec![dir.root().to_path_buf()]).load();
        assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
        let (built, _) = snapshot.build_mesh(MeshConfig::default(), &addressing());
        let modes: Vec<_> = built
            .peer_authentications
            .iter()
            .filter(|p| p.selector.is_none())
            .map(|p| (p.meta.namespace.clone(), p.mode))
            .collect();
        assert!(
            modes.iter().any(|(ns, _)| ns == "istio-system"),
            "{modes:?}"
        );
        let translation = translator::translate(&built);
        assert!(
            translation
                .diagnostics
                .iter()
                .all(|d| d.severity != Severity::Conflict),
            "{:?}",
            translation.diagnostics
        );
        // No temporary file is left for the loader to trip over.
        let leftovers: Vec<_> = walkdir::WalkDir::new(dir.root())
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn write_refuses_a_directory_it_did_not_write_and_replaces_its_own() {
        let dir = TempDir::new("gen-mesh-refuse");
        dir.write("precious.yaml", "keep me");
        let mesh = generate(&spec(1)).expect("generate");
        let err = write(&mesh, dir.root()).expect_err("a foreign directory");
        assert!(err.to_string().contains("not written by gen-mesh"), "{err}");
        assert!(dir.path("precious.yaml").exists());

        let out = dir.path("mesh");
        write(&mesh, &out).expect("first write");
        std::fs::write(out.join("stale.yaml"), "old").expect("stale file");
        write(&mesh, &out).expect("rewrite");
        assert!(!out.join("stale.yaml").exists(), "replaced whole");
        assert!(out.join(MESH_POLICY_FILE).exists());
    }

    #[test]
    fn impossible_specs_are_refused_with_the_reason() {
        let base = spec(1);
        for (bad, why) in [
            (
                MeshSpec {
                    namespaces: 0,
                    ..base.clone()
                },
                "at least one namespace",
            ),
            (
                MeshSpec {
                    services: 5,
                    ..base.clone()
                },
                "cannot fill",
            ),
            (
                MeshSpec {
                    workloads: 1 << 24,
                    ..base.clone()
                },
                "10.0.0.0/8",
            ),
        ] {
            let err = generate(&bad).expect_err(why);
            assert!(err.to_string().contains(why), "{err}");
        }
    }
}
