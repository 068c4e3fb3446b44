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
    encoded_len_varint, skip_field, uint64,
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

/// `RecordBatch.records` and `Record.seq`.
const RECORDS_FIELD: u32 = 1;
const SEQ_FIELD: u32 = 1;
/// `AgentMessage.body.records`.
const AGENT_MESSAGE_RECORDS_FIELD: u32 = 3;

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
        Ok(v1::RecordBatch::decode(&self.bytes[..])?.records)
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
            body: Some(Body::Records(v1::RecordBatch {
                records: (8..)
                    .zip(&payloads[1..])
                    .map(|(seq, p)| v1::Record {
                        seq,
                        payload: Some(p.clone()),
                    })
                    .collect(),
            })),
        };
        assert_eq!(v1::AgentMessage::decode(&wire[..]).unwrap(), want);
        let hello = Outbound::Message(want.clone()).encode_to_vec();
        assert_eq!(hello, want.encode_to_vec());
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
