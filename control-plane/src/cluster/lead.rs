//! What only the leader runs (SPEC §12): the rollout driver and the alert
//! driver (with its outbox's workers). While this replica leads, each
//! runs, restored from the shared state (the local copy caught up with
//! etcd first, so it sees every write of the last leader), and every
//! write it makes there is fenced on this replica's term: a replica that
//! lost leadership (paused, cut off) has its persist refused by etcd, and
//! a driver persists before it acts (a notification is claimed, a fenced
//! write, before it is sent), so it dispatches and sends nothing more.
//! When leadership goes, the drivers stop.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use picket_cluster::Role;
use picket_cluster::etcd::created_at;
use picket_store::StoreError;
use picket_store::backend::etcd::{DEPOSED, EtcdBackend};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Replica;

/// Starts a driver that runs until its token is cancelled.
pub type StartDriver<H> = Box<
    dyn Fn(
            CancellationToken,
        )
            -> Pin<Box<dyn Future<Output = Result<H, Box<dyn std::error::Error + Send>>> + Send>>
        + Send
        + Sync,
>;

/// A driver run only while leading: what it does, as the log says it
/// ("rollouts", "driven"), the shared trees it writes, how it starts.
pub struct Led<H> {
    pub what: &'static str,
    pub done: &'static str,
    pub trees: &'static [&'static str],
    pub start: StartDriver<H>,
}

fn refuse(backend: &EtcdBackend, trees: &[&'static str]) {
    for &t in trees {
        backend.fence(t, Arc::new(|| Err(StoreError::Shared(DEPOSED.into()))));
    }
}

/// Runs `led`'s driver while this replica leads; its handle (none while
/// following) in the returned slot.
pub fn while_leading<H: Clone + Send + Sync + 'static>(
    replica: Arc<Replica>,
    backend: Arc<EtcdBackend>,
    led: Led<H>,
    shutdown: CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> watch::Receiver<Option<H>> {
    let (slot, rx) = watch::channel(None);
    refuse(&backend, led.trees);
    tasks.spawn(async move {
        let mut roles = replica.cluster.roles();
        // The term driven now, and how to stop its driver.
        let mut driving: Option<(i64, CancellationToken)> = None;
        loop {
            let role = roles.borrow_and_update().clone();
            match role {
                Role::Leader(term) if driving.as_ref().map(|d| d.0) != Some(term.revision) => {
                    if let Some((_, stop)) = driving.take() {
                        stop.cancel();
                    }
                    for &tree in led.trees {
                        let t = term.clone();
                        backend.fence(tree, Arc::new(move || Ok(created_at(&t.key, t.revision))));
                    }
                    let b = backend.clone();
                    let caught = tokio::task::spawn_blocking(move || b.catch_up()).await;
                    if !matches!(caught, Ok(Ok(true))) {
                        tracing::warn!("leading with a copy of the shared state that may lag");
                    }
                    let stop = shutdown.child_token();
                    match (led.start)(stop.clone()).await {
                        Ok(h) => {
                            tracing::info!(
                                revision = term.revision,
                                "leading: {} {} here",
                                led.what,
                                led.done
                            );
                            slot.send_replace(Some(h));
                            driving = Some((term.revision, stop));
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot start the {} driver", led.what);
                            stop.cancel();
                        }
                    }
                }
                Role::Leader(_) => {}
                Role::Follower { .. } => {
                    if let Some((_, stop)) = driving.take() {
                        refuse(&backend, led.trees);
                        stop.cancel();
                        slot.send_replace(None);
                        tracing::warn!("not leading: {} no longer {} here", led.what, led.done);
                    }
                }
            }
            tokio::select! {
                r = roles.changed() => if r.is_err() { return },
                _ = shutdown.cancelled() => return,
            }
        }
    });
    rx
}
