//! From the reflector stores to a [`ConfigSnapshot`]: what each cached
//! object is trimmed to, the conversion of the Istio kinds through the same
//! validation as the YAML path, and "last good version" per object.

use super::discover::IstioKind;
use crate::source::ConfigSnapshot;
use crds::{Object, ObjectError, Parsed};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, Pod, PodCondition, PodSpec, PodStatus, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject, TypeMeta};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

/// The `file` of every object and error from the cluster.
pub(crate) const SOURCE: &str = "kubernetes";

/// kubectl's copy of the whole object: as large as the object, never read.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The Pod phases whose pods are gone from the mesh (and the watch's field
/// selector, so the API server does not send them at all).
pub(crate) const POD_FIELD_SELECTOR: &str = "status.phase!=Succeeded,status.phase!=Failed";

/// kind, namespace, name.
type Key = (&'static str, String, String);

/// Drops what no consumer reads from every cached object's metadata.
fn strip_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// What a cached Namespace keeps: its metadata (labels decide injection).
/// The resource version goes too: the watcher has read it already, and
/// without it an unchanged object compares equal.
pub(crate) fn trim_namespace(ns: &mut Namespace) {
    strip_meta(&mut ns.metadata);
    ns.metadata.resource_version = None;
    ns.spec = None;
    ns.status = None;
}

/// What a cached Service keeps: metadata and spec (a load balancer's status
/// changes without changing the mesh).
pub(crate) fn trim_service(svc: &mut Service) {
    strip_meta(&mut svc.metadata);
    svc.metadata.resource_version = None;
    svc.status = None;
}

/// What a cached Pod keeps: what the mesh model reads (name, namespace,
/// labels, annotations, service account, containers' names and ports, pod
/// IP, phase, the Ready condition) and what sidecar detection needs (native
/// sidecars are init containers: their names and restart policy). Pods are
/// most of a cluster's objects and change often; the rest is dropped.
pub(crate) fn trim_pod(pod: &mut Pod) {
    let meta = std::mem::take(&mut pod.metadata);
    let mut kept = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        labels: meta.labels,
        annotations: meta.annotations,
        creation_timestamp: meta.creation_timestamp,
        deletion_timestamp: meta.deletion_timestamp,
        ..ObjectMeta::default()
    };
    strip_meta(&mut kept);
    pod.metadata = kept;
    pod.spec = pod.spec.take().map(|spec| {
        let containers = spec
            .containers
            .into_iter()
            .map(|c| Container {
                name: c.name,
                ports: c.ports.map(|ports| {
                    ports
                        .into_iter()
                        .map(|p| ContainerPort {
                            name: p.name,
                            container_port: p.container_port,
                            protocol: p.protocol,
                            ..ContainerPort::default()
                        })
                        .collect()
                }),
                ..Container::default()
            })
            .collect();
        let init_containers = spec.init_containers.map(|init| {
            init.into_iter()
                .map(|c| Container {
                    name: c.name,
                    restart_policy: c.restart_policy,
                    ..Container::default()
                })
                .collect()
        });
        #[allow(deprecated)]
        let service_account_name = spec.service_account_name.or(spec.service_account);
        PodSpec {
            containers,
            init_containers,
            service_account_name,
            host_network: spec.host_network,
            ..PodSpec::default()
        }
    });
    pod.status = pod.status.take().map(|status| {
        // Only the condition's state: its probe times change every few
        // seconds and would make every snapshot new.
        let conditions = status.conditions.map(|conditions| {
            conditions
                .into_iter()
                .filter(|c| c.type_ == "Ready")
                .map(|c| PodCondition {
                    type_: c.type_,
                    status: c.status,
                    ..PodCondition::default()
                })
                .collect()
        });
        PodStatus {
            pod_ip: status.pod_ip,
            phase: status.phase,
            conditions,
            ..PodStatus::default()
        }
    });
}

/// A cached Istio object: metadata (the resource version stays, it keys
/// the conversion cache) and spec; the status is istiod's and unread.
pub(crate) fn trim_policy(obj: &mut DynamicObject) {
    strip_meta(&mut obj.metadata);
    if let Some(data) = obj.data.as_object_mut() {
        data.remove("status");
    }
}

/// Whether a pod takes part in the mesh: it has an address and has not
/// finished.
pub(crate) fn pod_in_mesh(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    let has_ip = status.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty());
    let finished = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    has_ip && !finished
}

/// The Istio objects of one kind, as the store holds them.
pub(crate) struct PolicyInput {
    pub kind: &'static IstioKind,
    /// The version being watched: list items may lack their apiVersion.
    pub resource: ApiResource,
    pub objects: Vec<Arc<DynamicObject>>,
}

/// Everything the stores hold at one moment.
#[derive(Default)]
pub(crate) struct Inputs {
    pub namespaces: Vec<Arc<Namespace>>,
    pub services: Vec<Arc<Service>>,
    pub pods: Vec<Arc<Pod>>,
    /// Only the kinds being watched; a kind not served is empty.
    pub policies: Vec<PolicyInput>,
}

/// One Istio object's conversion, kept until its resource version changes.
struct Converted {
    resource_version: Option<String>,
    /// The problems of the current version (empty if it is valid).
    errors: Vec<ObjectError>,
    /// The newest version that was valid, in force while the current one
    /// has errors.
    last_good: Option<Parsed>,
}

/// Builds snapshots, remembering across builds what a YAML reload would
/// remember: when objects were first seen, and the last valid version of
/// each Istio object.
#[derive(Default)]
pub(crate) struct Builder {
    converted: HashMap<Key, Converted>,
    first_seen: HashMap<Key, i64>,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn key(kind: &'static str, meta: &ObjectMeta) -> Key {
    (
        kind,
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Where an object sorts in a snapshot: by kind, then namespace and name.
fn rank(kind: &str) -> u8 {
    match kind {
        "Namespace" => 0,
        "Service" => 1,
        "Pod" => 2,
        "PeerAuthentication" => 3,
        "DestinationRule" => 4,
        "Sidecar" => 5,
        _ => 6,
    }
}

fn parsed(object: Object, api_version: &str) -> Parsed {
    Parsed {
        object,
        file: SOURCE.to_string(),
        index: 0,
        item: None,
        api_version: api_version.to_string(),
    }
}

/// Converts one Istio object through the YAML path's validation.
fn convert(obj: &DynamicObject, resource: &ApiResource) -> (Option<Parsed>, Vec<ObjectError>) {
    let mut obj = obj.clone();
    // The version asked for is the version served; list items may omit it.
    obj.types = Some(TypeMeta {
        api_version: resource.api_version.clone(),
        kind: resource.kind.clone(),
    });
    let json = match serde_json::to_value(&obj) {
        Ok(json) => json,
        Err(e) => {
            let error = ObjectError {
                file: SOURCE.to_string(),
                index: 0,
                item: None,
                kind: Some(resource.kind.clone()),
                namespace: obj.metadata.namespace.clone(),
                name: obj.metadata.name.clone(),
                field: None,
                reason: format!("cannot encode the object as JSON: {e}"),
            };
            return (None, vec![error]);
        }
    };
    let (parsed, errors) = crds::manifest::parse_value(json, SOURCE);
    if !errors.is_empty() {
        return (None, errors);
    }
    let mut valid = parsed
        .into_iter()
        .find(|p| !matches!(p.object, Object::Skipped(_)));
    // The resource version changes with every status write; without it an
    // unchanged policy compares equal and publishes nothing.
    if let Some(p) = &mut valid {
        match &mut p.object {
            Object::PeerAuthentication(pa) => pa.metadata.resource_version = None,
            Object::DestinationRule(dr) => dr.metadata.resource_version = None,
            Object::Sidecar(sc) => sc.metadata.resource_version = None,
            _ => {}
        }
    }
    (valid, Vec::new())
}

impl Builder {
    /// When the object was created (Istio's precedence: the oldest policy
    /// wins), else when this source first saw it.
    fn first_seen(
        &mut self,
        key: &Key,
        meta: &ObjectMeta,
        now: i64,
        seen: &mut HashSet<Key>,
    ) -> i64 {
        seen.insert(key.clone());
        if let Some(created) = &meta.creation_timestamp {
            return created.0.as_second();
        }
        *self.first_seen.entry(key.clone()).or_insert(now)
    }

    /// A snapshot of `inputs`. Objects are sorted (by kind, namespace,
    /// name), so equal inputs give equal snapshots.
    pub(crate) fn build(&mut self, inputs: Inputs) -> ConfigSnapshot {
        let now = now_secs();
        let mut seen: HashSet<Key> = HashSet::new();
        let mut snapshot = ConfigSnapshot::default();
        for ns in inputs.namespaces {
            let k = key("Namespace", &ns.metadata);
            let at = self.first_seen(&k, &ns.metadata, now, &mut seen);
            let object = Object::Namespace(Arc::unwrap_or_clone(ns));
            snapshot.objects.push((parsed(object, "v1"), at));
        }
        for svc in inputs.services {
            let k = key("Service", &svc.metadata);
            let at = self.first_seen(&k, &svc.metadata, now, &mut seen);
            let object = Object::Service(Box::new(Arc::unwrap_or_clone(svc)));
            snapshot.objects.push((parsed(object, "v1"), at));
        }
        for pod in inputs.pods.into_iter().filter(|p| pod_in_mesh(p)) {
            let k = key("Pod", &pod.metadata);
            let at = self.first_seen(&k, &pod.metadata, now, &mut seen);
            let object = Object::Pod(Box::new(Arc::unwrap_or_clone(pod)));
            snapshot.objects.push((parsed(object, "v1"), at));
        }
        for input in inputs.policies {
            for obj in input.objects {
                let k = key(input.kind.kind, &obj.metadata);
                let at = self.first_seen(&k, &obj.metadata, now, &mut seen);
                let entry = self.update(&k, &obj, &input.resource);
                snapshot.errors.extend(entry.errors.iter().cloned());
                if let Some(good) = &entry.last_good {
                    snapshot.objects.push((good.clone(), at));
                }
            }
        }
        // Deleted objects take their last good version with them.
        self.converted.retain(|k, _| seen.contains(k));
        self.first_seen.retain(|k, _| seen.contains(k));
        snapshot.objects.sort_by(|(a, _), (b, _)| {
            let order = |p: &Parsed| {
                let meta = p.object.metadata();
                (
                    rank(p.object.kind()),
                    meta.and_then(|m| m.namespace.clone()).unwrap_or_default(),
                    meta.and_then(|m| m.name.clone()).unwrap_or_default(),
                )
            };
            order(a).cmp(&order(b))
        });
        snapshot.errors.sort_by(|a, b| {
            (&a.kind, &a.namespace, &a.name).cmp(&(&b.kind, &b.namespace, &b.name))
        });
        snapshot
    }

    /// The conversion of `obj`, converting (and logging) only a version not
    /// seen before.
    fn update(&mut self, k: &Key, obj: &DynamicObject, resource: &ApiResource) -> &Converted {
        let version = obj.metadata.resource_version.clone();
        let fresh = self
            .converted
            .get(k)
            .is_none_or(|c| c.resource_version.is_none() || c.resource_version != version);
        let entry = self.converted.entry(k.clone()).or_insert(Converted {
            resource_version: None,
            errors: Vec::new(),
            last_good: None,
        });
        if !fresh {
            return entry;
        }
        let (kind, namespace, name) = k;
        let (valid, errors) = convert(obj, resource);
        entry.resource_version = version;
        let was_invalid = !entry.errors.is_empty();
        match valid {
            Some(p) => {
                if was_invalid {
                    info!(kind, %namespace, %name, "cluster object is valid again");
                }
                entry.last_good = Some(p);
                entry.errors.clear();
            }
            None => {
                for e in &errors {
                    warn!(
                        kind,
                        %namespace,
                        %name,
                        field = e.field.as_deref().unwrap_or("-"),
                        reason = %e.reason,
                        last_good_kept = entry.last_good.is_some(),
                        "rejected cluster object"
                    );
                }
                entry.errors = errors;
            }
        }
        entry
    }
}

/// Whether two snapshots hold the same objects and problems (then the
/// newer one need not be translated).
pub(crate) fn same_content(a: &ConfigSnapshot, b: &ConfigSnapshot) -> bool {
    a.objects == b.objects && a.errors == b.errors && a.skipped == b.skipped
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
    use serde_json::json;
    use std::collections::BTreeMap;

    #[test]
    fn a_trimmed_pod_keeps_what_the_model_reads_and_nothing_else() {
        let mut pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web-1", "namespace": "shop", "uid": "u-1",
                "resourceVersion": "77", "generateName": "web-",
                "creationTimestamp": "2024-05-01T10:00:00Z",
                "labels": {"app": "web", "security.istio.io/tlsMode": "istio"},
                "annotations": {"a": "b", LAST_APPLIED: "{\"huge\": true}"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d", "uid": "u-0"}],
                "managedFields": [{"manager": "kubelet", "operation": "Update", "apiVersion": "v1",
                                   "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}}]
            },
            "spec": {
                "serviceAccountName": "web",
                "nodeName": "node-1",
                "initContainers": [{"name": "istio-proxy", "image": "proxyv2", "restartPolicy": "Always",
                                    "args": ["proxy", "sidecar"]}],
                "containers": [{"name": "web", "image": "web:1", "env": [{"name": "X", "value": "y"}],
                                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP", "hostPort": 80}]}],
                "volumes": [{"name": "v", "emptyDir": {}}]
            },
            "status": {
                "phase": "Running", "podIP": "10.1.2.3", "hostIP": "192.0.2.1",
                "conditions": [
                    {"type": "Initialized", "status": "True", "lastTransitionTime": "2024-05-01T10:00:01Z"},
                    {"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2024-05-01T10:00:05Z"}
                ],
                "containerStatuses": [{"name": "web", "ready": true, "restartCount": 0, "image": "web:1", "imageID": "sha"}]
            }
        }))
        .expect("a valid Pod");
        trim_pod(&mut pod);
        let want = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web-1", "namespace": "shop", "uid": "u-1",
                "creationTimestamp": "2024-05-01T10:00:00Z",
                "labels": {"app": "web", "security.istio.io/tlsMode": "istio"},
                "annotations": {"a": "b"}
            },
            "spec": {
                "serviceAccountName": "web",
                "initContainers": [{"name": "istio-proxy", "restartPolicy": "Always"}],
                "containers": [{"name": "web", "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]
            },
            "status": {
                "phase": "Running", "podIP": "10.1.2.3",
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        });
        assert_eq!(serde_json::to_value(&pod).expect("serializes"), want);
    }

    #[test]
    fn finished_and_unaddressed_pods_are_not_in_the_mesh() {
        let pod = |ip: Option<&str>, phase: &str| Pod {
            status: Some(PodStatus {
                pod_ip: ip.map(str::to_string),
                phase: Some(phase.to_string()),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        assert!(pod_in_mesh(&pod(Some("10.0.0.1"), "Running")));
        assert!(pod_in_mesh(&pod(Some("10.0.0.1"), "Pending")));
        assert!(!pod_in_mesh(&pod(None, "Pending")));
        assert!(!pod_in_mesh(&pod(Some(""), "Running")));
        assert!(!pod_in_mesh(&pod(Some("10.0.0.1"), "Succeeded")));
        assert!(!pod_in_mesh(&pod(Some("10.0.0.1"), "Failed")));
        assert!(!pod_in_mesh(&Pod::default()));
    }

    #[test]
    fn stripping_metadata_drops_managed_fields_and_the_last_applied_copy() {
        let mut meta = ObjectMeta {
            annotations: Some(BTreeMap::from([(
                LAST_APPLIED.to_string(),
                "{}".to_string(),
            )])),
            managed_fields: Some(vec![ManagedFieldsEntry {
                manager: Some("kubectl".into()),
                fields_v1: Some(FieldsV1(json!({"f:spec": {}}))),
                ..ManagedFieldsEntry::default()
            }]),
            ..ObjectMeta::default()
        };
        strip_meta(&mut meta);
        assert_eq!(meta, ObjectMeta::default());
    }
}
