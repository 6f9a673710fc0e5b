//! Names and versions shared by every simulated sidecar. Thousands of
//! sidecars hold the same cluster, load-assignment and secret names (and
//! the same versions of them); each keeping its own `String`s cost the
//! load generator hundreds of KB per sidecar, memory a real Envoy process
//! never multiplies. One copy per distinct string, behind an `Arc`.

use super::follow::Deps;
use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

/// A shared name (or version).
pub type Name = Arc<str>;

static NAMES: LazyLock<Mutex<HashSet<Name>>> = LazyLock::new(Default::default);
static DEPS: LazyLock<Mutex<HashSet<Arc<Deps>>>> = LazyLock::new(Default::default);

/// The shared copy of `s`.
pub fn name(s: &str) -> Name {
    // A panic elsewhere cannot leave the set half-updated: insertions are
    // whole, so a poisoned lock is still usable.
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(n) = names.get(s) {
        return Arc::clone(n);
    }
    let n: Name = Arc::from(s);
    names.insert(Arc::clone(&n));
    n
}

/// The shared copy of `deps` (most clusters of a mesh reference the same
/// two secrets, and each one load assignment every sidecar shares).
pub fn deps(deps: Deps) -> Arc<Deps> {
    let mut all = DEPS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(d) = all.get(&deps) {
        return Arc::clone(d);
    }
    let d = Arc::new(deps);
    all.insert(Arc::clone(&d));
    d
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
        let d1 = deps(Deps {
            secrets: [name("default")].into(),
            ..Default::default()
        });
        let d2 = deps(Deps {
            secrets: [name("default")].into(),
            ..Default::default()
        });
        assert!(Arc::ptr_eq(&d1, &d2));
    }
}
