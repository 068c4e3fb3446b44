//! Bulk bytes beside a sled index: append-only segment files. Sled keeps
//! small things (indexes, counters); the bulk bytes (the agent's buffered
//! chunks, the control plane's blocks of events and log lines) are written
//! once and deleted with their file, which sled did poorly: it rewrites a
//! leaf node whole, large values and all, as keys around them change.
//!
//! A piece is located by [`Loc`] (segment, offset, length, CRC-32). The
//! writer appends to the newest segment and starts another once it passes
//! [`SEGMENT_BYTES`]; the owner deletes a segment file once nothing it
//! indexes is in it. Durability: [`Writer::sync`] is called before the
//! index entries that point at new bytes are applied to sled, so an index
//! entry that survives a crash always points at bytes on disk. Bytes
//! without an index entry (written before a crash, or left by a rewrite)
//! are garbage that goes with their segment.
//!
//! Each piece is framed on disk: [`FRAME_MAGIC`], its length and its
//! CRC-32 (big-endian u32s), then its bytes, which a [`Loc`] points at. So
//! a segment can also be read without its index, piece by piece, up to the
//! first torn or damaged frame ([`scan`]): an owner that writes its own
//! commit records into the segments recovers what its index had not yet
//! made durable (the agent's buffer). Segments written before frames (no
//! magic at their start) read as empty to [`scan`], and through their
//! index as before.

pub mod pack;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A segment file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("segment file {path}: {detail}")]
pub struct SegmentError {
    pub path: PathBuf,
    pub detail: String,
}

/// A segment is closed for appends past this size.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// Where a chunk's bytes are, and their checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub seg: u64,
    pub off: u64,
    pub len: u32,
    pub crc: u32,
}

/// The first bytes of every piece's frame.
pub const FRAME_MAGIC: [u8; 4] = *b"PKS1";
/// Bytes of a frame before its piece: magic, length, CRC-32.
pub const FRAME_BYTES: u64 = 12;

/// Bytes of an encoded [`Loc`].
pub const LOC_BYTES: usize = 24;

impl Loc {
    pub fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.seg.to_be_bytes());
        out.extend_from_slice(&self.off.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(&self.crc.to_be_bytes());
    }

    pub fn get(b: &[u8]) -> Option<Loc> {
        let b: &[u8; LOC_BYTES] = b.get(..LOC_BYTES)?.try_into().ok()?;
        let (seg, rest) = b.split_at(8);
        let (off, rest) = rest.split_at(8);
        let (len, crc) = rest.split_at(4);
        Some(Loc {
            seg: u64::from_be_bytes(seg.try_into().ok()?),
            off: u64::from_be_bytes(off.try_into().ok()?),
            len: u32::from_be_bytes(len.try_into().ok()?),
            crc: u32::from_be_bytes(crc.try_into().ok()?),
        })
    }
}

fn io(path: &Path, e: impl std::fmt::Display) -> SegmentError {
    SegmentError {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.seg"))
}

/// The segment files found in `dir`, by id (created if missing).
pub fn existing(dir: &Path) -> Result<BTreeMap<u64, PathBuf>, SegmentError> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let path = entry.map_err(|e| io(dir, e))?.path();
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| u64::from_str_radix(n, 16).ok());
        if let Some(id) = id {
            found.insert(id, path);
        }
    }
    Ok(found)
}

/// Opens segment `id` for reading.
pub fn open_read(dir: &Path, id: u64) -> Result<Arc<File>, SegmentError> {
    let path = seg_path(dir, id);
    File::open(&path).map(Arc::new).map_err(|e| io(&path, e))
}

/// Deletes segment `id`; one already gone is fine.
pub fn remove(dir: &Path, id: u64) {
    let path = seg_path(dir, id);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot delete a buffer segment")
        }
    }
}

/// Reads a chunk's bytes and checks them.
pub fn read(file: &File, loc: Loc) -> Result<Vec<u8>, String> {
    let mut bytes = vec![0u8; loc.len as usize];
    file.read_exact_at(&mut bytes, loc.off)
        .map_err(|e| format!("segment {:016x}: {e}", loc.seg))?;
    if crc32fast::hash(&bytes) != loc.crc {
        return Err(format!(
            "segment {:016x} at {}: checksum mismatch",
            loc.seg, loc.off
        ));
    }
    Ok(bytes)
}

/// The appending end. New bytes always go to a segment created by this
/// writer, never to one that existed at open, whose tail may hold a torn
/// write from before a crash.
pub struct Writer {
    dir: PathBuf,
    next_id: u64,
    current: Option<(u64, File, u64)>,
    /// A segment closed by this writer's appends and not yet synced.
    closed_unsynced: Option<File>,
}

/// What an append did besides writing.
pub struct Appended {
    pub loc: Loc,
    /// A segment started for it, to be registered for reading.
    pub started: Option<Arc<File>>,
}

impl Writer {
    pub fn new(dir: &Path, next_id: u64) -> Writer {
        Writer {
            dir: dir.to_path_buf(),
            next_id,
            current: None,
            closed_unsynced: None,
        }
    }

    /// The segment new bytes go to, if one is open.
    pub fn current(&self) -> Option<u64> {
        self.current.as_ref().map(|(id, _, _)| *id)
    }

    pub fn append(&mut self, bytes: &[u8]) -> Result<Appended, SegmentError> {
        let mut started = None;
        let full = matches!(&self.current, Some((_, _, len)) if *len >= SEGMENT_BYTES);
        if full || self.current.is_none() {
            if let Some((id, file, _)) = self.current.take() {
                // Synced before the next sync of the new segment.
                if let Some(old) = self.closed_unsynced.replace(file) {
                    old.sync_data()
                        .map_err(|e| io(&seg_path(&self.dir, id), e))?;
                }
            }
            let id = self.next_id;
            let path = seg_path(&self.dir, id);
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(|e| io(&path, e))?;
            // The new name must survive a crash too.
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io(&self.dir, e))?;
            started = Some(Arc::new(File::open(&path).map_err(|e| io(&path, e))?));
            self.next_id += 1;
            self.current = Some((id, file, 0));
        }
        let Some((id, file, len)) = self.current.as_mut() else {
            return Err(io(&self.dir, std::io::Error::other("no segment open")));
        };
        let loc = Loc {
            seg: *id,
            off: *len + FRAME_BYTES,
            len: u32::try_from(bytes.len()).map_err(|_| {
                io(
                    &self.dir,
                    format!("{} bytes are too many for one piece", bytes.len()),
                )
            })?,
            crc: crc32fast::hash(bytes),
        };
        let mut head = [0u8; FRAME_BYTES as usize];
        head[..4].copy_from_slice(&FRAME_MAGIC);
        head[4..8].copy_from_slice(&loc.len.to_be_bytes());
        head[8..].copy_from_slice(&loc.crc.to_be_bytes());
        let written = file.write_all(&head).and_then(|()| file.write_all(bytes));
        if let Err(e) = written {
            // A partial write leaves the offset unknown: start afresh.
            let path = seg_path(&self.dir, *id);
            self.current = None;
            return Err(io(&path, e));
        }
        *len += FRAME_BYTES + bytes.len() as u64;
        Ok(Appended { loc, started })
    }

    /// Makes every appended byte durable. After a failure the current
    /// segment takes no more bytes (what a failed fsync left on disk is
    /// unknown): the next append starts a new one.
    pub fn sync(&mut self) -> Result<(), SegmentError> {
        if let Some(old) = self.closed_unsynced.take()
            && let Err(e) = old.sync_data()
        {
            self.current = None;
            return Err(io(&self.dir, e));
        }
        if let Some((id, file, _)) = &self.current
            && let Err(e) = file.sync_data()
        {
            let path = seg_path(&self.dir, *id);
            self.current = None;
            return Err(io(&path, e));
        }
        Ok(())
    }
}

/// The pieces of a segment from byte `from` on, in order, each with its
/// [`Loc`]: up to the end, or the first frame that is torn (cut short by a
/// crash), damaged (checksum) or not a frame (a segment written before
/// frames, or `from` not at a frame's start). `keep` sees each piece's
/// first `peek` bytes (fewer if it is shorter) and says whether its whole
/// bytes are wanted; pieces not wanted are skipped unread, and unchecked.
pub fn scan(
    file: &File,
    seg: u64,
    from: u64,
    peek: usize,
    mut keep: impl FnMut(&[u8]) -> bool,
) -> Vec<(Loc, Vec<u8>)> {
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut out = Vec::new();
    let mut at = from;
    let mut head = vec![0u8; FRAME_BYTES as usize + peek];
    while at + FRAME_BYTES <= size {
        let n = (head.len() as u64).min(size - at) as usize;
        if file.read_exact_at(&mut head[..n], at).is_err() || head[..4] != FRAME_MAGIC {
            break;
        }
        let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        let crc = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
        let loc = Loc {
            seg,
            off: at + FRAME_BYTES,
            len,
            crc,
        };
        if loc.off + u64::from(len) > size {
            break;
        }
        let shown = (n - FRAME_BYTES as usize).min(len as usize);
        if keep(&head[FRAME_BYTES as usize..FRAME_BYTES as usize + shown]) {
            match read(file, loc) {
                Ok(bytes) => out.push((loc, bytes)),
                Err(_) => break,
            }
        }
        at = loc.off + u64::from(len);
    }
    out
}

/// Opens the sled index beside the segments with `open`, waiting up to
/// five seconds while another handle in this process still holds its file
/// lock. sled 0.34 lets go of the lock a moment after a `Db` is dropped,
/// once its I/O threads are done (spacejam/sled#1234), which on a loaded
/// machine took over a second; so a restart in the same process (dev
/// mode, tests) opens, while another live process on the same folder still
/// gets the error. sled reports the lock as an `Other` I/O error whose text
/// names it, so that text is what is matched.
pub fn open_index<T, E: std::fmt::Display>(mut open: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let mut tries = 0;
    loop {
        match open() {
            Err(e) if tries < 100 && e.to_string().contains("could not acquire lock") => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_roll_over_and_read_back_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::new(dir.path(), 7);
        let big = vec![1u8; SEGMENT_BYTES as usize];
        let a = w.append(&big).unwrap();
        assert_eq!((a.loc.seg, a.loc.off), (7, FRAME_BYTES), "after the frame");
        assert!(a.started.is_some());
        let b = w.append(b"second").unwrap();
        assert_eq!(
            (b.loc.seg, b.loc.off),
            (8, FRAME_BYTES),
            "a full segment is closed"
        );
        let c = w.append(b"third").unwrap();
        assert_eq!(
            (c.loc.seg, c.loc.off, c.started.is_none()),
            (8, 2 * FRAME_BYTES + 6, true)
        );
        w.sync().unwrap();
        let f = open_read(dir.path(), 8).unwrap();
        assert_eq!(read(&f, c.loc).unwrap(), b"third");
        let mut bad = c.loc;
        bad.crc ^= 1;
        assert!(read(&f, bad).unwrap_err().contains("checksum"));
        let mut past = c.loc;
        past.off = 1 << 20;
        assert!(read(&f, past).is_err(), "reading past the end is an error");
        assert_eq!(
            existing(dir.path()).unwrap().keys().collect::<Vec<_>>(),
            [&7, &8]
        );
        remove(dir.path(), 7);
        remove(dir.path(), 7);
        assert_eq!(existing(dir.path()).unwrap().len(), 1);
        let mut enc = Vec::new();
        c.loc.put(&mut enc);
        assert_eq!(Loc::get(&enc), Some(c.loc));
        assert_eq!(Loc::get(&enc[1..]), None);
    }

    #[test]
    fn a_scan_reads_framed_pieces_up_to_a_torn_or_damaged_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::new(dir.path(), 1);
        let a = w.append(b"Cfirst").unwrap().loc;
        let b = w.append(b"xskipped").unwrap().loc;
        let c = w.append(b"Cthird").unwrap().loc;
        let end = c.off + u64::from(c.len);
        w.sync().unwrap();
        let f = open_read(dir.path(), 1).unwrap();
        let wanted = |p: &[u8]| p.first() == Some(&b'C');
        let all = scan(&f, 1, 0, 1, wanted);
        assert_eq!(
            all,
            vec![(a, b"Cfirst".to_vec()), (c, b"Cthird".to_vec())],
            "pieces not wanted are skipped"
        );
        assert_eq!(read(&f, b).unwrap(), b"xskipped");
        assert_eq!(scan(&f, 1, c.off - FRAME_BYTES, 1, wanted).len(), 1);
        assert!(scan(&f, 1, 3, 1, wanted).is_empty(), "not a frame's start");
        // Torn: the last piece cut short.
        let path = seg_path(dir.path(), 1);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(end - 2).unwrap();
        assert_eq!(scan(&f, 1, 0, 1, wanted), vec![(a, b"Cfirst".to_vec())]);
        // Damaged: the first piece's bytes changed.
        file.write_all_at(b"X", a.off + 2).unwrap();
        assert!(scan(&f, 1, 0, 1, wanted).is_empty());
        // A segment written before frames.
        std::fs::write(seg_path(dir.path(), 9), b"\x82rawchunk").unwrap();
        let old = open_read(dir.path(), 9).unwrap();
        assert!(scan(&old, 9, 0, 1, |_| true).is_empty());
    }

    #[test]
    fn an_index_lock_held_a_moment_longer_is_waited_for() {
        let mut calls = 0;
        let r: Result<u8, String> = open_index(|| {
            calls += 1;
            if calls < 3 {
                Err("IO error: could not acquire lock on \"db\": WouldBlock".into())
            } else {
                Ok(7)
            }
        });
        assert_eq!((r, calls), (Ok(7), 3));
        let mut calls = 0;
        let r: Result<u8, String> = open_index(|| {
            calls += 1;
            Err("permission denied".into())
        });
        assert_eq!((r, calls), (Err("permission denied".into()), 1));
    }
}
