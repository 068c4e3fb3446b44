//! What only the leader runs (SPEC §12): the rollout driver. While this
//! replica leads, its driver runs, restored from the shared rollouts (the
//! local copy caught up with etcd first, so it sees every write of the
//! last leader), and every write it makes to them is fenced on this
//! replica's term: a replica that lost leadership (paused, cut off) has
//! its persist refused by etcd, and the driver persists before it acts,
//! so it dispatches nothing more. When leadership goes, the driver stops.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use picket_cluster::Role;
use picket_cluster::etcd::created_at;
use picket_store::backend::etcd::{DEPOSED, EtcdBackend};
use picket_store::{ROLLOUTS, StoreError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Replica;
use crate::rollout::driver::{DriverError, Handle};

/// Starts a driver that runs until its token is cancelled.
pub type StartDriver = Box<
    dyn Fn(CancellationToken) -> Pin<Box<dyn Future<Output = Result<Handle, DriverError>> + Send>>
        + Send
        + Sync,
>;

fn refuse(backend: &EtcdBackend) {
    backend.fence(
        ROLLOUTS,
        Arc::new(|| Err(StoreError::Shared(DEPOSED.into()))),
    );
}

/// Runs the rollout driver while this replica leads; its handle (none
/// while following) in the returned slot.
pub fn rollouts_while_leading(
    replica: Arc<Replica>,
    backend: Arc<EtcdBackend>,
    start: StartDriver,
    shutdown: CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> watch::Receiver<Option<Handle>> {
    let (slot, rx) = watch::channel(None);
    refuse(&backend);
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
                    let t = term.clone();
                    backend.fence(
                        ROLLOUTS,
                        Arc::new(move || Ok(created_at(&t.key, t.revision))),
                    );
                    let b = backend.clone();
                    let caught = tokio::task::spawn_blocking(move || b.catch_up()).await;
                    if !matches!(caught, Ok(Ok(true))) {
                        tracing::warn!("leading with a copy of the shared state that may lag");
                    }
                    let stop = shutdown.child_token();
                    match start(stop.clone()).await {
                        Ok(h) => {
                            tracing::info!(
                                revision = term.revision,
                                "leading: rollouts driven here"
                            );
                            slot.send_replace(Some(h));
                            driving = Some((term.revision, stop));
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot start the rollout driver");
                            stop.cancel();
                        }
                    }
                }
                Role::Leader(_) => {}
                Role::Follower { .. } => {
                    if let Some((_, stop)) = driving.take() {
                        refuse(&backend);
                        stop.cancel();
                        slot.send_replace(None);
                        tracing::warn!("not leading: rollouts no longer driven here");
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
