//! fail2ban.log: `Ban`, `Unban`, `Found`, `Restore Ban` with jail and IP,
//! in fail2ban's own layout and in the syslog and journal layouts.
//!
//! ```text
//! 2026-11-23 02:04:27,491 fail2ban.actions [6447]: NOTICE  [sshd] Ban 192.0.2.7
//! Sep 16 00:44:55 spaceman fail2ban.actions: NOTICE [jail] Ban 10.0.0.7
//! ```

use std::sync::LazyLock;

use picket_model::Severity;
use regex::Regex;

use super::{Parsed, time};

static ACTION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"\[(?P<jail>[^\]\s]+)\]\s+(?P<what>Restore Ban|Ban|Unban|Found)\s+(?P<ip>[0-9A-Fa-f:.]+)",
    )
    .expect("static regex")
});
static OWN_TIME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2}) (?P<clock>[0-9]{2}:[0-9]{2}:[0-9]{2}(?:[,.][0-9]+)?)")
        .expect("static regex")
});
static SYSLOG_TIME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?P<mon>[A-Z][a-z]{2})\s+(?P<day>[0-9]{1,2}) (?P<clock>[0-9]{2}:[0-9]{2}:[0-9]{2})",
    )
    .expect("static regex")
});

/// The time at the start of a fail2ban or syslog line.
pub(crate) fn line_time(line: &str, read_ms: i64) -> Option<i64> {
    if let Some(c) = OWN_TIME.captures(line) {
        return time::ymd(&c["date"], &c["clock"]);
    }
    let c = SYSLOG_TIME.captures(line)?;
    time::syslog(&c["mon"], &c["day"], &c["clock"], read_ms)
}

pub fn parse(line: &str, read_ms: i64) -> Parsed<'_> {
    let t = line_time(line, read_ms);
    let Some(c) = ACTION.captures(line) else {
        // fail2ban's own status lines are expected and fine: `other`.
        let known = line.contains("fail2ban.");
        let mut p = Parsed::new("other", Severity::Info, line).at(t);
        p.parsed = known;
        return p;
    };
    let (kind, severity) = match &c["what"] {
        "Ban" => ("ban", Severity::Medium),
        "Restore Ban" => ("restore_ban", Severity::Medium),
        "Found" => ("found", Severity::Low),
        _ => ("unban", Severity::Info),
    };
    let group = |name| c.name(name).map_or("", |m| m.as_str());
    Parsed::new(kind, severity, line)
        .at(t)
        .field("jail", group("jail"))
        .field("ip", group("ip"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus;

    const READ: i64 = 1_763_856_000_000; // 2025-11-23

    #[test]
    fn generated_log_from_a_real_fail2ban() {
        let text = corpus::read("fail2ban/fail2ban-1.0.2-generated.log");
        let events: Vec<Parsed> = text.lines().map(|l| parse(l, READ)).collect();
        let bans: Vec<&Parsed> = events.iter().filter(|e| e.kind == "ban").collect();
        assert!(!bans.is_empty());
        for b in &bans {
            assert_eq!(b.severity, Severity::Medium);
            assert_eq!(b.fields["jail"], "sshd");
            assert!(
                b.fields["ip"].parse::<std::net::IpAddr>().is_ok(),
                "{:?}",
                b.fields
            );
            assert!(b.time_ms.is_some());
        }
        assert!(
            events
                .iter()
                .any(|e| e.kind == "found" && e.severity == Severity::Low)
        );
        assert!(
            events
                .iter()
                .any(|e| e.kind == "unban" && e.severity == Severity::Info)
        );
        assert!(
            events.iter().all(|e| e.parsed),
            "every line of a real fail2ban.log is known"
        );
        // Start-up lines are `other`, info.
        assert_eq!(events[1].kind, "other");
    }

    #[test]
    fn recidive_layouts_match_failjson() {
        // Each `# failJSON: {... "match": true ...}` line says the next line
        // is a ban or unban (of "host") in the recidive jail's view.
        let text = corpus::read("fail2ban/fail2ban-tests-recidive.log");
        let mut lines = text.lines();
        let mut checked = 0;
        while let Some(l) = lines.next() {
            let Some(json) = l.strip_prefix("# failJSON:") else {
                continue;
            };
            let want: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
            let Some(next) = lines.next() else { break };
            let got = parse(next, READ);
            if want["match"] == true {
                assert!(matches!(got.kind.as_ref(), "ban" | "unban"), "{next}");
                assert_eq!(got.fields["ip"], want["host"].as_str().unwrap(), "{next}");
                checked += 1;
            }
        }
        assert!(checked >= 5, "{checked}");
    }

    #[test]
    fn restore_ban_and_written_cases() {
        let p = parse(
            "2024-12-16 18:00:15,123 fail2ban.actions [1]: NOTICE  [sshd] Restore Ban 203.0.113.5",
            READ,
        );
        assert_eq!(
            (p.kind.as_ref(), p.severity),
            ("restore_ban", Severity::Medium)
        );
        assert_eq!(p.time_ms, Some(1_734_372_015_123));
        let p = parse(
            "2024-12-16 18:00:15,123 fail2ban.filter [1]: INFO    [sshd] Found 2001:db8::1 - 2024-12-16 18:00:14",
            READ,
        );
        assert_eq!(
            (p.kind.as_ref(), p.fields["ip"].as_ref()),
            ("found", "2001:db8::1")
        );
        let p = parse("garbage \u{fffd} line", READ);
        assert_eq!((p.kind.as_ref(), p.parsed), ("other", false));
    }
}
