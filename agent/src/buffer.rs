//! The agent's on-disk buffer (sled): every record gets the next sequence
//! number and stays here until the control plane acks it.
//!
//! One tree holds everything, so that one sled `Batch` (atomic within a
//! tree) commits records together with the read position that produced
//! them. Keys:
//! - `r` + seq (u64 big-endian): a record, `[kind][prost v1::Record]`;
//! - `m` + name: counters (`next_seq`, drops per kind);
//! - `p` + source: a source's read position (opaque bytes).
//!
//! The buffer is bounded: past `cap_bytes` the oldest metric samples go
//! first, then the oldest log lines; events are never dropped (the buffer
//! refuses new records instead, and the producer waits). Every drop is
//! counted. No networking here.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use picket_proto::v1::{self, record::Payload};
use prost::Message;
use tokio::sync::Notify;

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("cannot open the agent buffer at {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error("agent buffer: {0}")]
    Sled(#[from] sled::Error),
    #[error("agent buffer: corrupt record at seq {0}")]
    Corrupt(u64),
    #[error(
        "agent buffer is full of unacknowledged events ({0} bytes); waiting for the control plane"
    )]
    Full(u64),
}

/// What a record holds, in drop order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Metric = 0,
    Log = 1,
    Event = 2,
}

impl Kind {
    fn of(p: &Payload) -> Kind {
        match p {
            Payload::Metrics(_) => Kind::Metric,
            Payload::Log(_) => Kind::Log,
            Payload::Event(_) => Kind::Event,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Metric => "metric",
            Kind::Log => "log",
            Kind::Event => "event",
        }
    }
}

const NEXT_SEQ: &[u8] = b"mnext_seq";
const DROPPED: [&[u8]; 3] = [b"mdropped_metric", b"mdropped_log", b"mdropped_event"];

fn rec_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'r';
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?))
}

fn u64_of(v: Option<sled::IVec>) -> u64 {
    v.and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0)
}

struct State {
    next_seq: u64,
    /// Bytes of records held (keys and values).
    bytes: u64,
    dropped: [u64; 3],
}

pub struct Buffer {
    db: sled::Db,
    tree: sled::Tree,
    state: Mutex<State>,
    cap_bytes: u64,
    /// Woken whenever records are added.
    added: Notify,
    /// Every record up to this sequence number is on disk (fsynced).
    durable: std::sync::atomic::AtomicU64,
}

impl Buffer {
    pub fn open(dir: &Path, cap_bytes: u64) -> Result<Buffer, BufferError> {
        let path = dir.join("buffer");
        let db = sled::Config::new()
            .path(&path)
            // A small page cache: the buffer is written once, read once.
            .cache_capacity(1024 * 1024)
            // Records and read positions share a batch, so an unflushed tail
            // lost in a crash is re-read, never skipped; flushing once a
            // second keeps the idle agent quiet.
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|e| BufferError::Open {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        let tree = db.open_tree("buffer")?;
        let mut bytes = 0u64;
        for kv in tree.scan_prefix(b"r") {
            let (k, v) = kv?;
            bytes += (k.len() + v.len()) as u64;
        }
        let next_seq = u64_of(tree.get(NEXT_SEQ)?).max(1);
        let mut dropped = [0u64; 3];
        for (i, key) in DROPPED.iter().enumerate() {
            dropped[i] = u64_of(tree.get(key)?);
        }
        Ok(Buffer {
            db,
            tree,
            state: Mutex::new(State {
                next_seq,
                bytes,
                dropped,
            }),
            cap_bytes,
            added: Notify::new(),
            // What a fresh open finds was on disk.
            durable: std::sync::atomic::AtomicU64::new(next_seq - 1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends records, and with them a source's read position, in one
    /// atomic batch. Returns the sequence numbers given.
    /// The batch is taken whole or not at all; on an error the caller still
    /// holds `payloads` and may push them again.
    pub fn push(
        &self,
        payloads: &[Payload],
        position: Option<(&str, &[u8])>,
    ) -> Result<std::ops::Range<u64>, BufferError> {
        let mut st = self.lock();
        let incoming: u64 = payloads.iter().map(|p| p.encoded_len() as u64 + 24).sum();
        if st.bytes + incoming > self.cap_bytes {
            self.make_room(&mut st, incoming)?;
        }
        let first = st.next_seq;
        let mut batch = sled::Batch::default();
        let mut added = 0u64;
        for (i, p) in payloads.iter().enumerate() {
            let seq = first + i as u64;
            // The bytes of `v1::Record { seq, payload }`, written from a
            // borrowed payload: field 1, then the oneof.
            let mut value = Vec::with_capacity(p.encoded_len() + 12);
            value.push(Kind::of(p) as u8);
            prost::encoding::uint64::encode(1, &seq, &mut value);
            p.encode(&mut value);
            added += (9 + value.len()) as u64;
            batch.insert(&rec_key(seq)[..], value);
            st.next_seq = seq + 1;
        }
        batch.insert(NEXT_SEQ, &st.next_seq.to_be_bytes()[..]);
        if let Some((source, pos)) = position {
            let mut k = b"p".to_vec();
            k.extend_from_slice(source.as_bytes());
            batch.insert(k, pos);
        }
        self.tree.apply_batch(batch)?;
        st.bytes += added;
        let range = first..st.next_seq;
        drop(st);
        self.added.notify_one();
        Ok(range)
    }

    /// Drops the oldest metrics, then the oldest log lines, until `need`
    /// more bytes fit under 90 % of the cap.
    fn make_room(&self, st: &mut State, need: u64) -> Result<(), BufferError> {
        let target = (self.cap_bytes / 10 * 9).saturating_sub(need);
        for kind in [Kind::Metric, Kind::Log] {
            if st.bytes <= target {
                break;
            }
            let mut batch = sled::Batch::default();
            let mut freed = 0u64;
            let mut n = 0u64;
            for kv in self.tree.scan_prefix(b"r") {
                let (k, v) = kv?;
                if v.first() == Some(&(kind as u8)) {
                    batch.remove(k.clone());
                    freed += (k.len() + v.len()) as u64;
                    n += 1;
                    if st.bytes - freed <= target {
                        break;
                    }
                }
            }
            if n > 0 {
                let i = kind as usize;
                st.dropped[i] += n;
                batch.insert(DROPPED[i], &st.dropped[i].to_be_bytes()[..]);
                self.tree.apply_batch(batch)?;
                st.bytes -= freed;
                tracing::warn!(
                    kind = kind.name(),
                    dropped = n,
                    "agent buffer full: dropped the oldest records"
                );
            }
        }
        if st.bytes + need > self.cap_bytes {
            return Err(BufferError::Full(st.bytes));
        }
        Ok(())
    }

    /// Up to `max` records with a sequence number above `after`, in order,
    /// stopping once `max_bytes` (encoded) are reached (at least one record
    /// is returned when there is one).
    pub fn after(
        &self,
        after: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<v1::Record>, BufferError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for kv in self
            .tree
            .range(rec_key(after.saturating_add(1))..rec_key(u64::MAX))
        {
            let (k, v) = kv?;
            let seq = seq_of(&k).ok_or(BufferError::Corrupt(0))?;
            let rec = v
                .get(1..)
                .and_then(|b| v1::Record::decode(b).ok())
                .ok_or(BufferError::Corrupt(seq))?;
            bytes += v.len();
            out.push(rec);
            if out.len() >= max || bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// Forgets every record up to and including `seq`: the control plane
    /// has stored them.
    pub fn ack(&self, seq: u64) -> Result<(), BufferError> {
        let mut st = self.lock();
        let mut batch = sled::Batch::default();
        let mut freed = 0u64;
        for kv in self.tree.range(rec_key(0)..=rec_key(seq)) {
            let (k, v) = kv?;
            freed += (k.len() + v.len()) as u64;
            batch.remove(k);
        }
        self.tree.apply_batch(batch)?;
        st.bytes = st.bytes.saturating_sub(freed);
        Ok(())
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    /// Records dropped so far, by kind (metric, log, event).
    pub fn dropped(&self) -> [u64; 3] {
        self.lock().dropped
    }

    pub fn held_bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// A source's last committed read position.
    pub fn position(&self, source: &str) -> Result<Option<Vec<u8>>, BufferError> {
        let mut k = b"p".to_vec();
        k.extend_from_slice(source.as_bytes());
        Ok(self.tree.get(k)?.map(|v| v.to_vec()))
    }

    /// Resolves when records have been added since the last call returned
    /// (one consumer: the uplink's sender).
    pub async fn wait_added(&self) {
        self.added.notified().await;
    }

    /// Makes every record pushed so far durable.
    pub fn flush(&self) -> Result<(), BufferError> {
        let upto = self.next_seq().saturating_sub(1);
        self.db.flush()?;
        self.durable
            .fetch_max(upto, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// Records up to this sequence number are on disk. Only those may be
    /// sent: a record sent before it is durable could be lost in a crash
    /// and its sequence number reused for other lines after the restart,
    /// which the control plane would then skip as a repeat.
    pub fn durable_seq(&self) -> u64 {
        self.durable.load(std::sync::atomic::Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use picket_proto::v1::{LogLine, MetricSample};

    fn metric(t: i64) -> Payload {
        Payload::Metrics(MetricSample {
            time_unix_ms: t,
            gauges: (0..10)
                .map(|i| v1::Gauge {
                    name: format!("gauge_{i}"),
                    labels: Default::default(),
                    value: 1.0,
                })
                .collect(),
        })
    }

    fn log(line: &str) -> Payload {
        Payload::Log(LogLine {
            line: line.into(),
            ..Default::default()
        })
    }

    #[test]
    fn sequence_numbers_survive_reopen_and_ack_trims() {
        let dir = tempfile::tempdir().unwrap();
        {
            let b = Buffer::open(dir.path(), 1 << 20).unwrap();
            assert_eq!(b.push(&[metric(1), metric(2)], None).unwrap(), 1..3);
            assert_eq!(b.push(&[log("x")], Some(("src", b"42"))).unwrap(), 3..4);
            b.flush().unwrap();
        }
        let b = Buffer::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(b.next_seq(), 4);
        assert_eq!(b.position("src").unwrap().as_deref(), Some(&b"42"[..]));
        let all: Vec<u64> = b
            .after(0, 100, usize::MAX)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(all, vec![1, 2, 3]);
        b.ack(2).unwrap();
        let rest: Vec<u64> = b
            .after(0, 100, usize::MAX)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(rest, vec![3]);
        assert_eq!(b.after(3, 100, usize::MAX).unwrap().len(), 0);
        assert_eq!(b.push(&[metric(3)], None).unwrap(), 4..5);
    }

    #[test]
    fn full_buffer_drops_oldest_metrics_then_logs_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let b = Buffer::open(dir.path(), 8000).unwrap();
        for i in 0..30 {
            b.push(&[metric(i)], None).unwrap();
        }
        let line = "l".repeat(200);
        for _ in 0..20 {
            b.push(&[log(&line)], None).unwrap();
        }
        // Logs alone fit: room was made by dropping metrics only.
        let [m, l, e] = b.dropped();
        assert!(m > 0 && l == 0 && e == 0, "{m} {l} {e}");
        for _ in 0..40 {
            b.push(&[log(&line)], None).unwrap();
        }
        let [m, l, e] = b.dropped();
        assert_eq!(m, 30, "every metric went before any log line");
        assert!(l > 0 && e == 0);
        assert!(b.held_bytes() <= 8000);
        let recs = b.after(0, 1000, usize::MAX).unwrap();
        assert!(
            recs.iter()
                .all(|r| matches!(&r.payload, Some(Payload::Log(_))))
        );
        // The newest line is kept; the oldest went.
        assert_eq!(recs.last().unwrap().seq, 90);
        assert!(recs.first().unwrap().seq > 31);
        // Counts survive a restart.
        drop(recs);
        b.flush().unwrap();
        drop(b);
        let b = Buffer::open(dir.path(), 8000).unwrap();
        assert_eq!(b.dropped(), [m, l, 0]);
    }

    #[test]
    fn only_flushed_records_count_as_durable() {
        let dir = tempfile::tempdir().unwrap();
        let b = Buffer::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(b.durable_seq(), 0);
        b.push(&[metric(1), metric(2)], None).unwrap();
        assert_eq!(b.durable_seq(), 0, "pushed is not yet durable");
        b.flush().unwrap();
        assert_eq!(b.durable_seq(), 2);
        drop(b);
        let b = Buffer::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(b.durable_seq(), 2, "what a restart finds was on disk");
    }

    #[test]
    fn a_buffer_full_of_events_refuses_rather_than_drops() {
        let dir = tempfile::tempdir().unwrap();
        let b = Buffer::open(dir.path(), 2000).unwrap();
        let ev = || {
            Payload::Event(v1::Event {
                message: "e".repeat(300),
                ..Default::default()
            })
        };
        let mut refused = false;
        for _ in 0..20 {
            if let Err(BufferError::Full(_)) = b.push(&[ev()], None) {
                refused = true;
                break;
            }
        }
        assert!(refused);
        assert_eq!(b.dropped(), [0, 0, 0]);
    }
}
