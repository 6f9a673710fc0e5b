//! Keeps what did not change across translations, by pointer.
//!
//! Every change translates the whole mesh again, so every map of resources
//! is new even where its content is the same. [`intern`] swaps each map of
//! the new translation for an equal one of the previous translation (or of
//! its own, where proxies share content), so "did this proxy's view
//! change" is a pointer comparison per map: `Snapshots` keeps the view of
//! a proxy whose maps are all kept, and its stream, seeing the same view,
//! does no work at all.

use std::collections::HashMap;
use std::sync::Arc;
use translator::{ProxyPlan, ResourceMap, Translation};

/// The maps of a plan, in a fixed order.
pub(super) fn parts(plan: &ProxyPlan) -> [&Arc<ResourceMap>; 9] {
    [
        &plan.listeners,
        &plan.inbound_clusters,
        &plan.outbound_clusters,
        &plan.endpoints,
        &plan.routes,
        &plan.capture.inbound_listener,
        &plan.capture.outbound_listeners,
        &plan.capture.inbound_clusters,
        &plan.capture.routes,
    ]
}

fn parts_mut(plan: &mut ProxyPlan) -> [&mut Arc<ResourceMap>; 9] {
    [
        &mut plan.listeners,
        &mut plan.inbound_clusters,
        &mut plan.outbound_clusters,
        &mut plan.endpoints,
        &mut plan.routes,
        &mut plan.capture.inbound_listener,
        &mut plan.capture.outbound_listeners,
        &mut plan.capture.inbound_clusters,
        &mut plan.capture.routes,
    ]
}

/// Whether two plans are made of the same maps.
pub(super) fn same_parts(a: &ProxyPlan, b: &ProxyPlan) -> bool {
    parts(a)
        .into_iter()
        .zip(parts(b))
        .all(|(x, y)| Arc::ptr_eq(x, y))
}

/// A hash of names and content hashes, to find candidates; equality is
/// then checked on the bytes.
fn digest(map: &ResourceMap) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (name, r) in map {
        mix(name.as_bytes());
        mix(&r.hash.to_le_bytes());
    }
    h
}

fn same_content(a: &ResourceMap, b: &ResourceMap) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((na, ra), (nb, rb))| {
            na == nb && (Arc::ptr_eq(ra, rb) || (ra.kind == rb.kind && ra.wire() == rb.wire()))
        })
}

/// Replaces every map of `next` whose content equals a map of `previous`,
/// or an earlier map of `next`, with that map. Each distinct map is hashed
/// once, whatever the number of proxies sharing it.
pub(super) fn intern(previous: Option<&Translation>, next: &mut Translation) {
    let mut known: HashMap<u64, Vec<Arc<ResourceMap>>> = HashMap::new();
    let mut hashed: HashMap<*const ResourceMap, ()> = HashMap::new();
    for plan in previous.iter().flat_map(|p| p.proxies.values()) {
        for map in parts(plan) {
            if hashed.insert(Arc::as_ptr(map), ()).is_none() {
                known.entry(digest(map)).or_default().push(Arc::clone(map));
            }
        }
    }
    // New map (by pointer) -> the map it is replaced with. Holds the new
    // maps, so a pointer cannot be reused while this runs.
    let mut replaced: HashMap<*const ResourceMap, (Arc<ResourceMap>, Arc<ResourceMap>)> =
        HashMap::new();
    for plan in next.proxies.values_mut() {
        for map in parts_mut(plan) {
            let key = Arc::as_ptr(map);
            if let Some((_, kept)) = replaced.get(&key) {
                *map = Arc::clone(kept);
                continue;
            }
            let candidates = known.entry(digest(map)).or_default();
            let kept = match candidates.iter().find(|c| same_content(c, map)) {
                Some(equal) => Arc::clone(equal),
                None => {
                    candidates.push(Arc::clone(map));
                    Arc::clone(map)
                }
            };
            replaced.insert(key, (Arc::clone(map), Arc::clone(&kept)));
            *map = kept;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use translator::{Resource, ResourceType};

    fn map(names: &[(&str, &str)]) -> Arc<ResourceMap> {
        Arc::new(
            names
                .iter()
                .map(|(name, alt)| {
                    let c = Cluster {
                        name: name.to_string(),
                        alt_stat_name: alt.to_string(),
                        ..Default::default()
                    };
                    (
                        name.to_string(),
                        Arc::new(Resource::new(*name, ResourceType::Cluster, &c)),
                    )
                })
                .collect(),
        )
    }

    fn plan(pod: &str, clusters: Arc<ResourceMap>) -> ((String, String), ProxyPlan) {
        let plan = ProxyPlan {
            namespace: "ns".into(),
            pod: pod.into(),
            service_account: "sa".into(),
            ip: "10.0.0.1".parse().expect("ip"),
            listeners: map(&[("l", pod)]),
            inbound_clusters: map(&[]),
            outbound_clusters: clusters,
            endpoints: map(&[]),
            routes: map(&[]),
            capture: Default::default(),
            sidecar: None,
        };
        (("ns".into(), pod.into()), plan)
    }

    fn translation(plans: Vec<((String, String), ProxyPlan)>) -> Translation {
        let mut t = Translation::default();
        t.proxies.extend(plans);
        t
    }

    #[test]
    fn equal_maps_of_a_new_translation_are_the_previous_ones() {
        let mut before = translation(vec![
            plan("a-0", map(&[("c1", "x"), ("c2", "y")])),
            plan("b-0", map(&[("c1", "x")])),
        ]);
        let mut after = translation(vec![
            plan("a-0", map(&[("c1", "x"), ("c2", "y")])),
            plan("b-0", map(&[("c1", "changed")])),
        ]);
        // As `Snapshots::apply` does: every translation is interned, the
        // first against nothing.
        intern(None, &mut before);
        intern(Some(&before), &mut after);
        let (a0, a1) = (
            &before.proxies[&("ns".into(), "a-0".into())],
            &after.proxies[&("ns".into(), "a-0".into())],
        );
        assert!(same_parts(a0, a1), "nothing of a-0 changed");
        let (b0, b1) = (
            &before.proxies[&("ns".into(), "b-0".into())],
            &after.proxies[&("ns".into(), "b-0".into())],
        );
        assert!(Arc::ptr_eq(&b0.listeners, &b1.listeners));
        assert!(!Arc::ptr_eq(&b0.outbound_clusters, &b1.outbound_clusters));
        assert!(!same_parts(b0, b1));
    }

    #[test]
    fn proxies_with_equal_maps_share_one() {
        let mut t = translation(vec![
            plan("a-0", map(&[("c1", "x")])),
            plan("b-0", map(&[("c1", "x")])),
        ]);
        intern(None, &mut t);
        let a = &t.proxies[&("ns".into(), "a-0".into())];
        let b = &t.proxies[&("ns".into(), "b-0".into())];
        assert!(Arc::ptr_eq(&a.outbound_clusters, &b.outbound_clusters));
        assert!(Arc::ptr_eq(&a.endpoints, &b.endpoints));
        assert!(
            !Arc::ptr_eq(&a.listeners, &b.listeners),
            "their content differs"
        );
    }
}
