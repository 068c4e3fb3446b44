//! Stored records as the admin API's messages (`v1::StoredEvent`,
//! `v1::Agent`, series), and an agent's inventory as stored: the
//! conversions at the gRPC edge, one definition of each.

use picket_model::AgentStatus;
use picket_proto::v1;

use std::collections::BTreeMap;

use crate::metrics::{Rollup, Sample};
use crate::records::{EventRecord, LogRecord};

pub fn event(e: &EventRecord) -> v1::StoredEvent {
    v1::StoredEvent {
        host: e.host.clone(),
        source: e.source.clone(),
        path: e.path.clone(),
        seq: e.seq,
        time_unix_ms: e.time_ms,
        received_unix_ms: e.received_ms,
        severity: v1::Severity::from(e.severity) as i32,
        kind: e.kind.clone(),
        message: e.message.clone(),
        fields: e.fields.clone(),
        cursor: crate::records::cursor(e.id),
    }
}

pub fn log_line(l: &LogRecord) -> v1::StoredLogLine {
    v1::StoredLogLine {
        host: l.host.clone(),
        source: l.source.clone(),
        path: l.path.clone(),
        seq: l.seq,
        time_unix_ms: l.time_ms,
        line: l.line.clone(),
        truncated: l.truncated,
        invalid_utf8: l.invalid_utf8,
        cursor: crate::records::cursor(l.id),
    }
}
use crate::{AgentRecord, Inventory};

type SeriesKey = (String, BTreeMap<String, String>);

fn series(map: BTreeMap<SeriesKey, Vec<v1::SeriesPoint>>) -> Vec<v1::Series> {
    map.into_iter()
        .map(|((name, labels), points)| v1::Series {
            name,
            labels: labels.into_iter().collect(),
            points,
        })
        .collect()
}

/// Raw samples as one series per gauge (name and labels), points in time
/// order, keeping only names that start with `field`.
pub fn raw_series(samples: Vec<Sample>, field: &str) -> Vec<v1::Series> {
    let mut map: BTreeMap<SeriesKey, Vec<v1::SeriesPoint>> = BTreeMap::new();
    for s in samples {
        for p in s.points.into_iter().filter(|p| p.name.starts_with(field)) {
            map.entry((p.name, p.labels))
                .or_default()
                .push(v1::SeriesPoint {
                    time_unix_ms: s.time_ms,
                    value: p.value,
                    min: p.value,
                    max: p.value,
                });
        }
    }
    series(map)
}

/// One-minute rollups as series of minute averages with min and max.
pub fn rollup_series(minutes: Vec<(i64, Vec<Rollup>)>, field: &str) -> Vec<v1::Series> {
    let mut map: BTreeMap<SeriesKey, Vec<v1::SeriesPoint>> = BTreeMap::new();
    for (t, rs) in minutes {
        for r in rs.into_iter().filter(|r| r.name.starts_with(field)) {
            let avg = r.avg();
            map.entry((r.name, r.labels))
                .or_default()
                .push(v1::SeriesPoint {
                    time_unix_ms: t,
                    value: avg,
                    min: r.min,
                    max: r.max,
                });
        }
    }
    series(map)
}

pub fn agent(rec: &AgentRecord, online: bool) -> v1::Agent {
    let status = if rec.revoked_ms.is_some() {
        AgentStatus::Revoked
    } else if online {
        AgentStatus::Online
    } else {
        AgentStatus::Offline
    };
    v1::Agent {
        name: rec.name.clone(),
        labels: rec.labels().into_iter().collect(),
        status: v1::AgentStatus::from(status) as i32,
        last_seen_unix_ms: rec.last_seen_ms,
        inventory: rec.inventory.as_ref().map(|i| v1::Inventory {
            hostname: i.hostname.clone(),
            os: i.os.clone(),
            kernel: i.kernel.clone(),
            cpu_count: i.cpu_count,
            memory_bytes: i.memory_bytes,
            agent_version: i.agent_version.clone(),
            labels: rec.reported_labels.clone().into_iter().collect(),
            addresses: i.addresses.clone(),
        }),
        enrolled_unix_ms: rec.enrolled_ms,
        cert_not_after_unix_ms: rec.cert_not_after_ms,
        last_rollout: None,
        not_stored: false,
        clock_offset_ms: None,
    }
}

/// The most characters of an inventory text, and the most addresses, the
/// control plane keeps of what an agent says (it is rewritten on every
/// connect and shown in every `agents list`).
const INVENTORY_CHARS: usize = 256;
const INVENTORY_ADDRESSES: usize = 64;

/// An inventory text as kept: at most [`INVENTORY_CHARS`], control
/// characters written `\xNN` (it reaches the control plane's log and
/// every terminal that lists agents).
fn capped(s: &str) -> String {
    picket_model::escape_controls(s, INVENTORY_CHARS).0
}

pub fn inventory(i: &v1::Inventory) -> Inventory {
    Inventory {
        hostname: capped(&i.hostname),
        os: capped(&i.os),
        kernel: capped(&i.kernel),
        cpu_count: i.cpu_count,
        memory_bytes: i.memory_bytes,
        agent_version: capped(&i.agent_version),
        addresses: i
            .addresses
            .iter()
            .take(INVENTORY_ADDRESSES)
            .map(|a| capped(a))
            .collect(),
    }
}
