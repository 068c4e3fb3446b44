//! Where alert calls go: to this control plane's driver when it has one
//! (always alone; in cluster mode while this replica leads), else — a
//! follower — reads come from the shared alert state (etcd's, through
//! this replica's copy) and changes are refused naming the leader, whose
//! engine alone decides and notifies (SPEC §12).

use std::sync::Arc;

use picket_alert::engine::{Alert, AlertState, Persisted, Silence};
use picket_notify::outbox::Outbox;
use picket_tap::Tap;
use tokio::sync::watch;

use super::driver::{AlertError, Handle, Kit, Loaded};

#[derive(Clone)]
pub struct Alerts {
    /// The driver: set for good alone, while leading in cluster mode.
    driver: watch::Receiver<Option<Handle>>,
    kit: Kit,
    /// Cluster mode: this replica's role, for a follower's refusal.
    role: Option<watch::Receiver<picket_cluster::Role>>,
    /// What ingest and the heartbeats hand on (to the driver, if here).
    pub tap: Arc<Tap>,
    /// Its stats, and `alerts test`, on every replica.
    pub outbox: Outbox,
}

impl Alerts {
    /// One control plane: its driver, always.
    pub fn alone(h: Handle, kit: Kit) -> Alerts {
        Alerts::replica(watch::channel(Some(h)).1, kit, None)
    }

    /// A replica: the driver while it leads; `role` names the leader
    /// while it does not.
    pub fn replica(
        driver: watch::Receiver<Option<Handle>>,
        kit: Kit,
        role: Option<watch::Receiver<picket_cluster::Role>>,
    ) -> Alerts {
        Alerts {
            driver,
            tap: kit.tap.clone(),
            outbox: kit.outbox.clone(),
            kit,
            role,
        }
    }

    fn here(&self) -> Option<Handle> {
        self.driver.borrow().clone()
    }

    fn not_leader(&self) -> AlertError {
        AlertError::NotLeader(crate::cluster::led_elsewhere(
            self.role.as_ref(),
            "alerts are decided by the leader",
            "alert commands",
        ))
    }

    /// The shared state, as this replica's copy has it.
    async fn shared(&self) -> Result<Persisted, AlertError> {
        let kit = self.kit.clone();
        let p = tokio::task::spawn_blocking(move || kit.stored())
            .await
            .map_err(|_| AlertError::Gone)??;
        Ok(p.unwrap_or_default())
    }

    /// Every alert: pending, firing, and resolved ones not yet notified.
    pub async fn list(&self) -> Result<Vec<Alert>, AlertError> {
        match self.here() {
            Some(h) => h.list().await,
            None => Ok(self.shared().await?.alerts.into_values().collect()),
        }
    }

    pub async fn loaded(&self) -> Result<Loaded, AlertError> {
        match self.here() {
            Some(h) => h.loaded().await,
            None => Ok(self.kit.loaded()),
        }
    }

    pub async fn reload(&self) -> Result<Loaded, AlertError> {
        match self.here() {
            Some(h) => h.reload().await,
            None => Err(self.not_leader()),
        }
    }

    pub async fn silence(&self, s: Silence) -> Result<Silence, AlertError> {
        match self.here() {
            Some(h) => h.silence(s).await,
            None => Err(self.not_leader()),
        }
    }

    pub async fn silences(&self) -> Result<Vec<Silence>, AlertError> {
        match self.here() {
            Some(h) => h.silences().await,
            None => Ok(self.shared().await?.silences),
        }
    }

    pub async fn expire(&self, id: String) -> Result<Silence, AlertError> {
        match self.here() {
            Some(h) => h.expire(id).await,
            None => Err(self.not_leader()),
        }
    }

    /// Forgets a revoked or forgotten host. A follower leaves it to the
    /// leader, which forgets revoked hosts each minute.
    pub async fn forget(&self, host: String) {
        if let Some(h) = self.here() {
            h.forget(host).await;
        }
    }

    /// Alerts firing now: the driver's count, or the shared state's.
    pub fn firing(&self) -> u32 {
        if let Some(h) = self.here() {
            return h.firing();
        }
        let stored = picket_store::blocking::in_place(|| self.kit.stored());
        let firing = stored.ok().flatten().map_or(0, |p| {
            p.alerts
                .values()
                .filter(|a| a.state == AlertState::Firing)
                .count()
        });
        u32::try_from(firing).unwrap_or(u32::MAX)
    }
}
