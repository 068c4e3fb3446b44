//! Where the bytes of event and log blocks live: segment files
//! ([`picket_segment`]), one stream per table because each table expires on
//! its own clock. Sled keeps the block index (a block's value there is its
//! host and [`Loc`]) and, per segment, when its newest block was
//! received, so retention deletes a segment file once every block in it
//! was received before the cut-off. Keeping the bytes out of sled is what makes ingest cheap:
//! sled rewrote whole leaf nodes, large blocks and all, about three bytes
//! written for every byte stored.
//!
//! Order of writes: block bytes are appended and synced, then one sled
//! batch adds the index entries and the segments' newest times. Retention
//! deletes index entries first, segment files after.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use picket_segment::{Loc, SegmentError, Writer};

use super::super::StoreError;
use super::super::backend::{Backend, Op};

/// `table \0 segment id (u64 BE)` → when its newest block was received
/// (i64 BE ms).
const SEGMENTS: &str = "block_segments";

fn seg_err(tree: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        tree,
        detail: e.to_string(),
    }
}

/// The disk refused a segment write (a full disk, an I/O error).
fn write_err(e: SegmentError) -> StoreError {
    StoreError::Write(e.to_string())
}

fn seg_key(table: &str, id: u64) -> Vec<u8> {
    let mut k = table.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Stream {
    table: &'static str,
    dir: PathBuf,
    writer: Mutex<Writer>,
    /// Open segment files, for reading.
    files: RwLock<BTreeMap<u64, Arc<File>>>,
    /// When each segment's newest block was received (as stored in sled).
    newest: Mutex<BTreeMap<u64, i64>>,
}

pub(crate) struct Segments {
    streams: Vec<Stream>,
}

impl Segments {
    /// Opens the segment streams of `tables` under `dir`, deleting files
    /// no sled entry knows (written just before a crash).
    pub(crate) fn open(
        dir: &Path,
        tables: &[&'static str],
        kv: &dyn Backend,
    ) -> Result<Segments, StoreError> {
        let mut streams = Vec::new();
        for &table in tables {
            let dir = dir.join(table);
            let open_err = |e: SegmentError| StoreError::Open {
                path: dir.clone(),
                detail: e.to_string(),
            };
            let found = picket_segment::existing(&dir).map_err(open_err)?;
            let mut newest = BTreeMap::new();
            for kv in kv.scan(SEGMENTS, &seg_key(table, 0)[..table.len() + 1])? {
                let (k, v) = kv?;
                let id = k
                    .get(k.len().saturating_sub(8)..)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes);
                let t = v
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(i64::from_be_bytes);
                if let (Some(id), Some(t)) = (id, t) {
                    newest.insert(id, t);
                }
            }
            for id in found.keys().filter(|id| !newest.contains_key(*id)) {
                picket_segment::remove(&dir, *id);
            }
            let next = found
                .keys()
                .chain(newest.keys())
                .max()
                .map_or(1, |id| id + 1);
            streams.push(Stream {
                table,
                writer: Mutex::new(Writer::new(&dir, next)),
                dir,
                files: RwLock::new(BTreeMap::new()),
                newest: Mutex::new(newest),
            });
        }
        Ok(Segments { streams })
    }

    fn stream(&self, table: &'static str) -> Result<&Stream, StoreError> {
        self.streams
            .iter()
            .find(|s| s.table == table)
            .ok_or_else(|| seg_err(table, "no segment stream for this table"))
    }

    /// Appends blocks (`(received ms, bytes)`) and makes them durable; returns
    /// where each went, and the sled writes that record the segments'
    /// newest times (to go in the same batch as the index entries).
    pub(crate) fn write(
        &self,
        table: &'static str,
        blocks: &[(i64, &[u8])],
        ops: &mut Vec<Op>,
    ) -> Result<Vec<Loc>, StoreError> {
        let s = self.stream(table)?;
        let mut w = lock(&s.writer);
        let mut newest = lock(&s.newest);
        let mut locs = Vec::with_capacity(blocks.len());
        let mut touched = BTreeMap::new();
        for (time, bytes) in blocks {
            let at = w.append(bytes).map_err(write_err)?;
            if let Some(file) = at.started {
                s.files
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(at.loc.seg, file);
            }
            let t = newest.entry(at.loc.seg).or_insert(i64::MIN);
            *t = (*t).max(*time);
            touched.insert(at.loc.seg, *t);
            locs.push(at.loc);
        }
        w.sync().map_err(write_err)?;
        for (id, t) in touched {
            ops.push(Op {
                tree: SEGMENTS,
                key: seg_key(table, id),
                value: Some(t.to_be_bytes().to_vec()),
            });
        }
        Ok(locs)
    }

    /// A block's bytes; `None` when its segment is gone (retention deleted
    /// it while a reader held the block's index entry).
    pub(crate) fn read(
        &self,
        table: &'static str,
        loc: Loc,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let s = self.stream(table)?;
        let known = s
            .files
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&loc.seg)
            .cloned();
        let file = match known {
            Some(f) => f,
            None => match picket_segment::open_read(&s.dir, loc.seg) {
                Ok(f) => {
                    s.files
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(loc.seg, f.clone());
                    f
                }
                Err(_) if !lock(&s.newest).contains_key(&loc.seg) => return Ok(None),
                Err(e) => return Err(seg_err(table, e)),
            },
        };
        picket_segment::read(&file, loc)
            .map(Some)
            .map_err(|e| seg_err(table, e))
    }

    /// Counts every segment of `table` as received at `now_ms` (stores
    /// that kept block key times here; see `Store::index_received`).
    pub(crate) fn received_by(
        &self,
        table: &'static str,
        now_ms: i64,
        kv: &dyn Backend,
    ) -> Result<(), StoreError> {
        let s = self.stream(table)?;
        let mut newest = lock(&s.newest);
        let ops: Vec<Op> = newest
            .keys()
            .map(|id| Op {
                tree: SEGMENTS,
                key: seg_key(table, *id),
                value: Some(now_ms.to_be_bytes().to_vec()),
            })
            .collect();
        kv.apply(&ops)?;
        for t in newest.values_mut() {
            *t = now_ms;
        }
        Ok(())
    }

    /// Deletes `table`'s segments whose newest block was received before
    /// `cut` (their blocks' index entries are already gone); returns how
    /// many.
    pub(crate) fn expire(
        &self,
        table: &'static str,
        cut: i64,
        kv: &dyn Backend,
    ) -> Result<usize, StoreError> {
        let s = self.stream(table)?;
        // The writer's lock keeps the current segment from taking blocks
        // while it is judged.
        let w = lock(&s.writer);
        let current = w.current();
        let old: Vec<u64> = lock(&s.newest)
            .iter()
            .filter(|(id, t)| **t < cut && Some(**id) != current)
            .map(|(id, _)| *id)
            .collect();
        if old.is_empty() {
            return Ok(0);
        }
        let ops: Vec<Op> = old
            .iter()
            .map(|id| Op {
                tree: SEGMENTS,
                key: seg_key(table, *id),
                value: None,
            })
            .collect();
        kv.apply(&ops)?;
        let mut newest = lock(&s.newest);
        let mut files = s.files.write().unwrap_or_else(|p| p.into_inner());
        for id in &old {
            newest.remove(id);
            files.remove(id);
            picket_segment::remove(&s.dir, *id);
        }
        drop(w);
        Ok(old.len())
    }
}
