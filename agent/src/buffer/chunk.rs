//! How records sit in the buffer's sled tree: the keys, a chunk's bytes
//! (a header, then `v1::RecordBatch` entries), and the one-time fold of the
//! older one-key-per-record layout into chunks.

use picket_proto::frame;
use picket_proto::v1::{self, record::Payload};
use prost::Message;

use super::{BufferError, Kind, corrupt};

pub(super) const NEXT_SEQ: &[u8] = b"mnext_seq";
pub(super) const DROPPED: [&[u8]; 3] = [b"mdropped_metric", b"mdropped_log", b"mdropped_event"];
/// A push is split into chunks of about this many bytes: under sled's
/// threshold for storing a value as a file of its own (about 128 KiB), and
/// small enough that a send starting inside a chunk copies little.
pub(super) const CHUNK_BYTES: usize = 64 * 1024;

/// Bytes before a chunk's records: the kinds byte and the last seq.
pub(super) const HEADER: usize = 9;

pub(super) fn chunk_key(first_seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'c';
    k[1..].copy_from_slice(&first_seq.to_be_bytes());
    k
}

pub(super) fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

pub(super) fn u64_of(v: Option<sled::IVec>) -> u64 {
    v.and_then(|v| u64_at(&v, 0)).unwrap_or(0)
}

/// What memory keeps of a chunk.
#[derive(Debug, Clone, Copy)]
pub(super) struct Meta {
    pub(super) last_seq: u64,
    pub(super) kinds: u8,
    /// Key and value bytes.
    pub(super) size: u64,
}

/// Encodes records as a chunk value.
pub(super) fn encode_chunk<'a>(
    records: impl Iterator<Item = (u64, &'a Payload)>,
    hint: usize,
) -> Vec<u8> {
    let mut value = Vec::with_capacity(HEADER + hint);
    value.extend_from_slice(&[0u8; HEADER]);
    let (mut kinds, mut last) = (0u8, 0u64);
    for (seq, p) in records {
        frame::put_record(seq, p, &mut value);
        kinds |= Kind::of(p).bit();
        last = seq;
    }
    value[0] = kinds;
    value[1..HEADER].copy_from_slice(&last.to_be_bytes());
    value
}

pub(super) fn meta_of(value: &[u8]) -> Option<Meta> {
    Some(Meta {
        kinds: *value.first()?,
        last_seq: u64_at(value, 1)?,
        size: (9 + value.len()) as u64,
    })
}

/// Buffers written before chunks kept one key per record (`r` + seq, value
/// `[kind][v1::Record]`); folds any such records into chunks, keeping their
/// sequence numbers, so that an upgrade loses nothing.
pub(super) fn migrate_record_keys(tree: &sled::Tree) -> Result<(), BufferError> {
    loop {
        let old: Vec<(sled::IVec, v1::Record)> = tree
            .scan_prefix(b"r")
            .take(4096)
            .map(|kv| {
                let (k, v) = kv?;
                let seq = u64_at(&k, 1).unwrap_or(0);
                let rec = v1::Record::decode(v.get(1..).unwrap_or_default())
                    .map_err(|e| corrupt(seq, e))?;
                Ok((k, rec))
            })
            .collect::<Result<_, BufferError>>()?;
        let Some(first) = old.first().map(|(_, r)| r.seq) else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        let value = encode_chunk(
            old.iter()
                .filter_map(|(_, r)| Some((r.seq, r.payload.as_ref()?))),
            0,
        );
        batch.insert(&chunk_key(first)[..], value);
        for (k, _) in old {
            batch.remove(k);
        }
        tree.apply_batch(batch)?;
    }
}
