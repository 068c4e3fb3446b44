//! sshd lines of auth.log: failures, invalid users, successes, disconnects,
//! with user, ip, port and method; `[preauth]` variants included.
//!
//! ```text
//! Feb 25 14:34:10 belka sshd[31602]: Failed password for invalid user ROOT from 194.117.26.69 port 50273 ssh2
//! ```

use std::sync::{LazyLock, OnceLock};

use picket_model::Severity;
use regex::{Regex, RegexSet};

use super::Parsed;
use super::fail2ban::line_time;

struct Rule {
    kind: &'static str,
    pattern: String,
    /// Compiled the first time [`ANY_RULE`] says the rule matches: most
    /// hosts' auth.log meets a few of the rules, and each compiled regex
    /// holds hundreds of KiB (its automata, its caches).
    re: OnceLock<Regex>,
}

impl Rule {
    fn re(&self) -> &Regex {
        self.re
            .get_or_init(|| Regex::new(&self.pattern).expect("static regex"))
    }
}

/// Tried in order; the first match wins. Names: user, ip, port, method.
static RULES: LazyLock<Vec<Rule>> = LazyLock::new(rules);

/// Every rule's pattern at once: one pass over a line finds which rules
/// match, so a line that none matches (most of auth.log: sudo, cron, PAM
/// sessions) costs one search rather than one per rule.
static ANY_RULE: LazyLock<RegexSet> =
    LazyLock::new(|| RegexSet::new(RULES.iter().map(|r| &r.pattern)).expect("static regex"));

fn rules() -> Vec<Rule> {
    let ip = r"(?P<ip>(?:[0-9A-Fa-f]{0,4}:){2,}[0-9A-Fa-f.:]*[0-9A-Fa-f]|[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[A-Za-z0-9][0-9A-Za-z_.-]*[A-Za-z0-9])";
    let port = r"(?: port (?P<port>[0-9]+))?";
    // After the address, only what sshd itself writes may follow; a user
    // name (attacker-chosen) can hold "from 1.2.3.4", so the match is the
    // first `from` that such an ending follows.
    let tail = r"(?: on \S+)?(?: ssh[0-9]*)?(?: \[preauth\])?(?::.*)?\s*$";
    let r = |kind, re: &str| Rule {
        kind,
        pattern: re.to_string(),
        re: OnceLock::new(),
    };
    vec![
        r(
            "invalid_user",
            &format!(
                r"Failed (?P<method>\S+) for invalid user (?P<user>.*?) from {ip}{port}{tail}"
            ),
        ),
        r(
            "auth_failure",
            &format!(r"Failed (?P<method>\S+) for (?P<user>.*?) from {ip}{port}{tail}"),
        ),
        r(
            "invalid_user",
            &format!(r"[Ii]nvalid user (?P<user>.*?) from {ip}{port}"),
        ),
        r(
            "invalid_user",
            &format!(r"User (?P<user>\S+) from {ip} not allowed because"),
        ),
        r(
            "invalid_user",
            &format!(r"Disconnecting invalid user (?P<user>\S+) {ip}{port}"),
        ),
        r(
            "invalid_user",
            &format!(
                r"User not known to the underlying authentication module for (?:illegal|invalid) user (?P<user>\S+) from {ip}"
            ),
        ),
        r(
            "auth_failure",
            &format!(
                r"error: PAM: [Aa]uthentication (?:failure|error) for (?:illegal user )?(?P<user>\S+) from {ip}"
            ),
        ),
        r(
            "auth_failure",
            &format!(r"[Aa]uthentication failure;.*rhost={ip}(?:\s+user=(?P<user>\S+))?"),
        ),
        r(
            "auth_failure",
            &format!(r"ROOT LOGIN REFUSED FROM {ip}{port}"),
        ),
        r(
            "auth_failure",
            &format!(
                r"(?:Connection closed|Connection reset|Disconnected) by authenticating user (?P<user>\S+) {ip}{port}"
            ),
        ),
        r(
            "auth_failure",
            r"Disconnecting(?: authenticating user (?P<user>\S+))?:? Too many authentication failures(?: for (?:invalid user )?(?P<user2>\S+))?",
        ),
        r(
            "invalid_user",
            &format!(
                r"(?:Connection closed|Disconnected) by invalid user (?P<user>\S*) {ip}{port}"
            ),
        ),
        r(
            "auth_failure",
            &format!(
                r"maximum authentication attempts exceeded for (?:invalid user )?(?P<user>\S+) from {ip}{port}"
            ),
        ),
        r(
            "auth_success",
            &format!(r"Accepted (?P<method>\S+) for (?P<user>\S+) from {ip}{port}"),
        ),
        r(
            "disconnect",
            &format!(r"Received disconnect from {ip}{port}"),
        ),
        r(
            "disconnect",
            &format!(r"Disconnected from (?:(?:invalid )?user (?P<user>\S+) )?{ip}{port}"),
        ),
        r("disconnect", &format!(r"Connection closed by {ip}{port}")),
    ]
}

/// Is this an sshd line at all? (auth.log holds sudo, cron, systemd, ...)
static SSHD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?-u:\b)sshd(?:-session)?(?:\[[0-9]+\])?:|\[sshd\]").expect("static regex")
});

pub fn parse(line: &str, read_ms: i64) -> Parsed<'_> {
    let t = line_time(line, read_ms);
    for rule in ANY_RULE.matches(line).iter().filter_map(|i| RULES.get(i)) {
        if let Some(c) = rule.re().captures(line) {
            let severity = match rule.kind {
                "auth_failure" | "invalid_user" => Severity::Low,
                _ => Severity::Info,
            };
            let mut p = Parsed::new(rule.kind, severity, line).at(t);
            for k in ["user", "ip", "port", "method"] {
                if let Some(m) = c.name(k) {
                    p = p.field(k, m.as_str());
                }
            }
            if let Some(u) = c.name("user2") {
                p = p.field("user", u.as_str());
            }
            return normalize(p);
        }
    }
    // An sshd line we have no rule for is `other`, and known; a line that
    // is not sshd's at all (or garbage) is `other`, unparsed and counted.
    let mut p = Parsed::new("other", Severity::Info, line).at(t);
    p.parsed = SSHD.is_match(line);
    if let Some(c) = FROM.captures(line) {
        p = p.field("ip", c.name("ip").map_or("", |m| m.as_str()));
        if let Some(port) = c.name("port") {
            p = p.field("port", port.as_str());
        }
    }
    normalize(p)
}

/// `from IP [port N]` in lines no rule knows (scanners, key exchange
/// failures), so that they can still be filtered by address.
static FROM: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:from|with|by) (?P<ip>(?:[0-9A-Fa-f]{0,4}:){2,}[0-9A-Fa-f.:]*[0-9A-Fa-f]|[0-9]{1,3}(?:\.[0-9]{1,3}){3})(?: port (?P<port>[0-9]+))?")
        .expect("static regex")
});

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`) is reported as the IPv4 address.
fn normalize(mut p: Parsed<'_>) -> Parsed<'_> {
    if let Some(ip) = p.fields.get_mut("ip")
        && let Some(v4) = ip.strip_prefix("::ffff:")
        && v4.parse::<std::net::Ipv4Addr>().is_ok()
    {
        *ip = v4.to_string().into();
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus;

    #[test]
    fn every_rule_compiles_and_uses_ascii_classes() {
        for rule in RULES.iter() {
            rule.re();
            // Unicode `\d` and `\w` made each rule's automata megabytes
            // (the agent's RSS, docs/benchmarks.md): digits, ports and host
            // names in auth.log are ASCII.
            for class in [r"\d", r"\w"] {
                assert!(!rule.pattern.contains(class), "{}: {class}", rule.pattern);
            }
        }
        assert_eq!(ANY_RULE.len(), RULES.len());
    }

    const READ: i64 = 1_763_856_000_000;

    #[test]
    fn a_user_name_cannot_inject_an_address() {
        // The name is "test from 10.10.1.2 port 55555 ssh2": the real peer
        // is the last `from`.
        let p = parse(
            "Nov 11 08:04:52 h sshd[2737]: Failed password for invalid user test from 10.10.1.2 port 55555 ssh2 from 127.0.0.1 port 58946 ssh2",
            READ,
        );
        assert_eq!(p.fields["ip"], "127.0.0.1");
        assert_eq!(p.fields["port"], "58946");
        let p = parse(
            "Nov 11 08:04:52 h sshd[2737]: Failed password for invalid user test from 127.0.0.1 port 58946 ssh2: from 10.10.1.2 port 55555 ssh2",
            READ,
        );
        assert_eq!(p.fields["ip"], "127.0.0.1");
        assert_eq!(p.fields["user"], "test");
    }

    /// fail2ban's sshd test log: every line its filter matches ("match":
    /// true) must be a failure or invalid user here, with the same IP.
    #[test]
    fn fail2ban_ground_truth() {
        for file in [
            "sshd/fail2ban-tests-sshd.log",
            "sshd/fail2ban-tests-sshd-journal.log",
        ] {
            let text = corpus::read(file);
            let mut lines = text.lines().peekable();
            let (mut matched, mut agree) = (0, 0);
            while let Some(l) = lines.next() {
                let Some(json) = l.strip_prefix("# failJSON:") else {
                    continue;
                };
                let Ok(want) = serde_json::from_str::<serde_json::Value>(json.trim()) else {
                    continue;
                };
                let Some(next) = lines.next() else { break };
                if want["match"] != true
                    || want
                        .get("desc")
                        .is_some_and(|d| d.as_str().is_some_and(|d| d.contains("mode")))
                {
                    continue;
                }
                let Some(host) = want["host"].as_str() else {
                    continue;
                };
                let lower = next.to_lowercase();
                let failure_shaped = [
                    "failed ",
                    "invalid user",
                    "authentication failure",
                    "authentication error",
                    "not allowed because",
                    "root login refused",
                    "illegal user",
                ]
                .iter()
                .any(|k| lower.contains(k));
                // Lines without the address (fail2ban takes it from an
                // earlier line of the same session) cannot agree by line.
                if !failure_shaped
                    || !host.chars().any(|c| c.is_ascii_digit())
                    || !next.contains(host)
                {
                    continue;
                }
                matched += 1;
                let got = parse(next, READ);
                if matches!(got.kind.as_ref(), "auth_failure" | "invalid_user")
                    && got.fields.get("ip").is_some_and(|ip| ip == host)
                {
                    agree += 1;
                } else if std::env::var_os("PICKET_SHOW_MISSES").is_some() {
                    eprintln!("MISS {host}: {} -> {:?}", next, got);
                }
            }
            // Every line fail2ban's filter bans for an authentication failure
            // is a failure here too, with the same address. (Its ddos and
            // aggressive modes also ban scanners and key exchange errors;
            // those are `other` or `disconnect` here, with their `ip`.)
            assert!(matched > 20, "{file}: {matched}");
            assert!(agree * 100 >= matched * 95, "{file}: {agree}/{matched}");
        }
    }

    #[test]
    fn kinds_fields_and_severities() {
        let cases = [
            (
                "Feb 25 14:34:10 belka sshd[31602]: Failed password for invalid user ROOT from 194.117.26.69 port 50273 ssh2",
                "invalid_user",
                Some("ROOT"),
                Some("194.117.26.69"),
                Some("50273"),
                Some("password"),
            ),
            (
                "Jul  3 14:59:17 host sshd-session[1571]: Failed password for root from 192.0.2.1 port 56502 ssh2",
                "auth_failure",
                Some("root"),
                Some("192.0.2.1"),
                Some("56502"),
                Some("password"),
            ),
            (
                "Mar  1 10:00:00 h sshd[1]: Failed publickey for git from 2001:db8::5 port 22 ssh2: ED25519 SHA256:x",
                "auth_failure",
                Some("git"),
                Some("2001:db8::5"),
                Some("22"),
                Some("publickey"),
            ),
            (
                "Jul 20 14:42:12 localhost sshd[22708]: Invalid user ftp from 192.0.2.2 port 37220",
                "invalid_user",
                Some("ftp"),
                Some("192.0.2.2"),
                Some("37220"),
                None,
            ),
            (
                "Mar  1 10:00:00 h sshd[1]: Accepted publickey for deploy from 10.0.0.5 port 51234 ssh2: RSA SHA256:abc",
                "auth_success",
                Some("deploy"),
                Some("10.0.0.5"),
                Some("51234"),
                Some("publickey"),
            ),
            (
                "Mar  1 10:00:00 h sshd[1]: Received disconnect from 10.0.0.5 port 51234:11: disconnected by user",
                "disconnect",
                None,
                Some("10.0.0.5"),
                Some("51234"),
                None,
            ),
            (
                "Mar  1 10:00:00 h sshd[1]: Disconnected from user deploy 10.0.0.5 port 51234",
                "disconnect",
                Some("deploy"),
                Some("10.0.0.5"),
                Some("51234"),
                None,
            ),
            (
                "Mar  1 10:00:00 h sshd[1]: Connection closed by authenticating user root 192.0.2.9 port 4711 [preauth]",
                "auth_failure",
                Some("root"),
                Some("192.0.2.9"),
                Some("4711"),
                None,
            ),
            (
                "Mar  1 10:00:00 h sshd[1]: Disconnected from invalid user admin 192.0.2.9 port 4711 [preauth]",
                "disconnect",
                Some("admin"),
                Some("192.0.2.9"),
                Some("4711"),
                None,
            ),
        ];
        for (line, kind, user, ip, port, method) in cases {
            let p = parse(line, READ);
            assert_eq!(p.kind, kind, "{line}");
            assert_eq!(p.fields.get("user"), user, "{line}");
            assert_eq!(p.fields.get("ip"), ip, "{line}");
            assert_eq!(p.fields.get("port"), port, "{line}");
            assert_eq!(p.fields.get("method"), method, "{line}");
            let sev = if matches!(kind, "auth_failure" | "invalid_user") {
                Severity::Low
            } else {
                Severity::Info
            };
            assert_eq!(p.severity, sev, "{line}");
            assert!(p.time_ms.is_some());
        }
        let p = parse(
            "Mar  1 10:00:00 h sshd[1]: Server listening on 0.0.0.0 port 22.",
            READ,
        );
        assert_eq!((p.kind.as_ref(), p.parsed), ("other", true));
        let p = parse(
            "Mar  1 10:00:00 h CRON[5]: pam_unix(cron:session): session opened",
            READ,
        );
        assert_eq!((p.kind.as_ref(), p.parsed), ("other", false));
    }

    #[test]
    fn wazuh_ruleset_lines_are_all_read() {
        let text = corpus::read("sshd/wazuh-4.14-ruleset-sshd.ini");
        let lines: Vec<&str> = text
            .lines()
            .filter_map(|l| {
                l.strip_prefix("log 1 pass = ")
                    .or_else(|| l.strip_prefix("log 1 fail = "))
            })
            .collect();
        assert!(lines.len() > 30);
        let failures = lines
            .iter()
            .map(|l| parse(l, READ))
            .filter(|p| matches!(p.kind.as_ref(), "auth_failure" | "invalid_user"))
            .count();
        assert!(failures >= 10, "{failures}");
    }
}
