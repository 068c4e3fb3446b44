//! The control plane's store: typed records over a [`Backend`].
//!
//! The only module that knows how records are laid out on disk. Records are
//! JSON with serde defaults for added fields; a change that old records
//! cannot be read as bumps the tree name (`agents` → `agents.v2`).

mod alerts;
pub mod backend;
pub mod blocking;
pub mod faults;
mod group;
pub mod health;
mod identity;
pub mod kept;
pub mod messages;
pub mod metrics;
pub mod records;
mod rollouts;
pub mod snapshot;
pub use alerts::Queued;
pub use identity::{
    AgentRecord, AuditRecord, EnrollRefusal, Forget, Inventory, TokenRecord, TokenRefusal,
    UserRecord,
};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Serialize, de::DeserializeOwned};

pub use backend::Backend;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open store at {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error("store: {0}")]
    Engine(#[from] sled::Error),
    #[error("store: corrupt record in {tree}: {detail}")]
    Corrupt { tree: &'static str, detail: String },
    #[error("store: the blocking task failed: {0}")]
    Task(String),
    /// A write to the disk failed (outside the engine: a segment file).
    #[error("store: write failed: {0}")]
    Write(String),
    /// Records are refused: free space is under the floor.
    #[error("store: {0}")]
    Full(String),
    /// Records are refused until a probe write goes through again.
    #[error("store: not writable ({0})")]
    Unwritable(health::Unwritable),
    #[error("store: being reopened after a write failure")]
    Reopening,
    /// The shared state (cluster mode's etcd) cannot be read or written.
    #[error("store: cluster state: {0}")]
    Shared(String),
    /// The records database (cluster mode's PostgreSQL) cannot be read or
    /// written.
    #[error("store: {0}")]
    Database(String),
}

/// The shared trees' names (as etcd's keys and a shared backend's
/// callbacks spell them): [`SHARED_TREES`].
pub const AGENTS: &str = "agents";
pub const TOKENS: &str = "tokens";
pub const USERS: &str = "users";
pub const AUDIT: &str = "audit";
pub use alerts::{ALERTS, OUTBOX};
pub use rollouts::ROLLOUTS;

/// The trees that are one cluster's, not one replica's: in cluster mode
/// they live in etcd ([`backend::etcd`]), the rest (records, metrics) in
/// the replica's own engine or the records database.
pub const SHARED_TREES: &[&str] = &[AGENTS, TOKENS, USERS, AUDIT, ROLLOUTS, ALERTS, OUTBOX];

/// What a replica's own engine must do when a shared pair went (seen in
/// etcd's watch): an agent forgotten through another replica leaves no
/// acked number here either (see [`Store::forget_agent`]).
pub(crate) fn forgotten(engine: &dyn Backend, tree: &str, key: &[u8]) -> Result<(), StoreError> {
    if tree == AGENTS {
        let host = String::from_utf8_lossy(key);
        engine.apply(&[metrics::forget_acked_op(&host)])?;
    }
    Ok(())
}
/// The store's own bookkeeping.
const META: &str = "meta";
/// Written (and flushed) to learn whether writes go through again.
const PROBE: &[u8] = b"health.probe";

#[derive(Clone)]
pub struct Store {
    pub(crate) kv: Arc<dyn Backend>,
    /// Where [`SHARED_TREES`] are read and written: `kv` itself, or in
    /// cluster mode etcd ([`Store::with_shared`]).
    state: Arc<dyn Backend>,
    /// Where blocks of events and log lines keep their bytes; without it
    /// (a bare backend) blocks are held inline.
    segments: Option<Arc<records::Segments>>,
    health: Arc<health::Health>,
    /// Flushes shared by concurrent callers ([`Store::flush_grouped`]).
    group: Arc<group::Group>,
}

pub(crate) fn decode<T: DeserializeOwned>(
    tree: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        tree,
        detail: e.to_string(),
    })
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs to JSON cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

impl Store {
    /// Opens (or creates) the sled store under `data_dir/store`, with the
    /// default free-space floor ([`health::DEFAULT_FLOOR_PERCENT`]).
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Store::open_with_floor(data_dir, health::DEFAULT_FLOOR_PERCENT)
    }

    /// Opens (or creates) the store, refusing records while less than
    /// `floor_percent` of the data folder's file system is free (0: no
    /// floor, as in tests, which must not depend on how full the disk
    /// they share is).
    pub fn open_with_floor(data_dir: &Path, floor_percent: f64) -> Result<Self, StoreError> {
        let health = Arc::new(health::Health::new(Some(data_dir)));
        health.set_floor(floor_percent);
        let kv: Arc<dyn Backend> = Arc::new(backend::guarded::Guarded {
            inner: Arc::new(backend::Sled::open(&data_dir.join("store"))?),
            policy: health::Watch(health.clone()),
        });
        let segments = records::open_segments(&data_dir.join("blocks"), kv.as_ref())?;
        let store = Store {
            state: kv.clone(),
            kv,
            segments: Some(Arc::new(segments)),
            health,
            group: Arc::default(),
        };
        store.index_received(picket_clock::now_ms())?;
        store.start_by_id_index()?;
        store.index_latest()?;
        Ok(store)
    }

    /// The same store with [`SHARED_TREES`] in `make(engine)` (cluster
    /// mode: etcd, copied into this store's own engine, which `make` is
    /// given).
    pub fn with_shared<E>(
        mut self,
        make: impl FnOnce(Arc<dyn Backend>) -> Result<Arc<dyn Backend>, E>,
    ) -> Result<Store, E> {
        self.state = make(self.kv.clone())?;
        Ok(self)
    }

    /// Every pair of the shared trees as this store holds them (its own,
    /// or its copy of etcd's): what a restore writes into a fresh etcd.
    pub fn shared_pairs(&self) -> Result<Vec<(&'static str, backend::Kv)>, StoreError> {
        let mut out = Vec::new();
        for &tree in SHARED_TREES {
            for kv in self.state.scan(tree, b"")? {
                out.push((tree, kv?));
            }
        }
        Ok(out)
    }

    /// Whether the shared trees are elsewhere (cluster mode's etcd), where
    /// a deposed leader's fenced write is refused.
    pub fn state_is_shared(&self) -> bool {
        !Arc::ptr_eq(&self.state, &self.kv)
    }

    /// A unique id above every id handed out so far (across restarts).
    pub fn next_id(&self) -> Result<u64, StoreError> {
        self.kv.next_id()
    }

    /// A store on `kv` alone, blocks inline.
    pub fn with_backend(kv: Arc<dyn Backend>) -> Self {
        Store {
            state: kv.clone(),
            kv,
            segments: None,
            health: Arc::new(health::Health::new(None)),
            group: Arc::default(),
        }
    }

    /// Whether writes go through now, and why not.
    pub fn health(&self) -> &health::Health {
        &self.health
    }

    /// Tries to make the store writable again after a failure: checks the
    /// free-space floor, reopens the engine if it refuses writes since
    /// (sled does after an I/O error), then writes and flushes a probe.
    /// Ok when writes go through again. Records stored but not flushed
    /// before a reopen may be gone: [`health::Health::epoch`] moves on.
    pub fn recover(&self) -> Result<(), StoreError> {
        self.health.room_again()?;
        if self.kv.poisoned() {
            // Moved on first: a flush that ends after the reopen sees it,
            // so nothing stored before is acked as durable.
            self.health.reopened();
            self.kv.reopen()?;
        }
        self.kv
            .put(META, PROBE, &picket_clock::now_ms().to_be_bytes())?;
        self.kv.flush()?;
        self.health.healthy();
        Ok(())
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.kv.flush()
    }

    /// Runs `f` on tokio's blocking pool and waits for it.
    ///
    /// The rule for async code: a store call that writes or flushes goes
    /// through here (or runs inside a task that is already on the blocking
    /// pool, as ingest and queries do), so that an fsync never stalls a
    /// runtime worker and every task queued behind it. The audit log's
    /// single inserts are the one exception (sled buffers them; nothing
    /// waits for the disk).
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let s = self.clone();
        tokio::task::spawn_blocking(move || f(&s))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    fn get<T: DeserializeOwned>(
        &self,
        tree: &'static str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        self.state
            .get(tree, key.as_bytes())?
            .map(|b| decode(tree, &b))
            .transpose()
    }

    /// Applies `f` to the record under `key` atomically; returns the new
    /// record, or None if there is none.
    fn update<T: DeserializeOwned + Serialize>(
        &self,
        tree: &'static str,
        key: &str,
        mut f: impl FnMut(&mut T),
    ) -> Result<Option<T>, StoreError> {
        let mut result: Result<Option<T>, StoreError> = Ok(None);
        self.state.update(tree, key.as_bytes(), &mut |old| {
            let old = old?;
            match decode::<T>(tree, old) {
                Ok(mut rec) => {
                    f(&mut rec);
                    let bytes = encode(&rec);
                    result = Ok(Some(rec));
                    Some(bytes)
                }
                Err(e) => {
                    result = Err(e);
                    Some(old.to_vec())
                }
            }
        })?;
        result
    }

    fn all<T: DeserializeOwned>(&self, tree: &'static str) -> Result<Vec<T>, StoreError> {
        self.state
            .scan(tree, b"")?
            .map(|r| r.and_then(|(_, v)| decode(tree, &v)))
            .collect()
    }
}
