//! The alert file (SPEC §10): `[defaults]`, `[[rule]]`, `[[inhibit]]`,
//! `[[notifier]]`, `[[route]]`, read into [`RawFile`] and checked whole
//! into [`Rules`]. Every problem is reported at once, naming the rule or
//! notifier and its field (`rule "HighCpu".for: …`). A file that does not
//! check is refused and the rules in force stay (the driver's concern).
//!
//! Templates (`summary`, `annotations`) are minijinja; they are compiled
//! here, so a template that does not parse is a problem of the file.

use std::collections::BTreeMap;
use std::time::Duration;

use picket_config::check::{Doc, Finding, Level};
use picket_model::{Selector, Severity, parse_duration};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    pub defaults: Option<RawDefaults>,
    #[serde(default)]
    pub rule: Vec<RawRule>,
    #[serde(default)]
    pub inhibit: Vec<RawInhibit>,
    #[serde(default)]
    pub notifier: Vec<RawNotifier>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    pub group_by: Option<Vec<String>>,
    pub group_wait: Option<String>,
    pub group_interval: Option<String>,
    pub repeat_interval: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub severity: Option<String>,
    pub selector: Option<String>,
    pub summary: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    // threshold
    pub metric: Option<String>,
    pub op: Option<String>,
    pub value: Option<f64>,
    #[serde(rename = "for")]
    pub for_: Option<String>,
    // event, event_count
    #[serde(rename = "match")]
    pub matches: Option<BTreeMap<String, String>>,
    pub count: Option<i64>,
    pub window: Option<String>,
    pub resolve_after: Option<String>,
    // host_silent, store_unwritable
    pub after: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInhibit {
    #[serde(default)]
    pub source: BTreeMap<String, String>,
    #[serde(default)]
    pub target: BTreeMap<String, String>,
    #[serde(default)]
    pub equal: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotifier {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub url: Option<String>,
    pub routing_key: Option<String>,
    pub smtp: Option<String>,
    pub starttls: Option<bool>,
    pub from: Option<String>,
    pub to: Option<Vec<String>>,
    pub username: Option<String>,
    /// A file holding the SMTP password (never the password itself).
    pub password_file: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    #[serde(rename = "match", default)]
    pub matches: BTreeMap<String, String>,
    #[serde(default)]
    pub notifiers: Vec<String>,
    #[serde(rename = "continue", default)]
    pub continue_: bool,
}

/// The checked file.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub grouping: Grouping,
    pub rules: Vec<Rule>,
    pub inhibits: Vec<Inhibit>,
    pub notifiers: Vec<Notifier>,
    pub routes: Vec<Route>,
    /// Not errors: worth a line in the log and the reload's reply.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Grouping {
    pub group_by: Vec<String>,
    pub group_wait: Duration,
    pub group_interval: Duration,
    pub repeat_interval: Duration,
}

impl Default for Grouping {
    /// Alertmanager's defaults (SPEC §10's example).
    fn default() -> Self {
        Grouping {
            group_by: vec!["alertname".into(), "host".into()],
            group_wait: Duration::from_secs(10),
            group_interval: Duration::from_secs(60),
            repeat_interval: Duration::from_secs(4 * 3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub kind: Kind,
    pub severity: Severity,
    /// Hosts the rule is for (`None`: every host).
    pub selector: Option<Selector>,
    pub labels: BTreeMap<String, String>,
    /// Template sources, checked to compile.
    pub summary: String,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Gt,
    Ge,
    Lt,
    Le,
}

impl Op {
    pub fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Gt => a > b,
            Op::Ge => a >= b,
            Op::Lt => a < b,
            Op::Le => a <= b,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Threshold {
        metric: String,
        op: Op,
        value: f64,
        hold: Duration,
    },
    EventCount {
        matcher: EventMatch,
        count: u32,
        window: Duration,
    },
    Event {
        matcher: EventMatch,
        resolve_after: Duration,
    },
    HostSilent {
        after: Duration,
    },
    /// The control plane's store has refused records this long (a full or
    /// failing disk); its host is the control plane.
    StoreUnwritable {
        after: Duration,
    },
    /// The control plane's own `rollout_failed` / `rollout_rolled_back`
    /// events (SPEC §9), resolving as an `event` rule does.
    RolloutFailed {
        resolve_after: Duration,
    },
}

/// Which events a rule counts: SPEC §10's `match`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventMatch {
    pub source: Option<String>,
    pub kind: Option<String>,
    /// At least this.
    pub severity: Option<Severity>,
    /// `fields.NAME = "value"`: equality.
    pub fields: BTreeMap<String, String>,
}

impl EventMatch {
    pub fn matches(
        &self,
        source: &str,
        kind: &str,
        severity: Severity,
        fields: &BTreeMap<String, String>,
    ) -> bool {
        self.source.as_deref().is_none_or(|s| s == source)
            && self.kind.as_deref().is_none_or(|k| k == kind)
            && self.severity.is_none_or(|s| severity >= s)
            && self.fields.iter().all(|(k, v)| fields.get(k) == Some(v))
    }
}

impl std::fmt::Display for EventMatch {
    /// `source=fail2ban kind=ban severity>=high fields.jail=sshd`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(s) = &self.source {
            parts.push(format!("source={s}"));
        }
        if let Some(k) = &self.kind {
            parts.push(format!("kind={k}"));
        }
        if let Some(s) = self.severity {
            parts.push(format!("severity>={}", s.as_str()));
        }
        for (k, v) in &self.fields {
            parts.push(format!("fields.{k}={v}"));
        }
        if parts.is_empty() {
            return f.write_str("any event");
        }
        f.write_str(&parts.join(" "))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inhibit {
    /// SPEC §10's `source = { severity = "critical" }`, as
    /// [`Selector::of_matchers`] reads it.
    pub source: Selector,
    pub target: Selector,
    pub equal: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifierKind {
    Webhook {
        url: String,
    },
    Slack {
        url: String,
    },
    Discord {
        url: String,
    },
    PagerDuty {
        url: String,
        routing_key: String,
    },
    Alertmanager {
        url: String,
    },
    Email {
        smtp: String,
        starttls: bool,
        from: String,
        to: Vec<String>,
        username: Option<String>,
        password_file: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notifier {
    pub name: String,
    pub kind: NotifierKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub matches: Selector,
    pub notifiers: Vec<String>,
    pub continue_: bool,
}

/// PagerDuty's Events API v2 endpoint, the default `url` of a
/// `pagerduty` notifier.
pub const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";

const RESOLVE_AFTER: Duration = Duration::from_secs(300);

/// Every problem of a file, in file order, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct RulesError(pub Vec<String>);

/// Every finding in an alert file's text (named `file` in them): the
/// problems and warnings `parse` finds, each put where the file writes
/// it; what `picketctl alerts check` and `picket-control check` print.
pub fn check_file(file: &str, text: &str) -> (Option<Rules>, Vec<Finding>) {
    let doc = Doc::new(file, text);
    match toml::from_str::<RawFile>(text) {
        Err(e) => (None, vec![doc.toml_error(&e)]),
        Ok(raw) => match raw.check() {
            Ok(rules) => {
                let warnings = rules
                    .warnings
                    .iter()
                    .map(|w| doc.problem_text(w, Level::Warning))
                    .collect();
                (Some(rules), warnings)
            }
            Err(e) => (
                None,
                e.0.iter()
                    .map(|p| doc.problem_text(p, Level::Error))
                    .collect(),
            ),
        },
    }
}

/// Reads and checks an alert file's text.
pub fn parse(text: &str) -> Result<Rules, RulesError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| RulesError(vec![syntax(text, &e)]))?;
    raw.check()
}

/// A TOML error as one line that names where, without quoting the source:
/// the line may hold a secret (a webhook URL or routing key typed under the
/// wrong key), and this text goes to the log and the audit that viewers
/// read.
fn syntax(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

mod check;

#[cfg(test)]
mod tests;
