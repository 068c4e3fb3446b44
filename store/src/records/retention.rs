//! Retention of events and log lines, counted from when the control plane
//! received them (never from the records' own times, which may be years
//! old for a replayed capture or a backfill): a per-table index keyed by
//! receive time finds the blocks to delete, and segments go once the
//! newest block in them was received before the cut-off.

use super::super::backend::Op;
use super::{
    EVENTS_TABLES, LOGS_TABLES, META, RECEIVED_INDEXED, Tables, host_key, latest, time_of,
};
use crate::{Store, StoreError};

/// A receive-time index entry's key: when the block was received, then
/// the block's key.
pub(super) fn received_key(received_ms: i64, block_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + block_key.len());
    k.extend_from_slice(&(received_ms.max(0) as u64).to_be_bytes());
    k.extend_from_slice(block_key);
    k
}

impl Store {
    /// Deletes blocks of events and log lines (and their index entries)
    /// received before the given times, whatever the records' own times;
    /// returns the blocks deleted.
    pub fn expire_records(
        &self,
        events_before: i64,
        logs_before: i64,
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        for (t, before) in [(EVENTS_TABLES, events_before), (LOGS_TABLES, logs_before)] {
            loop {
                let old: Vec<(Vec<u8>, Vec<u8>)> = self
                    .kv
                    .scan_from(t.received, &[])?
                    .take(256)
                    .take_while(|kv| kv.as_ref().map_or(true, |(k, _)| time_of(k) < before))
                    .collect::<Result<_, _>>()?;
                if old.is_empty() {
                    break;
                }
                n += old.len();
                let mut ops = Vec::with_capacity(old.len() * 5 + 1);
                let (mut through, mut unknown) = (0, false);
                for (rk, value) in old {
                    let block = rk.get(8..).unwrap_or_default();
                    // `host \0 highest id ‖ latest time`, without the
                    // time (a block stored before the latest-time index),
                    // or the host alone (before the by-id index).
                    let mut parts = value.splitn(2, |b| *b == 0);
                    let host = parts.next().unwrap_or_default().to_vec();
                    let rest = parts.next().unwrap_or_default();
                    let latest = rest
                        .get(8..16)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map(i64::from_be_bytes);
                    ops.push(latest::delete_op(t, block, latest));
                    match rest.get(..8).and_then(|id| <[u8; 8]>::try_from(id).ok()) {
                        Some(id) => {
                            through = through.max(u64::from_be_bytes(id));
                            ops.push(Op {
                                tree: t.by_id,
                                key: id.to_vec(),
                                value: None,
                            });
                        }
                        None => unknown = true,
                    }
                    ops.push(Op {
                        tree: t.by_host,
                        key: host_key(&host, block),
                        value: None,
                    });
                    ops.push(Op {
                        tree: t.blocks,
                        key: block.to_vec(),
                        value: None,
                    });
                    ops.push(Op {
                        tree: t.received,
                        key: rk,
                        value: None,
                    });
                }
                ops.extend(self.expired_op(t, through, unknown)?);
                self.kv.apply(&ops)?;
            }
            // Segment files whose blocks are all gone now.
            if let Some(seg) = &self.segments {
                seg.expire(t.blocks, before, self.kv.as_ref())?;
            }
        }
        Ok(n)
    }

    /// Gives every block a receive-time index entry, once: blocks stored
    /// before retention went by receive time have none, and count as
    /// received at `now_ms` (kept one more full window, never less).
    pub(crate) fn index_received(&self, now_ms: i64) -> Result<(), StoreError> {
        if self.kv.get(META, RECEIVED_INDEXED)?.is_some() {
            return Ok(());
        }
        for t in [EVENTS_TABLES, LOGS_TABLES] {
            self.index_every_block(t, |k, host| Op {
                tree: t.received,
                key: received_key(now_ms, k),
                value: Some(host.to_vec()),
            })?;
            if let Some(seg) = &self.segments {
                seg.received_by(t.blocks, now_ms, self.kv.as_ref())?;
            }
        }
        self.kv.put(META, RECEIVED_INDEXED, b"1")
    }

    /// Writes `op(block key, host)` for every block of `t`'s, a page at a
    /// time (an index added to stores written without it).
    pub(super) fn index_every_block(
        &self,
        t: Tables,
        op: impl Fn(&[u8], &[u8]) -> Op,
    ) -> Result<(), StoreError> {
        let mut start = Vec::new();
        loop {
            let page: Vec<(Vec<u8>, Vec<u8>)> = self
                .kv
                .scan_from(t.blocks, &start)?
                .take(1_024)
                .collect::<Result<_, _>>()?;
            let Some((last, _)) = page.last() else {
                return Ok(());
            };
            start = last.clone();
            start.push(0);
            let ops: Vec<Op> = page
                .iter()
                .map(|(k, v)| op(k, v.split(|b| *b == 0).next().unwrap_or_default()))
                .collect();
            self.kv.apply(&ops)?;
        }
    }
}
