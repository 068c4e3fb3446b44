//! The storage interface the control plane is written against, and its sled
//! implementation. Another engine is added by implementing [`Backend`]; the
//! services only ever see [`super::Store`].

use std::path::Path;

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
    /// Key-value pairs whose key starts with `prefix`, in key order.
    fn scan<'a>(&'a self, tree: &str, prefix: &[u8]) -> Result<KvIter<'a>, StoreError>;
    /// Pairs with keys at or after `start`, in key order.
    fn scan_from<'a>(&'a self, tree: &str, start: &[u8]) -> Result<KvIter<'a>, StoreError>;
    /// The last `n` pairs of a tree, in key order.
    fn last_n(&self, tree: &str, n: usize) -> Result<Vec<Kv>, StoreError>;
    /// Applies every write in `ops` atomically, across trees: all or none.
    fn apply(&self, ops: &[Op]) -> Result<(), StoreError>;
    /// A unique, increasing id (across restarts).
    fn next_id(&self) -> Result<u64, StoreError>;
    /// Makes every write so far durable.
    fn flush(&self) -> Result<(), StoreError>;
}

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
/// Maps the old value (if any) to the new one (`None` deletes).
pub type Updater<'a> = dyn FnMut(Option<&[u8]>) -> Option<Vec<u8>> + 'a;

/// sled, embedded in the data folder.
pub struct Sled {
    db: sled::Db,
}

impl Sled {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(64 * 1024 * 1024)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        Ok(Sled { db })
    }

    fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }
}

impl Backend for Sled {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree(tree)?.get(key)?.map(|v| v.to_vec()))
    }

    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.tree(tree)?.insert(key, value)?;
        Ok(())
    }

    fn remove(&self, tree: &str, key: &[u8]) -> Result<(), StoreError> {
        self.tree(tree)?.remove(key)?;
        Ok(())
    }

    fn update(&self, tree: &str, key: &[u8], f: &mut Updater<'_>) -> Result<(), StoreError> {
        self.tree(tree)?.fetch_and_update(key, f)?;
        Ok(())
    }

    fn scan<'a>(&'a self, tree: &str, prefix: &[u8]) -> Result<KvIter<'a>, StoreError> {
        let it = self.tree(tree)?.scan_prefix(prefix).map(|r| {
            r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(StoreError::from)
        });
        Ok(Box::new(it))
    }

    fn scan_from<'a>(&'a self, tree: &str, start: &[u8]) -> Result<KvIter<'a>, StoreError> {
        let it = self.tree(tree)?.range(start.to_vec()..).map(|r| {
            r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(StoreError::from)
        });
        Ok(Box::new(it))
    }

    fn last_n(&self, tree: &str, n: usize) -> Result<Vec<Kv>, StoreError> {
        let mut out = self
            .tree(tree)?
            .iter()
            .rev()
            .take(n)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<Vec<_>, _>>()?;
        out.reverse();
        Ok(out)
    }

    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        use sled::Transactional;
        use sled::transaction::TransactionError;
        let mut names: Vec<&'static str> = ops.iter().map(|o| o.tree).collect();
        names.sort_unstable();
        names.dedup();
        let trees = names
            .iter()
            .map(|n| self.tree(n))
            .collect::<Result<Vec<_>, _>>()?;
        let r: Result<(), TransactionError<()>> = trees[..].transaction(|views| {
            for op in ops {
                let i = names.binary_search(&op.tree).unwrap_or(0);
                match &op.value {
                    Some(v) => {
                        views[i].insert(op.key.as_slice(), v.as_slice())?;
                    }
                    None => {
                        views[i].remove(op.key.as_slice())?;
                    }
                }
            }
            Ok(())
        });
        match r {
            Ok(()) => Ok(()),
            Err(TransactionError::Storage(e)) => Err(e.into()),
            Err(TransactionError::Abort(())) => Err(StoreError::Corrupt {
                tree: "transaction",
                detail: "aborted".into(),
            }),
        }
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}
