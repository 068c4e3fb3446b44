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
pub mod json;
pub mod ossec;
pub mod sshd;
pub mod suricata;
pub mod time;

use std::borrow::Cow;

use picket_model::Severity;

use picket_model::SourceKind;

/// What a parser made of one line (or one OSSEC block). Text is borrowed
/// from the line wherever it appears there as it is, so that a parsed
/// line costs few allocations; it is encoded for the wire straight from
/// these borrows (`collect::records`).
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<'a> {
    pub kind: Cow<'a, str>,
    pub severity: Severity,
    pub fields: Fields<'a>,
    /// The event's own time (Unix ms, UTC) when the log has one.
    pub time_ms: Option<i64>,
    /// The original text.
    pub message: Cow<'a, str>,
    /// False when the parser did not recognise the line.
    pub parsed: bool,
}

impl<'a> Parsed<'a> {
    pub fn new(
        kind: impl Into<Cow<'a, str>>,
        severity: Severity,
        message: impl Into<Cow<'a, str>>,
    ) -> Parsed<'a> {
        Parsed {
            kind: kind.into(),
            severity,
            fields: Fields::default(),
            time_ms: None,
            message: message.into(),
            parsed: true,
        }
    }

    /// A line the parser could not read: kept, marked, counted.
    pub fn unparsed(
        kind: impl Into<Cow<'a, str>>,
        message: impl Into<Cow<'a, str>>,
        time_ms: Option<i64>,
    ) -> Parsed<'a> {
        Parsed {
            parsed: false,
            time_ms,
            ..Parsed::new(kind, Severity::Info, message)
        }
    }

    /// Sets a field; an empty value sets nothing.
    pub fn field(mut self, k: impl Into<Cow<'a, str>>, v: impl Into<Cow<'a, str>>) -> Parsed<'a> {
        let v = v.into();
        if !v.is_empty() {
            self.fields.insert(k, v);
        }
        self
    }

    pub fn at(mut self, t: Option<i64>) -> Parsed<'a> {
        self.time_ms = t;
        self
    }

    /// Copies what is borrowed, to outlive the line.
    pub fn into_owned(self) -> Parsed<'static> {
        Parsed {
            kind: Cow::Owned(self.kind.into_owned()),
            severity: self.severity,
            fields: Fields(
                self.fields
                    .0
                    .into_iter()
                    .map(|(k, v)| (Cow::Owned(k.into_owned()), Cow::Owned(v.into_owned())))
                    .collect(),
            ),
            time_ms: self.time_ms,
            message: Cow::Owned(self.message.into_owned()),
            parsed: self.parsed,
        }
    }
}

/// An event's fields: each name once, in the order first set. A few
/// fields a line, so a list beats a map.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fields<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'a> Fields<'a> {
    /// Sets `k` to `v`, replacing an earlier value.
    pub fn insert(&mut self, k: impl Into<Cow<'a, str>>, v: impl Into<Cow<'a, str>>) {
        let (k, v) = (k.into(), v.into());
        match self.0.iter_mut().find(|(name, _)| *name == k) {
            Some(slot) => slot.1 = v,
            None => self.0.push((k, v)),
        }
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.as_ref())
    }

    pub fn get_mut(&mut self, k: &str) -> Option<&mut Cow<'a, str>> {
        self.0
            .iter_mut()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v)
    }

    pub fn contains_key(&self, k: &str) -> bool {
        self.get(k).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + Clone {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }
}

/// `fields["name"]`, as with a map: panics when the field is missing.
impl<'a> std::ops::Index<&str> for Fields<'a> {
    type Output = Cow<'a, str>;
    fn index(&self, k: &str) -> &Cow<'a, str> {
        match self.0.iter().find(|(name, _)| name == k) {
            Some((_, v)) => v,
            None => panic!("no field {k:?}"),
        }
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

    /// Feeds one line read at `read_ms`; adds the events it completes to
    /// `out`.
    pub fn feed<'a>(&mut self, line: &'a str, read_ms: i64, out: &mut Vec<Parsed<'a>>) {
        match self {
            Parser::Fail2ban => out.push(fail2ban::parse(line, read_ms)),
            Parser::Suricata => out.push(suricata::parse(line)),
            Parser::Sshd => out.push(sshd::parse(line, read_ms)),
            // `raw` sources ship lines only (to the log store), no events.
            Parser::Raw => {}
            Parser::Ossec(b) => b.feed(line, out),
        }
    }

    /// Events held back waiting for more lines (an OSSEC block whose end
    /// has not been seen): called when the file goes quiet.
    pub fn flush(&mut self, out: &mut Vec<Parsed<'_>>) {
        if let Parser::Ossec(b) = self {
            out.extend(b.flush());
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
                p.feed(&s, read_ms, &mut Vec::new());
            }
        }
        for p in &mut parsers {
            p.flush(&mut Vec::new());
        }
        // Extremes.
        let long = "x".repeat(1 << 20);
        for p in &mut parsers {
            p.feed(&long, i64::MAX, &mut Vec::new());
            p.feed("", i64::MIN, &mut Vec::new());
        }
    }
}

#[cfg(test)]
pub(crate) mod corpus {
    use std::path::PathBuf;

    /// A sample log from `tests/corpus/` (see its README for sources).
    pub fn read(rel: &str) -> String {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/corpus")
            .join(rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }
}
