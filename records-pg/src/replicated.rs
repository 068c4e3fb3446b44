//! A replica's records in cluster mode: events and log lines in the
//! records database, shared by every replica; the batch's metrics samples
//! in the replica's own store (per replica until they move too,
//! docs/cluster.md).

use std::sync::Arc;

use picket_store::records::{
    EventRecord, HostBatch, Kind, LogRecord, Read, RecordIter, RecordStore, Records,
};
use picket_store::{Store, StoreError};

use crate::{Batch, PgRecords};

pub struct Replicated {
    pub db: Arc<PgRecords>,
    pub local: Store,
}

impl RecordStore for Replicated {
    fn next_id(&self) -> Result<u64, StoreError> {
        self.db.last_id()
    }

    /// The records first (the agent is acked only after both), then the
    /// samples: a batch the local store refuses is sent again by the
    /// agent, and its records, stored already, are left out then.
    fn store(&self, batches: &mut [HostBatch<'_, '_>]) -> Result<(), StoreError> {
        let mut db: Vec<Batch<'_, '_>> = batches
            .iter_mut()
            .map(|(host, r, acked)| Batch {
                host,
                records: Records {
                    samples: Vec::new(),
                    events: std::mem::take(&mut r.events),
                    logs: std::mem::take(&mut r.logs),
                },
                acked: *acked,
            })
            .collect();
        let stored = self.db.put_many(&mut db);
        for ((_, r, acked), b) in batches.iter_mut().zip(db) {
            r.events = b.records.events;
            r.logs = b.records.logs;
            *acked = b.acked;
        }
        stored?;
        let samples: Vec<(&str, Records<'_>, u64)> = batches
            .iter_mut()
            .map(|(host, r, acked)| {
                let samples = Records {
                    samples: std::mem::take(&mut r.samples),
                    ..Records::default()
                };
                (*host, samples, *acked)
            })
            .collect();
        let refs: Vec<(&str, &Records<'_>, u64)> =
            samples.iter().map(|(h, r, a)| (*h, r, *a)).collect();
        self.local.put_records_many(&refs)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.local.flush()
    }

    fn acked_seq(&self, host: &str) -> Result<u64, StoreError> {
        self.db.acked_seq(host)
    }

    fn events<'a>(&'a self, r: Read<'a>) -> Result<RecordIter<'a, EventRecord>, StoreError> {
        self.db.events(r)
    }

    fn logs<'a>(&'a self, r: Read<'a>) -> Result<RecordIter<'a, LogRecord>, StoreError> {
        self.db.logs(r)
    }

    fn expired_through(&self, kind: Kind) -> Result<u64, StoreError> {
        self.db.expired_through(kind)
    }

    fn expire(&self, events_before: i64, logs_before: i64) -> Result<usize, StoreError> {
        let events = self.db.expire(Kind::Events, events_before)?;
        Ok((events + self.db.expire(Kind::Logs, logs_before)?) as usize)
    }

    fn unreachable(&self) -> Option<String> {
        self.db.unreachable()
    }

    fn shared(&self) -> bool {
        true
    }
}
