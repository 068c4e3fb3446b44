//! Room in a full buffer, and chunks damaged on disk: what the buffer
//! lets go of, and counts.

use picket_proto::frame;
use picket_proto::v1;
use picket_segment as segment;
use prost::Message;

use super::chunk::{DAMAGED, DROPPED, Meta, chunk_records, encode_records, index_key};
use super::{Buffer, BufferError, Kind, State, corrupt};
use segment::Writer;

impl Buffer {
    /// Drops the oldest metrics, then the oldest log lines, until `need`
    /// more bytes fit under 90 % of the cap. A chunk that holds other kinds
    /// too is rewritten without the dropped ones.
    pub(super) fn make_room(
        &self,
        st: &mut State,
        w: &mut Writer,
        need: u64,
    ) -> Result<(), BufferError> {
        let target = (self.cap_bytes / 10 * 9).saturating_sub(need);
        for kind in [Kind::Metric, Kind::Log] {
            let i = kind as usize;
            let candidates: Vec<(u64, Meta)> = st
                .chunks
                .iter()
                .filter(|(_, m)| m.kinds & kind.bit() != 0 && m.last_seq > st.acked)
                .map(|(f, m)| (*f, *m))
                .collect();
            for (first, meta) in candidates {
                if st.bytes <= target {
                    break;
                }
                let Some(seg) = st.segs.get(&meta.loc.seg) else {
                    continue;
                };
                let read = segment::read(&seg.file, meta.loc).and_then(|value| {
                    let entries = chunk_records(&value)?;
                    v1::RecordBatch::decode(&entries[..])
                        .and_then(|b| frame::decode_records(&b))
                        .map_err(|e| e.to_string())
                });
                let recs = match read {
                    Ok(recs) => recs,
                    Err(detail) => {
                        // It was to be dropped anyway: let it go as damaged.
                        self.discard_locked(st, first, &detail)?;
                        continue;
                    }
                };
                let (gone, kept): (Vec<_>, Vec<_>) = recs
                    .into_iter()
                    .partition(|r| r.payload.as_ref().map(Kind::of) == Some(kind));
                let key = index_key(first);
                let new = if kept.is_empty() {
                    None
                } else {
                    let value = encode_records(&kept);
                    let at = w.append(&value)?;
                    let m =
                        Meta::of_chunk(&value, at.loc).ok_or_else(|| corrupt(first, "empty"))?;
                    st.appended(&at);
                    if let Err(e) = w.sync() {
                        st.unpin(m.loc.seg);
                        return Err(e.into());
                    }
                    Some(m)
                };
                // Sled's part waits for the checkpoint: a crash before it
                // brings the dropped records back, to be dropped again.
                self.dirty.store(true, std::sync::atomic::Ordering::Release);
                match new {
                    Some(m) => st.put(&key, &m.entry()),
                    None => st.del(&key),
                }
                st.dropped[i] += gone.len() as u64;
                let dropped = st.dropped[i];
                st.put(DROPPED[i], &dropped.to_be_bytes());
                st.release(first);
                if let Some(m) = new {
                    st.hold(first, m);
                }
                tracing::warn!(
                    kind = kind.name(),
                    dropped = gone.len(),
                    "agent buffer full: dropped the oldest records"
                );
            }
        }
        if st.bytes + need > self.cap_bytes {
            return Err(BufferError::Full(st.bytes));
        }
        Ok(())
    }

    /// Lets go of the chunk that starts at `first` when its bytes are
    /// damaged (a checksum, unpacking or decoding error: a disk fault).
    /// Kept, it would be retried forever and nothing after it sent. Its
    /// records are lost and counted ([`Buffer::damaged`]: at most
    /// `last - first + 1`, as dropped records leave gaps). Returns that
    /// count, 0 if no chunk starts there.
    pub fn discard(&self, first: u64, detail: &str) -> Result<u64, BufferError> {
        let mut st = self.lock();
        self.discard_locked(&mut st, first, detail)
    }

    fn discard_locked(&self, st: &mut State, first: u64, detail: &str) -> Result<u64, BufferError> {
        let Some(meta) = st.chunks.get(&first).copied() else {
            return Ok(0);
        };
        let n = meta.last_seq.saturating_sub(first) + 1;
        let total = st.damaged + n;
        st.del(&index_key(first));
        st.put(DAMAGED, &total.to_be_bytes());
        self.dirty.store(true, std::sync::atomic::Ordering::Release);
        st.damaged = total;
        st.release(first);
        tracing::error!(
            first,
            last = meta.last_seq,
            records = n,
            detail,
            "agent buffer: a damaged chunk was discarded; its records are lost"
        );
        Ok(n)
    }

    /// Records lost so far with damaged chunks.
    pub fn damaged(&self) -> u64 {
        self.lock().damaged
    }
}
