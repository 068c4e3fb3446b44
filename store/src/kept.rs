//! Where a control plane keeps its events, log lines and metrics: the embedded
//! store ([`Store`]), or in cluster mode a records database that every
//! replica writes and reads (picket-records-pg). The feed stores and
//! reads through [`RecordStore`] and does not know which.

use crate::metrics::{Rollup, Sample};
use crate::records::{EventRecord, Kind, LogRecord, Read, Records};
use crate::{Store, StoreError};

/// One-minute rollups, by minute.
pub type Minutes = Vec<(i64, Vec<Rollup>)>;

/// Records read, one at a time.
pub type RecordIter<'a, T> = Box<dyn Iterator<Item = Result<T, StoreError>> + 'a>;

/// One host's batch to store: the host, its records, the acked number
/// once stored.
pub type HostBatch<'a, 'r> = (&'a str, Records<'r>, u64);

pub trait RecordStore: Send + Sync + 'static {
    /// An id at or above every id handed out so far; none handed out
    /// later is at or below it. (A shared store: the highest id
    /// committed, every id below it committed too.)
    fn next_id(&self) -> Result<u64, StoreError>;

    /// Stores `batches` atomically with their hosts' acked numbers, giving
    /// each event and line its ingest id (in the order stored). A store
    /// shared with other writers also leaves out what they stored already
    /// (each batch is left holding what was stored).
    fn store(&self, batches: &mut [HostBatch<'_, '_>]) -> Result<(), StoreError>;

    /// Makes what [`RecordStore::store`] wrote durable, if it is not yet.
    fn flush(&self) -> Result<(), StoreError>;

    /// The highest sequence number stored for `host`.
    fn acked_seq(&self, host: &str) -> Result<u64, StoreError>;

    fn events<'a>(&'a self, r: Read<'a>) -> Result<RecordIter<'a, EventRecord>, StoreError>;

    fn logs<'a>(&'a self, r: Read<'a>) -> Result<RecordIter<'a, LogRecord>, StoreError>;

    /// The highest id of `kind` retention has deleted (0: none).
    fn expired_through(&self, kind: Kind) -> Result<u64, StoreError>;

    /// Deletes the events and lines received before the given times;
    /// returns how many blocks went.
    fn expire(&self, events_before: i64, logs_before: i64) -> Result<usize, StoreError>;

    /// Raw samples of `host` with `from <= time < to`, oldest first.
    fn samples(&self, host: &str, from: i64, to: i64) -> Result<Vec<Sample>, StoreError>;

    /// The newest raw sample of `host`.
    fn latest_sample(&self, host: &str) -> Result<Option<Sample>, StoreError>;

    /// One-minute rollups of `host` with `from <= minute < to`.
    fn rollups(&self, host: &str, from: i64, to: i64) -> Result<Minutes, StoreError>;

    /// Rolls `host`'s whole minutes before `until` not rolled up yet;
    /// returns the minutes written.
    fn roll_up(&self, host: &str, until: i64) -> Result<usize, StoreError>;

    /// Deletes `host`'s raw samples before `raw_before` and rollups before
    /// `rollup_before`; returns how many went.
    fn expire_metrics(
        &self,
        host: &str,
        raw_before: i64,
        rollup_before: i64,
    ) -> Result<usize, StoreError>;

    /// Why records cannot be stored now, when a store elsewhere (a
    /// records database) did not answer its last call; the embedded
    /// store's own health is told apart ([`crate::health`]).
    /// The samples committed with ids in `(after, upto]`, with their
    /// hosts and ids, in id order: what a cluster leader's alert tap
    /// reads (`picket_tap::stored`). Only a shared store numbers its
    /// samples; the embedded one hands samples to the tap from ingest.
    fn samples_committed(
        &self,
        after: u64,
        upto: u64,
    ) -> Result<Vec<(u64, String, Sample)>, StoreError> {
        let _ = (after, upto);
        Err(StoreError::Database(
            "samples are numbered only in a records database".into(),
        ))
    }

    fn unreachable(&self) -> Option<String> {
        None
    }

    /// Whether other processes store records here too (cluster mode):
    /// then what this one stores is not all there is to follow, and the
    /// feed follows the store's commits instead of its own writes.
    fn shared(&self) -> bool {
        false
    }
}

impl RecordStore for Store {
    fn next_id(&self) -> Result<u64, StoreError> {
        Store::next_id(self)
    }

    fn store(&self, batches: &mut [HostBatch<'_, '_>]) -> Result<(), StoreError> {
        let n = batches
            .iter()
            .map(|(_, r, _)| r.events.len() + r.logs.len())
            .sum();
        let mut ids = self.ingest_ids(n)?.into_iter();
        for (_, r, _) in batches.iter_mut() {
            for w in r.events.iter_mut().chain(r.logs.iter_mut()) {
                w.id = ids.next().unwrap_or_default();
            }
        }
        let refs: Vec<(&str, &Records<'_>, u64)> =
            batches.iter().map(|(h, r, a)| (*h, r, *a)).collect();
        self.put_records_many(&refs)
    }

    fn flush(&self) -> Result<(), StoreError> {
        Store::flush(self)
    }

    fn acked_seq(&self, host: &str) -> Result<u64, StoreError> {
        Store::acked_seq(self, host)
    }

    fn events<'a>(&'a self, r: Read<'a>) -> Result<RecordIter<'a, EventRecord>, StoreError> {
        Store::events(self, r)
    }

    fn logs<'a>(&'a self, r: Read<'a>) -> Result<RecordIter<'a, LogRecord>, StoreError> {
        Store::logs(self, r)
    }

    fn expired_through(&self, kind: Kind) -> Result<u64, StoreError> {
        Store::expired_through(self, kind)
    }

    fn expire(&self, events_before: i64, logs_before: i64) -> Result<usize, StoreError> {
        self.expire_records(events_before, logs_before)
    }

    fn samples(&self, host: &str, from: i64, to: i64) -> Result<Vec<Sample>, StoreError> {
        Store::samples(self, host, from, to)
    }

    fn latest_sample(&self, host: &str) -> Result<Option<Sample>, StoreError> {
        Store::latest_sample(self, host)
    }

    fn rollups(&self, host: &str, from: i64, to: i64) -> Result<Minutes, StoreError> {
        Store::rollups(self, host, from, to)
    }

    fn roll_up(&self, host: &str, until: i64) -> Result<usize, StoreError> {
        Store::roll_up(self, host, until)
    }

    fn expire_metrics(
        &self,
        host: &str,
        raw_before: i64,
        rollup_before: i64,
    ) -> Result<usize, StoreError> {
        Store::expire_metrics(self, host, raw_before, rollup_before)
    }
}
