//! A [`Backend`] around another one, with a policy that sees every write
//! before it is tried and its outcome after: what the store's health
//! watch ([`crate::health`]) and the tests' failing disk
//! ([`crate::faults`]) are made of. Reads go straight through.

use std::sync::Arc;

use super::{Backend, Frozen, Kv, KvIter, Op, Transactor, Updater};
use crate::StoreError;

/// What a [`Guarded`] backend does around each write (put, remove,
/// update, transact, apply, next id, flush).
pub trait WritePolicy: Send + Sync + 'static {
    /// Refuses the write before it is tried.
    fn before(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Sees a write's failure.
    fn failed(&self, _e: &StoreError) {}
}

pub struct Guarded<P> {
    pub(crate) inner: Arc<dyn Backend>,
    pub(crate) policy: P,
}

impl<P: WritePolicy> Guarded<P> {
    fn write<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.policy.before()?;
        let r = f();
        if let Err(e) = &r {
            self.policy.failed(e);
        }
        r
    }
}

impl<P: WritePolicy> Backend for Guarded<P> {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(tree, key)
    }
    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.write(|| self.inner.put(tree, key, value))
    }
    fn remove(&self, tree: &str, key: &[u8]) -> Result<(), StoreError> {
        self.write(|| self.inner.remove(tree, key))
    }
    fn update(&self, tree: &str, key: &[u8], f: &mut Updater<'_>) -> Result<(), StoreError> {
        self.write(|| self.inner.update(tree, key, f))
    }
    fn transact(&self, keys: &[(&str, &[u8])], f: &mut Transactor<'_>) -> Result<(), StoreError> {
        self.write(|| self.inner.transact(keys, f))
    }
    fn scan<'a>(&'a self, tree: &str, prefix: &[u8]) -> Result<KvIter<'a>, StoreError> {
        self.inner.scan(tree, prefix)
    }
    fn scan_from<'a>(&'a self, tree: &str, start: &[u8]) -> Result<KvIter<'a>, StoreError> {
        self.inner.scan_from(tree, start)
    }
    fn scan_back<'a>(&'a self, tree: &str, end: Option<&[u8]>) -> Result<KvIter<'a>, StoreError> {
        self.inner.scan_back(tree, end)
    }
    fn last_n(&self, tree: &str, n: usize) -> Result<Vec<Kv>, StoreError> {
        self.inner.last_n(tree, n)
    }
    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        self.write(|| self.inner.apply(ops))
    }
    fn next_id(&self) -> Result<u64, StoreError> {
        self.write(|| self.inner.next_id())
    }
    fn poisoned(&self) -> bool {
        self.inner.poisoned()
    }
    fn reopen(&self) -> Result<(), StoreError> {
        self.inner.reopen()
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.write(|| self.inner.flush())
    }
    fn frozen(&self, f: &mut Frozen<'_>) -> Result<(), StoreError> {
        self.inner.frozen(f)
    }
}
