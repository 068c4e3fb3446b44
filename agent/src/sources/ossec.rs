//! OSSEC and Wazuh alerts: `alerts.json` lines (both the classic OSSEC and
//! the Wazuh shape) and `alerts.log` multi-line blocks.
//!
//! ```text
//! ** Alert 1510376428.465: - syslog,sudo
//! 2017 Nov 11 00:00:28 ubnt->/var/log/syslog-ng/messages
//! Rule: 5402 (level 3) -> 'Successful sudo to ROOT executed'
//! User: root
//! Nov  5 15:35:03 ubnt sudo:     root : TTY=unknown ; ...
//! ```
//!
//! A block ends where the next `** Alert` begins, or on [`Blocks::flush`]
//! when the file has gone quiet.

use std::sync::LazyLock;

use picket_proto::model::Severity;
use regex::Regex;
use serde_json::Value;

use super::{Parsed, time};

pub fn severity(level: u64) -> Severity {
    match level {
        12.. => Severity::Critical,
        8..=11 => Severity::High,
        5..=7 => Severity::Medium,
        3..=4 => Severity::Low,
        _ => Severity::Info,
    }
}

fn num_or_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// One alerts.json line, OSSEC or Wazuh.
pub fn parse_json(line: &str) -> Parsed {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return Parsed::unparsed("other", line, None);
    };
    let Some(rule) = v.get("rule").and_then(Value::as_object) else {
        return Parsed::unparsed("other", line, None);
    };
    let level = rule
        .get("level")
        .and_then(|l| l.as_u64().or_else(|| l.as_str()?.parse().ok()));
    let groups = match rule.get("groups").or_else(|| rule.get("group")) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::String(s)) => s.trim_end_matches(',').to_string(),
        _ => String::new(),
    };
    let time_ms = v
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(time::rfc3339ish)
        .or_else(|| v.get("TimeStamp").and_then(Value::as_i64));
    let str_at = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
    Parsed::new("alert", severity(level.unwrap_or(0)), line)
        .at(time_ms)
        .field(
            "rule_id",
            num_or_str(rule.get("id").or_else(|| rule.get("sidid"))).unwrap_or_default(),
        )
        .field("level", level.map(|l| l.to_string()).unwrap_or_default())
        .field(
            "description",
            num_or_str(rule.get("description").or_else(|| rule.get("comment"))).unwrap_or_default(),
        )
        .field("groups", groups)
        .field("location", str_at("/location").unwrap_or_default())
        .field(
            "src_ip",
            str_at("/data/srcip")
                .or_else(|| str_at("/srcip"))
                .unwrap_or_default(),
        )
        .field(
            "user",
            str_at("/data/srcuser")
                .or_else(|| str_at("/data/dstuser"))
                .or_else(|| str_at("/srcuser"))
                .or_else(|| str_at("/dstuser"))
                .unwrap_or_default(),
        )
        .field("agent", str_at("/agent/name").unwrap_or_default())
}

static HEADER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\*\* Alert (?P<id>[\d.]+):(?:\s*\S*\s*-\s*(?P<groups>.*))?$")
        .expect("static regex")
});
static WHEN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?P<y>\d{4}) (?P<mon>[A-Z][a-z]{2}) (?P<d>\d{1,2}) (?P<clock>\d{2}:\d{2}:\d{2}) (?P<loc>.*)$")
        .expect("static regex")
});
static RULE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^Rule: (?P<id>\d+) \(level (?P<level>\d+)\) -> '(?P<desc>.*)'$")
        .expect("static regex")
});

/// The alerts.log block being assembled.
#[derive(Default)]
pub struct Blocks {
    lines: Vec<String>,
}

impl Blocks {
    /// Feeds one line of alerts.log (blocks carry their own year, so the
    /// read time is not needed) (or alerts.json: a `{` line is parsed
    /// at once). Returns the block the line completes, if any.
    pub fn feed(&mut self, line: &str) -> Vec<Parsed> {
        if line.starts_with('{') {
            let mut out = self.flush();
            out.push(parse_json(line));
            return out;
        }
        let mut out = Vec::new();
        if HEADER.is_match(line) {
            out = self.flush();
        } else if self.lines.is_empty() {
            if line.trim().is_empty() {
                return out;
            }
            // Text outside any block: keep it, flag it.
            return vec![Parsed::unparsed("other", line, None)];
        }
        self.lines.push(line.to_string());
        out
    }

    /// Ends the current block (the next one began, or the file went quiet).
    pub fn flush(&mut self) -> Vec<Parsed> {
        if self.lines.is_empty() {
            return Vec::new();
        }
        let lines = std::mem::take(&mut self.lines);
        // Trailing blank lines separate blocks; they are not content.
        let end = lines
            .iter()
            .rposition(|l| !l.trim().is_empty())
            .map_or(0, |i| i + 1);
        let lines = &lines[..end];
        let message = lines.join("\n");
        let Some(h) = lines.first().and_then(|l| HEADER.captures(l)) else {
            return vec![Parsed::unparsed("other", &message, None)];
        };
        let mut p = Parsed::new("alert", Severity::Info, &message).field(
            "groups",
            h.name("groups")
                .map_or("", |g| g.as_str())
                .trim()
                .trim_end_matches(','),
        );
        let mut ok = false;
        for l in &lines[1..] {
            if let Some(w) = WHEN.captures(l) {
                p.time_ms = time::y_mon_d(&w["y"], &w["mon"], &w["d"], &w["clock"]);
                p = p.field("location", &w["loc"]);
            } else if let Some(r) = RULE.captures(l) {
                let level: u64 = r["level"].parse().unwrap_or(0);
                p.severity = severity(level);
                p = p
                    .field("rule_id", &r["id"])
                    .field("level", &r["level"])
                    .field("description", &r["desc"]);
                ok = true;
            } else if let Some(ip) = l.strip_prefix("Src IP: ") {
                p = p.field("src_ip", ip.trim());
            } else if let Some(u) = l.strip_prefix("User: ") {
                p = p.field("user", u.trim());
            }
        }
        p.parsed = ok;
        vec![p]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::corpus;

    #[test]
    fn alerts_log_blocks() {
        let text = corpus::read("ossec/ossec-docs-alerts.log");
        let mut b = Blocks::default();
        let mut out: Vec<Parsed> = text.lines().flat_map(|l| b.feed(l)).collect();
        out.extend(b.flush());
        assert_eq!(out.len(), 4, "{out:#?}");
        assert!(out.iter().all(|p| p.parsed && p.kind == "alert"));
        assert_eq!(out[0].fields["rule_id"], "1005");
        assert_eq!(out[0].fields["level"], "5");
        assert_eq!(out[0].severity, Severity::Medium);
        assert_eq!(out[0].fields["description"], "Syslogd restarted.");
        assert_eq!(out[0].fields["groups"], "syslog,errors");
        assert_eq!(out[0].fields["location"], "ix->/var/log/messages");
        assert_eq!(out[0].time_ms, Some(1_510_358_401_000));
        assert_eq!(out[2].fields["user"], "root");
        assert_eq!(out[2].severity, Severity::Low);
        assert!(out[3].message.contains("session opened for user root"));
    }

    #[test]
    fn classic_and_wazuh_json() {
        let text = corpus::read("ossec/ossec-docs-alerts.json");
        let all: Vec<Parsed> = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(parse_json)
            .collect();
        assert!(all.iter().all(|p| p.parsed && p.kind == "alert"));
        assert_eq!(all[0].fields["rule_id"], "1005");
        assert_eq!(all[0].fields["description"], "Syslogd restarted.");
        assert_eq!(all[0].fields["groups"], "syslog,errors");
        assert_eq!(all[0].time_ms, Some(1_510_376_401_000));
        assert_eq!(all[2].fields["user"], "root");

        let w = parse_json(corpus::read("ossec/wazuh-4.14-alerts.json").trim());
        assert_eq!(w.fields["rule_id"], "5712");
        assert_eq!(w.fields["level"], "10");
        assert_eq!(w.severity, Severity::High);
        assert_eq!(w.fields["src_ip"], "172.17.1.1");
        assert_eq!(w.fields["user"], "paco");
        assert_eq!(w.fields["groups"], "syslog,sshd,authentication_failures");
        assert!(w.fields["description"].starts_with("sshd: brute force"));
        assert_eq!(w.time_ms, Some(1_652_272_159_905));
    }

    #[test]
    fn levels_map_to_severities() {
        assert_eq!(severity(15), Severity::Critical);
        assert_eq!(severity(12), Severity::Critical);
        assert_eq!(severity(11), Severity::High);
        assert_eq!(severity(7), Severity::Medium);
        assert_eq!(severity(3), Severity::Low);
        assert_eq!(severity(2), Severity::Info);
    }

    #[test]
    fn stray_text_and_broken_blocks_are_kept() {
        let mut b = Blocks::default();
        let out = b.feed("random text");
        assert_eq!((out[0].kind.as_str(), out[0].parsed), ("other", false));
        assert!(b.feed("** Alert 1.2: - x").is_empty());
        let out = b.flush();
        assert_eq!(out.len(), 1);
        assert!(!out[0].parsed, "a block with no Rule line is flagged");
    }
}
