//! Ingest: records from an agent's stream into the store, exactly once.
//!
//! Records at or below the agent's acked sequence number are repeats (a
//! replay after a reconnect) and are skipped. The rest are written in one
//! atomic batch with the new acked number; the session acks them on the
//! wire once a flush has made them durable (`grpc::agent`).

use std::sync::atomic::Ordering;

use picket_proto::v1::{self, record::Payload};

use picket_proto::model::Severity;

use crate::clock::now_ms;
use crate::state::State;
use crate::store::StoreError;
use crate::store::metrics::{Point, Sample};
use crate::store::records::{EventRecord, LogRecord, Records};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("record {seq} is out of order (after {after})")]
    OutOfOrder { seq: u64, after: u64 },
}

/// Stores a batch for `agent` whose acked number is `acked`; returns the
/// new acked number. Not yet durable: the caller flushes before it acks.
pub fn apply(
    state: &State,
    agent: &str,
    acked: u64,
    batch: v1::RecordBatch,
) -> Result<u64, IngestError> {
    let mut out = Records::default();
    let received = now_ms();
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
            Some(Payload::Metrics(m)) => out.samples.push(Sample {
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
            Some(Payload::Event(e)) => out.events.push(EventRecord {
                id: 0,
                host: agent.to_string(),
                source: e.source,
                path: e.path,
                seq: r.seq,
                time_ms: e.time_unix_ms,
                received_ms: received,
                severity: Severity::try_from(e.severity).unwrap_or(Severity::Info),
                kind: e.kind,
                message: e.message,
                fields: e.fields,
            }),
            Some(Payload::Log(l)) => out.logs.push(LogRecord {
                id: 0,
                host: agent.to_string(),
                source: l.source,
                path: l.path,
                seq: r.seq,
                time_ms: l.read_unix_ms,
                line: l.line,
                truncated: l.truncated,
                invalid_utf8: l.invalid_utf8,
            }),
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
    let newest = out.samples.iter().max_by_key(|s| s.time_ms).cloned();
    state.feed.store(&state.store, agent, out, last)?;
    if let Some(newest) = newest {
        state.fleet.set_latest(agent, newest);
    }
    Ok(last)
}
