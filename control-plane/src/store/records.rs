//! Events and raw log lines on disk, in one time order across the fleet.
//!
//! Keys are `time_ms(u64 BE) ‖ id(u64 BE)`, where `id` is a fleet-wide
//! ingest number (unique, increasing in the order records were stored), so
//! a `--since` query is one range scan and retention is a prefix delete.
//! A per-host index (`host \0 time ‖ id`, empty values) serves `--host`
//! queries without reading other hosts' records; source, severity and
//! `--grep` are filtered during the scan (few values each: an index would
//! save little over the time range).

use std::collections::BTreeMap;

use picket_proto::model::Severity;
use serde::{Deserialize, Serialize};

use super::backend::Op;
use super::metrics::{Sample, acked_op, sample_ops};
use super::{Store, StoreError, decode, encode};

const EVENTS: &str = "events";
const LOGS: &str = "logs";
const EVENTS_BY_HOST: &str = "events_by_host";
const LOGS_BY_HOST: &str = "logs_by_host";

fn host_key(host: &str, time_ms: i64, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(host.len() + 17);
    k.extend_from_slice(host.as_bytes());
    k.push(0);
    k.extend_from_slice(&key(time_ms, id));
    k
}

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
        for e in &r.events {
            ops.push(Op {
                tree: EVENTS,
                key: key(e.time_ms, e.id),
                value: Some(encode(e)),
            });
            ops.push(Op {
                tree: EVENTS_BY_HOST,
                key: host_key(&e.host, e.time_ms, e.id),
                value: Some(Vec::new()),
            });
        }
        for l in &r.logs {
            ops.push(Op {
                tree: LOGS,
                key: key(l.time_ms, l.id),
                value: Some(encode(l)),
            });
            ops.push(Op {
                tree: LOGS_BY_HOST,
                key: host_key(&l.host, l.time_ms, l.id),
                value: Some(Vec::new()),
            });
        }
        self.kv.apply(&acked_op(host, acked, ops))
    }

    /// Events with `time >= since` (of `host` only, if given), oldest
    /// first, streamed from disk.
    pub fn events_since<'a>(
        &'a self,
        since: i64,
        host: Option<&str>,
    ) -> Result<Box<dyn Iterator<Item = Result<EventRecord, StoreError>> + 'a>, StoreError> {
        self.records_since(EVENTS, EVENTS_BY_HOST, since, host)
    }

    /// Log lines with `time >= since` (of `host` only, if given), oldest
    /// first, streamed from disk.
    pub fn logs_since<'a>(
        &'a self,
        since: i64,
        host: Option<&str>,
    ) -> Result<Box<dyn Iterator<Item = Result<LogRecord, StoreError>> + 'a>, StoreError> {
        self.records_since(LOGS, LOGS_BY_HOST, since, host)
    }

    fn records_since<'a, T: serde::de::DeserializeOwned + 'a>(
        &'a self,
        tree: &'static str,
        index: &'static str,
        since: i64,
        host: Option<&str>,
    ) -> Result<Box<dyn Iterator<Item = Result<T, StoreError>> + 'a>, StoreError> {
        let Some(host) = host else {
            return Ok(Box::new(
                self.kv
                    .scan_from(tree, &key(since, 0))?
                    .map(move |kv| kv.and_then(|(_, v)| decode(tree, &v))),
            ));
        };
        let prefix_len = host.len() + 1;
        let mut prefix = host.as_bytes().to_vec();
        prefix.push(0);
        let it = self
            .kv
            .scan_from(index, &host_key(host, since, 0))?
            .take_while(move |kv| kv.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
            .filter_map(move |kv| match kv {
                Err(e) => Some(Err(e)),
                // An index entry whose record retention already removed
                // is skipped.
                Ok((k, _)) => match self.kv.get(tree, &k[prefix_len..]) {
                    Ok(Some(v)) => Some(decode(tree, &v)),
                    Ok(None) => None,
                    Err(e) => Some(Err(e)),
                },
            });
        Ok(Box::new(it))
    }

    /// Deletes events and log lines (and their index entries) older than
    /// the given times.
    pub fn expire_records(
        &self,
        events_before: i64,
        logs_before: i64,
    ) -> Result<usize, StoreError> {
        #[derive(Deserialize)]
        struct HostOnly {
            host: String,
        }
        let mut n = 0;
        for (tree, index, before) in [
            (EVENTS, EVENTS_BY_HOST, events_before),
            (LOGS, LOGS_BY_HOST, logs_before),
        ] {
            loop {
                let old: Vec<(Vec<u8>, Vec<u8>)> = self
                    .kv
                    .scan_from(tree, &[])?
                    .take(1000)
                    .take_while(|kv| kv.as_ref().map_or(true, |(k, _)| time_of(k) < before))
                    .collect::<Result<_, _>>()?;
                if old.is_empty() {
                    break;
                }
                n += old.len();
                let mut ops = Vec::with_capacity(old.len() * 2);
                for (k, v) in old {
                    if let Ok(h) = serde_json::from_slice::<HostOnly>(&v) {
                        let mut ik = h.host.into_bytes();
                        ik.push(0);
                        ik.extend_from_slice(&k);
                        ops.push(Op {
                            tree: index,
                            key: ik,
                            value: None,
                        });
                    }
                    ops.push(Op {
                        tree,
                        key: k,
                        value: None,
                    });
                }
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
        let other = Records {
            events: vec![EventRecord {
                host: "g".into(),
                ..ev(5, 250)
            }],
            ..Default::default()
        };
        s.put_records("g", &other, 1).unwrap();
        let times = |host: Option<&str>, since: i64| -> Vec<i64> {
            s.events_since(since, host)
                .unwrap()
                .map(|e| e.unwrap().time_ms)
                .collect()
        };
        assert_eq!(times(None, 0), vec![100, 200, 250, 300]);
        assert_eq!(
            times(Some("h"), 200),
            vec![200, 300],
            "the host index skips g's event"
        );
        assert_eq!(times(Some("g"), 0), vec![250]);
        assert!(times(Some("nobody"), 0).is_empty());
        assert_eq!(s.logs_since(0, Some("h")).unwrap().count(), 1);
        assert_eq!(s.expire_records(250, 0).unwrap(), 2);
        assert_eq!(times(None, 0), vec![250, 300]);
        assert_eq!(times(Some("h"), 0), vec![300]);
        assert_eq!(
            s.kv.scan(EVENTS_BY_HOST, b"").unwrap().count(),
            2,
            "index entries expire with their records"
        );
        let ids = s.ingest_ids(3).unwrap();
        assert!(ids[0] < ids[1] && ids[1] < ids[2]);
    }
}
