//! Output: aligned tables for people, JSON lines (the SPEC's contract) for
//! programs. Rows are written as they come.

use std::io::{self, Write};

use picket_model::AgentStatus;
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

/// Text from the fleet made safe for a terminal, as journalctl does: C0
/// controls (ESC, CR, BS, …, but not TAB), DEL and C1 controls become
/// `\xNN`. A remote log line can then neither move the cursor, retitle
/// the window nor hide what came before it. JSON output is exact and does
/// not use this.
pub fn escape_terminal(s: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\t';
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            // Controls are U+0000-U+001F and U+007F-U+009F: two digits.
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
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
    picket_proto::convert::agent_status(code).map_or("unknown", AgentStatus::as_str)
}

/// An agent's state in a table: its status, and whether the control plane
/// can store what it sends now.
pub fn agent_state(a: &v1::Agent) -> String {
    let mut notes = Vec::new();
    if a.not_stored {
        notes.push("not stored".to_string());
    }
    if let Some(ms) = a.clock_offset_ms.filter(|ms| ms.abs() > CLOCK_FLAG_MS) {
        notes.push(format!("clock {}", clock_offset(ms)));
    }
    let s = status_str(a.status);
    if notes.is_empty() {
        s.to_string()
    } else {
        format!("{s} ({})", notes.join(", "))
    }
}

/// A host whose clock is further off than this is flagged in tables.
const CLOCK_FLAG_MS: i64 = 1_000;

/// `12s ahead`, `10m3s behind`, `2h0m ahead`.
pub fn clock_offset(ms: i64) -> String {
    let s = ms.unsigned_abs().div_ceil(1000);
    let size = match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, s % 3600 / 60),
    };
    format!("{size} {}", if ms < 0 { "behind" } else { "ahead" })
}

pub fn agent_json(a: &v1::Agent) -> Value {
    let inv = a.inventory.clone().unwrap_or_default();
    json!({
        "name": a.name,
        "labels": a.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "reported_labels": inv.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "status": status_str(a.status),
        "not_stored": a.not_stored,
        "clock_offset_ms": a.clock_offset_ms,
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
        "last_rollout": a.last_rollout.as_ref().map(|r| json!({
            "id": r.id, "name": r.name, "state": r.state, "host_state": r.host_state,
        })),
    })
}

/// One JSON object on one line.
pub fn json_line(out: &mut (impl Write + ?Sized), v: &Value) -> io::Result<()> {
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

    /// One row; every cell is escaped for the terminal (text from hosts
    /// and users: names, labels, inventory, audit targets), so that no
    /// cell can move the cursor, retitle the window or end a column.
    pub fn row<S: AsRef<str>>(&mut self, cells: &[S]) -> io::Result<()> {
        let line: Vec<String> = cells
            .iter()
            .map(|c| escape_terminal(&c.as_ref().replace(['\t', '\n'], " ")).into_owned())
            .collect();
        writeln!(self.tw, "{}", line.join("\t"))
    }

    pub fn finish(mut self) -> io::Result<()> {
        self.tw.flush()
    }
}

pub fn labels_str(labels: &std::collections::BTreeMap<String, String>) -> String {
    let mut v: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    v.sort();
    v.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_neutralise_control_sequences() {
        assert!(matches!(
            escape_terminal("plain\tline é"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            escape_terminal("a\x1b]0;pwned\x07b\rc\x7f\u{9b}2J"),
            "a\\x1b]0;pwned\\x07b\\x0dc\\x7f\\x9b2J"
        );
        assert_eq!(
            escape_terminal("\u{2028}"),
            "\u{2028}",
            "not a control character"
        );
    }

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
    fn agent_states_flag_a_store_that_refuses_and_a_clock_off() {
        let mut a = v1::Agent {
            status: v1::AgentStatus::Online as i32,
            clock_offset_ms: Some(400),
            ..Default::default()
        };
        assert_eq!(agent_state(&a), "online", "within a second");
        a.clock_offset_ms = Some(-600_200);
        assert_eq!(agent_state(&a), "online (clock 10m1s behind)");
        a.not_stored = true;
        a.clock_offset_ms = Some(7_200_000);
        assert_eq!(agent_state(&a), "online (not stored, clock 2h0m ahead)");
        assert_eq!(clock_offset(1_500), "2s ahead");
    }

    #[test]
    fn table_aligns() {
        let mut buf = Vec::new();
        let mut t = Table::new(&mut buf, &["NAME", "STATUS"]).unwrap();
        t.row(&["vm-production", "online"]).unwrap();
        t.row(&["evil\x1b]0;pwned\x07", "on\rline"]).unwrap();
        t.finish().unwrap();
        let s = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0].find("STATUS"), lines[1].find("online"));
        assert_eq!(lines[2], "evil\\x1b]0;pwned\\x07  on\\x0dline");
    }
}

/// A sparkline of at most `width` cells: points are averaged into buckets
/// and drawn with the eight block heights.
pub fn sparkline(values: &[f64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let vals: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if vals.is_empty() || width == 0 {
        return String::new();
    }
    let buckets = vals.len().min(width);
    let per = vals.len() as f64 / buckets as f64;
    let avg: Vec<f64> = (0..buckets)
        .map(|i| {
            let a = (i as f64 * per) as usize;
            let b = (((i + 1) as f64 * per) as usize).clamp(a + 1, vals.len());
            vals[a..b].iter().sum::<f64>() / (b - a) as f64
        })
        .collect();
    let lo = avg.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = avg.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    avg.iter()
        .map(|v| {
            if (hi - lo).abs() < f64::EPSILON {
                BARS[0]
            } else {
                let i = ((v - lo) / (hi - lo) * 7.0).round() as usize;
                BARS[i.min(7)]
            }
        })
        .collect()
}

/// A value for a table: bytes in KiB/MiB/GiB, percentages with one
/// decimal, other values with up to two.
pub fn human(metric: &str, v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    if metric.contains("bytes") {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut x = v;
        let mut u = 0;
        while x.abs() >= 1024.0 && u < units.len() - 1 {
            x /= 1024.0;
            u += 1;
        }
        let suffix = if metric.ends_with("per_second") {
            "/s"
        } else {
            ""
        };
        return format!("{x:.1}{}{suffix}", units[u]);
    }
    if metric.ends_with("percent") {
        return format!("{v:.1}%");
    }
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod chart_tests {
    use super::*;

    #[test]
    fn sparkline_scales_and_buckets() {
        assert_eq!(
            sparkline(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], 8),
            "▁▂▃▄▅▆▇█"
        );
        assert_eq!(sparkline(&[5.0; 100], 10).chars().count(), 10);
        assert_eq!(sparkline(&[], 10), "");
        assert_eq!(sparkline(&[f64::NAN, 1.0], 10), "▁");
    }

    #[test]
    fn human_units() {
        assert_eq!(
            human("memory_used_bytes", 1536.0 * 1024.0 * 1024.0),
            "1.5GiB"
        );
        assert_eq!(
            human("network_receive_bytes_per_second", 2048.0),
            "2.0KiB/s"
        );
        assert_eq!(human("cpu_usage_percent", 12.345), "12.3%");
        assert_eq!(human("processes", 120.0), "120");
    }
}
