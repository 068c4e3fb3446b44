//! The leader's tap in cluster mode: what every replica committed to the
//! records database, read by id.
//!
//! Ids there are handed out in commit order (`picket-records-pg`), so
//! every id up to the database's last one is committed, and what lies
//! above a cursor is exactly what the engine has not been fed. The driver
//! stores the cursor ([`Replayed::through`]) with the engine's state, in
//! one write: a new leader restores both and reads on from there, so an
//! event is fed to the engine that decides on it once, whichever replica
//! stored it and whichever led when it came (what a deposed leader fed
//! but did not store is fed again to a state that has not seen it).
//!
//! Records read here are never signs of life (`Heard::alive` is false):
//! the replicas' heartbeats and presence say which hosts are alive, and
//! the control plane's own records are under its own name.

use std::sync::Arc;
use std::time::Duration;

use picket_alert::engine::EventData;
use picket_store::StoreError;
use picket_store::kept::RecordStore;
use picket_store::records::{Read, Start};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::{Heard, Tap};

/// What one read of the database found above the cursor.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    /// By host, in id order (a host's run of records is one `Heard`).
    pub heard: Vec<Heard>,
    /// Every id up to here is in `heard` (or of no interest).
    pub through: u64,
}

/// Reads at least this often, whether or not the database said so.
const EVERY: Duration = Duration::from_secs(1);

/// Sends what is committed above `through` to `tx`, one [`Replayed`] per
/// read: at once, then each time `wake` fires (a commit announced by the
/// database) and at least every second. Ends when `stop` is cancelled or
/// the driver is gone. A read that fails is tried again a second later,
/// from the same cursor.
pub async fn follow(
    tap: Arc<Tap>,
    records: Arc<dyn RecordStore>,
    mut through: u64,
    wake: Arc<Notify>,
    tx: mpsc::Sender<Replayed>,
    stop: CancellationToken,
) {
    let mut failing = false;
    loop {
        let (t, r) = (tap.clone(), records.clone());
        match tokio::task::spawn_blocking(move || read(&t, &*r, through)).await {
            Ok(Ok(Some(found))) => {
                failing = false;
                through = found.through;
                if tx.send(found).await.is_err() {
                    return;
                }
                // More may have come while this was read.
                continue;
            }
            Ok(Ok(None)) => failing = false,
            Ok(Err(error)) => {
                if !failing {
                    tracing::warn!(%error, cursor = through, "alert tap: cannot read the records database; trying again each second");
                }
                failing = true;
            }
            Err(_) => return,
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// What is committed above `through`, or `None` when nothing is. Only
/// what a rule can use is kept, and of an event only the fields a rule
/// reads (never its message).
pub fn read(
    tap: &Tap,
    records: &dyn RecordStore,
    through: u64,
) -> Result<Option<Replayed>, StoreError> {
    let top = records.next_id()?;
    if top <= through {
        return Ok(None);
    }
    let interest = tap.all();
    let mut found: Vec<(u64, String, Item)> = Vec::new();
    if !interest.events.is_empty() || interest.rollouts {
        for e in records.events(Read::new(Start::After(through), None))? {
            let e = e?;
            if e.id <= top && interest.wants(&e.source, &e.kind, e.severity) {
                let fields = e
                    .fields
                    .into_iter()
                    .filter(|(k, _)| interest.reads(k))
                    .collect();
                let data = EventData {
                    severity: e.severity,
                    source: e.source,
                    kind: e.kind,
                    fields,
                };
                found.push((e.id, e.host, Item::Event(data)));
            }
        }
    }
    if !interest.metrics.is_empty() {
        for (id, host, s) in records.samples_committed(through, top)? {
            let points = interest.points(&s.points);
            if !points.is_empty() {
                found.push((id, host, Item::Sample(points)));
            }
        }
    }
    found.sort_by_key(|f| f.0);
    Ok(Some(Replayed {
        heard: by_host(found),
        through: top,
    }))
}

enum Item {
    Event(EventData),
    Sample(Vec<picket_alert::engine::Point>),
}

/// Consecutive records of one host, one `Heard` (time: now's is the
/// driver's; these carry none of their own).
fn by_host(found: Vec<(u64, String, Item)>) -> Vec<Heard> {
    let mut out: Vec<Heard> = Vec::new();
    for (_, host, item) in found {
        let same = out.last().is_some_and(|h| h.host == host);
        if !same {
            out.push(Heard {
                host,
                alive: false,
                time_ms: 0,
                samples: Vec::new(),
                events: Vec::new(),
            });
        }
        let Some(h) = out.last_mut() else { continue };
        match item {
            Item::Event(e) => h.events.push(e),
            Item::Sample(p) => h.samples.push(p),
        }
    }
    out
}
