//! Reading records in the order they were stored, from an ingest id on:
//! what a follower that fell behind, or one resumed with `--after CURSOR`,
//! reads instead of scanning every block from `--since`.
//!
//! A per-table index keyed by a block's highest id (`max id (u64 BE)` →
//! `host \0 block key`) lists blocks in the order they were stored (ids
//! are handed out in that order), so the blocks holding any id above `N`
//! are exactly those from key `N + 1` on. Blocks stored before the index
//! existed are not in it: ids below the store's `records.by_id_from`
//! are read by the time scan instead.
//!
//! Retention notes, per table, the highest id it deleted
//! ([`Store::expired_through`]): a reader resuming below it may have lost
//! records to retention, and is told so rather than given a silent gap.

use super::super::backend::{KvIter, Op};
use super::{
    EVENTS_TABLES, EventRecord, LOGS_TABLES, LogRecord, META, Needles, Read, Start, Tables, Timed,
};
use crate::{Store, StoreError};

/// The first id the by-id index holds (u64 BE); set when a store is
/// first opened by a version that keeps the index.
const BY_ID_FROM: &[u8] = b"records.by_id_from";

/// A by-id index entry's key.
pub(super) fn by_id_key(max_id: u64) -> Vec<u8> {
    max_id.to_be_bytes().to_vec()
}

/// A by-id index entry's value.
pub(super) fn by_id_value(host: &str, block_key: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(host.len() + 1 + block_key.len());
    v.extend_from_slice(host.as_bytes());
    v.push(0);
    v.extend_from_slice(block_key);
    v
}

/// The META key of a table's retention watermark.
fn expired_key(t: Tables) -> Vec<u8> {
    format!("records.{}.expired_through", t.blocks).into_bytes()
}

fn be(v: &[u8]) -> Option<u64> {
    v.try_into().ok().map(u64::from_be_bytes)
}

/// Which kind of record a reader wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Events,
    Logs,
}

impl Kind {
    fn tables(self) -> Tables {
        match self {
            Kind::Events => EVENTS_TABLES,
            Kind::Logs => LOGS_TABLES,
        }
    }
}

impl Store {
    /// Marks where the by-id index starts, once: every id handed out from
    /// now on is in it.
    pub(crate) fn start_by_id_index(&self) -> Result<(), StoreError> {
        if self.kv.get(META, BY_ID_FROM)?.is_some() {
            return Ok(());
        }
        let from = self.kv.next_id()?;
        self.kv.put(META, BY_ID_FROM, &from.to_be_bytes())
    }

    fn by_id_from(&self) -> Result<u64, StoreError> {
        // A store never opened by `Store::open` (a bare backend) has no
        // index: every read takes the time scan.
        Ok(self
            .kv
            .get(META, BY_ID_FROM)?
            .and_then(|v| be(&v))
            .unwrap_or(u64::MAX))
    }

    /// The highest id retention has deleted of `kind` (0: none). A reader
    /// that has every record up to `n < expired_through` may have lost
    /// some to retention.
    pub fn expired_through(&self, kind: Kind) -> Result<u64, StoreError> {
        let k = expired_key(kind.tables());
        Ok(self.kv.get(META, &k)?.and_then(|v| be(&v)).unwrap_or(0))
    }

    /// The op that raises a table's retention watermark to `through`
    /// (blocks without a known highest id predate the index: everything
    /// below its start counts as deleted then).
    pub(super) fn expired_op(
        &self,
        t: Tables,
        through: u64,
        unknown: bool,
    ) -> Result<Option<Op>, StoreError> {
        let mut through = through;
        if unknown {
            let from = self.by_id_from()?;
            through = through.max(from.saturating_sub(1).min(u64::MAX - 1));
        }
        let key = expired_key(t);
        let old = self.kv.get(META, &key)?.and_then(|v| be(&v)).unwrap_or(0);
        Ok((through > old).then(|| Op {
            tree: META,
            key,
            value: Some(through.to_be_bytes().to_vec()),
        }))
    }

    /// Events with an id above `after` (of `host` only, if given), in the
    /// order they were stored (by block; within a block by time).
    pub fn events_after<'a>(
        &'a self,
        after: u64,
        host: Option<&'a str>,
    ) -> Result<Box<dyn Iterator<Item = Result<EventRecord, StoreError>> + 'a>, StoreError> {
        self.events(Read::new(Start::After(after), host))
    }

    /// Log lines with an id above `after`, as [`Store::events_after`].
    pub fn logs_after<'a>(
        &'a self,
        after: u64,
        host: Option<&'a str>,
    ) -> Result<Box<dyn Iterator<Item = Result<LogRecord, StoreError>> + 'a>, StoreError> {
        self.logs(Read::new(Start::After(after), host))
    }

    pub(super) fn records_after<'a, T: Timed + 'a>(
        &'a self,
        t: Tables,
        after: u64,
        host: Option<&str>,
        needles: Option<&'a Needles>,
    ) -> Result<Box<dyn Iterator<Item = Result<T, StoreError>> + 'a>, StoreError> {
        let keep = move |r: &Result<T, StoreError>| r.as_ref().map_or(true, |r| r.id() > after);
        if after.saturating_add(1) < self.by_id_from()? {
            // Some of what is asked predates the index.
            return Ok(Box::new(
                self.records_since(t, i64::MIN, host, needles)?.filter(keep),
            ));
        }
        let host = host.map(|h| {
            let mut p = h.as_bytes().to_vec();
            p.push(0);
            p
        });
        let index: KvIter<'a> = self.kv.scan_from(t.by_id, &by_id_key(after + 1))?;
        let blocks = index.filter_map(move |kv| {
            let (_, v) = match kv {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e)),
            };
            if host.as_ref().is_some_and(|h| !v.starts_with(h)) {
                return None;
            }
            let at = v.iter().position(|b| *b == 0)?;
            let block_key = v.get(at + 1..)?;
            Some(self.block_records::<T>(t.blocks, block_key, None, needles))
        });
        let records = blocks.flat_map(|b: Result<Vec<T>, StoreError>| match b {
            Ok(recs) => recs.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        });
        Ok(Box::new(records.filter(keep)))
    }
}
