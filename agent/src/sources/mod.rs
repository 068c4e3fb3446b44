//! Parsers for the logs the agent reads, one module per program, named
//! after it. Each is a pure function of a line (and the time it was read):
//! no file I/O, no clock. OSSEC's alerts.log is the one stateful parser, as
//! its alerts span several lines.
//!
//! A line a parser cannot read is still an event: kind `other`, severity
//! info, `parsed: false`, so it is counted and never dropped. `raw` sources
//! make no events: their lines go to the log store only, like every
//! source's. Kinds, fields and severities follow SPEC §6.

pub mod fail2ban;
pub mod ossec;
pub mod sshd;
pub mod suricata;
pub mod time;

use std::collections::BTreeMap;

use picket_proto::model::Severity;

use crate::config::SourceKind;

/// What a parser made of one line (or one OSSEC block).
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub kind: String,
    pub severity: Severity,
    pub fields: BTreeMap<String, String>,
    /// The event's own time (Unix ms, UTC) when the log has one.
    pub time_ms: Option<i64>,
    /// The original text.
    pub message: String,
    /// False when the parser did not recognise the line.
    pub parsed: bool,
}

impl Parsed {
    pub fn new(kind: &str, severity: Severity, message: &str) -> Parsed {
        Parsed {
            kind: kind.to_string(),
            severity,
            fields: BTreeMap::new(),
            time_ms: None,
            message: message.to_string(),
            parsed: true,
        }
    }

    /// A line the parser could not read: kept, marked, counted.
    pub fn unparsed(kind: &str, message: &str, time_ms: Option<i64>) -> Parsed {
        Parsed {
            parsed: false,
            time_ms,
            ..Parsed::new(kind, Severity::Info, message)
        }
    }

    pub fn field(mut self, k: &str, v: impl Into<String>) -> Parsed {
        let v = v.into();
        if !v.is_empty() {
            self.fields.insert(k.to_string(), v);
        }
        self
    }

    pub fn at(mut self, t: Option<i64>) -> Parsed {
        self.time_ms = t;
        self
    }
}

/// A parser for one source: lines in, events out.
pub enum Parser {
    Fail2ban,
    Suricata,
    Sshd,
    Raw,
    Ossec(ossec::Blocks),
}

impl Parser {
    pub fn for_kind(kind: SourceKind) -> Parser {
        match kind {
            SourceKind::Fail2ban => Parser::Fail2ban,
            SourceKind::Suricata => Parser::Suricata,
            SourceKind::Sshd => Parser::Sshd,
            SourceKind::Raw => Parser::Raw,
            SourceKind::Ossec => Parser::Ossec(ossec::Blocks::default()),
        }
    }

    /// Feeds one line read at `read_ms`; returns the events it completes.
    pub fn feed(&mut self, line: &str, read_ms: i64) -> Vec<Parsed> {
        match self {
            Parser::Fail2ban => vec![fail2ban::parse(line, read_ms)],
            Parser::Suricata => vec![suricata::parse(line)],
            Parser::Sshd => vec![sshd::parse(line, read_ms)],
            // `raw` sources ship lines only (to the log store), no events.
            Parser::Raw => Vec::new(),
            Parser::Ossec(b) => b.feed(line),
        }
    }

    /// Events held back waiting for more lines (an OSSEC block whose end
    /// has not been seen): called when the file goes quiet.
    pub fn flush(&mut self) -> Vec<Parsed> {
        match self {
            Parser::Ossec(b) => b.flush(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod never_panic {
    //! A stable-Rust stand-in for the `cargo fuzz` targets (in `fuzz/`):
    //! corpus lines cut, spliced and sprinkled with odd bytes, plus random
    //! text, through every parser. Deterministic (fixed seed).
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn mutated_corpus_lines_never_panic() {
        let mut lines: Vec<String> = Vec::new();
        for f in [
            "fail2ban/fail2ban-1.0.2-generated.log",
            "fail2ban/fail2ban-tests-recidive.log",
            "sshd/fail2ban-tests-sshd.log",
            "suricata/dns-tcp-www-google-com.eve.json",
            "suricata/tls-fingerprint-alert.eve.json",
            "ossec/ossec-docs-alerts.log",
            "ossec/ossec-docs-alerts.json",
            "ossec/wazuh-4.14-alerts.json",
        ] {
            lines.extend(corpus::read(f).lines().map(str::to_string));
        }
        let odd = [
            "\u{0}",
            "\u{fffd}",
            "é",
            "{",
            "}",
            "[",
            "\"",
            ":",
            " port ",
            " from ",
            "** Alert ",
            "Rule: ",
            "\n",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let kinds = [
            SourceKind::Fail2ban,
            SourceKind::Suricata,
            SourceKind::Ossec,
            SourceKind::Sshd,
            SourceKind::Raw,
        ];
        let mut parsers: Vec<Parser> = kinds.iter().map(|k| Parser::for_kind(*k)).collect();
        for _ in 0..20_000 {
            let base = &lines[rng.random_range(0..lines.len())];
            let mut s: String = base.clone();
            for _ in 0..rng.random_range(0..4) {
                let cut = rng.random_range(0..=s.len());
                let cut = (0..=cut)
                    .rev()
                    .find(|i| s.is_char_boundary(*i))
                    .unwrap_or(0);
                match rng.random_range(0..3) {
                    0 => s.truncate(cut),
                    1 => s.insert_str(cut, odd[rng.random_range(0..odd.len())]),
                    _ => {
                        let other = &lines[rng.random_range(0..lines.len())];
                        s = format!(
                            "{}{}",
                            &s[..cut],
                            &other[other.len() / 2..].chars().collect::<String>()
                        );
                    }
                }
            }
            let read_ms = rng.random_range(-10_000_000_000_000i64..10_000_000_000_000);
            for p in &mut parsers {
                let _ = p.feed(&s, read_ms);
            }
        }
        for p in &mut parsers {
            let _ = p.flush();
        }
        // Extremes.
        for p in &mut parsers {
            let _ = p.feed(&"x".repeat(1 << 20), i64::MAX);
            let _ = p.feed("", i64::MIN);
        }
    }
}

#[cfg(test)]
pub(crate) mod corpus {
    use std::path::PathBuf;

    /// A sample log from `../shared/corpus/` (the product's shared test data).
    pub fn read(rel: &str) -> String {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/corpus")
            .join(rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }
}
