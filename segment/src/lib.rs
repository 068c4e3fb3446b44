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
            off: *len,
            len: u32::try_from(bytes.len()).map_err(|_| {
                io(
                    &self.dir,
                    format!("{} bytes are too many for one piece", bytes.len()),
                )
            })?,
            crc: crc32fast::hash(bytes),
        };
        if let Err(e) = file.write_all(bytes) {
            // A partial write leaves the offset unknown: start afresh.
            let path = seg_path(&self.dir, *id);
            self.current = None;
            return Err(io(&path, e));
        }
        *len += bytes.len() as u64;
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
        assert_eq!((a.loc.seg, a.loc.off), (7, 0));
        assert!(a.started.is_some());
        let b = w.append(b"second").unwrap();
        assert_eq!((b.loc.seg, b.loc.off), (8, 0), "a full segment is closed");
        let c = w.append(b"third").unwrap();
        assert_eq!((c.loc.seg, c.loc.off, c.started.is_none()), (8, 6, true));
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
