//! The storage interface the control plane is written against, and its sled
//! implementation. Another engine is added by implementing [`Backend`]; the
//! services only ever see [`super::Store`].

use std::path::Path;

pub mod etcd;
pub mod guarded;

use super::StoreError;

/// An ordered key-value store with named trees (tables).
///
/// Requirements on an implementation: `put`/`remove` are durable once
/// `flush` returns; `update` is atomic with respect to other `update`s on the
/// same key; `scan` yields keys in byte order.
pub trait Backend: Send + Sync + 'static {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    fn remove(&self, tree: &str, key: &[u8]) -> Result<(), StoreError>;
    /// Atomically replaces the value under `key` with `f(old)` (`None`
    /// deletes). `f` may be called more than once under contention.
    fn update(&self, tree: &str, key: &[u8], f: &mut Updater<'_>) -> Result<(), StoreError>;
    /// Reads `keys`, then applies the writes `f` makes of their values, as
    /// one atomic step: no other write to those keys comes between the
    /// read and the writes. `f` returns `None` to write nothing, and may be
    /// called more than once under contention.
    fn transact(&self, keys: &[(&str, &[u8])], f: &mut Transactor<'_>) -> Result<(), StoreError>;
    /// Key-value pairs whose key starts with `prefix`, in key order.
    fn scan<'a>(&'a self, tree: &str, prefix: &[u8]) -> Result<KvIter<'a>, StoreError>;
    /// Pairs with keys at or after `start`, in key order.
    fn scan_from<'a>(&'a self, tree: &str, start: &[u8]) -> Result<KvIter<'a>, StoreError>;
    /// Pairs with keys before `end` (all, without one), newest key first:
    /// in reverse key order.
    fn scan_back<'a>(&'a self, tree: &str, end: Option<&[u8]>) -> Result<KvIter<'a>, StoreError>;
    /// The last `n` pairs of a tree, in key order.
    fn last_n(&self, tree: &str, n: usize) -> Result<Vec<Kv>, StoreError>;
    /// Applies every write in `ops` atomically, across trees: all or none.
    fn apply(&self, ops: &[Op]) -> Result<(), StoreError>;
    /// A unique, increasing id (across restarts).
    fn next_id(&self) -> Result<u64, StoreError>;
    /// Whether the engine refuses writes since one failed, until it is
    /// reopened (sled does, after an I/O error).
    fn poisoned(&self) -> bool {
        false
    }
    /// Reopens a poisoned engine: what was written but not flushed before
    /// the failure may be gone. Engines that recover by themselves keep
    /// the default.
    fn reopen(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Makes every write so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// Runs `f` on every pair of the store (whole keys, as
    /// [`Sled::load_raw`] takes them; the id base last) while every write
    /// waits: one moment of the store, for a snapshot.
    fn frozen(&self, f: &mut Frozen<'_>) -> Result<(), StoreError>;
}

/// What [`Backend::frozen`] runs.
pub type Frozen<'a> = dyn FnMut(KvIter<'_>) -> Result<(), StoreError> + 'a;

/// One write of an atomic [`Backend::apply`]: `value: None` deletes.
#[derive(Debug, Clone)]
pub struct Op {
    pub tree: &'static str,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// A key and its value.
pub type Kv = (Vec<u8>, Vec<u8>);
pub type KvIter<'a> = Box<dyn Iterator<Item = Result<Kv, StoreError>> + 'a>;
/// Maps the values read (in the order asked) to the writes to make.
pub type Transactor<'a> = dyn FnMut(&[Option<Vec<u8>>]) -> Option<Vec<Op>> + 'a;
/// Maps the old value (if any) to the new one (`None` deletes).
pub type Updater<'a> = dyn FnMut(Option<&[u8]>) -> Option<Vec<u8>> + 'a;

/// sled, embedded in the data folder.
///
/// Every logical table lives in one sled tree, its keys prefixed with the
/// table's name and a 0 byte: sled makes a `Batch` atomic within one tree
/// only, and a batch costs far less than a cross-tree transaction (which
/// copies every write into per-tree caches before it commits). Ingest
/// writes thousands of records and their index entries per batch.
pub struct Sled {
    path: std::path::PathBuf,
    /// None only while it is being reopened ([`Backend::reopen`]).
    engine: std::sync::RwLock<Option<Engine>>,
    /// Writes take it shared; a snapshot and a reopen take it alone.
    gate: std::sync::RwLock<()>,
    /// Added to sled's ids: a restored store goes on past the ids of the
    /// store it was copied from (sled's own counter starts again at 0).
    id_base: u64,
    /// A write failed: sled refuses every write after an I/O error until
    /// it is opened again.
    poisoned: std::sync::atomic::AtomicBool,
}

/// One open sled database: cheap handles, cloned for each operation (an
/// iterator keeps its own).
#[derive(Clone)]
struct Engine {
    db: sled::Db,
    tree: sled::Tree,
}

/// Where the id base is kept.
const ID_BASE_KEY: &[u8] = b"meta\0store.id_base";

/// The one sled tree that holds every table (layout version 2).
const TABLES: &str = "tables.v2";

fn table_key(table: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(table.len() + 1 + key.len());
    k.extend_from_slice(table.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

/// The first key past every key of `table`.
fn table_end(table: &str) -> Vec<u8> {
    let mut k = table.as_bytes().to_vec();
    k.push(1);
    k
}

impl Engine {
    fn open(path: &Path) -> Result<Engine, StoreError> {
        let open_err = |detail: String| StoreError::Open {
            path: path.to_path_buf(),
            detail,
        };
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(64 * 1024 * 1024)
            .flush_every_ms(Some(500));
        let db =
            picket_segment::open_index(|| config.open()).map_err(|e| open_err(e.to_string()))?;
        // Layout 1 (before the single tree) kept a sled tree per table.
        if db.tree_names().iter().any(|n| n.as_ref() == b"agents") {
            return Err(open_err(
                "this store was written by an older Picket (one sled tree per table) and \
                 cannot be read; move it aside and run `picket-control init` again"
                    .into(),
            ));
        }
        let tree = db.open_tree(TABLES)?;
        Ok(Engine { db, tree })
    }
}

impl Sled {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let engine = Engine::open(path)?;
        let id_base = engine
            .tree
            .get(ID_BASE_KEY)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        Ok(Sled {
            path: path.to_path_buf(),
            engine: std::sync::RwLock::new(Some(engine)),
            gate: std::sync::RwLock::new(()),
            id_base,
            poisoned: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The open database's handles.
    fn engine(&self) -> Result<Engine, StoreError> {
        let slot = self.engine.read().unwrap_or_else(|p| p.into_inner());
        slot.clone().ok_or(StoreError::Reopening)
    }

    fn tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.engine()?.tree)
    }

    /// Runs a write: shared with other writes, alone against a snapshot
    /// or a reopen; a failure marks the engine for reopening.
    fn write<T>(&self, f: impl FnOnce(&Engine) -> sled::Result<T>) -> Result<T, StoreError> {
        let _w = self.writing();
        self.marked(f(&self.engine()?))
    }

    /// Notes a failed write or flush: the engine is to be reopened.
    fn marked<T>(&self, r: sled::Result<T>) -> Result<T, StoreError> {
        if r.is_err() {
            self.poisoned
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(r?)
    }

    fn writing(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Inserts pairs as [`Backend::frozen`] gave them (a restore).
    pub fn load_raw(&self, pairs: Vec<Kv>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (k, v) in pairs {
            batch.insert(k, v);
        }
        self.write(|e| e.tree.apply_batch(batch))
    }

    /// Flushes everything (a restore, before the folder is put in place).
    pub fn flush_all(&self) -> Result<(), StoreError> {
        self.flush()
    }

    fn range(&self, table: &str, start: &[u8]) -> Result<sled::Iter, StoreError> {
        Ok(self
            .tree()?
            .range(table_key(table, start)..table_end(table)))
    }
}

/// Strips the table prefix from a stored key.
fn strip(table_len: usize, r: sled::Result<(sled::IVec, sled::IVec)>) -> Result<Kv, StoreError> {
    let (k, v) = r?;
    Ok((
        k.get(table_len + 1..).unwrap_or_default().to_vec(),
        v.to_vec(),
    ))
}

impl Backend for Sled {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree()?.get(table_key(tree, key))?.map(|v| v.to_vec()))
    }

    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.write(|e| e.tree.insert(table_key(tree, key), value))
            .map(drop)
    }

    fn remove(&self, tree: &str, key: &[u8]) -> Result<(), StoreError> {
        self.write(|e| e.tree.remove(table_key(tree, key)))
            .map(drop)
    }

    fn update(&self, tree: &str, key: &[u8], f: &mut Updater<'_>) -> Result<(), StoreError> {
        self.write(|e| e.tree.fetch_and_update(table_key(tree, key), f))
            .map(drop)
    }

    fn transact(&self, keys: &[(&str, &[u8])], f: &mut Transactor<'_>) -> Result<(), StoreError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        // sled wants a `Fn`; the closure is called again only on conflict.
        let f = std::cell::RefCell::new(f);
        let keys: Vec<Vec<u8>> = keys.iter().map(|(t, k)| table_key(t, k)).collect();
        let _w = self.writing();
        let r = self.tree()?.transaction(|tx| {
            let mut vals = Vec::with_capacity(keys.len());
            for k in &keys {
                vals.push(tx.get(k)?.map(|v| v.to_vec()));
            }
            let ops = (f.borrow_mut())(&vals);
            for op in ops.into_iter().flatten() {
                let k = table_key(op.tree, &op.key);
                match op.value {
                    Some(v) => tx.insert(k, v)?,
                    None => tx.remove(k)?,
                };
            }
            Ok::<(), ConflictableTransactionError<()>>(())
        });
        match r {
            Ok(()) => Ok(()),
            Err(TransactionError::Storage(e)) => self.marked(Err(e)),
            // `f` never aborts: it returns no writes instead.
            Err(TransactionError::Abort(())) => Ok(()),
        }
    }

    fn scan<'a>(&'a self, tree: &str, prefix: &[u8]) -> Result<KvIter<'a>, StoreError> {
        let n = tree.len();
        let it = self
            .tree()?
            .scan_prefix(table_key(tree, prefix))
            .map(move |r| strip(n, r));
        Ok(Box::new(it))
    }

    fn scan_from<'a>(&'a self, tree: &str, start: &[u8]) -> Result<KvIter<'a>, StoreError> {
        let n = tree.len();
        Ok(Box::new(self.range(tree, start)?.map(move |r| strip(n, r))))
    }

    fn scan_back<'a>(&'a self, tree: &str, end: Option<&[u8]>) -> Result<KvIter<'a>, StoreError> {
        let n = tree.len();
        let end = end.map_or_else(|| table_end(tree), |k| table_key(tree, k));
        let it = self.tree()?.range(table_key(tree, &[])..end).rev();
        Ok(Box::new(it.map(move |r| strip(n, r))))
    }

    fn last_n(&self, tree: &str, n: usize) -> Result<Vec<Kv>, StoreError> {
        let len = tree.len();
        let mut out = self
            .range(tree, &[])?
            .rev()
            .take(n)
            .map(|r| strip(len, r))
            .collect::<Result<Vec<_>, _>>()?;
        out.reverse();
        Ok(out)
    }

    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for op in ops {
            let k = table_key(op.tree, &op.key);
            match &op.value {
                Some(v) => batch.insert(k, v.as_slice()),
                None => batch.remove(k),
            }
        }
        self.write(|e| e.tree.apply_batch(batch))
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.write(|e| e.db.generate_id())? + self.id_base)
    }

    fn poisoned(&self) -> bool {
        self.poisoned.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn reopen(&self) -> Result<(), StoreError> {
        let _alone = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let mut slot = self.engine.write().unwrap_or_else(|p| p.into_inner());
        // The old database lets go of its file lock once dropped (and its
        // threads are done: `open_index` waits for that); an iterator still
        // held elsewhere keeps it, and this fails until the next call
        // (reads fail meanwhile too).
        drop(slot.take());
        *slot = Some(Engine::open(&self.path)?);
        self.poisoned
            .store(false, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn frozen(&self, f: &mut Frozen<'_>) -> Result<(), StoreError> {
        let _alone = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let base = self.engine()?.db.generate_id()? + self.id_base + 1;
        let pairs = self
            .tree()?
            .iter()
            .filter(|r| !matches!(r, Ok((k, _)) if k.as_ref() == ID_BASE_KEY))
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(StoreError::from)
            })
            .chain(std::iter::once(Ok((
                ID_BASE_KEY.to_vec(),
                base.to_be_bytes().to_vec(),
            ))));
        f(Box::new(pairs))
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Not behind the gate: a snapshot's dump does not hold it up.
        self.marked(self.engine()?.db.flush()).map(drop)
    }
}
