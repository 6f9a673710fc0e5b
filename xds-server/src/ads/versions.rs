//! Versions of whole view maps, computed once per map rather than once per
//! stream: every stream with a wildcard (or naming every resource) sends
//! the view's map itself, shared by all proxies with that view, and its
//! version hashes every resource of it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use translator::ResourceMap;
use translator::xds::set_version;

/// Below this many maps the cache is never swept.
const SWEEP_FLOOR: usize = 64;

/// `set_version` of maps by identity. An entry holds its map, so the
/// address it is keyed by cannot be reused for another map while cached.
#[derive(Debug, Default)]
pub(super) struct Versions {
    cache: Mutex<Cache>,
    /// How many versions were computed (not found cached).
    computed: AtomicU64,
}

#[derive(Debug, Default)]
struct Cache {
    by_map: HashMap<usize, (Arc<ResourceMap>, String)>,
    /// Entries after the last sweep: the next sweep waits until twice as
    /// many, so sweeping costs O(1) per insert.
    after_sweep: usize,
}

impl Versions {
    /// `set_version(map)`, computed once however many streams ask.
    pub(super) fn of(&self, map: &Arc<ResourceMap>) -> String {
        let key = Arc::as_ptr(map) as usize;
        if let Some((_, version)) = self.lock().by_map.get(&key) {
            return version.clone();
        }
        // Outside the lock: a map of thousands of resources takes a while,
        // and two streams racing on a new map merely both compute it.
        let version = set_version(map);
        self.computed.fetch_add(1, Ordering::Relaxed);
        let mut cache = self.lock();
        if cache.by_map.len() >= 2 * cache.after_sweep.max(SWEEP_FLOOR) {
            // A map only the cache holds is in no view and no stream's
            // record any more: nobody can ask for it again.
            cache
                .by_map
                .retain(|_, (map, _)| Arc::strong_count(map) > 1);
            cache.after_sweep = cache.by_map.len();
        }
        cache.by_map.insert(key, (Arc::clone(map), version.clone()));
        version
    }

    /// How many versions were computed rather than found.
    #[cfg(test)]
    pub(super) fn computed(&self) -> u64 {
        self.computed.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    fn cached(&self) -> usize {
        self.lock().by_map.len()
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        // The cache is consistent after any panic (an insert is one step).
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use translator::{Resource, ResourceType};

    fn map(names: &[&str]) -> Arc<ResourceMap> {
        Arc::new(
            names
                .iter()
                .map(|n| {
                    let r = Resource::from_encoded::<
                        envoy_types::pb::envoy::config::cluster::v3::Cluster,
                    >(*n, ResourceType::Cluster, n.as_bytes().to_vec());
                    (n.to_string(), Arc::new(r))
                })
                .collect(),
        )
    }

    #[test]
    fn ads_versions_are_computed_once_per_map() {
        let versions = Versions::default();
        let a = map(&["a", "b"]);
        assert_eq!(versions.of(&a), set_version(&a));
        assert_eq!(versions.of(&Arc::clone(&a)), set_version(&a));
        assert_eq!(versions.computed(), 1, "the same map is hashed once");
        // Equal content in another map is another entry, with its version.
        let b = map(&["a", "b"]);
        assert_eq!(versions.of(&b), set_version(&b));
        assert_eq!(versions.computed(), 2);
        assert_ne!(versions.of(&map(&["c"])), set_version(&a));
    }

    #[test]
    fn ads_versions_forget_maps_nobody_else_holds() {
        let versions = Versions::default();
        let kept = map(&["kept"]);
        versions.of(&kept);
        for i in 0..(4 * SWEEP_FLOOR) {
            // Dropped right after: only the cache holds it.
            versions.of(&map(&[&i.to_string()]));
        }
        assert!(versions.cached() <= 2 * SWEEP_FLOOR, "swept");
        let before = versions.computed();
        versions.of(&kept);
        assert_eq!(versions.computed(), before, "a map still held stays cached");
    }
}
