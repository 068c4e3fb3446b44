//! What the buffer holds in memory: every chunk by first seq, the
//! segments they are in (and the ones to delete at the next checkpoint),
//! the counters, and the sled writes waiting for the checkpoint. Guarded
//! by `Buffer::state`; no I/O but opening a segment to read at open.

use std::collections::{BTreeMap, btree_map};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use picket_segment::{self as segment, Appended, SegmentError};

use super::chunk::Meta;

pub(super) struct State {
    pub(super) next_seq: u64,
    /// Every chunk held, by first seq.
    pub(super) chunks: BTreeMap<u64, Meta>,
    /// Bytes of chunks held (chunks and their index entries).
    pub(super) bytes: u64,
    pub(super) dropped: [u64; 3],
    /// Records lost with chunks found damaged on disk ([`Buffer::discard`]).
    pub(super) damaged: u64,
    /// The highest seq acked: chunks at or below it are being deleted.
    pub(super) acked: u64,
    /// Segments that hold indexed chunks, or that appends go to.
    pub(super) segs: BTreeMap<u64, Seg>,
    /// The segment appends go to: kept even while no chunk is in it.
    pub(super) current: Option<u64>,
    /// Segments nothing is in any more, deleted once the checkpoint that
    /// forgets their chunks is on disk ([`Buffer::flush`]): deleted
    /// earlier, a crash would bring back index entries into files gone.
    pub(super) doomed: Vec<u64>,
    /// Sled writes for the next checkpoint, by key (`None`: a removal),
    /// applied there as one batch: no write on the way of a push or an ack
    /// touches sled (an applied batch is written and synced by sled at
    /// once, milliseconds on the path to sending).
    pub(super) pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

pub(super) struct Seg {
    pub(super) file: Arc<File>,
    /// Indexed chunks in it.
    pub(super) chunks: usize,
}

impl State {
    /// Makes a chunk visible. (Its segment was pinned when it was
    /// written: see [`State::appended`].)
    /// A chunk held under the same first seq before (a push redone at open
    /// after a failed fsync) is let go.
    pub(super) fn hold(&mut self, first: u64, meta: Meta) {
        self.bytes += meta.size;
        if let Some(old) = self.chunks.insert(first, meta) {
            self.bytes = self.bytes.saturating_sub(old.size);
            self.unpin(old.loc.seg);
        }
    }

    /// Queues a sled write for the next checkpoint.
    pub(super) fn put(&mut self, key: &[u8], value: &[u8]) {
        self.pending.insert(key.to_vec(), Some(value.to_vec()));
    }

    /// Queues a sled removal for the next checkpoint.
    pub(super) fn del(&mut self, key: &[u8]) {
        self.pending.insert(key.to_vec(), None);
    }

    /// Forgets a chunk; dooms its segment once nothing is in it.
    pub(super) fn release(&mut self, first: u64) {
        let Some(meta) = self.chunks.remove(&first) else {
            return;
        };
        self.bytes = self.bytes.saturating_sub(meta.size);
        self.unpin(meta.loc.seg);
    }

    /// One chunk fewer in segment `id`: doomed once none is left, unless
    /// appends still go to it.
    pub(super) fn unpin(&mut self, id: u64) {
        if let Some(s) = self.segs.get_mut(&id) {
            s.chunks = s.chunks.saturating_sub(1);
            if s.chunks == 0 && self.current != Some(id) {
                self.segs.remove(&id);
                self.doomed.push(id);
            }
        }
    }

    /// One chunk more in segment `id`, opened for reading if it is new
    /// here (at open).
    pub(super) fn pin(&mut self, dir: &Path, id: u64) -> Result<(), SegmentError> {
        if let btree_map::Entry::Vacant(slot) = self.segs.entry(id) {
            let file = segment::open_read(dir, id)?;
            slot.insert(Seg { file, chunks: 0 });
        }
        if let Some(s) = self.segs.get_mut(&id) {
            s.chunks += 1;
        }
        Ok(())
    }

    /// Counts a chunk just written into its segment, registering the
    /// segment if the append started it. The count is taken at the write,
    /// not when the chunk is held, so that a segment closed by the same
    /// push is not deleted under the chunks it is about to index.
    pub(super) fn appended(&mut self, at: &Appended) {
        self.written(at);
        if let Some(s) = self.segs.get_mut(&at.loc.seg) {
            s.chunks += 1;
        }
    }

    /// Registers the segment a piece that is not a chunk (a commit
    /// record) started, if it started one.
    pub(super) fn written(&mut self, at: &Appended) {
        if let Some(file) = &at.started {
            let old = self.current.replace(at.loc.seg);
            self.segs.insert(
                at.loc.seg,
                Seg {
                    file: file.clone(),
                    chunks: 0,
                },
            );
            if let Some(old) = old
                && self.segs.get(&old).is_some_and(|s| s.chunks == 0)
            {
                self.segs.remove(&old);
                self.doomed.push(old);
            }
        }
    }
}
