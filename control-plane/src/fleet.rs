//! What the control plane knows of the fleet's metrics in memory: each
//! host's newest sample (for `/metrics`), and the background task that
//! rolls samples up and enforces retention. Memory is one sample per host,
//! whatever the history kept on disk.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::now_ms;
use crate::state::State;
use crate::store::metrics::Sample;

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

/// Loads each host's newest sample from the store (after a restart), then
/// every minute rolls up finished minutes and deletes what is past
/// retention, until shutdown.
pub async fn maintain(state: Arc<State>) {
    if let Ok(agents) = state.store.agents() {
        for a in agents {
            if let Ok(Some(s)) = state.store.latest_sample(&a.name) {
                state.fleet.set_latest(&a.name, s);
            }
        }
    }
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let st = state.clone();
        let r = tokio::task::spawn_blocking(move || maintain_once(&st, now_ms())).await;
        match r {
            Ok(Ok((rolled, expired))) if rolled + expired > 0 => {
                tracing::debug!(rolled, expired, "metrics maintenance");
            }
            Ok(Err(error)) => tracing::error!(%error, "metrics maintenance failed"),
            _ => {}
        }
    }
}

/// One pass of rollup and retention (metrics, events, log lines) at `now`.
pub fn maintain_once(state: &State, now: i64) -> Result<(usize, usize), crate::store::StoreError> {
    let raw_before =
        now - i64::try_from(state.cfg.metrics_raw_retention.as_millis()).unwrap_or(i64::MAX);
    let rollup_before =
        now - i64::try_from(state.cfg.metrics_rollup_retention.as_millis()).unwrap_or(i64::MAX);
    let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let (mut rolled, mut expired) = (
        0,
        state.store.expire_records(
            now - ms(state.cfg.events_retention),
            now - ms(state.cfg.logs_retention),
        )?,
    );
    for a in state.store.agents()? {
        rolled += state.store.roll_up(&a.name, now)?;
        expired += state
            .store
            .expire_metrics(&a.name, raw_before, rollup_before)?;
    }
    Ok((rolled, expired))
}
