//! The agent's on-disk buffer (sled): every record gets the next sequence
//! number and stays here until the control plane acks it.
//!
//! A push commits records together with the read positions that produced
//! them: in one commit record in the segments, and in one sled `Batch`
//! (atomic within a tree), so one tree holds the index. Records are stored in chunks of about 64 KiB (before packing),
//! not one per key. A chunk holds its records already encoded for the wire
//! ([`picket_proto::frame`]), LZ4-packed ([`picket_segment::pack`]), so
//! sending them unpacks and copies bytes and decodes nothing. Chunk bytes
//! are appended to segment files (`<state>/buffer.segments/`); sled keys:
//! - `s` + first seq (u64 big-endian): a chunk's index entry,
//!   `[kinds][last seq][Loc]`; the chunk itself is `[kinds | packed][last
//!   seq]` then the records as the bytes of a `v1::RecordBatch`;
//! - `m` + name: counters (`next_seq`, drops per kind) and `mscan`
//!   (where recovery starts, [`journal`]);
//! - `p` + source: a source's read position (opaque bytes).
//!
//! A push appends its chunks and a commit record naming them (with the
//! read positions) to the segments and fsyncs them: then it is durable and
//! may be sent. Its sled batch is flushed later, as a checkpoint
//! ([`Buffer::flush`]); a crash before that is undone at open from the
//! commit records ([`journal`]).
//!
//! Older layouts (`r` + seq per record, `c` + first seq for chunks inline
//! in sled, unpacked chunks) are moved or read as they are.
//!
//! Memory holds one small entry per chunk (first and last seq, kinds,
//! size), so finding, acking and dropping chunks never scans sled.
//!
//! A chunk's records keep their own sequence numbers, which may have gaps
//! where records were dropped. The buffer is bounded: past `cap_bytes` the
//! oldest metric samples go first, then the oldest log lines; events are
//! never dropped (the buffer refuses new records instead, and the producer
//! waits). Every drop is counted. No networking here.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use picket_proto::frame::{self, EncodedBatch, FrameError};

mod chunk;
mod journal;
mod room;
mod state;
pub use chunk::Encoded;
use chunk::{
    CHUNK_BYTES, DAMAGED, DROPPED, HEADER, Meta, NEXT_SEQ, chunk_records, encode_chunk, index_key,
    u64_at, u64_of,
};
use picket_proto::v1::record::Payload;
use picket_segment::{self as segment, SegmentError};
use segment::Writer;
use state::{Seg, State};
use tokio::sync::Notify;

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("cannot open the agent buffer at {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error("agent buffer: {0}")]
    Sled(#[from] sled::Error),
    #[error("agent buffer: {0}")]
    Segment(#[from] SegmentError),
    #[error("agent buffer: corrupt chunk at seq {seq}: {detail}")]
    Corrupt { seq: u64, detail: String },
    #[error(
        "agent buffer is full of unacknowledged events ({0} bytes); waiting for the control plane"
    )]
    Full(u64),
}

/// Where a source's read position is kept.
fn position_key(source: &str) -> Vec<u8> {
    let mut k = b"p".to_vec();
    k.extend_from_slice(source.as_bytes());
    k
}

fn corrupt(seq: u64, e: impl std::fmt::Display) -> BufferError {
    BufferError::Corrupt {
        seq,
        detail: e.to_string(),
    }
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

    /// This kind's bit in a chunk's `kinds` byte.
    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Metric => "metric",
            Kind::Log => "log",
            Kind::Event => "event",
        }
    }
}

pub struct Buffer {
    db: sled::Db,
    tree: sled::Tree,
    /// Where the segment files are.
    dir: PathBuf,
    state: Mutex<State>,
    /// Held for a whole push (or drop), so that batches commit in
    /// sequence order; reading and acking only take `state`.
    writer: Mutex<Writer>,
    cap_bytes: u64,
    /// Woken whenever records are added.
    added: Notify,
    /// `State::next_seq`, readable without the state lock, which a full
    /// buffer's `make_room` holds across an fsync: async code reads this.
    next: AtomicU64,
    /// Sled holds changes not yet flushed (the checkpoint is behind).
    dirty: AtomicBool,
}

impl Buffer {
    pub fn open(dir: &Path, cap_bytes: u64) -> Result<Buffer, BufferError> {
        let path = dir.join("buffer");
        let open_err = |e: &dyn std::fmt::Display| BufferError::Open {
            path: path.clone(),
            detail: e.to_string(),
        };
        let config = sled::Config::new()
            .path(&path)
            // A small page cache: sled holds only the index (an entry per
            // ~64 KiB chunk), counters, read positions and the step ledger.
            .cache_capacity(256 * 1024)
            // No background flusher: sled is the checkpoint, flushed once a
            // second while something changed and at close ([`journal`]), so
            // an idle agent does not wake sled up.
            .flush_every_ms(None);
        let db = segment::open_index(|| config.open()).map_err(|e| open_err(&e))?;
        let tree = db.open_tree("buffer")?;
        let seg_dir = dir.join("buffer.segments");
        let found = segment::existing(&seg_dir)?;
        let mut writer = Writer::new(&seg_dir, found.keys().next_back().map_or(1, |id| id + 1));
        chunk::migrate(&tree, &mut writer)?;
        let mut state = State {
            next_seq: u64_of(tree.get(NEXT_SEQ)?).max(1),
            chunks: BTreeMap::new(),
            bytes: 0,
            dropped: [0; 3],
            damaged: u64_of(tree.get(DAMAGED)?),
            acked: 0,
            segs: BTreeMap::new(),
            current: writer.current(),
            doomed: Vec::new(),
            pending: BTreeMap::new(),
        };
        for (i, key) in DROPPED.iter().enumerate() {
            state.dropped[i] = u64_of(tree.get(key)?);
        }
        for kv in tree.scan_prefix(b"s") {
            let (k, v) = kv?;
            let first = u64_at(&k, 1).unwrap_or(0);
            let meta = Meta::from_entry(&v).ok_or_else(|| corrupt(first, "short index entry"))?;
            state.pin(&seg_dir, meta.loc.seg).map_err(|e| {
                open_err(&format!(
                    "{e}: the records from seq {first} in it are lost; \
                     move {} and {} away to start with an empty buffer",
                    path.display(),
                    seg_dir.display()
                ))
            })?;
            state.hold(first, meta);
        }
        let recovered = journal::recover(&tree, &mut state, &seg_dir, &found)?;
        if recovered > 0 {
            tracing::info!(
                records = recovered,
                "agent buffer: recovered the records pushed after the last checkpoint"
            );
        }
        if let Some(id) = state.current
            && !state.segs.contains_key(&id)
        {
            let file = segment::open_read(&seg_dir, id)?;
            state.segs.insert(id, Seg { file, chunks: 0 });
        }
        // The checkpoint now holds what recovery and migration did; then
        // segments of acked chunks whose deletion a crash cut short go.
        db.flush()?;
        for id in found.keys().filter(|id| !state.segs.contains_key(id)) {
            segment::remove(&seg_dir, *id);
        }
        Ok(Buffer {
            db,
            tree,
            dir: seg_dir,
            // What a fresh open finds was on disk.
            next: AtomicU64::new(state.next_seq),
            state: Mutex::new(state),
            writer: Mutex::new(writer),
            cap_bytes,
            added: Notify::new(),
            dirty: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
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
        let positions: Vec<(&str, &[u8])> = position.into_iter().collect();
        self.push_encoded(&[&Encoded::new(payloads)], &positions)
    }

    /// [`Buffer::push`] of payloads the callers encoded, from one or more
    /// sources, with each source's read position after them: one commit,
    /// one fsync. Durable when it returns (see [`journal`]).
    pub fn push_encoded(
        &self,
        records: &[&Encoded],
        positions: &[(&str, &[u8])],
    ) -> Result<std::ops::Range<u64>, BufferError> {
        let count: usize = records.iter().map(|e| e.len()).sum();
        let bytes: usize = records.iter().map(|e| e.byte_len()).sum();
        let mut w = self.lock_writer();
        let incoming = (bytes + 12 * count + HEADER + 9) as u64;
        let first = {
            let mut st = self.lock();
            if st.bytes + incoming > self.cap_bytes {
                self.make_room(&mut st, &mut w, incoming)?;
            }
            st.next_seq
        };
        let next = first + count as u64;
        // Chunks are encoded and written without the state lock: sending
        // and acking go on meanwhile. Nothing is visible until `hold`.
        let mut chunks = Vec::new();
        let all = records.iter().flat_map(|e| e.iter());
        let written = self.write_chunks(&mut w, first, all, &mut chunks);
        let committed = written.and_then(|()| {
            // The commit record after its chunks, then one fsync: the
            // push is durable. Sled's part waits for the next checkpoint.
            let at = w.append(&journal::encode(next, &chunks, positions))?;
            self.lock().written(&at);
            w.sync()?;
            Ok(at.loc)
        });
        let mut st = self.lock();
        let at = match committed {
            Ok(at) => at,
            Err(e) => {
                // Nothing indexes what was written: let its segments go (at
                // the next checkpoint).
                self.dirty.store(true, Ordering::Release);
                for (_, meta) in chunks {
                    st.unpin(meta.loc.seg);
                }
                return Err(e);
            }
        };
        for (chunk_first, meta) in chunks {
            st.put(&index_key(chunk_first), &meta.entry());
            st.hold(chunk_first, meta);
        }
        st.put(NEXT_SEQ, &next.to_be_bytes());
        for (source, pos) in positions {
            st.put(&position_key(source), pos);
        }
        let end = at.off + u64::from(at.len);
        st.put(journal::SCAN, &journal::scan_value(at.seg, end));
        st.next_seq = next;
        self.next.store(next, Ordering::Release);
        self.dirty.store(true, Ordering::Release);
        drop(st);
        drop(w);
        self.added.notify_one();
        Ok(first..next)
    }

    /// Writes `records` (numbered from `first`) as chunks to segments;
    /// `chunks` gets each one written.
    fn write_chunks<'a>(
        &self,
        w: &mut Writer,
        first: u64,
        records: impl Iterator<Item = (&'a [u8], Kind)>,
        chunks: &mut Vec<(u64, Meta)>,
    ) -> Result<(), BufferError> {
        let mut rest = (first..).zip(records).peekable();
        while rest.peek().is_some() {
            let mut bytes = 0;
            let mut group = Vec::new();
            while let Some((seq, (p, kind))) = rest.next_if(|_| bytes < CHUNK_BYTES) {
                bytes += p.len() + 12;
                group.push((seq, p, kind));
            }
            let chunk_first = group[0].0;
            let value = encode_chunk(group.into_iter(), bytes);
            let at = w.append(&value)?;
            let meta =
                Meta::of_chunk(&value, at.loc).ok_or_else(|| corrupt(chunk_first, "empty"))?;
            self.lock().appended(&at);
            chunks.push((chunk_first, meta));
        }
        Ok(())
    }

    /// Records with a sequence number above `after`, in order and encoded
    /// for the wire: up to `max` of them, stopping once `max_bytes` are
    /// reached (at least one record is returned when there is one).
    pub fn after(
        &self,
        after: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<EncodedBatch, BufferError> {
        let from = after.saturating_add(1);
        // The chunk holding `from` may start before it.
        let chunks: Vec<(u64, Meta, Arc<File>)> = {
            let st = self.lock();
            let start = st
                .chunks
                .range(..=from)
                .next_back()
                .map_or(from, |(f, _)| *f);
            st.chunks
                .range(start..)
                .filter(|(_, m)| m.last_seq >= from)
                .filter_map(|(f, m)| Some((*f, *m, st.segs.get(&m.loc.seg)?.file.clone())))
                .take(max.max(1))
                .collect()
        };
        let mut out = EncodedBatch::default();
        for (first, meta, file) in chunks {
            // Read without the lock: a chunk acked meanwhile still reads
            // from the open file, and is skipped by the control plane.
            let value = segment::read(&file, meta.loc).map_err(|e| corrupt(first, e))?;
            let entries = chunk_records(&value).map_err(|e| corrupt(first, e))?;
            for entry in frame::records(&entries) {
                let (seq, bytes) = entry.map_err(|e: FrameError| corrupt(first, e))?;
                if seq < from {
                    continue;
                }
                out.push(seq, bytes);
                if out.count >= max || out.bytes.len() >= max_bytes {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Forgets every chunk whose records are all at or below `seq`: the
    /// control plane has stored them. (A chunk acked in part stays until
    /// the rest is acked; `after` skips what was acked.)
    pub fn ack(&self, seq: u64) -> Result<(), BufferError> {
        let done: Vec<u64> = {
            let mut st = self.lock();
            st.acked = st.acked.max(seq);
            st.chunks
                .iter()
                .take_while(|(_, m)| m.last_seq <= seq)
                .map(|(f, _)| *f)
                .collect()
        };
        if done.is_empty() {
            return Ok(());
        }
        self.dirty.store(true, Ordering::Release);
        let mut st = self.lock();
        for first in done {
            st.del(&index_key(first));
            st.release(first);
        }
        Ok(())
    }

    /// The sequence number the next record will get. Never waits on the
    /// state lock: async code may call it.
    pub fn next_seq(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    /// Records dropped so far, by kind (metric, log, event). Takes the
    /// state lock (held across fsyncs when the buffer is full): call it,
    /// and every other method but `next_seq`, `durable_seq` and
    /// `wait_added`, off the runtime.
    pub fn dropped(&self) -> [u64; 3] {
        self.lock().dropped
    }

    pub fn held_bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// A source's last committed read position.
    pub fn position(&self, source: &str) -> Result<Option<Vec<u8>>, BufferError> {
        let k = position_key(source);
        if let Some(v) = self.lock().pending.get(&k) {
            return Ok(v.clone());
        }
        Ok(self.tree.get(k)?.map(|v| v.to_vec()))
    }

    /// Resolves when records have been added since the last call returned
    /// (one consumer: the uplink's sender).
    pub async fn wait_added(&self) {
        self.added.notified().await;
    }

    /// The sled database, for other trees of the agent's state (the step
    /// ledger); `flush` makes them durable too.
    pub fn db(&self) -> sled::Db {
        self.db.clone()
    }

    /// The checkpoint: flushes sled (the index, read positions, counters
    /// and the agent's other trees), then deletes the segments nothing is
    /// in any more. Pushes are durable without it; it bounds what the next
    /// open recovers, and lets emptied segments go.
    pub fn flush(&self) -> Result<(), BufferError> {
        self.dirty.store(false, Ordering::Release);
        let (pending, doomed) = {
            let mut st = self.lock();
            (
                std::mem::take(&mut st.pending),
                std::mem::take(&mut st.doomed),
            )
        };
        let mut batch = sled::Batch::default();
        for (k, v) in &pending {
            match v {
                Some(v) => batch.insert(&k[..], &v[..]),
                None => batch.remove(&k[..]),
            }
        }
        let done = self
            .tree
            .apply_batch(batch)
            .and_then(|()| self.db.flush().map(|_| ()));
        if let Err(e) = done {
            // Queued again for the next try, behind anything newer.
            self.dirty.store(true, Ordering::Release);
            let mut st = self.lock();
            for (k, v) in pending {
                st.pending.entry(k).or_insert(v);
            }
            st.doomed.extend(doomed);
            return Err(e.into());
        }
        for id in doomed {
            segment::remove(&self.dir, id);
        }
        Ok(())
    }

    /// Whether sled holds changes a [`Buffer::flush`] would write (and
    /// so whether segments may wait for it to be deleted: whatever dooms
    /// one changes sled). Never waits on a lock: async code may call it.
    pub fn behind(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// Records up to this sequence number are on disk. Only those may be
    /// sent: a record sent before it is durable could be lost in a crash
    /// and its sequence number reused for other lines after the restart,
    /// which the control plane would then skip as a repeat. A push makes
    /// its chunks readable only once fsynced with their commit record, so
    /// every record the buffer holds (all `after` gives) is durable.
    pub fn durable_seq(&self) -> u64 {
        self.next_seq().saturating_sub(1)
    }
}

/// A clean stop checkpoints, so that the next open recovers nothing.
impl Drop for Buffer {
    fn drop(&mut self) {
        if self.behind()
            && let Err(error) = self.flush()
        {
            tracing::warn!(%error, "agent buffer: no checkpoint at close; the next start recovers from the segments");
        }
    }
}

#[cfg(test)]
mod tests;
