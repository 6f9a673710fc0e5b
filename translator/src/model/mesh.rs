//! The whole mesh: every object, sorted the way Istio orders them, with the
//! indexes built once.

use super::index::Index;
use super::objects::{
    DestinationRule, MeshConfig, Namespace, PeerAuthentication, Service, Sidecar, Workload,
};
use std::collections::BTreeMap;

/// The whole mesh, indexed. Build with [`Mesh::new`].
#[derive(Debug)]
pub struct Mesh {
    pub config: MeshConfig,
    pub namespaces: BTreeMap<String, Namespace>,
    /// Sorted by namespace, name.
    pub services: Vec<Service>,
    /// Sorted by namespace, name.
    pub workloads: Vec<Workload>,
    /// Sorted oldest first (Istio's order).
    pub peer_authentications: Vec<PeerAuthentication>,
    /// Sorted oldest first.
    pub destination_rules: Vec<DestinationRule>,
    /// Sorted oldest first; set with [`Mesh::with_sidecars`].
    pub sidecars: Vec<Sidecar>,
    pub index: Index,
}

impl Mesh {
    pub fn new(
        config: MeshConfig,
        namespaces: Vec<Namespace>,
        mut services: Vec<Service>,
        mut workloads: Vec<Workload>,
        mut peer_authentications: Vec<PeerAuthentication>,
        mut destination_rules: Vec<DestinationRule>,
    ) -> Mesh {
        services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        peer_authentications.sort_by(|a, b| a.meta.age_key().cmp(&b.meta.age_key()));
        destination_rules.sort_by(|a, b| a.meta.age_key().cmp(&b.meta.age_key()));
        let namespaces: BTreeMap<String, Namespace> = namespaces
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect();
        let index = Index::build(&config, &services, &workloads);
        Mesh {
            config,
            namespaces,
            services,
            workloads,
            peer_authentications,
            destination_rules,
            sidecars: Vec::new(),
            index,
        }
    }

    /// The mesh with these Sidecars (a separate step so that callers with
    /// no Sidecars need not change).
    pub fn with_sidecars(mut self, mut sidecars: Vec<Sidecar>) -> Mesh {
        sidecars.sort_by(|a, b| a.meta.age_key().cmp(&b.meta.age_key()));
        self.sidecars = sidecars;
        self
    }

    pub fn fqdn(&self, service: &Service) -> String {
        service.fqdn(&self.config.cluster_domain)
    }

    /// The FQDN of service `si`, computed once by the index.
    pub fn service_fqdn(&self, si: usize) -> &str {
        self.index
            .service_fqdns
            .get(si)
            .map(String::as_str)
            .unwrap_or("")
    }

    pub fn spiffe_id(&self, namespace: &str, service_account: &str) -> String {
        format!(
            "spiffe://{}/ns/{namespace}/sa/{service_account}",
            self.config.trust_domain
        )
    }

    pub fn workload(&self, namespace: &str, name: &str) -> Option<(usize, &Workload)> {
        self.index
            .workload_by_name(namespace, name)
            .and_then(|i| self.workloads.get(i).map(|w| (i, w)))
    }
}
