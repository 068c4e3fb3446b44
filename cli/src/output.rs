//! Output: aligned tables for people, JSON lines (the SPEC's contract) for
//! programs. Rows are written as they come.

use std::io::{self, Write};

use picket_proto::model::AgentStatus;
use picket_proto::v1;
use serde_json::{Value, json};
use tabwriter::TabWriter;

/// RFC 3339 UTC with milliseconds; `None` for 0 (never).
pub fn time(ms: i64) -> Option<String> {
    if ms == 0 {
        return None;
    }
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt).ok()
}

/// "3s ago", "5m ago": for tables.
pub fn ago(ms: i64, now_ms: i64) -> String {
    if ms == 0 {
        return "never".into();
    }
    let secs = (now_ms - ms).max(0) / 1000;
    match secs {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86400),
    }
}

pub fn status_str(code: i32) -> &'static str {
    AgentStatus::try_from(code).map_or("unknown", AgentStatus::as_str)
}

pub fn agent_json(a: &v1::Agent) -> Value {
    let inv = a.inventory.clone().unwrap_or_default();
    json!({
        "name": a.name,
        "labels": a.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "status": status_str(a.status),
        "last_seen": time(a.last_seen_unix_ms),
        "version": inv.agent_version,
        "os": inv.os,
        "kernel": inv.kernel,
        "addresses": inv.addresses,
        "hostname": inv.hostname,
        "cpu_count": inv.cpu_count,
        "memory_bytes": inv.memory_bytes,
        "enrolled": time(a.enrolled_unix_ms),
        "cert_expires": time(a.cert_not_after_unix_ms),
    })
}

/// One JSON object on one line.
pub fn json_line(out: &mut impl Write, v: &Value) -> io::Result<()> {
    serde_json::to_writer(&mut *out, v)?;
    out.write_all(b"\n")
}

/// A table: a header, then rows, columns aligned.
pub struct Table<W: Write> {
    tw: TabWriter<W>,
}

impl<W: Write> Table<W> {
    pub fn new(out: W, header: &[&str]) -> io::Result<Self> {
        let mut t = Table {
            tw: TabWriter::new(out).padding(2),
        };
        t.row(header)?;
        Ok(t)
    }

    pub fn row<S: AsRef<str>>(&mut self, cells: &[S]) -> io::Result<()> {
        let line: Vec<String> = cells
            .iter()
            .map(|c| c.as_ref().replace(['\t', '\n'], " "))
            .collect();
        writeln!(self.tw, "{}", line.join("\t"))
    }

    pub fn finish(mut self) -> io::Result<()> {
        self.tw.flush()
    }
}

pub fn labels_str(labels: &std::collections::HashMap<String, String>) -> String {
    let mut v: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    v.sort();
    v.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(time(0), None);
        assert_eq!(
            time(1_734_372_015_123).as_deref(),
            Some("2024-12-16T18:00:15.123Z")
        );
        assert_eq!(ago(1000, 6000), "5s ago");
        assert_eq!(ago(0, 6000), "never");
    }

    #[test]
    fn table_aligns() {
        let mut buf = Vec::new();
        let mut t = Table::new(&mut buf, &["NAME", "STATUS"]).unwrap();
        t.row(&["vm-production", "online"]).unwrap();
        t.finish().unwrap();
        let s = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0].find("STATUS"), lines[1].find("online"));
    }
}
