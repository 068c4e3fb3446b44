//! What a query of records wants ([`EventFilter`], [`LogFilter`]) and
//! what a live feed of them carries ([`Stored`]): pure, no store, no
//! queue. The control plane's feed (backlog and live) applies them; the
//! store's reads take their [`Needles`].

use picket_model::Severity;
use regex::Regex;

use super::{EventRecord, LogRecord, Needles, Timed};

/// A `--grep` pattern, with the literals one of which starts every match:
/// the store skips blocks and records without any ([`Needles`]).
pub struct Grep {
    regex: Regex,
    needles: Option<Needles>,
}

impl Grep {
    pub fn new(pattern: &str) -> Result<Grep, regex::Error> {
        Ok(Grep {
            regex: Regex::new(pattern)?,
            needles: Needles::of(pattern),
        })
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

/// The hosts a scoped user may see (SPEC §4), as they were when the
/// query began; `None`: every host.
pub type InScope = Option<std::sync::Arc<std::collections::HashSet<String>>>;

/// What to show of events.
pub struct EventFilter {
    pub scope: InScope,
    pub host: String,
    pub source: String,
    pub min_severity: Option<Severity>,
    pub since: i64,
    pub grep: Option<Grep>,
}

impl EventFilter {
    fn keep(&self, e: &EventRecord) -> bool {
        (self.host.is_empty() || e.host == self.host)
            && self.scope.as_ref().is_none_or(|s| s.contains(&e.host))
            && (self.source.is_empty() || e.source == self.source)
            && self.min_severity.is_none_or(|m| e.severity >= m)
            && e.time_ms >= self.since
            && self.grep.as_ref().is_none_or(|g| g.is_match(&e.message))
    }
}

pub struct LogFilter {
    pub scope: InScope,
    pub host: String,
    pub source: String,
    pub since: i64,
    pub grep: Option<Grep>,
}

impl LogFilter {
    fn keep(&self, l: &LogRecord) -> bool {
        (self.host.is_empty() || l.host == self.host)
            && self.scope.as_ref().is_none_or(|s| s.contains(&l.host))
            && (self.source.is_empty() || l.source == self.source)
            && l.time_ms >= self.since
            && self.grep.as_ref().is_none_or(|g| g.is_match(&l.line))
    }
}

/// A stored record the feed carries (its id and time come from
/// [`Timed`]).
pub trait Stored: Timed + Send + Sync + 'static {
    /// About the bytes it holds in memory.
    fn size(&self) -> usize;
}

impl Stored for EventRecord {
    fn size(&self) -> usize {
        let fields: usize = self
            .fields
            .iter()
            .map(|(k, v)| k.len() + v.len() + 48)
            .sum();
        std::mem::size_of::<Self>()
            + self.host.len()
            + self.source.len()
            + self.path.len()
            + self.kind.len()
            + self.message.len()
            + fields
    }
}

impl Stored for LogRecord {
    fn size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.host.len()
            + self.source.len()
            + self.path.len()
            + self.line.len()
    }
}

/// Which records a query wants.
pub trait Filter<T>: Send + Sync + 'static {
    fn since(&self) -> i64;
    fn host(&self) -> Option<&str>;
    fn keep(&self, r: &T) -> bool;
    /// What a record must hold to be kept, if anything is known.
    fn needles(&self) -> Option<&Needles>;
}

impl Filter<EventRecord> for EventFilter {
    fn since(&self) -> i64 {
        self.since
    }
    fn host(&self) -> Option<&str> {
        Some(self.host.as_str()).filter(|h| !h.is_empty())
    }
    fn keep(&self, e: &EventRecord) -> bool {
        EventFilter::keep(self, e)
    }
    fn needles(&self) -> Option<&Needles> {
        self.grep.as_ref().and_then(|g| g.needles.as_ref())
    }
}

impl Filter<LogRecord> for LogFilter {
    fn since(&self) -> i64 {
        self.since
    }
    fn host(&self) -> Option<&str> {
        Some(self.host.as_str()).filter(|h| !h.is_empty())
    }
    fn keep(&self, l: &LogRecord) -> bool {
        LogFilter::keep(self, l)
    }
    fn needles(&self) -> Option<&Needles> {
        self.grep.as_ref().and_then(|g| g.needles.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::Grep;

    #[test]
    fn grep_is_case_blind_on_request() {
        let g = Grep::new("(?i)rare").unwrap();
        assert!(g.is_match("a RaRe one"));
        assert!(g.needles.is_some());
    }
}
