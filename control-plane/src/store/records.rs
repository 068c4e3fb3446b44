//! Events and raw log lines on disk, in one time order across the fleet.
//!
//! Keys are `time_ms(u64 BE) ‖ id(u64 BE)`, where `id` is a fleet-wide
//! ingest number (unique, increasing in the order records were stored), so
//! a `--since` query is one range scan and retention is a prefix delete.
//! Host, source and severity are filtered during the scan.

use std::collections::BTreeMap;

use picket_proto::model::Severity;
use serde::{Deserialize, Serialize};

use super::backend::Op;
use super::metrics::{Sample, acked_op, sample_ops};
use super::{Store, StoreError, decode, encode};

const EVENTS: &str = "events";
const LOGS: &str = "logs";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub id: u64,
    pub host: String,
    pub source: String,
    pub path: String,
    pub seq: u64,
    pub time_ms: i64,
    pub received_ms: i64,
    pub severity: Severity,
    pub kind: String,
    pub message: String,
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub id: u64,
    pub host: String,
    pub source: String,
    pub path: String,
    pub seq: u64,
    pub time_ms: i64,
    pub line: String,
    #[serde(default)]
    pub truncated: bool,
    #[serde(default)]
    pub invalid_utf8: bool,
}

fn key(time_ms: i64, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&(time_ms.max(0) as u64).to_be_bytes());
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn time_of(k: &[u8]) -> i64 {
    k.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(|b| u64::from_be_bytes(b) as i64)
        .unwrap_or(0)
}

/// What one agent batch stores.
#[derive(Debug, Default)]
pub struct Records {
    pub samples: Vec<Sample>,
    pub events: Vec<EventRecord>,
    pub logs: Vec<LogRecord>,
}

impl Store {
    /// A fresh ingest id for each of `n` records.
    pub fn ingest_ids(&self, n: usize) -> Result<Vec<u64>, StoreError> {
        (0..n).map(|_| self.kv.next_id()).collect()
    }

    /// Stores a batch and moves `host`'s acked sequence number, atomically.
    pub fn put_records(&self, host: &str, r: &Records, acked: u64) -> Result<(), StoreError> {
        let mut ops = Vec::with_capacity(r.samples.len() + r.events.len() + r.logs.len() + 1);
        sample_ops(host, &r.samples, &mut ops);
        ops.extend(r.events.iter().map(|e| Op {
            tree: EVENTS,
            key: key(e.time_ms, e.id),
            value: Some(encode(e)),
        }));
        ops.extend(r.logs.iter().map(|l| Op {
            tree: LOGS,
            key: key(l.time_ms, l.id),
            value: Some(encode(l)),
        }));
        self.kv.apply(&acked_op(host, acked, ops))
    }

    /// Events with `time >= since`, oldest first, streamed from disk.
    pub fn events_since(
        &self,
        since: i64,
    ) -> Result<impl Iterator<Item = Result<EventRecord, StoreError>> + '_, StoreError> {
        Ok(self
            .kv
            .scan_from(EVENTS, &key(since, 0))?
            .map(|kv| kv.and_then(|(_, v)| decode(EVENTS, &v))))
    }

    /// Log lines with `time >= since`, oldest first, streamed from disk.
    pub fn logs_since(
        &self,
        since: i64,
    ) -> Result<impl Iterator<Item = Result<LogRecord, StoreError>> + '_, StoreError> {
        Ok(self
            .kv
            .scan_from(LOGS, &key(since, 0))?
            .map(|kv| kv.and_then(|(_, v)| decode(LOGS, &v))))
    }

    /// Deletes events and log lines older than the given times.
    pub fn expire_records(
        &self,
        events_before: i64,
        logs_before: i64,
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        for (tree, before) in [(EVENTS, events_before), (LOGS, logs_before)] {
            loop {
                let old: Vec<Vec<u8>> = self
                    .kv
                    .scan_from(tree, &[])?
                    .take(1000)
                    .map(|kv| kv.map(|(k, _)| k))
                    .take_while(|k| k.as_ref().map_or(true, |k| time_of(k) < before))
                    .collect::<Result<_, _>>()?;
                if old.is_empty() {
                    break;
                }
                n += old.len();
                let ops: Vec<Op> = old
                    .into_iter()
                    .map(|key| Op {
                        tree,
                        key,
                        value: None,
                    })
                    .collect();
                self.kv.apply(&ops)?;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: u64, t: i64) -> EventRecord {
        EventRecord {
            id,
            host: "h".into(),
            source: "sshd".into(),
            path: "/var/log/auth.log".into(),
            seq: id,
            time_ms: t,
            received_ms: t,
            severity: Severity::Low,
            kind: "auth_failure".into(),
            message: "m".into(),
            fields: BTreeMap::new(),
        }
    }

    #[test]
    fn time_ordered_with_acks_and_retention() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let r = Records {
            events: vec![ev(2, 200), ev(1, 100), ev(3, 300)],
            logs: vec![LogRecord {
                id: 4,
                host: "h".into(),
                source: "raw".into(),
                path: "/x".into(),
                seq: 4,
                time_ms: 150,
                line: "l".into(),
                truncated: false,
                invalid_utf8: false,
            }],
            ..Default::default()
        };
        s.put_records("h", &r, 4).unwrap();
        assert_eq!(s.acked_seq("h").unwrap(), 4);
        let t: Vec<i64> = s
            .events_since(0)
            .unwrap()
            .map(|e| e.unwrap().time_ms)
            .collect();
        assert_eq!(t, vec![100, 200, 300]);
        let t: Vec<i64> = s
            .events_since(200)
            .unwrap()
            .map(|e| e.unwrap().time_ms)
            .collect();
        assert_eq!(t, vec![200, 300]);
        assert_eq!(s.logs_since(0).unwrap().count(), 1);
        assert_eq!(s.expire_records(250, 0).unwrap(), 2);
        assert_eq!(s.events_since(0).unwrap().count(), 1);
        let ids = s.ingest_ids(3).unwrap();
        assert!(ids[0] < ids[1] && ids[1] < ids[2]);
    }
}
