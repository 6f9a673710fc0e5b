//! Names and versions shared by every simulated sidecar. Thousands of
//! sidecars hold the same cluster, load-assignment and secret names (and
//! the same versions of them); each keeping its own `String`s cost the
//! load generator hundreds of KB per sidecar, memory a real Envoy process
//! never multiplies. One copy per distinct string, behind an `Arc`
//! (`follow::shared` does the same for what a resource references).

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

/// A shared name (or version).
pub type Name = Arc<str>;

static NAMES: LazyLock<Mutex<HashSet<Name>>> = LazyLock::new(Default::default);

/// The shared copy of `s`.
pub fn name(s: &str) -> Name {
    interned(&NAMES, s, Arc::from)
}

/// The copy of `value` in `set`, added (made by `make`) if it is not there.
pub(super) fn interned<T: Hash + Eq + ?Sized, V: std::borrow::Borrow<T>>(
    set: &Mutex<HashSet<Arc<T>>>,
    value: V,
    make: impl FnOnce(V) -> Arc<T>,
) -> Arc<T> {
    // A panic elsewhere cannot leave the set half-updated: insertions are
    // whole, so a poisoned lock is still usable.
    let mut set = set.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(shared) = set.get(value.borrow()) {
        return Arc::clone(shared);
    }
    let shared = make(value);
    set.insert(Arc::clone(&shared));
    shared
}

/// Owned strings of `names`, for a request.
pub fn strings<'a>(names: impl IntoIterator<Item = &'a Name>) -> Vec<String> {
    names.into_iter().map(|n| n.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_copy() {
        let a = name("outbound|80||svc-0001.ns-001.svc.cluster.local");
        let b = name(&String::from(
            "outbound|80||svc-0001.ns-001.svc.cluster.local",
        ));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &name("another")));
    }
}
