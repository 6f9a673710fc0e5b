//! Lookups by namespace, labels and service that are not linear scans.

use super::objects::{Labels, MeshConfig, Service, Workload};
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct Index {
    workloads_by_ns: HashMap<String, Vec<usize>>,
    /// (namespace, label key, label value) -> workloads carrying that label.
    by_label: HashMap<(String, String, String), Vec<usize>>,
    by_name: HashMap<(String, String), usize>,
    /// Per service (same index as `Mesh::services`): its endpoints.
    pub service_endpoints: Vec<Vec<usize>>,
    /// Per workload: the services that select it.
    pub workload_services: Vec<Vec<usize>>,
    /// Per service: its FQDN, computed once.
    pub service_fqdns: Vec<String>,
    /// Per namespace: its services.
    services_by_ns: HashMap<String, Vec<usize>>,
}

impl Index {
    pub fn build(config: &MeshConfig, services: &[Service], workloads: &[Workload]) -> Index {
        let mut idx = Index {
            workload_services: vec![Vec::new(); workloads.len()],
            ..Default::default()
        };
        for (i, w) in workloads.iter().enumerate() {
            idx.workloads_by_ns
                .entry(w.namespace.clone())
                .or_default()
                .push(i);
            idx.by_name.insert((w.namespace.clone(), w.name.clone()), i);
            for (k, v) in &w.labels {
                idx.by_label
                    .entry((w.namespace.clone(), k.clone(), v.clone()))
                    .or_default()
                    .push(i);
            }
        }
        for (si, s) in services.iter().enumerate() {
            let eps = match &s.selector {
                // A Service without selector has manually managed endpoints;
                // an empty selector selects nothing either (as kube does).
                Some(sel) if !sel.is_empty() => idx.select(&s.namespace, sel, workloads),
                _ => Vec::new(),
            };
            for &w in &eps {
                idx.workload_services[w].push(si);
            }
            // A pod that is not Ready still serves its own ports (its
            // inbound config), but receives no traffic through the service.
            idx.service_endpoints
                .push(eps.into_iter().filter(|&w| workloads[w].ready).collect());
            let fqdn = s.fqdn(&config.cluster_domain);
            idx.service_fqdns.push(fqdn);
            idx.services_by_ns
                .entry(s.namespace.clone())
                .or_default()
                .push(si);
        }
        idx
    }

    pub fn workloads_in(&self, namespace: &str) -> &[usize] {
        self.workloads_by_ns
            .get(namespace)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn services_in(&self, namespace: &str) -> &[usize] {
        self.services_by_ns
            .get(namespace)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn workload_by_name(&self, namespace: &str, name: &str) -> Option<usize> {
        self.by_name
            .get(&(namespace.to_string(), name.to_string()))
            .copied()
    }

    /// Workloads of `namespace` whose labels include all of `selector`.
    /// Starts from the rarest label's posting list.
    pub fn select(&self, namespace: &str, selector: &Labels, workloads: &[Workload]) -> Vec<usize> {
        if selector.is_empty() {
            return self.workloads_in(namespace).to_vec();
        }
        let mut smallest: Option<&Vec<usize>> = None;
        for (k, v) in selector {
            match self
                .by_label
                .get(&(namespace.to_string(), k.clone(), v.clone()))
            {
                None => return Vec::new(),
                Some(list) => {
                    if smallest.is_none_or(|s| list.len() < s.len()) {
                        smallest = Some(list);
                    }
                }
            }
        }
        smallest
            .map(|list| {
                list.iter()
                    .copied()
                    .filter(|&i| {
                        workloads
                            .get(i)
                            .is_some_and(|w| labels_match(selector, &w.labels))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `selector` ⊆ `labels`.
pub fn labels_match(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
