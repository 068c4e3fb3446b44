//! A [`Backend`] that fails its writes on demand: for tests of what a
//! caller does when the disk refuses (a full disk, an I/O error), over
//! the real backend it wraps. Reads always go through.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::StoreError;
use crate::backend::{Backend, Frozen, Kv, KvIter, Op, Transactor, Updater};

/// Wraps `inner`; while [`Faulty::fail`] is on, every write and flush
/// returns an I/O error and changes nothing.
pub struct Faulty {
    inner: Arc<dyn Backend>,
    failing: AtomicBool,
    refused: AtomicU64,
}

impl Faulty {
    pub fn new(inner: Arc<dyn Backend>) -> Faulty {
        Faulty {
            inner,
            failing: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        }
    }

    /// Turns failing writes on or off.
    pub fn fail(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }

    /// How many writes were refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            let e = std::io::Error::from_raw_os_error(28); // ENOSPC
            return Err(StoreError::Engine(sled::Error::Io(e)));
        }
        Ok(())
    }
}

impl Backend for Faulty {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(tree, key)
    }
    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.put(tree, key, value)
    }
    fn remove(&self, tree: &str, key: &[u8]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.remove(tree, key)
    }
    fn update(&self, tree: &str, key: &[u8], f: &mut Updater<'_>) -> Result<(), StoreError> {
        self.check()?;
        self.inner.update(tree, key, f)
    }
    fn transact(&self, keys: &[(&str, &[u8])], f: &mut Transactor<'_>) -> Result<(), StoreError> {
        self.check()?;
        self.inner.transact(keys, f)
    }
    fn scan<'a>(&'a self, tree: &str, prefix: &[u8]) -> Result<KvIter<'a>, StoreError> {
        self.inner.scan(tree, prefix)
    }
    fn scan_from<'a>(&'a self, tree: &str, start: &[u8]) -> Result<KvIter<'a>, StoreError> {
        self.inner.scan_from(tree, start)
    }
    fn last_n(&self, tree: &str, n: usize) -> Result<Vec<Kv>, StoreError> {
        self.inner.last_n(tree, n)
    }
    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.apply(ops)
    }
    fn next_id(&self) -> Result<u64, StoreError> {
        self.inner.next_id()
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.check()?;
        self.inner.flush()
    }
    fn frozen(&self, f: &mut Frozen<'_>) -> Result<(), StoreError> {
        self.inner.frozen(f)
    }
}
