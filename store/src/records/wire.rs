//! Records as the agent sent them: blocks hold each record's encoded
//! payload (a `v1::Event` or `v1::LogLine`, checked at ingest by
//! `picket_proto::scan`) with what ingest adds (id, sequence number, time
//! received), and are decoded only when read. Storing a batch thus costs
//! a sort and a copy, not a decode into owned strings and an encode again.
//!
//! A block's entries, one after another, each a run of varints then the
//! payload: `id, seq, received_ms, len, payload[len]`.

use std::borrow::Cow;

use picket_model::Severity;
use picket_proto::v1;
use prost::Message;
use prost::encoding::{decode_varint, encode_varint};

use super::{EventRecord, LogRecord};

/// One event or log line to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Wire<'a> {
    /// The fleet-wide ingest id (given by the feed when stored).
    pub id: u64,
    pub seq: u64,
    /// The event's time, or when the line was read: from the payload.
    pub time_ms: i64,
    pub received_ms: i64,
    /// The encoded `v1::Event` or `v1::LogLine`.
    pub payload: Cow<'a, [u8]>,
}

impl Wire<'_> {
    /// Appends this record as a block entry.
    pub(super) fn put(&self, out: &mut Vec<u8>) {
        encode_varint(self.id, out);
        encode_varint(self.seq, out);
        encode_varint(self.received_ms as u64, out);
        encode_varint(self.payload.len() as u64, out);
        out.extend_from_slice(&self.payload);
    }

    /// About the bytes its entry takes.
    pub(super) fn size_hint(&self) -> usize {
        self.payload.len() + 24
    }
}

/// The entries of a block, payloads borrowed from it. An entry does not
/// repeat the time its payload holds: `time_ms` is 0 here, and readers
/// take the time from the decoded payload ([`FromWire`]).
pub(super) fn entries(
    mut block: &[u8],
) -> impl Iterator<Item = Result<Wire<'_>, &'static str>> + '_ {
    std::iter::from_fn(move || {
        if block.is_empty() {
            return None;
        }
        let entry = (|| {
            let mut num = || decode_varint(&mut block).map_err(|_| "bad varint in a block");
            let (id, seq, received, len) = (num()?, num()?, num()?, num()?);
            let len = usize::try_from(len).map_err(|_| "entry too long")?;
            if len > block.len() {
                return Err("entry runs past its block");
            }
            let (payload, rest) = block.split_at(len);
            block = rest;
            Ok(Wire {
                id,
                seq,
                time_ms: 0,
                received_ms: received as i64,
                payload: Cow::Borrowed(payload),
            })
        })();
        if entry.is_err() {
            block = &[];
        }
        Some(entry)
    })
}

/// A stored record, to and from its block entry.
pub trait FromWire: Sized {
    fn from_wire(host: &str, w: &Wire<'_>) -> Result<Self, prost::DecodeError>;
    fn to_wire(&self) -> Wire<'static>;
}

impl FromWire for EventRecord {
    fn from_wire(host: &str, w: &Wire<'_>) -> Result<Self, prost::DecodeError> {
        let e = v1::Event::decode(&w.payload[..])?;
        Ok(EventRecord {
            id: w.id,
            host: host.to_string(),
            source: e.source,
            path: e.path,
            seq: w.seq,
            time_ms: e.time_unix_ms,
            received_ms: w.received_ms,
            severity: picket_proto::convert::severity(e.severity).unwrap_or(Severity::Info),
            kind: e.kind,
            message: e.message,
            fields: e.fields,
        })
    }

    fn to_wire(&self) -> Wire<'static> {
        let e = v1::Event {
            source: self.source.clone(),
            path: self.path.clone(),
            kind: self.kind.clone(),
            severity: v1::Severity::from(self.severity) as i32,
            message: self.message.clone(),
            fields: self.fields.clone(),
            time_unix_ms: self.time_ms,
        };
        Wire {
            id: self.id,
            seq: self.seq,
            time_ms: self.time_ms,
            received_ms: self.received_ms,
            payload: Cow::Owned(e.encode_to_vec()),
        }
    }
}

impl FromWire for LogRecord {
    fn from_wire(host: &str, w: &Wire<'_>) -> Result<Self, prost::DecodeError> {
        let l = v1::LogLine::decode(&w.payload[..])?;
        Ok(LogRecord {
            id: w.id,
            host: host.to_string(),
            source: l.source,
            path: l.path,
            seq: w.seq,
            time_ms: l.read_unix_ms,
            line: l.line,
            truncated: l.truncated,
            invalid_utf8: l.invalid_utf8,
        })
    }

    fn to_wire(&self) -> Wire<'static> {
        let l = v1::LogLine {
            source: self.source.clone(),
            path: self.path.clone(),
            line: self.line.clone(),
            read_unix_ms: self.time_ms,
            truncated: self.truncated,
            invalid_utf8: self.invalid_utf8,
        };
        Wire {
            id: self.id,
            seq: self.seq,
            time_ms: self.time_ms,
            // Log lines carry no receive time.
            received_ms: 0,
            payload: Cow::Owned(l.encode_to_vec()),
        }
    }
}
