//! Records encoded once, sent as they are.
//!
//! The agent's buffer stores records as the bytes of a `v1::RecordBatch`
//! (each record a `RecordBatch.records` entry) and sends a run of them as
//! an `AgentMessage { records }` without decoding and encoding them again:
//! copying the bytes is all the sending costs. The control plane decodes
//! the ordinary generated types; this module only writes and walks bytes
//! that those types define.

use prost::bytes::{Buf, BufMut};
use prost::encoding::{
    DecodeContext, WireType, decode_key, decode_varint, encode_key, encode_varint,
    encoded_len_varint, key_len, skip_field, uint64,
};
use prost::{DecodeError, Message};

/// Bytes that are not an encoded `RecordBatch`.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("bad record framing: {0}")]
    Decode(#[from] DecodeError),
    #[error("bad record framing: {0}")]
    Malformed(&'static str),
}

use crate::v1::{self, record::Payload};

/// Field numbers of the `picket.v1` messages written and read here as
/// bytes (by this module and by [`crate::scan`]). They are an on-disk
/// format as much as a wire one: the agent's buffer and the control
/// plane's blocks hold records encoded with them. `tests` checks each
/// against the descriptor set compiled from the `.proto` files.
pub(crate) mod field {
    pub mod batch {
        pub const RECORDS: u32 = 1;
    }
    pub mod agent_message {
        pub const RECORDS: u32 = 3;
    }
    pub mod record {
        pub const SEQ: u32 = 1;
        pub const METRICS: u32 = 10;
        pub const EVENT: u32 = 11;
        pub const LOG: u32 = 12;
    }
    pub mod event {
        pub const SOURCE: u32 = 1;
        pub const PATH: u32 = 2;
        pub const KIND: u32 = 3;
        pub const SEVERITY: u32 = 4;
        pub const MESSAGE: u32 = 5;
        pub const FIELDS: u32 = 6;
        pub const TIME: u32 = 7;
    }
    pub mod log {
        pub const SOURCE: u32 = 1;
        pub const PATH: u32 = 2;
        pub const LINE: u32 = 3;
        pub const READ: u32 = 4;
        pub const TRUNCATED: u32 = 5;
        pub const INVALID_UTF8: u32 = 6;
    }
    /// A map entry (`Event.fields`).
    pub mod entry {
        pub const KEY: u32 = 1;
        pub const VALUE: u32 = 2;
    }
}

use field::{event, log};

/// `RecordBatch.records` and `Record.seq`.
const RECORDS_FIELD: u32 = field::batch::RECORDS;
const SEQ_FIELD: u32 = field::record::SEQ;
/// `AgentMessage.body.records`.
const AGENT_MESSAGE_RECORDS_FIELD: u32 = field::agent_message::RECORDS;

/// Appends `Record { seq, payload }` as one `RecordBatch.records` entry,
/// written from a borrowed payload.
pub fn put_record(seq: u64, payload: &Payload, out: &mut Vec<u8>) {
    let len = uint64::encoded_len(SEQ_FIELD, &seq) + payload.encoded_len();
    encode_key(RECORDS_FIELD, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
    uint64::encode(SEQ_FIELD, &seq, out);
    payload.encode(out);
}

/// [`put_record`] for a payload encoded earlier (`Payload::encode`'s
/// bytes, its field key included): only bytes are copied.
pub fn put_encoded(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    let len = uint64::encoded_len(SEQ_FIELD, &seq) + payload.len();
    encode_key(RECORDS_FIELD, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
    uint64::encode(SEQ_FIELD, &seq, out);
    out.extend_from_slice(payload);
}

/// `Record.payload`'s `event` and `log` fields.
const PAYLOAD_EVENT_FIELD: u32 = field::record::EVENT;
const PAYLOAD_LOG_FIELD: u32 = field::record::LOG;

/// A `v1::Event` from borrowed parts: what a parser made of a line,
/// encoded without building the owned message. `fields` is walked twice
/// (length, then bytes); a name given twice is decoded as its last value.
#[derive(Debug, Clone)]
pub struct EventRef<'a, F> {
    pub source: &'a str,
    pub path: &'a str,
    pub kind: &'a str,
    pub severity: v1::Severity,
    pub message: &'a str,
    pub fields: F,
    pub time_unix_ms: i64,
}

/// A `v1::LogLine` from borrowed parts.
#[derive(Debug, Clone, Copy)]
pub struct LogRef<'a> {
    pub source: &'a str,
    pub path: &'a str,
    pub line: &'a str,
    pub read_unix_ms: i64,
    pub truncated: bool,
    pub invalid_utf8: bool,
}

/// Bytes of a proto3 string field (none when empty, as prost writes it).
fn str_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
    }
}

fn put_str(tag: u32, s: &str, out: &mut Vec<u8>) {
    if !s.is_empty() {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(s.len() as u64, out);
        out.extend_from_slice(s.as_bytes());
    }
}

fn varint_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(v)
    }
}

fn put_varint(tag: u32, v: u64, out: &mut Vec<u8>) {
    if v != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(v, out);
    }
}

/// A map entry's body: key 1, value 2, each left out when empty.
fn entry_len(k: &str, v: &str) -> usize {
    str_len(field::entry::KEY, k) + str_len(field::entry::VALUE, v)
}

/// Appends `Payload::Event(e)`'s bytes (its field key included), the
/// same bytes `Payload::encode` writes for the owned event when `fields`
/// come in name order.
pub fn put_event<'a, F>(e: &EventRef<'a, F>, out: &mut Vec<u8>)
where
    F: Iterator<Item = (&'a str, &'a str)> + Clone,
{
    let fields: usize = e
        .fields
        .clone()
        .map(|(k, v)| {
            let n = entry_len(k, v);
            key_len(event::FIELDS) + encoded_len_varint(n as u64) + n
        })
        .sum();
    let len = str_len(event::SOURCE, e.source)
        + str_len(event::PATH, e.path)
        + str_len(event::KIND, e.kind)
        + varint_len(event::SEVERITY, e.severity as i32 as u64)
        + str_len(event::MESSAGE, e.message)
        + fields
        + varint_len(event::TIME, e.time_unix_ms as u64);
    out.reserve(len + 4);
    encode_key(PAYLOAD_EVENT_FIELD, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
    put_str(event::SOURCE, e.source, out);
    put_str(event::PATH, e.path, out);
    put_str(event::KIND, e.kind, out);
    put_varint(event::SEVERITY, e.severity as i32 as u64, out);
    put_str(event::MESSAGE, e.message, out);
    for (k, v) in e.fields.clone() {
        encode_key(event::FIELDS, WireType::LengthDelimited, out);
        encode_varint(entry_len(k, v) as u64, out);
        put_str(field::entry::KEY, k, out);
        put_str(field::entry::VALUE, v, out);
    }
    put_varint(event::TIME, e.time_unix_ms as u64, out);
}

/// Appends `Payload::Log(l)`'s bytes (its field key included), the same
/// bytes `Payload::encode` writes for the owned line.
pub fn put_log(l: &LogRef<'_>, out: &mut Vec<u8>) {
    let len = str_len(log::SOURCE, l.source)
        + str_len(log::PATH, l.path)
        + str_len(log::LINE, l.line)
        + varint_len(log::READ, l.read_unix_ms as u64)
        + varint_len(log::TRUNCATED, u64::from(l.truncated))
        + varint_len(log::INVALID_UTF8, u64::from(l.invalid_utf8));
    out.reserve(len + 4);
    encode_key(PAYLOAD_LOG_FIELD, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
    put_str(log::SOURCE, l.source, out);
    put_str(log::PATH, l.path, out);
    put_str(log::LINE, l.line, out);
    put_varint(log::READ, l.read_unix_ms as u64, out);
    put_varint(log::TRUNCATED, u64::from(l.truncated), out);
    put_varint(log::INVALID_UTF8, u64::from(l.invalid_utf8), out);
}

/// The records of an encoded `RecordBatch`, as `(seq, entry bytes)`; the
/// entry bytes can be appended to another batch as they are. Only the
/// framing and each record's leading `seq` are read.
pub fn records(batch: &[u8]) -> impl Iterator<Item = Result<(u64, &[u8]), FrameError>> {
    let mut rest = batch;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let whole = rest;
        let entry = (|| -> Result<(u64, &[u8]), FrameError> {
            let (field, wt) = decode_key(&mut rest)?;
            if field != RECORDS_FIELD || wt != WireType::LengthDelimited {
                return Err(FrameError::Malformed("not a RecordBatch entry"));
            }
            let len = usize::try_from(decode_varint(&mut rest)?)
                .map_err(|_| FrameError::Malformed("entry too long"))?;
            if len > rest.len() {
                return Err(FrameError::Malformed("entry runs past the batch"));
            }
            let mut record = &rest[..len];
            rest = &rest[len..];
            // `put_record` writes the seq first, and a seq is never 0.
            let (field, wt) = decode_key(&mut record)?;
            if field != SEQ_FIELD || wt != WireType::Varint {
                return Err(FrameError::Malformed("record does not start with its seq"));
            }
            let seq = decode_varint(&mut record)?;
            Ok((seq, &whole[..whole.len() - rest.len()]))
        })();
        if entry.is_err() {
            // Stop after the first error: the framing is lost.
            rest = &[];
        }
        Some(entry)
    })
}

/// A batch's records, decoded.
pub fn decode_records(batch: &v1::RecordBatch) -> Result<Vec<v1::Record>, DecodeError> {
    batch
        .records
        .iter()
        .map(|r| v1::Record::decode(&r[..]))
        .collect()
}

/// A batch of decoded records.
pub fn batch_of(records: &[v1::Record]) -> v1::RecordBatch {
    v1::RecordBatch {
        records: records.iter().map(|r| r.encode_to_vec().into()).collect(),
    }
}

/// A run of records as the bytes of a `v1::RecordBatch`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodedBatch {
    pub bytes: Vec<u8>,
    pub count: usize,
    pub last_seq: u64,
}

impl EncodedBatch {
    /// Appends one entry from [`records`].
    pub fn push(&mut self, seq: u64, entry: &[u8]) {
        self.bytes.extend_from_slice(entry);
        self.count += 1;
        self.last_seq = seq;
    }

    pub fn decode(&self) -> Result<Vec<v1::Record>, DecodeError> {
        decode_records(&v1::RecordBatch::decode(&self.bytes[..])?)
    }
}

/// What the agent sends on its stream: an ordinary message, or records
/// already encoded. Encodes exactly as the `v1::AgentMessage` it stands
/// for, so the control plane decodes it with the generated type.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    Message(v1::AgentMessage),
    Records(EncodedBatch),
}

impl Message for Outbound {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            Outbound::Message(m) => m.encode_raw(buf),
            Outbound::Records(r) => {
                encode_key(AGENT_MESSAGE_RECORDS_FIELD, WireType::LengthDelimited, buf);
                encode_varint(r.bytes.len() as u64, buf);
                buf.put_slice(&r.bytes);
            }
        }
    }

    /// Never used: the control plane decodes `v1::AgentMessage`. Fields
    /// are skipped, as unknown fields are.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        match self {
            Outbound::Message(m) => m.encoded_len(),
            Outbound::Records(r) => 1 + encoded_len_varint(r.bytes.len() as u64) + r.bytes.len(),
        }
    }

    fn clear(&mut self) {
        *self = Outbound::Message(v1::AgentMessage::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::agent_message::Body;

    fn line(s: &str) -> Payload {
        Payload::Log(v1::LogLine {
            line: s.into(),
            ..Default::default()
        })
    }

    #[test]
    fn a_run_of_entries_is_the_agent_message_it_stands_for() {
        let payloads = [line("a"), line(&"b".repeat(300)), line("c")];
        let mut stored = Vec::new();
        for (seq, p) in (7..).zip(&payloads) {
            if seq == 8 {
                // Encoded ahead, as the agent's producers do.
                let mut bytes = Vec::new();
                p.encode(&mut bytes);
                put_encoded(seq, &bytes, &mut stored);
            } else {
                put_record(seq, p, &mut stored);
            }
        }
        // Send the last two, picked out of the stored bytes.
        let mut run = EncodedBatch::default();
        for r in records(&stored) {
            let (seq, entry) = r.unwrap();
            if seq > 7 {
                run.push(seq, entry);
            }
        }
        assert_eq!((run.count, run.last_seq), (2, 9));
        let wire = Outbound::Records(run.clone()).encode_to_vec();
        assert_eq!(wire.len(), Outbound::Records(run).encoded_len());
        let want = v1::AgentMessage {
            body: Some(Body::Records(batch_of(
                &(8..)
                    .zip(&payloads[1..])
                    .map(|(seq, p)| v1::Record {
                        seq,
                        payload: Some(p.clone()),
                    })
                    .collect::<Vec<_>>(),
            ))),
        };
        assert_eq!(v1::AgentMessage::decode(&wire[..]).unwrap(), want);
        let hello = Outbound::Message(want.clone()).encode_to_vec();
        assert_eq!(hello, want.encode_to_vec());
    }

    #[test]
    fn borrowed_events_and_lines_encode_as_the_generated_types() {
        let fields = [("", "empty name"), ("a", "1"), ("b", ""), ("é", "x\"y")];
        for (time, severity, message) in [
            (1_734_372_015_123, v1::Severity::High, "m"),
            (0, v1::Severity::Info, ""),
            (-5, v1::Severity::Critical, "ü"),
        ] {
            let e = EventRef {
                source: "suricata",
                path: "/var/log/suricata/eve.json",
                kind: "alert",
                severity,
                message,
                fields: fields.iter().copied(),
                time_unix_ms: time,
            };
            let mut mine = Vec::new();
            put_event(&e, &mut mine);
            let owned = Payload::Event(v1::Event {
                source: e.source.into(),
                path: e.path.into(),
                kind: e.kind.into(),
                severity: severity as i32,
                message: message.into(),
                fields: fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                time_unix_ms: time,
            });
            let mut want = Vec::new();
            owned.encode(&mut want);
            assert_eq!(mine, want, "same bytes as prost");
        }
        for (line, read, truncated, invalid_utf8) in [
            ("x", 7, true, false),
            ("", 0, false, true),
            ("\u{fffd}", -1, false, false),
        ] {
            let l = LogRef {
                source: "raw",
                path: "/p",
                line,
                read_unix_ms: read,
                truncated,
                invalid_utf8,
            };
            let mut mine = Vec::new();
            put_log(&l, &mut mine);
            let mut want = Vec::new();
            Payload::Log(v1::LogLine {
                source: "raw".into(),
                path: "/p".into(),
                line: line.into(),
                read_unix_ms: read,
                truncated,
                invalid_utf8,
            })
            .encode(&mut want);
            assert_eq!(mine, want);
        }
        // A repeated name decodes as its last value, as a map would keep it.
        let mut bytes = Vec::new();
        put_event(
            &EventRef {
                source: "s",
                path: "",
                kind: "k",
                severity: v1::Severity::Low,
                message: "",
                fields: [("a", "1"), ("a", "2")].into_iter(),
                time_unix_ms: 1,
            },
            &mut bytes,
        );
        let mut rec = Vec::new();
        put_encoded(3, &bytes, &mut rec);
        let got = decode_records(&v1::RecordBatch::decode(&rec[..]).unwrap()).unwrap();
        let Some(Payload::Event(e)) = &got[0].payload else {
            panic!("{got:?}")
        };
        assert_eq!(e.fields["a"], "2");
    }

    #[test]
    fn broken_framing_is_an_error_not_a_panic() {
        let mut stored = Vec::new();
        put_record(1, &line("hello"), &mut stored);
        for cut in 0..stored.len() {
            let n = records(&stored[..cut]).filter(|r| r.is_err()).count();
            assert!(cut == 0 || n == 1, "cut at {cut}");
        }
        assert!(records(&[0xff, 0xff, 0xff]).next().unwrap().is_err());
    }
}
