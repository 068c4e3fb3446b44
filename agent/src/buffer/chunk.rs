//! How records sit in the buffer: the sled keys, a chunk's bytes (a
//! header, then `v1::RecordBatch` entries) and its index entry, and the
//! one-time moves of older layouts (one key per record; chunks inline in
//! sled) into segments.

use std::borrow::Cow;

use picket_proto::frame;
use picket_proto::v1::{self, record::Payload};
use prost::Message;

use super::{BufferError, Kind, corrupt};
use picket_segment::{LOC_BYTES, Loc, Writer};

pub(super) const NEXT_SEQ: &[u8] = b"mnext_seq";
pub(super) const DROPPED: [&[u8]; 3] = [b"mdropped_metric", b"mdropped_log", b"mdropped_event"];
/// Records lost with chunks found damaged on disk.
pub(super) const DAMAGED: &[u8] = b"mdamaged";
/// A push is split into chunks of about this many bytes of encoded records
/// (before packing): enough for LZ4 to find repeats, and small enough that
/// a send starting inside a chunk unpacks and copies little.
pub(super) const CHUNK_BYTES: usize = 64 * 1024;

/// Bytes before a chunk's records: the kinds byte and the last seq. An
/// index entry is the same header, then the chunk's [`Loc`].
pub(super) const HEADER: usize = 9;

/// Set in a chunk's kinds byte when its records are packed
/// ([`picket_segment::pack`]): the buffer holds three to eight times more
/// text on disk. Chunks written before packing are read as they are.
const PACKED: u8 = 0x80;

/// A chunk's records (`v1::RecordBatch` entries), unpacked if need be.
pub(super) fn chunk_records(chunk: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    let body = chunk.get(HEADER..).ok_or("short chunk")?;
    if chunk[0] & PACKED == 0 {
        return Ok(Cow::Borrowed(body));
    }
    picket_segment::pack::unpack(body)
        .map(Cow::Owned)
        .map_err(|e| e.to_string())
}

/// Index entry of the chunk whose first record has `first_seq`.
pub(super) fn index_key(first_seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b's';
    k[1..].copy_from_slice(&first_seq.to_be_bytes());
    k
}

/// A chunk held inline in sled, as buffers before segments did.
pub(super) fn inline_key(first_seq: u64) -> [u8; 9] {
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
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Meta {
    pub(super) last_seq: u64,
    pub(super) kinds: u8,
    /// Bytes held for it: the chunk and its index entry.
    pub(super) size: u64,
    pub(super) loc: Loc,
}

impl Meta {
    /// The meta of chunk bytes written at `loc`.
    pub(super) fn of_chunk(chunk: &[u8], loc: Loc) -> Option<Meta> {
        Some(Meta {
            kinds: *chunk.first()? & !PACKED,
            last_seq: u64_at(chunk, 1)?,
            size: (chunk.len() + 9 + HEADER + LOC_BYTES) as u64,
            loc,
        })
    }

    /// The index entry's value.
    pub(super) fn entry(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER + LOC_BYTES);
        v.push(self.kinds);
        v.extend_from_slice(&self.last_seq.to_be_bytes());
        self.loc.put(&mut v);
        v
    }

    pub(super) fn from_entry(v: &[u8]) -> Option<Meta> {
        let loc = Loc::get(v.get(HEADER..)?)?;
        Some(Meta {
            kinds: *v.first()?,
            last_seq: u64_at(v, 1)?,
            size: u64::from(loc.len) + (9 + HEADER + LOC_BYTES) as u64,
            loc,
        })
    }
}

/// Makes a packed chunk of encoded payloads and their sequence numbers.
pub(super) fn encode_chunk<'a>(
    records: impl Iterator<Item = (u64, &'a [u8], Kind)>,
    hint: usize,
) -> Vec<u8> {
    let mut entries = Vec::with_capacity(hint);
    let (mut kinds, mut last) = (0u8, 0u64);
    for (seq, payload, kind) in records {
        frame::put_encoded(seq, payload, &mut entries);
        kinds |= kind.bit();
        last = seq;
    }
    let mut value = Vec::with_capacity(HEADER + entries.len() / 2);
    value.push(kinds | PACKED);
    value.extend_from_slice(&last.to_be_bytes());
    picket_segment::pack::pack_into(&entries, &mut value);
    value
}

/// A chunk of decoded records (each keeps its sequence number).
pub(super) fn encode_records(records: &[v1::Record]) -> Vec<u8> {
    let payloads: Vec<(u64, &Payload)> = records
        .iter()
        .filter_map(|r| Some((r.seq, r.payload.as_ref()?)))
        .collect();
    let enc = Encoded::new(payloads.iter().map(|(_, p)| *p));
    encode_chunk(
        payloads
            .iter()
            .zip(enc.iter())
            .map(|((seq, _), (bytes, kind))| (*seq, bytes, kind)),
        enc.bytes.len() + 12 * payloads.len(),
    )
}

/// Payloads encoded by the thread that made them, so that the buffer's
/// writer only copies bytes, and the producer frees what it allocated.
#[derive(Debug, Default)]
pub struct Encoded {
    bytes: Vec<u8>,
    /// Where each payload ends in `bytes`, and its kind.
    ends: Vec<(usize, Kind)>,
}

impl Encoded {
    pub fn new<'a>(payloads: impl IntoIterator<Item = &'a Payload>) -> Encoded {
        let mut e = Encoded::default();
        for p in payloads {
            p.encode(&mut e.bytes);
            e.ends.push((e.bytes.len(), Kind::of(p)));
        }
        e
    }

    /// Room for `records` payloads of about `bytes` in all.
    pub fn with_capacity(records: usize, bytes: usize) -> Encoded {
        Encoded {
            bytes: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(records),
        }
    }

    /// Adds an event, encoded from borrowed parts.
    pub fn push_event<'a, F>(&mut self, e: &frame::EventRef<'a, F>)
    where
        F: Iterator<Item = (&'a str, &'a str)> + Clone,
    {
        frame::put_event(e, &mut self.bytes);
        self.ends.push((self.bytes.len(), Kind::Event));
    }

    /// Adds a log line, encoded from borrowed parts.
    pub fn push_log(&mut self, l: &frame::LogRef<'_>) {
        frame::put_log(l, &mut self.bytes);
        self.ends.push((self.bytes.len(), Kind::Log));
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes the payloads take.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// Each payload's bytes (`Payload::encode`'s) and kind.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], Kind)> {
        let starts = std::iter::once(0).chain(self.ends.iter().map(|(end, _)| *end));
        starts
            .zip(&self.ends)
            .map(|(start, (end, kind))| (self.bytes.get(start..*end).unwrap_or_default(), *kind))
    }
}

/// Moves older layouts into segments, keeping every record and its
/// sequence number, so that an upgrade loses nothing: one key per record
/// (`r` + seq, value `[kind][v1::Record]`) is first folded into chunks, and
/// chunks held inline in sled (`c` + first seq) are then moved to segments.
pub(super) fn migrate(tree: &sled::Tree, writer: &mut Writer) -> Result<(), BufferError> {
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
            break;
        };
        let mut batch = sled::Batch::default();
        let mut records = Vec::with_capacity(old.len());
        for (k, r) in old {
            batch.remove(k);
            records.push(r);
        }
        batch.insert(&inline_key(first)[..], encode_records(&records));
        tree.apply_batch(batch)?;
    }
    for kv in tree.scan_prefix(b"c") {
        let (k, chunk) = kv?;
        let first = u64_at(&k, 1).unwrap_or(0);
        let at = writer.append(&chunk)?;
        let meta = Meta::of_chunk(&chunk, at.loc).ok_or_else(|| corrupt(first, "short chunk"))?;
        writer.sync()?;
        let mut batch = sled::Batch::default();
        batch.insert(&index_key(first)[..], meta.entry());
        batch.remove(k);
        tree.apply_batch(batch)?;
    }
    Ok(())
}
