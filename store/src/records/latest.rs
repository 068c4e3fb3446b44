//! The latest-time index: each block under the latest time any of its
//! records has (`latest ms ‖ block key` → host), so that a newest-first
//! read ([`super::Start::Newest`]) knows, before it reads a block, that
//! nothing in it or in any block after it in the index is newer. Block
//! keys go by a block's earliest time, which bounds its latest only by
//! [`SPAN_MS`]: in a burst, a second of blocks, read for `--tail 5`.
//!
//! Blocks stored before this index get an entry at their earliest time
//! plus [`SPAN_MS`] (no later than their latest: still a bound) when the
//! store is first opened. Receive-time index entries carry the latest
//! time too, so that retention deletes the entry with its block.

use super::super::backend::Op;
use super::{EVENTS_TABLES, LOGS_TABLES, META, SPAN_MS, Tables, time_of};
use crate::{Store, StoreError};

/// Set once every block has a latest-time entry.
const LATEST_INDEXED: &[u8] = b"records.latest_index";

/// A latest-time index entry's key.
pub(super) fn latest_key(latest_ms: i64, block_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + block_key.len());
    k.extend_from_slice(&(latest_ms.max(0) as u64).to_be_bytes());
    k.extend_from_slice(block_key);
    k
}

/// The entry a block stored before the index has: its key's time plus
/// the span.
pub(super) fn bound_of(block_key: &[u8]) -> i64 {
    time_of(block_key).saturating_add(SPAN_MS)
}

/// The write that deletes a block's entry (`latest`: as its receive-time
/// entry recorded it, if it did).
pub(super) fn delete_op(t: Tables, block_key: &[u8], latest: Option<i64>) -> Op {
    Op {
        tree: t.latest,
        key: latest_key(latest.unwrap_or_else(|| bound_of(block_key)), block_key),
        value: None,
    }
}

impl Store {
    /// Gives every block a latest-time entry, once (see the module docs).
    pub(crate) fn index_latest(&self) -> Result<(), StoreError> {
        if self.kv.get(META, LATEST_INDEXED)?.is_some() {
            return Ok(());
        }
        for t in [EVENTS_TABLES, LOGS_TABLES] {
            self.index_every_block(t, |k, host| Op {
                tree: t.latest,
                key: latest_key(bound_of(k), k),
                value: Some(host.to_vec()),
            })?;
        }
        self.kv.put(META, LATEST_INDEXED, b"1")
    }
}
