//! Gets the store writable again after a failed write (a full disk, an I/O
//! error): tries [`Store::recover`] with backoff for as long as it is not,
//! so that ingest resumes by itself once space is freed, without a
//! restart. What the store's health says is logged by the store, once per
//! change; the attempts are not.
//!
//! Sessions wait meanwhile ([`wait_writable`]): they hold their agent's
//! batch, ack nothing more, and go on once the store takes writes again.

use std::time::Duration;

use picket_model::backoff::Backoff;
use picket_store::Store;
use tokio_util::sync::CancellationToken;

/// How often a healthy store is looked at (an atomic read).
const WATCH: Duration = Duration::from_millis(250);
/// Writable this long, and the backoff starts over: a disk that fails
/// again at once is retried (and logged) at most every few seconds.
const SETTLED: Duration = Duration::from_secs(10);

/// Tries to recover the store whenever it is not writable, until
/// `shutdown`.
pub async fn run(store: Store, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    let mut writable_since = tokio::time::Instant::now();
    loop {
        let wait = if store.health().writable() {
            if writable_since.elapsed() >= SETTLED {
                backoff.reset();
            }
            WATCH
        } else {
            let s = store.clone();
            let r = tokio::task::spawn_blocking(move || s.recover()).await;
            match r {
                Ok(Ok(())) => {
                    writable_since = tokio::time::Instant::now();
                    WATCH
                }
                Ok(Err(error)) => {
                    tracing::debug!(%error, "store still not writable");
                    backoff.next_delay(&mut rand::rng())
                }
                Err(error) => {
                    tracing::error!(%error, "store recovery task failed");
                    backoff.next_delay(&mut rand::rng())
                }
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Why a session stops waiting for the store.
pub enum Stop {
    /// The control plane is shutting down, or the agent went away.
    Gone,
    /// The store was reopened since `epoch`: what this session stored but
    /// had not flushed may be gone, so the agent must replay from its last
    /// ack.
    Reopened,
}

/// Waits until the store is writable again, or `gone` fires; `Ok` when
/// the store was not reopened since `epoch` (the caller retries what
/// failed).
pub async fn wait_writable(
    store: &Store,
    epoch: u64,
    gone: impl std::future::Future<Output = ()>,
) -> Result<(), Stop> {
    tokio::pin!(gone);
    loop {
        if store.health().epoch() != epoch {
            return Err(Stop::Reopened);
        }
        if store.health().writable() {
            return Ok(());
        }
        tokio::select! {
            _ = &mut gone => return Err(Stop::Gone),
            _ = tokio::time::sleep(WATCH) => {}
        }
    }
}
