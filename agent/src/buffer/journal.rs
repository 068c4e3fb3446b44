//! The commit record a push appends to the segments after its chunks, and
//! recovery from those records at open.
//!
//! A push is durable once its chunks and its commit record are fsynced:
//! one `fdatasync` of the segment, no sled flush. Sled (the index, the
//! read positions, `next_seq`) is a checkpoint, flushed about once a second
//! and before a segment is deleted; with each push's batch goes `SCAN`,
//! where the segments continue past what the batch covers. At open,
//! commit records from `SCAN` on whose pushes the checkpoint lacks are
//! applied to the index again: their chunks, their read positions and
//! `next_seq` (a push of read positions alone is a commit too). Recovery stops at the first torn or damaged frame, or at a
//! commit whose chunks do not read back whole (bytes a crash kept only in
//! part): that push and every later one are then as if never made, their
//! read positions with them, so their lines are read again and get the
//! same sequence numbers again. A record is sent only once its push is
//! durable, so no sequence number the control plane saw is handed out
//! twice.
//!
//! Body of a commit record (integers big-endian):
//! `C`, next seq u64, chunks u16, each chunk's first seq u64 and index
//! entry ([`Meta::entry`]), positions u16, each position's key (u16
//! length, bytes) and value (u32 length, bytes). A chunk's first byte is
//! its kinds byte, never `C`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use picket_segment::{self as segment, LOC_BYTES};

use super::chunk::{HEADER, Meta, NEXT_SEQ, index_key, u64_at};
use super::{BufferError, State};

/// Where recovery starts: segment id and offset (u64 each), past the last
/// commit record the checkpoint holds.
pub(super) const SCAN: &[u8] = b"mscan";

const COMMIT: u8 = b'C';

/// A push's commit record, decoded.
#[derive(Debug, PartialEq)]
pub(super) struct Commit {
    pub(super) next_seq: u64,
    pub(super) chunks: Vec<(u64, Meta)>,
    pub(super) positions: Vec<(Vec<u8>, Vec<u8>)>,
}

pub(super) fn encode(
    next_seq: u64,
    chunks: &[(u64, Meta)],
    positions: &[(&str, &[u8])],
) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + chunks.len() * (8 + HEADER + LOC_BYTES));
    v.push(COMMIT);
    v.extend_from_slice(&next_seq.to_be_bytes());
    v.extend_from_slice(&(chunks.len() as u16).to_be_bytes());
    for (first, meta) in chunks {
        v.extend_from_slice(&first.to_be_bytes());
        v.extend_from_slice(&meta.entry());
    }
    v.extend_from_slice(&(positions.len() as u16).to_be_bytes());
    for (key, pos) in positions {
        v.extend_from_slice(&(key.len() as u16).to_be_bytes());
        v.extend_from_slice(key.as_bytes());
        v.extend_from_slice(&(pos.len() as u32).to_be_bytes());
        v.extend_from_slice(pos);
    }
    v
}

pub(super) fn decode(b: &[u8]) -> Option<Commit> {
    let mut r = Reader(b);
    if r.take(1)? != [COMMIT] {
        return None;
    }
    let next_seq = r.u64()?;
    let n = r.u16()?;
    let mut chunks = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let first = r.u64()?;
        chunks.push((first, Meta::from_entry(r.take(HEADER + LOC_BYTES)?)?));
    }
    let n = r.u16()?;
    let mut positions = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let klen = r.u16()? as usize;
        let key = r.take(klen)?.to_vec();
        let plen = r.u32()? as usize;
        positions.push((key, r.take(plen)?.to_vec()));
    }
    r.0.is_empty().then_some(Commit {
        next_seq,
        chunks,
        positions,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        u64_at(self.take(8)?, 0)
    }
}

/// The `SCAN` value for a position in the segments.
pub(super) fn scan_value(seg: u64, off: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&seg.to_be_bytes());
    v[8..].copy_from_slice(&off.to_be_bytes());
    v
}

/// Applies the pushes the checkpoint lacks (see the module doc) to `tree`
/// and `state`; returns how many records they hold. `found` are the
/// segment files at open.
pub(super) fn recover(
    tree: &sled::Tree,
    state: &mut State,
    dir: &Path,
    found: &BTreeMap<u64, PathBuf>,
) -> Result<u64, BufferError> {
    let (from_seg, from_off) = match tree.get(SCAN)? {
        Some(v) => (u64_at(&v, 0).unwrap_or(0), u64_at(&v, 8).unwrap_or(0)),
        None => (0, 0),
    };
    let mut recovered = 0;
    for &id in found.keys().filter(|id| **id >= from_seg) {
        let file = segment::open_read(dir, id)?;
        let from = if id == from_seg { from_off } else { 0 };
        let commits = segment::scan(&file, id, from, 1, |p| p.first() == Some(&COMMIT));
        for (loc, body) in commits {
            let Some(commit) = decode(&body) else {
                tracing::warn!(
                    segment = id,
                    offset = loc.off,
                    "agent buffer: an unreadable commit record; recovery stops there"
                );
                return Ok(recovered);
            };
            // Every commit past `SCAN` is newer than the checkpoint; one
            // behind its `next_seq` would be a fault: never applied.
            if commit.next_seq < state.next_seq {
                continue;
            }
            if !whole(state, dir, &commit) {
                tracing::warn!(
                    segment = id,
                    next_seq = commit.next_seq,
                    "agent buffer: a push's chunks did not reach the disk whole before a crash; its lines are read again"
                );
                return Ok(recovered);
            }
            let mut batch = sled::Batch::default();
            for (first, meta) in &commit.chunks {
                batch.insert(&index_key(*first)[..], meta.entry());
            }
            batch.insert(NEXT_SEQ, &commit.next_seq.to_be_bytes()[..]);
            for (key, pos) in &commit.positions {
                let mut k = b"p".to_vec();
                k.extend_from_slice(key);
                batch.insert(k, &pos[..]);
            }
            batch.insert(SCAN, &scan_value(id, loc.off + u64::from(loc.len))[..]);
            tree.apply_batch(batch)?;
            recovered += commit.next_seq - state.next_seq;
            for (first, meta) in commit.chunks {
                state.pin(dir, meta.loc.seg)?;
                state.hold(first, meta);
            }
            state.next_seq = commit.next_seq;
        }
    }
    Ok(recovered)
}

/// Whether every chunk a commit names reads back with its checksum.
fn whole(state: &State, dir: &Path, commit: &Commit) -> bool {
    commit.chunks.iter().all(|(_, meta)| {
        let file = match state.segs.get(&meta.loc.seg) {
            Some(s) => Ok(s.file.clone()),
            None => segment::open_read(dir, meta.loc.seg),
        };
        file.is_ok_and(|f| segment::read(&f, meta.loc).is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use picket_segment::Loc;

    #[test]
    fn a_commit_record_reads_back_and_a_short_one_does_not() {
        let meta = Meta {
            last_seq: 9,
            kinds: 2,
            size: 100 + (9 + HEADER + LOC_BYTES) as u64,
            loc: Loc {
                seg: 3,
                off: 12,
                len: 100,
                crc: 7,
            },
        };
        let b = encode(
            10,
            &[(5, meta)],
            &[("/var/log/a", b"{\"o\":1}"), ("b", b"")],
        );
        let c = decode(&b).unwrap();
        assert_eq!(c.next_seq, 10);
        assert_eq!(c.chunks.len(), 1);
        assert_eq!(
            (c.chunks[0].0, c.chunks[0].1.loc, c.chunks[0].1.last_seq),
            (5, meta.loc, 9)
        );
        assert_eq!(
            c.positions,
            vec![
                (b"/var/log/a".to_vec(), b"{\"o\":1}".to_vec()),
                (b"b".to_vec(), Vec::new())
            ]
        );
        for cut in 0..b.len() {
            assert_eq!(decode(&b[..cut]), None, "cut at {cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(decode(&longer), None);
    }
}
