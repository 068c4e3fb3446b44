//! The records database as the feed and the control plane use any
//! records' store ([`RecordStore`]): shared by every replica.

use picket_store::StoreError;
use picket_store::kept::{HostBatch, Minutes, RecordIter, RecordStore};
use picket_store::metrics::Sample;
use picket_store::records::{EventRecord, Kind, LogRecord, Read};

use crate::{Batch, PgRecords};

impl RecordStore for PgRecords {
    /// The highest id committed (every id below it committed too).
    fn next_id(&self) -> Result<u64, StoreError> {
        self.last_id()
    }

    fn store(&self, batches: &mut [HostBatch<'_, '_>]) -> Result<(), StoreError> {
        let mut db: Vec<Batch<'_, '_>> = batches
            .iter_mut()
            .map(|(host, r, acked)| Batch {
                host,
                records: std::mem::take(r),
                acked: *acked,
            })
            .collect();
        let stored = self.put_many(&mut db);
        for ((_, r, acked), b) in batches.iter_mut().zip(db) {
            *r = b.records;
            *acked = b.acked;
        }
        stored
    }

    /// Committed is durable: nothing to do.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn acked_seq(&self, host: &str) -> Result<u64, StoreError> {
        PgRecords::acked_seq(self, host)
    }

    fn events<'a>(&'a self, r: Read<'a>) -> Result<RecordIter<'a, EventRecord>, StoreError> {
        PgRecords::events(self, r)
    }

    fn logs<'a>(&'a self, r: Read<'a>) -> Result<RecordIter<'a, LogRecord>, StoreError> {
        PgRecords::logs(self, r)
    }

    fn expired_through(&self, kind: Kind) -> Result<u64, StoreError> {
        PgRecords::expired_through(self, kind)
    }

    fn expire(&self, events_before: i64, logs_before: i64) -> Result<usize, StoreError> {
        let events = PgRecords::expire(self, Kind::Events, events_before)?;
        Ok((events + PgRecords::expire(self, Kind::Logs, logs_before)?) as usize)
    }

    fn samples(&self, host: &str, from: i64, to: i64) -> Result<Vec<Sample>, StoreError> {
        PgRecords::samples(self, host, from, to)
    }

    fn samples_committed(
        &self,
        after: u64,
        upto: u64,
    ) -> Result<Vec<(u64, String, Sample)>, StoreError> {
        PgRecords::samples_committed(self, after, upto)
    }

    fn latest_sample(&self, host: &str) -> Result<Option<Sample>, StoreError> {
        PgRecords::latest_sample(self, host)
    }

    fn rollups(&self, host: &str, from: i64, to: i64) -> Result<Minutes, StoreError> {
        PgRecords::rollups(self, host, from, to)
    }

    fn roll_up(&self, host: &str, until: i64) -> Result<usize, StoreError> {
        PgRecords::roll_up(self, host, until)
    }

    fn expire_metrics(
        &self,
        host: &str,
        raw_before: i64,
        rollup_before: i64,
    ) -> Result<usize, StoreError> {
        PgRecords::expire_metrics(self, host, raw_before, rollup_before)
    }

    fn unreachable(&self) -> Option<String> {
        PgRecords::unreachable(self)
    }

    fn shared(&self) -> bool {
        true
    }
}
