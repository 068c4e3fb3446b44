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
//! - retention deletes whole blocks older than the cut-off plus the span.
//!
//! A per-host index (`host \0 block key`, empty values) serves `--host`
//! queries without reading other hosts' blocks. Source, severity and
//! `--grep` are filtered during the scan (few values each: an index would
//! save little over the time range). A block's value is its host, a 0 byte,
//! then the records as a JSON array.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::iter::Peekable;

use picket_proto::model::Severity;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::backend::{KvIter, Op};
use super::metrics::{Sample, acked_op, sample_ops};
use super::{Store, StoreError, decode};

const EVENTS: &str = "events";
const LOGS: &str = "logs";
const EVENTS_BY_HOST: &str = "events_by_host";
const LOGS_BY_HOST: &str = "logs_by_host";

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

/// What the block store needs of a record.
pub trait Timed: Serialize + DeserializeOwned {
    fn time_ms(&self) -> i64;
    fn id(&self) -> u64;
    /// About the bytes it takes encoded (to size buffers).
    fn size_hint(&self) -> usize;
}

impl Timed for EventRecord {
    fn time_ms(&self) -> i64 {
        self.time_ms
    }
    fn id(&self) -> u64 {
        self.id
    }
    fn size_hint(&self) -> usize {
        let fields: usize = self.fields.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        self.host.len()
            + self.source.len()
            + self.path.len()
            + self.kind.len()
            + self.message.len()
            + fields
            + 48
    }
}

impl Timed for LogRecord {
    fn time_ms(&self) -> i64 {
        self.time_ms
    }
    fn id(&self) -> u64 {
        self.id
    }
    fn size_hint(&self) -> usize {
        self.host.len() + self.source.len() + self.path.len() + self.line.len() + 40
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

fn host_key(host: &str, block_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(host.len() + 1 + block_key.len());
    k.extend_from_slice(host.as_bytes());
    k.push(0);
    k.extend_from_slice(block_key);
    k
}

/// What one agent batch stores.
#[derive(Debug, Default)]
pub struct Records {
    pub samples: Vec<Sample>,
    pub events: Vec<EventRecord>,
    pub logs: Vec<LogRecord>,
}

/// Sorts one host's records into blocks and adds their writes to `ops`.
fn block_ops<T: Timed>(
    table: &'static str,
    index: &'static str,
    host: &str,
    recs: &[T],
    ops: &mut Vec<Op>,
) -> Result<(), StoreError> {
    let mut order: Vec<&T> = recs.iter().collect();
    order.sort_by_key(|r| (r.time_ms(), r.id()));
    let mut rest = &order[..];
    while let Some(first) = rest.first() {
        let min = first.time_ms();
        let n = rest
            .iter()
            .take(BLOCK_MAX)
            .take_while(|r| r.time_ms() - min <= SPAN_MS)
            .count();
        let (block, tail) = rest.split_at(n);
        rest = tail;
        let k = key(min, first.id());
        let size: usize = block.iter().map(|r| r.size_hint()).sum();
        let mut value = Vec::with_capacity(host.len() + 2 + size);
        value.extend_from_slice(host.as_bytes());
        value.push(0);
        value.push(POSTCARD);
        let value = postcard::to_extend(block, value).map_err(|e| StoreError::Corrupt {
            tree: table,
            detail: format!("cannot encode a block: {e}"),
        })?;
        ops.push(Op {
            tree: index,
            key: host_key(host, &k),
            value: Some(Vec::new()),
        });
        ops.push(Op {
            tree: table,
            key: k,
            value: Some(value),
        });
    }
    Ok(())
}

/// A block's value is the host, a 0 byte, then the records: [`POSTCARD`]
/// and postcard bytes, or (blocks written before postcard) a JSON array.
const POSTCARD: u8 = 1;

fn decode_block<T: Timed>(table: &'static str, value: &[u8]) -> Result<Vec<T>, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        tree: table,
        detail,
    };
    let records = value
        .iter()
        .position(|b| *b == 0)
        .and_then(|at| value.get(at + 1..))
        .ok_or_else(|| corrupt("block without a host".into()))?;
    match records.split_first() {
        Some((&POSTCARD, bytes)) => postcard::from_bytes(bytes).map_err(|e| corrupt(e.to_string())),
        Some((b'[', _)) => decode(table, records),
        _ => Err(corrupt("block in an unknown format".into())),
    }
}

/// A record in the merge heap, ordered by `(time, id)`.
struct Entry<T>(T);

impl<T: Timed> Ord for Entry<T> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.0.time_ms(), self.0.id()).cmp(&(o.0.time_ms(), o.0.id()))
    }
}
impl<T: Timed> PartialOrd for Entry<T> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<T: Timed> PartialEq for Entry<T> {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o).is_eq()
    }
}
impl<T: Timed> Eq for Entry<T> {}

/// Block keys in key order, with the value when the scan had it.
type BlockKeys<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Option<Vec<u8>>), StoreError>> + 'a>;

/// Merges blocks (in key order, which is min-time order) into one stream
/// ordered by `(time, id)`, from `since` on. Before a record with time `t`
/// is given out, every block whose min time is at or before `t` has been
/// read, so nothing earlier can still turn up.
struct Merge<'a, T> {
    store: &'a Store,
    table: &'static str,
    blocks: Peekable<BlockKeys<'a>>,
    heap: BinaryHeap<Reverse<Entry<T>>>,
    since: i64,
}

impl<T: Timed> Merge<'_, T> {
    fn load_next(&mut self) -> Result<(), StoreError> {
        let Some(next) = self.blocks.next() else {
            return Ok(());
        };
        let (k, value) = next?;
        let value = match value {
            Some(v) => v,
            // An index entry whose block retention already removed.
            None => match self.store.kv.get(self.table, &k)? {
                Some(v) => v,
                None => return Ok(()),
            },
        };
        let recs: Vec<T> = decode_block(self.table, &value)?;
        self.heap.extend(
            recs.into_iter()
                .filter(|r| r.time_ms() >= self.since)
                .map(|r| Reverse(Entry(r))),
        );
        Ok(())
    }

    fn next_block_time(&mut self) -> Option<i64> {
        match self.blocks.peek()? {
            Ok((k, _)) => Some(time_of(k)),
            // Surface the error through `load_next`.
            Err(_) => Some(i64::MIN),
        }
    }
}

impl<T: Timed> Iterator for Merge<'_, T> {
    type Item = Result<T, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let top = self.heap.peek().map(|Reverse(e)| e.0.time_ms());
            match (top, self.next_block_time()) {
                (None, None) => return None,
                (Some(_), None) => {}
                (None, Some(_)) => {
                    if let Err(e) = self.load_next() {
                        return Some(Err(e));
                    }
                    continue;
                }
                (Some(t), Some(b)) if b <= t => {
                    if let Err(e) = self.load_next() {
                        return Some(Err(e));
                    }
                    continue;
                }
                (Some(_), Some(_)) => {}
            }
            return self.heap.pop().map(|Reverse(e)| Ok(e.0));
        }
    }
}

impl Store {
    /// A fresh ingest id for each of `n` records.
    pub fn ingest_ids(&self, n: usize) -> Result<Vec<u64>, StoreError> {
        (0..n).map(|_| self.kv.next_id()).collect()
    }

    /// Stores a batch and moves `host`'s acked sequence number, atomically.
    pub fn put_records(&self, host: &str, r: &Records, acked: u64) -> Result<(), StoreError> {
        let mut ops = Vec::with_capacity(r.samples.len() + 5);
        sample_ops(host, &r.samples, &mut ops);
        block_ops(EVENTS, EVENTS_BY_HOST, host, &r.events, &mut ops)?;
        block_ops(LOGS, LOGS_BY_HOST, host, &r.logs, &mut ops)?;
        self.kv.apply(&acked_op(host, acked, ops))
    }

    /// Events with `time >= since` (of `host` only, if given), oldest
    /// first, streamed from disk.
    pub fn events_since<'a>(
        &'a self,
        since: i64,
        host: Option<&str>,
    ) -> Result<Box<dyn Iterator<Item = Result<EventRecord, StoreError>> + 'a>, StoreError> {
        self.records_since(EVENTS, EVENTS_BY_HOST, since, host)
    }

    /// Log lines with `time >= since` (of `host` only, if given), oldest
    /// first, streamed from disk.
    pub fn logs_since<'a>(
        &'a self,
        since: i64,
        host: Option<&str>,
    ) -> Result<Box<dyn Iterator<Item = Result<LogRecord, StoreError>> + 'a>, StoreError> {
        self.records_since(LOGS, LOGS_BY_HOST, since, host)
    }

    fn records_since<'a, T: Timed + 'a>(
        &'a self,
        table: &'static str,
        index: &'static str,
        since: i64,
        host: Option<&str>,
    ) -> Result<Box<dyn Iterator<Item = Result<T, StoreError>> + 'a>, StoreError> {
        let start = key(since.saturating_sub(SPAN_MS), 0);
        let blocks: BlockKeys<'a> = match host {
            None => Box::new(
                self.kv
                    .scan_from(table, &start)?
                    .map(|kv| kv.map(|(k, v)| (k, Some(v)))),
            ),
            Some(host) => {
                let prefix = host_key(host, &[]);
                let n = prefix.len();
                let it: KvIter<'a> = self.kv.scan_from(index, &host_key(host, &start))?;
                Box::new(
                    it.take_while(move |kv| {
                        kv.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix))
                    })
                    .map(move |kv| {
                        kv.map(|(k, _)| (k.get(n..).unwrap_or_default().to_vec(), None))
                    }),
                )
            }
        };
        Ok(Box::new(Merge {
            store: self,
            table,
            blocks: blocks.peekable(),
            heap: BinaryHeap::new(),
            since,
        }))
    }

    /// Deletes blocks of events and log lines (and their index entries)
    /// whose records are all older than the given times; returns the
    /// blocks deleted.
    pub fn expire_records(
        &self,
        events_before: i64,
        logs_before: i64,
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        for (table, index, before) in [
            (EVENTS, EVENTS_BY_HOST, events_before),
            (LOGS, LOGS_BY_HOST, logs_before),
        ] {
            // Every record of a block is within SPAN_MS of its key's time.
            let cut = before.saturating_sub(SPAN_MS);
            loop {
                let old: Vec<(Vec<u8>, Vec<u8>)> = self
                    .kv
                    .scan_from(table, &[])?
                    .take(256)
                    .take_while(|kv| kv.as_ref().map_or(true, |(k, _)| time_of(k) < cut))
                    .collect::<Result<_, _>>()?;
                if old.is_empty() {
                    break;
                }
                n += old.len();
                let mut ops = Vec::with_capacity(old.len() * 2);
                for (k, v) in old {
                    let host = v.split(|b| *b == 0).next().unwrap_or_default();
                    let mut ik = host.to_vec();
                    ik.push(0);
                    ik.extend_from_slice(&k);
                    ops.push(Op {
                        tree: index,
                        key: ik,
                        value: None,
                    });
                    ops.push(Op {
                        tree: table,
                        key: k,
                        value: None,
                    });
                }
                self.kv.apply(&ops)?;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(host: &str, id: u64, t: i64) -> EventRecord {
        EventRecord {
            id,
            host: host.into(),
            source: "sshd".into(),
            path: "/var/log/auth.log".into(),
            seq: id,
            time_ms: t,
            received_ms: t,
            severity: Severity::Low,
            kind: "auth_failure".into(),
            message: format!("m{id}"),
            fields: BTreeMap::new(),
        }
    }

    fn put(s: &Store, host: &str, events: Vec<EventRecord>) {
        let acked = events.iter().map(|e| e.seq).max().unwrap_or(0);
        let r = Records {
            events,
            ..Default::default()
        };
        s.put_records(host, &r, acked).unwrap();
    }

    fn times(s: &Store, host: Option<&str>, since: i64) -> Vec<i64> {
        s.events_since(since, host)
            .unwrap()
            .map(|e| e.unwrap().time_ms)
            .collect()
    }

    #[test]
    fn blocks_read_in_both_formats_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut e = ev("h", 1, 1_000);
        e.message = "a \"quoted\" line, é, \u{0}".into();
        e.fields.insert("ip".into(), "192.0.2.1".into());
        put(&s, "h", vec![e.clone()]);
        // A block as stores before postcard wrote it: JSON after the host.
        let old = ev("h", 2, 1_500);
        let mut v = b"h\0".to_vec();
        v.extend_from_slice(&serde_json::to_vec(&[&old]).unwrap());
        s.kv.put(EVENTS, &key(1_500, 2), &v).unwrap();
        let got: Vec<EventRecord> = s
            .events_since(0, None)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, vec![e, old]);
        s.kv.put(EVENTS, &key(1_700, 3), b"h\0\x01garbage").unwrap();
        s.kv.put(EVENTS, &key(1_800, 4), b"h\0?").unwrap();
        let errors: Vec<String> = s
            .events_since(1_600, None)
            .unwrap()
            .filter_map(|r| r.err().map(|e| e.to_string()))
            .collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[1].contains("unknown format"), "{errors:?}");
    }

    #[test]
    fn time_ordered_across_hosts_with_acks_and_retention() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        // One batch out of order and spread over 20 s: several blocks.
        put(
            &s,
            "h",
            vec![ev("h", 2, 2_000), ev("h", 1, 1_000), ev("h", 3, 20_000)],
        );
        s.put_records(
            "h",
            &Records {
                logs: vec![LogRecord {
                    id: 4,
                    host: "h".into(),
                    source: "raw".into(),
                    path: "/x".into(),
                    seq: 4,
                    time_ms: 1_500,
                    line: "l".into(),
                    truncated: false,
                    invalid_utf8: false,
                }],
                ..Default::default()
            },
            4,
        )
        .unwrap();
        assert_eq!(s.acked_seq("h").unwrap(), 4);
        // Another host's block overlaps h's in time.
        put(&s, "g", vec![ev("g", 5, 1_500), ev("g", 6, 2_000)]);
        assert_eq!(times(&s, None, 0), vec![1_000, 1_500, 2_000, 2_000, 20_000]);
        let ids: Vec<u64> = s
            .events_since(0, None)
            .unwrap()
            .map(|e| e.unwrap().id)
            .collect();
        assert_eq!(ids, vec![1, 5, 2, 6, 3], "equal times are in id order");
        assert_eq!(
            times(&s, None, 1_600),
            vec![2_000, 2_000, 20_000],
            "--since cuts inside a block"
        );
        assert_eq!(
            times(&s, Some("h"), 1_500),
            vec![2_000, 20_000],
            "the host index skips g"
        );
        assert_eq!(times(&s, Some("g"), 0), vec![1_500, 2_000]);
        assert!(times(&s, Some("nobody"), 0).is_empty());
        assert!(times(&s, Some("h\0"), 0).is_empty());
        assert_eq!(s.logs_since(0, Some("h")).unwrap().count(), 1);

        // Blocks wholly before the cut-off go, with their index entries;
        // a block that may still hold a newer record stays.
        assert!(s.expire_records(5_000, 0).unwrap() >= 2);
        assert_eq!(times(&s, None, 0), vec![20_000]);
        assert_eq!(times(&s, Some("h"), 0), vec![20_000]);
        assert!(times(&s, Some("g"), 0).is_empty());
        assert_eq!(
            s.kv.scan(EVENTS_BY_HOST, b"").unwrap().count(),
            1,
            "index entries expire with their blocks"
        );
        let ids = s.ingest_ids(3).unwrap();
        assert!(ids[0] < ids[1] && ids[1] < ids[2]);
    }

    /// Many batches from several hosts, with times that jump about (as a
    /// replay after an outage does), read back with every filter: the
    /// merge must equal a plain sort of what went in.
    #[test]
    fn merged_blocks_equal_a_sort_of_everything() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let hosts = ["a", "b", "c"];
        let mut all = Vec::new();
        let mut id = 0;
        for batch in 0..60u64 {
            let host = hosts[rnd(3) as usize];
            let base = rnd(100_000) as i64;
            let n = if batch == 7 {
                BLOCK_MAX as u64 * 2 + 5
            } else {
                rnd(80)
            };
            let mut evs = Vec::new();
            for _ in 0..n {
                id += 1;
                // Mostly close together, now and then far off.
                let t = if rnd(10) == 0 {
                    rnd(100_000) as i64
                } else {
                    base + rnd(3_000) as i64
                };
                evs.push(ev(host, id, t));
            }
            all.extend(evs.clone());
            put(&s, host, evs);
        }
        all.sort_by_key(|e| (e.time_ms, e.id));
        for since in [0, 1, 999, 50_000, 99_999, 200_000] {
            for host in [None, Some("a"), Some("c")] {
                let want: Vec<u64> = all
                    .iter()
                    .filter(|e| e.time_ms >= since && host.is_none_or(|h| e.host == h))
                    .map(|e| e.id)
                    .collect();
                let got: Vec<u64> = s
                    .events_since(since, host)
                    .unwrap()
                    .map(|e| e.unwrap().id)
                    .collect();
                assert_eq!(got, want, "since {since} host {host:?}");
            }
        }
    }
}
