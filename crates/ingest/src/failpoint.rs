//! Crash hooks for the fault tests: `OMNIFOLD_FAILPOINT=name` aborts the
//! process the first time ingest reaches the named point, `name:N` the Nth
//! time. An abort is a crash like `kill -9`: nothing is flushed. Points:
//! `before_commit` (a batch folded, its records written, its store batch
//! not yet), `after_commit` (the store batch written, the group offsets not
//! yet), `after_outbox` (a batch's forwards and identity events written)
//! and `mid_outbox` (half of them written: some of a join's parts, not all).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::error;

struct Armed {
    name: String,
    nth: u64,
    hits: AtomicU64,
}

fn armed_point() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var("OMNIFOLD_FAILPOINT").ok()?;
            let (name, nth) = match v.split_once(':') {
                Some((n, k)) => (n.to_owned(), k.parse().ok()?),
                None => (v, 1),
            };
            Some(Armed { name, nth, hits: AtomicU64::new(0) })
        })
        .as_ref()
}

/// Aborts the process if `name` is armed and this is its Nth hit.
pub(crate) fn hit(name: &str) {
    if let Some(a) = armed_point()
        && a.name == name
        && a.hits.fetch_add(1, Ordering::SeqCst) + 1 == a.nth
    {
        error!(failpoint = name, hit = a.nth, "failpoint reached: aborting");
        std::process::abort();
    }
}

/// Whether `name` is armed at all (to take a slower path that the point
/// sits in only when a test asks for it).
pub(crate) fn armed(name: &str) -> bool {
    armed_point().is_some_and(|a| a.name == name)
}
