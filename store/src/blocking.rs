//! Where blocking work runs, the one rule for the whole control plane
//! (and the feed):
//! a sled write, a flush, an fsync, a file read or a wait on a lock that
//! is held across one never runs on a runtime worker as it is. Async code
//! hands it to the blocking pool (`Store::blocking`, `spawn_blocking`) or
//! to a thread of its own (ingest's storers and flushers); synchronous
//! code that the runtime calls directly (tonic's interceptor, the audit
//! log, the feed's snapshot) wraps it in [`in_place`], so the worker's
//! other tasks move to another worker while it waits.

/// Runs `f`, which may block, from synchronous code the runtime calls: on
/// a multi-threaded runtime through `block_in_place`, elsewhere (a
/// blocking thread, a test's single-threaded runtime, no runtime) as it is.
pub fn in_place<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
