//! Why a probe failed, in one sentence: the `reason` of the same
//! explanation `xds-server explain` prints (`translator::explain`), so `up`
//! and `explain` never disagree.

use translator::Translation;
use translator::model::{Mesh, Service, ServicePort, Workload};

/// An explanation for a failed call from `client` to `service:port`, or
/// `None` when the decisions say it should have worked.
pub fn explain(
    mesh: &Mesh,
    t: &Translation,
    client: &Workload,
    service: &Service,
    port: &ServicePort,
) -> Option<String> {
    let (wi, _) = mesh.workload(&client.namespace, &client.name)?;
    let si = mesh
        .index
        .services_in(&service.namespace)
        .iter()
        .copied()
        .find(|&i| mesh.services.get(i).is_some_and(|s| s.name == service.name))?;
    let from = format!("{}.{}", client.display_name(), client.namespace);
    let to = format!("{}.{}:{}", service.name, service.namespace, port.port);
    translator::explain::explain_request(mesh, t, wi, si, port.port, &from, &to).reason
}
