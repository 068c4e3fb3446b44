//! Events and raw log lines on disk, in one time order across the fleet.
//!
//! Records are stored in blocks, not one per key: ingest writes thousands
//! of records a batch, and a sled write per record (plus one per index
//! entry) cost more than everything else in the pipeline. A block holds
//! records of one host and one batch, sorted by `(time, id)`, where `id` is
//! a fleet-wide ingest number (unique, increasing in the order records were
//! stored). A block spans at most [`SPAN_MS`] and [`BLOCK_MAX`] records, so:
//! - its key is `min time(u64 BE) ‖ first id(u64 BE)`, and a `--since T`
//!   query starts at `T - SPAN_MS`;
//! - reading merges overlapping blocks by `(time, id)` with a small heap
//!   (memory: the blocks that overlap in time, never the whole range);
//! - retention goes by when a block was received, not by the records'
//!   own times: an event stamped years ago (a replayed capture, a
//!   backfill, a host with a wrong clock) is kept for the whole window
//!   from its arrival. A per-table index keyed by receive time
//!   (`received ms ‖ block key` → host) finds the blocks to delete.
//!
//! A per-host index (`host \0 block key`, empty values) serves `--host`
//! queries without reading other hosts' blocks. Source, severity and
//! `--grep` are filtered during the scan (few values each: an index would
//! save little over the time range). A block's value in sled is its host, a
//! 0 byte, then where its records are: [`PACKED_SEGMENT`] and the [`Loc`]
//! of their bytes, LZ4-compressed ([`picket_segment::pack`]), in a segment
//! file ([`segments`]), or [`WIRE`] and the bytes inline (a store opened
//! without segments). Blocks hold each record as
//! the agent encoded it ([`wire`]). Older stores' blocks still read:
//! postcard in a segment ([`SEGMENT`]) or inline ([`POSTCARD`]), or a JSON
//! array.

use std::collections::BTreeMap;

use picket_model::Severity;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use picket_segment::Loc;

use super::backend::{Backend, Op};
use super::metrics::{Sample, acked_op, sample_ops};
use super::{Store, StoreError, decode};

const EVENTS: &str = "events";
const LOGS: &str = "logs";
const EVENTS_BY_HOST: &str = "events_by_host";
const LOGS_BY_HOST: &str = "logs_by_host";
const EVENTS_RECEIVED: &str = "events_received";
const LOGS_RECEIVED: &str = "logs_received";
const EVENTS_BY_ID: &str = "events_by_id";
const LOGS_BY_ID: &str = "logs_by_id";
const EVENTS_LATEST: &str = "events_latest";
const LOGS_LATEST: &str = "logs_latest";
/// Set once every block has a receive-time index entry (stores written
/// before retention went by receive time get theirs when first opened).
use super::META;
const RECEIVED_INDEXED: &[u8] = b"records.received_index";

mod by_id;
pub mod filter;

mod latest;
mod read;
mod retention;
mod segments;
pub use by_id::Kind;
use by_id::{by_id_key, by_id_value};
pub use read::{Needles, Pending, Read, Start, forward, newest_first};
mod wire;
use retention::received_key;
pub(crate) use segments::Segments;
pub use wire::{FromWire, Wire};

/// The segment streams for event and log blocks, under `dir`.
pub(crate) fn open_segments(
    dir: &std::path::Path,
    kv: &dyn Backend,
) -> Result<Segments, StoreError> {
    Segments::open(dir, &[EVENTS, LOGS], kv)
}

/// The longest time span of one block.
pub const SPAN_MS: i64 = 1_000;
/// The most records in one block.
pub const BLOCK_MAX: usize = 2_048;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub id: u64,
    pub host: String,
    pub source: String,
    pub path: String,
    pub seq: u64,
    pub time_ms: i64,
    pub received_ms: i64,
    pub severity: Severity,
    pub kind: String,
    pub message: String,
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub id: u64,
    pub host: String,
    pub source: String,
    pub path: String,
    pub seq: u64,
    pub time_ms: i64,
    pub line: String,
    #[serde(default)]
    pub truncated: bool,
    #[serde(default)]
    pub invalid_utf8: bool,
}

/// What the block store needs of a record it reads.
pub trait Timed: Serialize + DeserializeOwned + FromWire {
    fn time_ms(&self) -> i64;
    fn id(&self) -> u64;
}

impl Timed for EventRecord {
    fn time_ms(&self) -> i64 {
        self.time_ms
    }
    fn id(&self) -> u64 {
        self.id
    }
}

impl Timed for LogRecord {
    fn time_ms(&self) -> i64 {
        self.time_ms
    }
    fn id(&self) -> u64 {
        self.id
    }
}

fn key(time_ms: i64, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&(time_ms.max(0) as u64).to_be_bytes());
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn time_of(k: &[u8]) -> i64 {
    k.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(|b| u64::from_be_bytes(b) as i64)
        .unwrap_or(0)
}

fn host_key(host: impl AsRef<[u8]>, block_key: &[u8]) -> Vec<u8> {
    let host = host.as_ref();
    let mut k = Vec::with_capacity(host.len() + 1 + block_key.len());
    k.extend_from_slice(host);
    k.push(0);
    k.extend_from_slice(block_key);
    k
}

/// What one agent batch stores.
#[derive(Debug, Default)]
pub struct Records<'a> {
    pub samples: Vec<Sample>,
    pub events: Vec<Wire<'a>>,
    pub logs: Vec<Wire<'a>>,
}

impl Records<'_> {
    /// About how many bytes storing it takes, at most (before packing).
    pub fn bytes(&self) -> u64 {
        let payload: usize = self
            .events
            .iter()
            .chain(&self.logs)
            .map(|w| w.payload.len() + 32)
            .sum();
        let points: usize = self.samples.iter().map(|s| s.points.len() * 64).sum();
        (payload + points) as u64
    }
}

impl Records<'static> {
    /// A batch of decoded records (tests, tools): encoded as an agent
    /// would have sent them.
    pub fn of(samples: Vec<Sample>, events: &[EventRecord], logs: &[LogRecord]) -> Self {
        Records {
            samples,
            events: events.iter().map(FromWire::to_wire).collect(),
            logs: logs.iter().map(FromWire::to_wire).collect(),
        }
    }
}

/// One block of records, encoded, before it is stored.
pub struct Block {
    key: Vec<u8>,
    /// The earliest record time among them.
    pub earliest: i64,
    /// The ingest id of the first record (by `(time, id)`).
    pub first_id: u64,
    /// When the block's records were received (the newest of them).
    pub received: i64,
    /// The highest ingest id among them.
    pub max_id: u64,
    /// The latest record time among them.
    pub latest: i64,
    /// How many records it holds.
    pub count: usize,
    /// The records' entries ([`wire`]), as [`decode_entries`] reads them.
    pub bytes: Vec<u8>,
}

/// Sorts one host's records into blocks (each spans at most [`SPAN_MS`]
/// and [`BLOCK_MAX`] records).
pub fn blocks(recs: &[Wire<'_>]) -> Vec<Block> {
    let mut order: Vec<&Wire<'_>> = recs.iter().collect();
    order.sort_by_key(|r| (r.time_ms, r.id));
    let mut out = Vec::new();
    let mut rest = &order[..];
    while let Some(first) = rest.first() {
        let min = first.time_ms;
        let n = rest
            .iter()
            .take(BLOCK_MAX)
            .take_while(|r| r.time_ms - min <= SPAN_MS)
            .count();
        let (block, tail) = rest.split_at(n);
        rest = tail;
        let size: usize = block.iter().map(|r| r.size_hint()).sum();
        let received = block.iter().map(|r| r.received_ms).max().unwrap_or(0);
        let max_id = block.iter().map(|r| r.id).max().unwrap_or(0);
        let latest = block.last().map_or(min, |r| r.time_ms);
        let mut bytes = Vec::with_capacity(size);
        for r in block {
            r.put(&mut bytes);
        }
        out.push(Block {
            key: key(min, first.id),
            earliest: min,
            first_id: first.id,
            count: block.len(),
            received,
            max_id,
            latest,
            bytes,
        });
    }
    out
}

/// A block's value: where its records are and in what format. Blocks are
/// written as [`PACKED_SEGMENT`] (or [`WIRE`] without segments); the
/// others are read only. Inline JSON arrays are marked by their `[`.
const POSTCARD: u8 = 1;
const SEGMENT: u8 = 2;
const PACKED_SEGMENT: u8 = 3;
const WIRE: u8 = 4;

impl Store {
    /// A fresh ingest id for each of `n` records.
    pub fn ingest_ids(&self, n: usize) -> Result<Vec<u64>, StoreError> {
        (0..n).map(|_| self.kv.next_id()).collect()
    }

    /// Stores a batch and moves `host`'s acked sequence number, atomically
    /// (block bytes in segments are synced first; see [`segments`]).
    ///
    /// Refused while the store is not writable (until [`Store::recover`]
    /// finds it writable again) or free space is under the floor.
    pub fn put_records(&self, host: &str, r: &Records, acked: u64) -> Result<(), StoreError> {
        self.put_records_many(&[(host, r, acked)])
    }

    /// [`Store::put_records`] of several hosts' batches in one atomic
    /// write: one engine batch instead of one each (the engine writes and
    /// syncs each batch it is given at once: at 10,000 agents' samples,
    /// most of the control plane's CPU).
    pub fn put_records_many(&self, batches: &[(&str, &Records, u64)]) -> Result<(), StoreError> {
        // The atomic first: `why` takes a lock, and this runs per batch.
        if !self.health.writable()
            && let Some(why) = self.health.why()
        {
            return Err(StoreError::Unwritable(why));
        }
        let bytes = batches.iter().map(|(_, r, _)| r.bytes()).sum();
        self.health.check_space(bytes)?;
        let ops = batches
            .iter()
            .try_fold(Vec::new(), |mut ops, (host, r, acked)| {
                let mut host_ops = Vec::with_capacity(r.samples.len() + 5);
                sample_ops(host, &r.samples, &mut host_ops);
                self.block_ops(EVENTS_TABLES, host, blocks(&r.events), &mut host_ops)?;
                self.block_ops(LOGS_TABLES, host, blocks(&r.logs), &mut host_ops)?;
                ops.extend(acked_op(host, *acked, host_ops));
                Ok(ops)
            });
        let written = ops.and_then(|ops| self.kv.apply(&ops));
        if let Err(e) = &written {
            self.health.failed_batch(e, bytes);
        }
        written
    }

    /// Adds the writes that store `blocks` of `host` to `ops`: the block
    /// (its bytes in a segment, or inline), its host index entry, its
    /// by-id entry, and its receive-time index entry (whose value, host
    /// `\0` highest id, lets retention find the by-id entry).
    fn block_ops(
        &self,
        t: Tables,
        host: &str,
        blocks: Vec<Block>,
        ops: &mut Vec<Op>,
    ) -> Result<(), StoreError> {
        let locs = match &self.segments {
            Some(seg) => {
                let packed: Vec<(i64, Vec<u8>)> = blocks
                    .iter()
                    .map(|b| (b.received, picket_segment::pack::pack(&b.bytes)))
                    .collect();
                let bytes: Vec<(i64, &[u8])> = packed.iter().map(|(t, b)| (*t, &b[..])).collect();
                seg.write(t.blocks, &bytes, ops)?
            }
            None => Vec::new(),
        };
        for (i, b) in blocks.into_iter().enumerate() {
            let mut value = Vec::with_capacity(host.len() + 2 + 24);
            value.extend_from_slice(host.as_bytes());
            value.push(0);
            match locs.get(i) {
                Some(loc) => {
                    value.push(PACKED_SEGMENT);
                    loc.put(&mut value);
                }
                None => {
                    value.push(WIRE);
                    value.extend_from_slice(&b.bytes);
                }
            }
            ops.push(Op {
                tree: t.by_host,
                key: host_key(host, &b.key),
                value: Some(Vec::new()),
            });
            ops.push(Op {
                tree: t.by_id,
                key: by_id_key(b.max_id),
                value: Some(by_id_value(host, &b.key)),
            });
            ops.push(Op {
                tree: t.latest,
                key: latest::latest_key(b.latest, &b.key),
                value: Some(host.as_bytes().to_vec()),
            });
            let mut received = host.as_bytes().to_vec();
            received.push(0);
            received.extend_from_slice(&b.max_id.to_be_bytes());
            received.extend_from_slice(&b.latest.to_be_bytes());
            ops.push(Op {
                tree: t.received,
                key: received_key(b.received, &b.key),
                value: Some(received),
            });
            ops.push(Op {
                tree: t.blocks,
                key: b.key,
                value: Some(value),
            });
        }
        Ok(())
    }

    /// The records of the block under `key` (`value`: its stored value,
    /// when the scan that found the key had it), as [`Store::decode_block`]
    /// gives them; none when retention removed the block meanwhile (an
    /// index entry can outlive it for a moment).
    fn block_records<T: Timed>(
        &self,
        table: &'static str,
        key: &[u8],
        value: Option<Vec<u8>>,
        needles: Option<&Needles>,
    ) -> Result<Vec<T>, StoreError> {
        let value = match value {
            Some(v) => v,
            None => match self.kv.get(table, key)? {
                Some(v) => v,
                None => return Ok(Vec::new()),
            },
        };
        self.decode_block(table, &value, needles)
    }

    /// A stored block's records (none when retention took its segment
    /// meanwhile), leaving out those whose bytes hold none of `needles`.
    fn decode_block<T: Timed>(
        &self,
        table: &'static str,
        value: &[u8],
        needles: Option<&Needles>,
    ) -> Result<Vec<T>, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            tree: table,
            detail,
        };
        let at = value
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| corrupt("block without a host".into()))?;
        let (host, records) = (&value[..at], &value[at + 1..]);
        let host = std::str::from_utf8(host).map_err(|e| corrupt(e.to_string()))?;
        let postcard =
            |bytes: &[u8]| postcard::from_bytes(bytes).map_err(|e| corrupt(e.to_string()));
        let wire = |bytes: &[u8]| decode_entries(table, host, bytes, needles);
        let in_segment = |at: &[u8]| -> Result<Option<Vec<u8>>, StoreError> {
            let loc = Loc::get(at).ok_or_else(|| corrupt("short block location".into()))?;
            let seg = self
                .segments
                .as_ref()
                .ok_or_else(|| corrupt("block in a segment, but no segments here".into()))?;
            seg.read(table, loc)
        };
        match records.split_first() {
            Some((&PACKED_SEGMENT, at)) => match in_segment(at)? {
                Some(packed) => {
                    let bytes = picket_segment::pack::unpack(&packed)
                        .map_err(|e| corrupt(e.to_string()))?;
                    wire(&bytes)
                }
                None => Ok(Vec::new()),
            },
            Some((&WIRE, bytes)) => wire(bytes),
            Some((&SEGMENT, at)) => in_segment(at)?.map_or(Ok(Vec::new()), |b| postcard(&b)),
            Some((&POSTCARD, bytes)) => postcard(bytes),
            Some((b'[', _)) => decode(table, records),
            _ => Err(corrupt("block in an unknown format".into())),
        }
    }

    /// Events with `time >= since` (of `host` only, if given), oldest
    /// first, streamed from disk.
    pub fn events_since<'a>(
        &'a self,
        since: i64,
        host: Option<&'a str>,
    ) -> Result<Box<dyn Iterator<Item = Result<EventRecord, StoreError>> + 'a>, StoreError> {
        self.events(Read::new(Start::Since(since), host))
    }

    /// Log lines with `time >= since` (of `host` only, if given), oldest
    /// first, streamed from disk.
    pub fn logs_since<'a>(
        &'a self,
        since: i64,
        host: Option<&'a str>,
    ) -> Result<Box<dyn Iterator<Item = Result<LogRecord, StoreError>> + 'a>, StoreError> {
        self.logs(Read::new(Start::Since(since), host))
    }
}

/// The records of a block's entries (`bytes`, as [`Block::bytes`]) of
/// `host`, leaving out those whose payload holds none of `needles`; a
/// block that holds none of them is not decoded at all. `table` names the
/// block's table in errors.
pub fn decode_entries<T: Timed>(
    table: &'static str,
    host: &str,
    bytes: &[u8],
    needles: Option<&Needles>,
) -> Result<Vec<T>, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        tree: table,
        detail,
    };
    if needles.is_some_and(|n| !n.in_bytes(bytes)) {
        return Ok(Vec::new());
    }
    wire::entries(bytes)
        .filter(|w| match (w, needles) {
            (Ok(w), Some(n)) => n.in_bytes(&w.payload),
            _ => true,
        })
        .map(|w| {
            let w = w.map_err(|e| corrupt(e.to_string()))?;
            T::from_wire(host, &w).map_err(|e| corrupt(e.to_string()))
        })
        .collect()
}

/// The cursor of the record with ingest id `id`: what `after` takes to
/// resume exactly after it. Opaque to clients (`i` and the id today).
pub fn cursor(id: u64) -> String {
    format!("i{id}")
}

/// The ingest id a cursor stands for ("" is the start).
pub fn after(cursor: &str) -> Result<u64, String> {
    if cursor.is_empty() {
        return Ok(0);
    }
    cursor
        .strip_prefix('i')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("{cursor:?} is not a cursor (a JSON line's \"cursor\")"))
}

/// The tables of one kind of record.
#[derive(Clone, Copy)]
struct Tables {
    blocks: &'static str,
    by_host: &'static str,
    received: &'static str,
    by_id: &'static str,
    latest: &'static str,
}

const EVENTS_TABLES: Tables = Tables {
    blocks: EVENTS,
    by_host: EVENTS_BY_HOST,
    received: EVENTS_RECEIVED,
    by_id: EVENTS_BY_ID,
    latest: EVENTS_LATEST,
};

const LOGS_TABLES: Tables = Tables {
    blocks: LOGS,
    by_host: LOGS_BY_HOST,
    received: LOGS_RECEIVED,
    by_id: LOGS_BY_ID,
    latest: LOGS_LATEST,
};

#[cfg(test)]
mod tests;
