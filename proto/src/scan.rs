//! Reading encoded records without decoding them.
//!
//! The control plane stores events and log lines as the bytes the agent
//! sent (`RecordBatch.records` entries are kept as bytes). To store a
//! record it needs its sequence number, its kind and its time, and the
//! assurance that the generated types will decode it when it is read:
//! [`record`] splits a record, and [`event_time`] and [`log_time`] check a
//! payload field by field (wire types, UTF-8 of every string, map entries)
//! as prost would, and return its time. Nothing is allocated.

use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};

use crate::frame::FrameError;
use crate::frame::field::{entry, event, log, record};

/// One encoded `Record`, split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub seq: u64,
    pub payload: PayloadView<'a>,
}

/// A record's payload: the encoded message of its `oneof` variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadView<'a> {
    None,
    Metrics(&'a [u8]),
    Event(&'a [u8]),
    Log(&'a [u8]),
}

/// A field's value, as the wire gives it.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// A fixed-size value or a group: no Picket field is one.
    Other,
}

/// Calls `f` with each field of an encoded message (values of the wire
/// types no Picket field uses are skipped, and given as `Other`).
fn fields<'a>(
    mut buf: &'a [u8],
    mut f: impl FnMut(u32, Value<'a>) -> Result<(), FrameError>,
) -> Result<(), FrameError> {
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        match wire_type {
            WireType::Varint => f(tag, Value::Varint(decode_varint(&mut buf)?))?,
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut buf)?)
                    .map_err(|_| FrameError::Malformed("field too long"))?;
                if len > buf.len() {
                    return Err(FrameError::Malformed("field runs past its message"));
                }
                let (value, rest) = buf.split_at(len);
                buf = rest;
                f(tag, Value::Bytes(value))?;
            }
            other => {
                skip_field(other, tag, &mut buf, DecodeContext::default())?;
                f(tag, Value::Other)?;
            }
        }
    }
    Ok(())
}

const WRONG_TYPE: FrameError = FrameError::Malformed("a field has the wrong wire type");

fn string(v: &Value<'_>) -> Result<(), FrameError> {
    match v {
        Value::Bytes(b) => std::str::from_utf8(b)
            .map(drop)
            .map_err(|_| FrameError::Malformed("a string is not UTF-8")),
        Value::Varint(_) | Value::Other => Err(WRONG_TYPE),
    }
}

fn varint(v: &Value<'_>) -> Result<u64, FrameError> {
    match v {
        Value::Varint(n) => Ok(*n),
        Value::Bytes(_) | Value::Other => Err(WRONG_TYPE),
    }
}

/// Splits one `RecordBatch.records` entry (an encoded `Record`).
pub fn record(bytes: &[u8]) -> Result<RecordView<'_>, FrameError> {
    let mut view = RecordView {
        seq: 0,
        payload: PayloadView::None,
    };
    fields(bytes, |tag, v| {
        match tag {
            record::SEQ => view.seq = varint(&v)?,
            record::METRICS | record::EVENT | record::LOG => {
                let Value::Bytes(b) = v else {
                    return Err(WRONG_TYPE);
                };
                if view.payload != PayloadView::None {
                    // prost would merge the two; no agent writes that.
                    return Err(FrameError::Malformed("a record with two payloads"));
                }
                view.payload = match tag {
                    record::METRICS => PayloadView::Metrics(b),
                    record::EVENT => PayloadView::Event(b),
                    _ => PayloadView::Log(b),
                };
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(view)
}

/// What an alert rule looks at first: an event's source, kind and
/// severity (the wire's number), borrowed from its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventHead<'a> {
    pub source: &'a str,
    pub kind: &'a str,
    pub severity: i32,
}

/// Calls `f` with each of an encoded `Event`'s `fields` entries (key,
/// value), borrowed from the encoding: the rest (the message above all)
/// is neither decoded nor copied.
pub fn event_fields<'a>(
    bytes: &'a [u8],
    mut f: impl FnMut(&'a str, &'a str),
) -> Result<(), FrameError> {
    fields(bytes, |tag, v| {
        if tag != event::FIELDS {
            return Ok(());
        }
        let Value::Bytes(e) = v else {
            return Err(WRONG_TYPE);
        };
        let (mut key, mut value) = ("", "");
        fields(e, |tag, v| {
            match tag {
                entry::KEY => key = text(&v)?,
                entry::VALUE => value = text(&v)?,
                _ => {}
            }
            Ok(())
        })?;
        f(key, value);
        Ok(())
    })
}

/// Checks an encoded `Event`; returns its `time_unix_ms`.
pub fn event_time(bytes: &[u8]) -> Result<i64, FrameError> {
    event_check(bytes).map(|(time, _)| time)
}

fn text<'a>(v: &Value<'a>) -> Result<&'a str, FrameError> {
    match v {
        Value::Bytes(b) => {
            std::str::from_utf8(b).map_err(|_| FrameError::Malformed("a string is not UTF-8"))
        }
        Value::Varint(_) | Value::Other => Err(WRONG_TYPE),
    }
}

/// Checks an encoded `Event` field by field, as prost would decode it;
/// returns its `time_unix_ms` and its head (what an alert rule looks at
/// first), in one pass and allocating nothing.
pub fn event_check(bytes: &[u8]) -> Result<(i64, EventHead<'_>), FrameError> {
    let mut time = 0;
    let mut head = EventHead::default();
    fields(bytes, |tag, v| {
        match tag {
            event::SOURCE => head.source = text(&v)?,
            event::KIND => head.kind = text(&v)?,
            event::PATH | event::MESSAGE => string(&v)?,
            event::SEVERITY => head.severity = i32::try_from(varint(&v)?).unwrap_or(0),
            event::FIELDS => {
                let Value::Bytes(e) = v else {
                    return Err(WRONG_TYPE);
                };
                fields(e, |tag, v| match tag {
                    entry::KEY | entry::VALUE => string(&v),
                    _ => Ok(()),
                })?;
            }
            event::TIME => time = varint(&v)? as i64,
            _ => {}
        }
        Ok(())
    })?;
    Ok((time, head))
}

/// Checks an encoded `LogLine`; returns its `read_unix_ms`.
pub fn log_time(bytes: &[u8]) -> Result<i64, FrameError> {
    let mut time = 0;
    fields(bytes, |tag, v| {
        match tag {
            log::SOURCE | log::PATH | log::LINE => string(&v)?,
            log::READ => time = varint(&v)? as i64,
            log::TRUNCATED | log::INVALID_UTF8 => drop(varint(&v)?),
            _ => {}
        }
        Ok(())
    })?;
    Ok(time)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::frame::{self, EventRef, LogRef};
    use crate::v1::{self, record::Payload};

    fn encoded(seq: u64, p: &Payload) -> Vec<u8> {
        v1::Record {
            seq,
            payload: Some(p.clone()),
        }
        .encode_to_vec()
    }

    #[test]
    fn records_split_and_payloads_check_as_prost_decodes_them() {
        let event = Payload::Event(v1::Event {
            source: "suricata".into(),
            kind: "alert".into(),
            severity: v1::Severity::High as i32,
            message: "m".into(),
            fields: [("a".to_string(), "é".to_string()), ("".into(), "".into())].into(),
            time_unix_ms: -7,
            ..Default::default()
        });
        let bytes = encoded(9, &event);
        let view = record(&bytes).unwrap();
        assert_eq!(view.seq, 9);
        let PayloadView::Event(e) = view.payload else {
            panic!("{view:?}")
        };
        assert_eq!(event_time(e).unwrap(), -7);
        let mut fs = Vec::new();
        event_fields(e, |k, v| fs.push((k, v))).unwrap();
        fs.sort();
        assert_eq!(fs, [("", ""), ("a", "é")]);
        let (_, head) = event_check(e).unwrap();
        assert_eq!(
            (head.source, head.kind, head.severity),
            ("suricata", "alert", v1::Severity::High as i32)
        );
        assert_eq!(v1::Event::decode(e).map(|e| e.time_unix_ms).unwrap(), -7);

        let log = Payload::Log(v1::LogLine {
            line: "x".into(),
            read_unix_ms: 1_734_372_015_123,
            truncated: true,
            ..Default::default()
        });
        let bytes = encoded(10, &log);
        let PayloadView::Log(l) = record(&bytes).unwrap().payload else {
            panic!()
        };
        assert_eq!(log_time(l).unwrap(), 1_734_372_015_123);

        let metrics = Payload::Metrics(v1::MetricSample::default());
        assert!(matches!(
            record(&encoded(11, &metrics)).unwrap().payload,
            PayloadView::Metrics(_)
        ));
        assert_eq!(record(&[8, 12]).unwrap().payload, PayloadView::None);
    }

    /// Whatever the bytes, a payload the checks pass decodes with the
    /// generated type: cut, flipped and spliced encodings of real ones.
    #[test]
    fn what_passes_the_check_decodes() {
        let mut ev = Vec::new();
        frame::put_event(
            &EventRef {
                source: "s",
                path: "/p",
                kind: "k",
                severity: v1::Severity::Low,
                message: "hello \u{e9}",
                fields: [("ip", "192.0.2.1"), ("user", "r\u{f6}ot")].into_iter(),
                time_unix_ms: 5,
            },
            &mut ev,
        );
        let mut log = Vec::new();
        frame::put_log(
            &LogRef {
                source: "s",
                path: "/p",
                line: "l\u{e9}",
                read_unix_ms: 5,
                truncated: false,
                invalid_utf8: true,
            },
            &mut log,
        );
        // Strip the payload's own key and length: the message bytes.
        let (ev, log) = (&ev[2..], &log[2..]);
        let (mut passed, mut rejected) = (0, 0);
        for base in [ev, log] {
            for i in 0..base.len() {
                for change in [0x00u8, 0x80, 0xc3, 0xff, 0x07, 0x0a] {
                    for cut in [base.len(), i + 1] {
                        let mut b = base[..cut].to_vec();
                        b[i] = change;
                        let (e, l) = (event_time(&b), log_time(&b));
                        if e.is_ok() {
                            v1::Event::decode(&b[..]).expect("checked event decodes");
                        }
                        if l.is_ok() {
                            v1::LogLine::decode(&b[..]).expect("checked line decodes");
                        }
                        if e.is_ok() || l.is_ok() {
                            passed += 1;
                        } else {
                            rejected += 1;
                        }
                    }
                }
            }
        }
        assert!(
            passed > 0 && rejected > 0,
            "{passed} passed, {rejected} rejected"
        );
        assert!(event_time(&[0x0a, 0x02, 0xc3, 0x28]).is_err(), "bad UTF-8");
        assert!(event_time(&[0x38, 0x01, 0x0a]).is_err(), "truncated");
        assert!(log_time(&[0x22, 0x00]).is_err(), "time as bytes");
        // Found by `cargo fuzz run scan`: a known field as a fixed32.
        assert!(event_time(&[0x2d, 0x29, 0x8a, 0xc5, 0xac]).is_err());
        assert!(v1::Event::decode(&[0x2d, 0x29, 0x8a, 0xc5, 0xac][..]).is_err());
        // Unknown fields of any wire type are skipped, as prost does.
        assert_eq!(log_time(&[0x4d, 1, 2, 3, 4, 0x20, 0x05]).unwrap(), 5);
    }
}
