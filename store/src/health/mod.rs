//! Whether the store can take writes now, and why not.
//!
//! A write that fails on the disk (ENOSPC, EIO) marks the store failing;
//! so does free space under the floor, before the disk is full, so that
//! reads and small metadata writes keep working (records are refused,
//! nothing else is). The store does not heal by itself: the caller runs
//! [`crate::Store::recover`] with backoff until it is writable again.
//! Each change of state is logged once, not each failed attempt.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::StoreError;
use crate::backend::guarded::WritePolicy;

/// The default free-space floor, in percent of the data folder's file
/// system.
pub const DEFAULT_FLOOR_PERCENT: f64 = 1.0;

/// Why the store is not writable.
#[derive(Debug, Clone, PartialEq)]
pub enum Unwritable {
    /// Free space on the data folder's file system is under the floor (or
    /// too little for the batch at hand).
    LowSpace {
        free_bytes: u64,
        free_percent: f64,
        floor_percent: f64,
        /// The batch that did not fit.
        batch_bytes: u64,
    },
    /// A write or a flush failed.
    Failing { error: String },
}

impl std::fmt::Display for Unwritable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unwritable::LowSpace {
                free_bytes,
                free_percent,
                floor_percent,
                batch_bytes,
            } => write!(
                f,
                "only {:.1} MiB ({free_percent:.2}%) of the data folder's disk is free, \
                 too little for {:.1} MiB of records above the floor of {floor_percent}% \
                 (min_free_percent)",
                mib(*free_bytes),
                mib(*batch_bytes),
            ),
            Unwritable::Failing { error } => write!(f, "writes fail: {error}"),
        }
    }
}

/// Free bytes wanted before writes are tried again after one failed on
/// the disk (reopening sled on a disk that is still full would only fail
/// again, and end every session each time).
const MIN_ROOM: u64 = 1024 * 1024;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The store's write health, shared by everything that writes.
pub struct Health {
    /// The data folder (none: a store without one, as in tests; its space
    /// is not watched).
    dir: Option<PathBuf>,
    /// Free space under which records are refused (percent, as bits of
    /// an f64).
    floor: AtomicU64,
    writable: AtomicBool,
    failures: AtomicU64,
    /// Times the engine was reopened after a failure: what was stored
    /// but not flushed before a reopen may be gone.
    epoch: AtomicU64,
    why: Mutex<Option<Unwritable>>,
    /// Bytes of the last batch refused or failed: writes are not tried
    /// again before this much is free above the floor (a batch that
    /// failed on a full disk would only fail again).
    wanted: AtomicU64,
}

impl Health {
    pub(crate) fn new(dir: Option<&Path>) -> Health {
        Health {
            dir: dir.map(Path::to_path_buf),
            floor: AtomicU64::new(DEFAULT_FLOOR_PERCENT.to_bits()),
            writable: AtomicBool::new(true),
            failures: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            why: Mutex::new(None),
            wanted: AtomicU64::new(0),
        }
    }

    /// Sets the free-space floor (percent of the file system).
    pub fn set_floor(&self, percent: f64) {
        self.floor.store(percent.to_bits(), Ordering::Relaxed);
    }

    fn floor(&self) -> f64 {
        f64::from_bits(self.floor.load(Ordering::Relaxed))
    }

    pub fn writable(&self) -> bool {
        self.writable.load(Ordering::Acquire)
    }

    /// Writes that failed since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Reopens since start.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Why it is not writable, if it is not.
    pub fn why(&self) -> Option<Unwritable> {
        self.why.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Notes a failed write of a batch of about `bytes` (the engine's
    /// own failures are already noted by [`Watch`]).
    pub(crate) fn failed_batch(&self, e: &StoreError, bytes: u64) {
        self.wanted.fetch_max(bytes, Ordering::Relaxed);
        if matches!(e, StoreError::Write(_)) {
            self.failed(e);
        }
    }

    /// Notes a failed write (under the space floor, the floor stays the
    /// reason shown: the failure is most likely its consequence).
    pub(crate) fn failed(&self, e: &StoreError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.wanted.fetch_max(MIN_ROOM, Ordering::Relaxed);
        if matches!(self.why(), Some(Unwritable::LowSpace { .. })) {
            return;
        }
        self.set(Some(Unwritable::Failing {
            error: e.to_string(),
        }));
    }

    pub(crate) fn reopened(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Refuses a write of about `bytes` that would leave less free space
    /// than the floor (and says so, once).
    pub(crate) fn check_space(&self, bytes: u64) -> Result<(), StoreError> {
        let floor = self.floor();
        // A file system that cannot say (statvfs fails) is not refused.
        let Some(room) = self.dir.as_deref().and_then(Room::of) else {
            return Ok(());
        };
        let left = room.available.saturating_sub(bytes) as f64 * 100.0 / room.total;
        if left >= floor && (bytes == 0 || room.available > bytes) {
            return Ok(());
        }
        self.wanted.fetch_max(bytes, Ordering::Relaxed);
        let why = Unwritable::LowSpace {
            free_bytes: room.available,
            free_percent: room.available as f64 * 100.0 / room.total,
            floor_percent: floor,
            batch_bytes: bytes,
        };
        let e = StoreError::Full(why.to_string());
        // A failed write stays the reason shown until it heals.
        if !matches!(self.why(), Some(Unwritable::Failing { .. })) {
            self.set(Some(why));
        }
        Err(e)
    }

    /// Whether there is room again for what was refused: the floor, and
    /// the last refused or failed batch above it.
    pub(crate) fn room_again(&self) -> Result<(), StoreError> {
        self.check_space(self.wanted.load(Ordering::Relaxed))
    }

    /// Marks it writable again (a probe write went through).
    pub(crate) fn healthy(&self) {
        self.wanted.store(0, Ordering::Relaxed);
        self.set(None);
    }

    fn set(&self, why: Option<Unwritable>) {
        let mut now = self.why.lock().unwrap_or_else(|p| p.into_inner());
        let changed = match (&*now, &why) {
            (None, None) => false,
            (Some(a), Some(b)) => std::mem::discriminant(a) != std::mem::discriminant(b),
            _ => true,
        };
        if changed {
            match &why {
                None => tracing::warn!(
                    failed_writes = self.failures(),
                    "store: writable again; ingest resumes"
                ),
                Some(w) => tracing::error!(
                    "store: not writable: {w}; records are refused and agents keep them until it is"
                ),
            }
        }
        self.writable.store(why.is_none(), Ordering::Release);
        *now = why;
    }
}

/// Space on the file system holding a folder, in bytes.
struct Room {
    /// Free to unprivileged writers.
    available: u64,
    total: f64,
}

impl Room {
    fn of(dir: &Path) -> Option<Room> {
        let s = nix::sys::statvfs::statvfs(dir).ok()?;
        let block = s.fragment_size() as u64;
        let total = s.blocks() as u64 * block;
        (total > 0).then(|| Room {
            available: s.blocks_available() as u64 * block,
            total: total as f64,
        })
    }
}

/// Counts as a failed write what the disk refused, not what is wrong
/// with a record or the store's state.
fn is_disk(e: &StoreError) -> bool {
    matches!(e, StoreError::Engine(_) | StoreError::Write(_))
}

/// Reports failed writes to [`Health`]: the store's backend is a
/// [`Guarded`](crate::backend::guarded::Guarded) of it.
pub(crate) struct Watch(pub(crate) std::sync::Arc<Health>);

impl WritePolicy for Watch {
    fn failed(&self, e: &StoreError) {
        if is_disk(e) {
            self.0.failed(e);
        }
    }
}

#[cfg(test)]
mod tests;
