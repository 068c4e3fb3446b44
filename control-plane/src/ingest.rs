//! Ingest: records from an agent's stream into the store, exactly once.
//!
//! Records at or below the agent's acked sequence number are repeats (a
//! replay after a reconnect) and are skipped. The rest are written in one
//! transaction with the new acked number, and only then acked on the wire.

use std::sync::atomic::Ordering;

use picket_proto::v1::{self, record::Payload};

use crate::state::State;
use crate::store::StoreError;
use crate::store::metrics::{Point, Sample};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("this control plane does not store {0} records yet")]
    Unsupported(&'static str),
    #[error("record {seq} is out of order (after {after})")]
    OutOfOrder { seq: u64, after: u64 },
}

/// Stores a batch for `agent` whose acked number is `acked`; returns the
/// new acked number.
pub fn apply(
    state: &State,
    agent: &str,
    acked: u64,
    batch: v1::RecordBatch,
) -> Result<u64, IngestError> {
    let mut samples = Vec::new();
    let mut last = acked;
    let mut repeats = 0u64;
    for r in batch.records {
        if r.seq <= last {
            if r.seq <= acked {
                repeats += 1;
                continue;
            }
            return Err(IngestError::OutOfOrder {
                seq: r.seq,
                after: last,
            });
        }
        match r.payload {
            Some(Payload::Metrics(m)) => samples.push(Sample {
                time_ms: m.time_unix_ms,
                points: m
                    .gauges
                    .into_iter()
                    .filter(|g| !g.name.is_empty())
                    .map(|g| Point {
                        name: g.name,
                        labels: g.labels.into_iter().collect(),
                        value: g.value,
                    })
                    .collect(),
            }),
            Some(Payload::Event(_)) => return Err(IngestError::Unsupported("event")),
            Some(Payload::Log(_)) => return Err(IngestError::Unsupported("log")),
            // An empty record still takes its sequence number.
            None => {}
        }
        last = r.seq;
    }
    state
        .counters
        .duplicates
        .fetch_add(repeats, Ordering::Relaxed);
    if last == acked {
        return Ok(acked);
    }
    state.store.put_samples(agent, &samples, last)?;
    state.store.flush()?;
    state
        .counters
        .ingested
        .fetch_add(last - acked, Ordering::Relaxed);
    if let Some(newest) = samples.into_iter().max_by_key(|s| s.time_ms) {
        state.fleet.set_latest(agent, newest);
    }
    Ok(last)
}
