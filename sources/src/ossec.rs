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

use std::borrow::Cow;
use std::sync::LazyLock;

use picket_model::Severity;
use regex::Regex;
use serde_json::value::RawValue;

use super::json::{self, Object};
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

/// A string, or a number as written.
fn num_or_str(v: Option<&RawValue>) -> Option<Cow<'_, str>> {
    let v = v?;
    match v.get().as_bytes().first()? {
        b'"' => json::string(v),
        b'-' | b'0'..=b'9' => Some(Cow::Borrowed(v.get())),
        _ => None,
    }
}

/// The rule's groups: an array of names, or OSSEC's `a,b,` string.
fn groups(v: Option<&RawValue>) -> Cow<'_, str> {
    let Some(v) = v else {
        return Cow::Borrowed("");
    };
    if let Some(s) = json::string(v) {
        return match s {
            Cow::Borrowed(b) => Cow::Borrowed(b.trim_end_matches(',')),
            Cow::Owned(o) => Cow::Owned(o.trim_end_matches(',').to_string()),
        };
    }
    let names: Vec<&RawValue> = serde_json::from_str(v.get()).unwrap_or_default();
    let names: Vec<Cow<'_, str>> = names.into_iter().filter_map(json::string).collect();
    Cow::Owned(names.join(","))
}

/// One alerts.json line, OSSEC or Wazuh.
pub fn parse_json(line: &str) -> Parsed<'_> {
    let Some(v) = Object::parse(line) else {
        return Parsed::unparsed("other", line, None);
    };
    let Some(rule) = v.object("rule") else {
        return Parsed::unparsed("other", line, None);
    };
    let level = rule.get("level").and_then(|l| {
        l.get()
            .parse()
            .ok()
            .or_else(|| json::string(l)?.parse().ok())
    });
    let time_ms = v
        .string("timestamp")
        .and_then(|t| time::rfc3339ish(&t))
        .or_else(|| v.get("TimeStamp")?.get().parse().ok());
    let data = v.object("data").unwrap_or_default();
    let agent = v.object("agent").unwrap_or_default();
    let none = || Cow::Borrowed("");
    Parsed::new("alert", severity(level.unwrap_or(0)), line)
        .at(time_ms)
        .field(
            "rule_id",
            num_or_str(rule.get("id").or_else(|| rule.get("sidid"))).unwrap_or_else(none),
        )
        .field("level", level.map(|l| l.to_string()).unwrap_or_default())
        .field(
            "description",
            num_or_str(rule.get("description").or_else(|| rule.get("comment")))
                .unwrap_or_else(none),
        )
        .field(
            "groups",
            groups(rule.get("groups").or_else(|| rule.get("group"))),
        )
        .field("location", v.string("location").unwrap_or_else(none))
        .field(
            "src_ip",
            data.string("srcip")
                .or_else(|| v.string("srcip"))
                .unwrap_or_else(none),
        )
        .field(
            "user",
            data.string("srcuser")
                .or_else(|| data.string("dstuser"))
                .or_else(|| v.string("srcuser"))
                .or_else(|| v.string("dstuser"))
                .unwrap_or_else(none),
        )
        .field("agent", agent.string("name").unwrap_or_else(none))
}

static HEADER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\*\* Alert (?P<id>[0-9.]+):(?:\s*\S*\s*-\s*(?P<groups>.*))?$")
        .expect("static regex")
});
static WHEN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?P<y>[0-9]{4}) (?P<mon>[A-Z][a-z]{2}) (?P<d>[0-9]{1,2}) (?P<clock>[0-9]{2}:[0-9]{2}:[0-9]{2}) (?P<loc>.*)$")
        .expect("static regex")
});
static RULE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^Rule: (?P<id>[0-9]+) \(level (?P<level>[0-9]+)\) -> '(?P<desc>.*)'$")
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
    /// at once). Adds the block the line completes, if any, to `out`.
    pub fn feed<'a>(&mut self, line: &'a str, out: &mut Vec<Parsed<'a>>) {
        if line.starts_with('{') {
            out.extend(self.flush());
            out.push(parse_json(line));
            return;
        }
        if HEADER.is_match(line) {
            out.extend(self.flush());
        } else if self.lines.is_empty() {
            if !line.trim().is_empty() {
                // Text outside any block: keep it, flag it.
                out.push(Parsed::unparsed("other", line, None));
            }
            return;
        }
        self.lines.push(line.to_string());
    }

    /// Ends the current block (the next one began, or the file went quiet).
    pub fn flush(&mut self) -> Option<Parsed<'static>> {
        if self.lines.is_empty() {
            return None;
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
            return Some(Parsed::unparsed("other", message, None));
        };
        let mut p = Parsed::new("alert", Severity::Info, message).field(
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
                p = p.field("location", w["loc"].to_string());
            } else if let Some(r) = RULE.captures(l) {
                let level: u64 = r["level"].parse().unwrap_or(0);
                p.severity = severity(level);
                p = p
                    .field("rule_id", r["id"].to_string())
                    .field("level", r["level"].to_string())
                    .field("description", r["desc"].to_string());
                ok = true;
            } else if let Some(ip) = l.strip_prefix("Src IP: ") {
                p = p.field("src_ip", ip.trim());
            } else if let Some(u) = l.strip_prefix("User: ") {
                p = p.field("user", u.trim());
            }
        }
        p.parsed = ok;
        Some(p.into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus;

    #[test]
    fn alerts_log_blocks() {
        let text = corpus::read("ossec/ossec-docs-alerts.log");
        let mut b = Blocks::default();
        let mut out = Vec::new();
        for l in text.lines() {
            b.feed(l, &mut out);
        }
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

        let wazuh = corpus::read("ossec/wazuh-4.14-alerts.json");
        let w = parse_json(wazuh.trim());
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
        let mut out = Vec::new();
        b.feed("random text", &mut out);
        assert_eq!((out[0].kind.as_ref(), out[0].parsed), ("other", false));
        out.clear();
        b.feed("** Alert 1.2: - x", &mut out);
        assert!(out.is_empty());
        let p = b.flush().expect("the open block");
        assert!(!p.parsed, "a block with no Rule line is flagged");
        assert!(b.flush().is_none());
    }
}
