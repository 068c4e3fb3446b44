//! Where rollout calls go: to this control plane's driver when it has one
//! (always alone; in cluster mode while this replica leads), else — a
//! follower — reads come from the shared rollouts (etcd's, through this
//! replica's copy) and commands are refused naming the leader, which
//! alone drives rollouts (SPEC §12).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use picket_model::rollout::RawSpec;
use picket_rollout::engine::Engine;
use picket_rollout::state::Persisted;
use picket_rollout::view::View;
use picket_store::Store;
use tokio::sync::watch;

use super::driver::{self, Action, DriverError, Handle, LastRollout};

/// How often a follower's `watch` reads the shared rollout again.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct Rollouts {
    /// The driver: set for good alone, while leading in cluster mode.
    driver: watch::Receiver<Option<Handle>>,
    store: Store,
    /// Cluster mode: this replica's role, for a follower's refusal.
    role: Option<watch::Receiver<picket_cluster::Role>>,
}

impl Rollouts {
    /// One control plane: its driver, always.
    pub fn alone(h: Handle, store: Store) -> Rollouts {
        Rollouts {
            driver: watch::channel(Some(h)).1,
            store,
            role: None,
        }
    }

    /// A replica: the driver while it leads (`driver`); `role` names the
    /// leader while it does not.
    pub fn replica(
        driver: watch::Receiver<Option<Handle>>,
        store: Store,
        role: watch::Receiver<picket_cluster::Role>,
    ) -> Rollouts {
        Rollouts {
            driver,
            store,
            role: Some(role),
        }
    }

    fn here(&self) -> Option<Handle> {
        self.driver.borrow().clone()
    }

    fn not_leader(&self) -> DriverError {
        DriverError::NotLeader(crate::cluster::led_elsewhere(
            self.role.as_ref(),
            "rollouts are driven by the leader",
            "rollout commands",
        ))
    }

    pub async fn create(&self, spec: RawSpec) -> Result<String, DriverError> {
        match self.here() {
            Some(h) => h.create(spec).await,
            None => Err(self.not_leader()),
        }
    }

    pub async fn act(&self, id: String, action: Action) -> Result<View, DriverError> {
        match self.here() {
            Some(h) => h.act(id, action).await,
            None => Err(self.not_leader()),
        }
    }

    /// Every shared rollout, as this replica's copy has it.
    async fn shared(&self) -> Result<Vec<Persisted>, DriverError> {
        Ok(self.store.blocking(|s| s.rollouts()).await?)
    }

    pub async fn get(&self, id: String) -> Result<View, DriverError> {
        if let Some(h) = self.here() {
            return h.get(id).await;
        }
        let key = id.clone();
        let p: Option<Persisted> = self.store.blocking(move |s| s.rollout(&key)).await?;
        p.and_then(|p| view(p, true))
            .ok_or(DriverError::NotFound(id))
    }

    pub async fn list(&self) -> Result<Vec<View>, DriverError> {
        if let Some(h) = self.here() {
            return h.list().await;
        }
        let mut all: Vec<View> = self
            .shared()
            .await?
            .into_iter()
            .filter_map(|p| view(p, false))
            .collect();
        driver::newest_first(&mut all);
        Ok(all)
    }

    pub async fn watch(&self, id: String) -> Result<watch::Receiver<Arc<View>>, DriverError> {
        if let Some(h) = self.here() {
            return h.watch(id).await;
        }
        // A follower reads the shared rollout again as the leader moves it.
        let first = self.get(id.clone()).await?;
        let (tx, rx) = watch::channel(Arc::new(first));
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(FOLLOW_EVERY) => {}
                }
                let Ok(v) = me.get(id.clone()).await else {
                    return;
                };
                let done = v.p.state.is_finished();
                tx.send_if_modified(|old| {
                    let changed = old.p != v.p;
                    if changed {
                        *old = Arc::new(v);
                    }
                    changed
                });
                if done {
                    return;
                }
            }
        });
        Ok(rx)
    }

    pub async fn last_for(&self, host: String) -> Result<Option<LastRollout>, DriverError> {
        if let Some(h) = self.here() {
            return h.last_for(host).await;
        }
        let all = self.shared().await?;
        Ok(driver::last_for(all.iter(), &host))
    }
}

/// A stored rollout as shown (no live output line: that is the leader's).
fn view(p: Persisted, with_output: bool) -> Option<View> {
    let e = Engine::restore(p).ok()?;
    Some(View::of(
        e.persisted(),
        e.spec(),
        &BTreeMap::new(),
        with_output,
    ))
}
