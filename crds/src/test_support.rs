//! Helpers for this workspace's tests (here, in the translator and in
//! xds-server), kept in one place so the copies cannot drift. Only std:
//! proptest is a dev-dependency, so each fuzz target wraps its own
//! `TestRunner` in the `batch` it hands to [`run_batches`].

use std::time::{Duration, Instant};

/// Runs `batch` (which returns how many cases it ran) once, or, with
/// `XDS_FUZZ_SECONDS=N`, again and again until N seconds have passed, then
/// prints how many cases ran. Panics with `name` and the error (proptest's
/// message, with the minimal failing input) of the first batch that fails.
pub fn run_batches(name: &str, mut batch: impl FnMut() -> Result<u32, String>) {
    let budget = std::env::var("XDS_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let started = Instant::now();
    let mut cases = 0;
    loop {
        match batch() {
            Ok(n) => cases += n,
            Err(e) => panic!("{name}: {e}"),
        }
        if budget.is_none_or(|b| started.elapsed() >= b) {
            break;
        }
    }
    eprintln!("{name}: {cases} cases in {:.1?}", started.elapsed());
}

/// `n` valid PeerAuthentications as one multi-document YAML file (a
/// workload selector, a mode and a port-level mode each, over 100
/// namespaces): the large input the parser and the file loader must take.
pub fn many_peer_authentications(n: usize) -> String {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
             metadata: {{name: p{i}, namespace: ns{}}}\nspec:\n  selector: {{matchLabels: {{app: a{i}}}}}\n  \
             mtls: {{mode: STRICT}}\n  portLevelMtls:\n    8080: {{mode: DISABLE}}\n",
            i % 100
        ));
    }
    text
}
