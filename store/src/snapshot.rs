//! A consistent copy of a running store, for `picket-control backup`, and
//! a store made again from one, for `restore`.
//!
//! [`Store::snapshot`] holds every write to the index off (the backend's
//! gate) for as long as it takes to dump the index to `store.kv` and to
//! hard-link each block segment, noting its length then: the index holds
//! only locations of bytes synced before it was written, so the dump and
//! the first `length` bytes of each linked segment are one moment of the
//! store. Ingest waits meanwhile (the figure is in docs/benchmarks.md);
//! nothing is dropped. Links keep a segment's bytes after retention
//! deletes it, and cost no copy.
//!
//! `store.kv` is the index's pairs, each as key length (u32 LE), key,
//! value length (u32 LE), value. It ends with the id base: ids the
//! restored store hands out come after every id the snapshot holds.

use std::collections::BTreeMap;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::backend::Sled;
use super::{Store, StoreError};

/// The dump of the index, in a snapshot folder.
pub const KV_FILE: &str = "store.kv";
/// Where segments are linked, in a snapshot folder (as in a data folder).
pub const BLOCKS: &str = "blocks";

/// What a snapshot holds besides its index dump.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Each linked segment (relative to the snapshot folder) and how many
    /// of its bytes belong to the snapshot.
    pub segments: BTreeMap<PathBuf, u64>,
    /// Pairs in the index dump.
    pub pairs: u64,
    /// How long writes were held off.
    pub frozen_ms: u64,
}

fn io(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Open {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

impl Store {
    /// Writes a consistent snapshot into `into` (a new folder on the data
    /// folder's file system, so that links work).
    pub fn snapshot(&self, data_dir: &Path, into: &Path) -> Result<Snapshot, StoreError> {
        std::fs::create_dir_all(into).map_err(|e| io(into, e))?;
        let kv_path = into.join(KV_FILE);
        let file = std::fs::File::create(&kv_path).map_err(|e| io(&kv_path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut snap = Snapshot::default();
        let started = std::time::Instant::now();
        self.kv.frozen(&mut |pairs| {
            for pair in pairs {
                let (k, v) = pair?;
                write_pair(&mut out, &k, &v).map_err(|e| io(&kv_path, e))?;
                snap.pairs += 1;
            }
            snap.segments = link_segments(&data_dir.join(BLOCKS), &into.join(BLOCKS))?;
            Ok(())
        })?;
        snap.frozen_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let file = out.into_inner().map_err(|e| io(&kv_path, e.error()))?;
        file.sync_all().map_err(|e| io(&kv_path, e))?;
        Ok(snap)
    }
}

fn write_pair(out: &mut impl Write, k: &[u8], v: &[u8]) -> std::io::Result<()> {
    for part in [k, v] {
        let n = u32::try_from(part.len()).map_err(std::io::Error::other)?;
        out.write_all(&n.to_le_bytes())?;
        out.write_all(part)?;
    }
    Ok(())
}

/// Hard-links every segment under `blocks` into `into`, with its length.
fn link_segments(blocks: &Path, into: &Path) -> Result<BTreeMap<PathBuf, u64>, StoreError> {
    let mut out = BTreeMap::new();
    let Ok(tables) = std::fs::read_dir(blocks) else {
        return Ok(out);
    };
    for table in tables {
        let table = table.map_err(|e| io(blocks, e))?.path();
        let Some(name) = table.file_name().map(PathBuf::from) else {
            continue;
        };
        let segs = picket_segment::existing(&table).map_err(|e| io(&table, e))?;
        std::fs::create_dir_all(into.join(&name)).map_err(|e| io(into, e))?;
        for path in segs.values() {
            let Some(file) = path.file_name() else {
                continue;
            };
            let rel = PathBuf::from(BLOCKS).join(&name).join(file);
            let to = into.join(&name).join(file);
            match std::fs::hard_link(path, &to) {
                Ok(()) => {}
                // Deleted by retention after its index entries were: no
                // entry in the dump points at it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&to, e)),
            }
            let len = std::fs::metadata(&to).map_err(|e| io(&to, e))?.len();
            out.insert(rel, len);
        }
    }
    Ok(out)
}

/// Makes the index of a store at `data_dir/store` from a dump; the folder
/// must hold no store yet. Flushed before it returns.
pub fn load(data_dir: &Path, dump: &mut impl Read) -> Result<u64, StoreError> {
    let sled = Sled::open(&data_dir.join("store"))?;
    let mut n = 0;
    let mut batch = Vec::new();
    while let Some((k, v)) = read_pair(dump).map_err(|e| io(&data_dir.join(KV_FILE), e))? {
        batch.push((k, v));
        n += 1;
        if batch.len() == 10_000 {
            sled.load_raw(std::mem::take(&mut batch))?;
        }
    }
    sled.load_raw(batch)?;
    sled.flush_all()?;
    Ok(n)
}

fn read_pair(r: &mut impl Read) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut k = vec![0; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut k)?;
    r.read_exact(&mut len)?;
    let mut v = vec![0; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut v)?;
    Ok(Some((k, v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_restores_the_same_records_and_ids_go_on_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let store = Store::open_with_floor(&data, 0.0).unwrap();
        let mut ids = Vec::new();
        for i in 0..50 {
            ids.push(store.kv.next_id().unwrap());
            store.kv.put("audit", &[i], b"x").unwrap();
        }
        let snap_dir = dir.path().join("snap");
        let snap = store.snapshot(&data, &snap_dir).unwrap();
        assert!(snap.pairs >= 50);
        // Written after the snapshot: not in it.
        store.kv.put("audit", &[200], b"late").unwrap();
        drop(store);

        let restored = dir.path().join("restored");
        std::fs::create_dir_all(&restored).unwrap();
        let mut dump = std::fs::File::open(snap_dir.join(KV_FILE)).unwrap();
        load(&restored, &mut dump).unwrap();
        let store = Store::open_with_floor(&restored, 0.0).unwrap();
        let rows: Vec<_> = store.kv.scan("audit", b"").unwrap().collect();
        assert_eq!(rows.len(), 50);
        let next = store.kv.next_id().unwrap();
        assert!(ids.iter().all(|&i| next > i), "{next} after {ids:?}");
    }

    #[test]
    fn a_truncated_dump_is_an_error() {
        let mut bytes = Vec::new();
        write_pair(&mut bytes, b"key", b"value").unwrap();
        bytes.truncate(bytes.len() - 2);
        assert!(read_pair(&mut bytes.as_slice()).is_err());
    }
}
