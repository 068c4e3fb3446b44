//! What the control plane knows of the fleet's metrics in memory: each
//! host's newest sample (for `/metrics`), and the background task that
//! rolls samples up and enforces retention. Memory is one sample per host,
//! whatever the history kept on disk.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use picket_clock::now_ms;
use picket_config::control::ControlConfig;
use picket_store::kept::RecordStore;
use picket_store::metrics::Sample;
use picket_store::{Store, StoreError};

#[derive(Default)]
pub struct Fleet {
    latest: Mutex<HashMap<String, Arc<Sample>>>,
}

impl Fleet {
    pub fn set_latest(&self, host: &str, s: Sample) {
        if let Ok(mut m) = self.latest.lock() {
            let newer = m.get(host).is_none_or(|old| old.time_ms <= s.time_ms);
            if newer {
                m.insert(host.to_string(), Arc::new(s));
            }
        }
    }

    pub fn latest(&self, host: &str) -> Option<Arc<Sample>> {
        self.latest.lock().ok()?.get(host).cloned()
    }
}

/// How long each kind of record is kept (from `control.toml`).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub metrics_raw: Duration,
    pub metrics_rollup: Duration,
    pub events: Duration,
    pub logs: Duration,
    pub audit: Duration,
}

impl Retention {
    pub fn of(cfg: &ControlConfig) -> Self {
        Retention {
            metrics_raw: cfg.metrics_raw_retention,
            metrics_rollup: cfg.metrics_rollup_retention,
            events: cfg.events_retention,
            logs: cfg.logs_retention,
            audit: cfg.audit_retention,
        }
    }
}

/// Whether this control plane keeps the records' retention now: always
/// alone; in cluster mode with a shared records database, while it leads.
pub type Keeps = Arc<dyn Fn() -> bool + Send + Sync>;

/// Loads each host's newest sample from the store (after a restart), then
/// every minute (while `keeps` says so) rolls up finished minutes and
/// deletes what is past retention, until shutdown.
pub async fn maintain(
    store: Store,
    records: Arc<dyn RecordStore>,
    fleet: Arc<Fleet>,
    retention: Retention,
    keeps: Keeps,
    shutdown: CancellationToken,
) {
    if let Ok(agents) = store.agents() {
        for a in agents {
            if let Ok(Some(s)) = records.latest_sample(&a.name) {
                fleet.set_latest(&a.name, s);
            }
        }
    }
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !keeps() {
            continue;
        }
        let (now, records) = (now_ms(), records.clone());
        match store
            .blocking(move |s| maintain_once(s, &*records, &retention, now))
            .await
        {
            Ok((rolled, expired)) if rolled + expired > 0 => {
                tracing::debug!(rolled, expired, "metrics maintenance");
            }
            Err(error) => tracing::error!(%error, "metrics maintenance failed"),
            _ => {}
        }
    }
}

/// One pass of rollup and retention (metrics, events, log lines) at `now`.
pub fn maintain_once(
    store: &Store,
    records: &dyn RecordStore,
    retention: &Retention,
    now: i64,
) -> Result<(usize, usize), StoreError> {
    let before = |d: Duration| now - picket_model::millis(d);
    let (raw_before, rollup_before) = (
        before(retention.metrics_raw),
        before(retention.metrics_rollup),
    );
    let (mut rolled, mut expired) = (
        0,
        records.expire(before(retention.events), before(retention.logs))?
            + store.expire_audit(before(retention.audit))?,
    );
    for a in store.agents()? {
        rolled += records.roll_up(&a.name, now)?;
        expired += records.expire_metrics(&a.name, raw_before, rollup_before)?;
    }
    Ok((rolled, expired))
}

#[cfg(test)]
mod tests {
    use super::*;
    use picket_store::records::{EventRecord, Read, Records, Start};

    /// Shared records' retention is the leader's: a replica that does not
    /// keep it deletes nothing, one that does deletes what is past it.
    #[tokio::test]
    async fn retention_runs_only_where_it_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_floor(dir.path(), 0.0).unwrap();
        let old = EventRecord {
            id: 0,
            host: "h".into(),
            source: "sshd".into(),
            path: "/var/log/auth.log".into(),
            seq: 1,
            time_ms: 1_000,
            received_ms: 1_000,
            severity: picket_model::Severity::Low,
            kind: "auth_failure".into(),
            message: "long ago".into(),
            fields: Default::default(),
        };
        let records: Arc<dyn RecordStore> = Arc::new(store.clone());
        records
            .store(&mut [("h", Records::of(vec![], &[old], &[]), 1)])
            .unwrap();
        let count = || {
            store
                .events(Read::new(Start::Since(0), None))
                .unwrap()
                .count()
        };
        let day = Duration::from_secs(86_400);
        let retention = Retention {
            metrics_raw: day,
            metrics_rollup: day,
            events: day,
            logs: day,
            audit: day,
        };
        for (keeps, left) in [(false, 1), (true, 0)] {
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(maintain(
                store.clone(),
                records.clone(),
                Arc::default(),
                retention,
                Arc::new(move || keeps),
                shutdown.clone(),
            ));
            // The first pass runs at once.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while count() != left && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(count(), left, "keeps: {keeps}");
            shutdown.cancel();
            task.await.unwrap();
        }
    }
}
