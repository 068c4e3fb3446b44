//! Domain types shared by the agent, the control plane and the CLI.
//!
//! No prost or tonic here: the wire has its own types, converted in
//! `picket_proto::convert`. This crate does no I/O and reads no clock.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub mod exposition;
pub use exposition::exposition_value;
pub mod backoff;
pub mod rollout;
pub use rollout::parse_duration;
/// `#[serde(with = "picket_model::duration")]`: a `Duration` in the one duration syntax.
pub use rollout::serde_duration as duration;
mod selector;
pub use selector::{Requirement, Selector, SelectorError};

/// Every host series an agent reports (names without `picket_host_`): what
/// a `threshold` alert rule may name without a warning. The agent's tests
/// check that it reports no other.
pub const HOST_SERIES: &[&str] = &[
    "cpu_usage_percent",
    "load1",
    "load5",
    "load15",
    "memory_used_bytes",
    "memory_total_bytes",
    "swap_used_bytes",
    "swap_total_bytes",
    "uptime_seconds",
    "processes",
    "disk_used_bytes",
    "disk_total_bytes",
    "network_receive_bytes",
    "network_transmit_bytes",
    "network_receive_bytes_per_second",
    "network_transmit_bytes_per_second",
    "agent_buffer_dropped_records",
    "agent_lines_unparsed",
    "agent_read_positions_unreadable",
    "agent_buffer_damaged_records",
    "agent_buffer_bytes",
];

/// Labels on a host, a token or an alert: ordered, so output is stable.
pub type Labels = BTreeMap<String, String>;

/// A user's role, kept server-side. Each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Also runs commands and rollouts, silences alerts.
    Operator,
    /// Also manages tokens, users and revocation.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown role {0:?} (expected viewer, operator or admin)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(UnknownRole(other.to_string())),
        }
    }
}

/// Whether an agent can be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    Online,
    Offline,
    Revoked,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Online => "online",
            AgentStatus::Offline => "offline",
            AgentStatus::Revoked => "revoked",
        }
    }
}

/// Event severity; orders as `info < low < medium < high < critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown severity {0:?} (expected info, low, medium, high or critical)")]
pub struct UnknownSeverity(pub String);

impl FromStr for Severity {
    type Err = UnknownSeverity;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "info" => Ok(Severity::Info),
            "low" => Ok(Severity::Low),
            "medium" => Ok(Severity::Medium),
            "high" => Ok(Severity::High),
            "critical" => Ok(Severity::Critical),
            other => Err(UnknownSeverity(other.to_string())),
        }
    }
}

/// The kind of name Picket accepts for agents and users: what a host name
/// looks like, so it is safe in a certificate, a file name and a label.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name {0:?} is longer than 63 characters")]
    TooLong(String),
    #[error(
        "name {0:?} may hold only letters, digits, '.', '_' and '-', and must start with a letter or digit"
    )]
    BadChar(String),
}

pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > 63 {
        return Err(NameError::TooLong(name.to_string()));
    }
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !(ok_first && ok_rest) {
        return Err(NameError::BadChar(name.to_string()));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    #[error("label {0:?} is not of the form key=value")]
    NoEquals(String),
    #[error(
        "label key {0:?} may hold only lowercase letters, digits, '.', '_', '/' and '-' (1 to 63 characters)"
    )]
    BadKey(String),
    #[error("label value for {0:?} is longer than 256 characters or holds a control character")]
    BadValue(String),
}

/// Checks one label key and value.
pub fn validate_label(key: &str, value: &str) -> Result<(), LabelError> {
    let key_ok = !key.is_empty()
        && key.len() <= 63
        && key.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '/' | '-')
        });
    if !key_ok {
        return Err(LabelError::BadKey(key.to_string()));
    }
    if value.len() > 256 || value.chars().any(char::is_control) {
        return Err(LabelError::BadValue(key.to_string()));
    }
    Ok(())
}

/// Text from a host or a caller as the control plane keeps it: at most
/// `max_chars` characters, control characters written `\xNN` (they would
/// act on the terminal of whoever reads a log or a listing). `true` when
/// it was cut.
pub fn escape_controls(s: &str, max_chars: usize) -> (String, bool) {
    let mut out = String::with_capacity(s.len().min(max_chars + 4));
    for (i, c) in s.chars().enumerate() {
        if i == max_chars {
            return (out, true);
        }
        if c.is_control() {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    (out, false)
}

/// A duration as milliseconds, saturating.
pub fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Parses `key=value`, as typed on a command line.
pub fn parse_label(s: &str) -> Result<(String, String), LabelError> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| LabelError::NoEquals(s.to_string()))?;
    validate_label(k, v)?;
    Ok((k.to_string(), v.to_string()))
}

/// What a source is, which decides how its lines are parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Fail2ban,
    Suricata,
    Ossec,
    Sshd,
    Raw,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Fail2ban => "fail2ban",
            SourceKind::Suricata => "suricata",
            SourceKind::Ossec => "ossec",
            SourceKind::Sshd => "sshd",
            SourceKind::Raw => "raw",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("vm-prod").is_ok());
        assert!(validate_name("web01.example.com").is_ok());
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert!(validate_name("-x").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name("../etc").is_err());
        assert!(validate_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn labels() {
        assert_eq!(parse_label("role=prod"), Ok(("role".into(), "prod".into())));
        assert_eq!(parse_label("env="), Ok(("env".into(), "".into())));
        assert!(matches!(parse_label("role"), Err(LabelError::NoEquals(_))));
        assert!(matches!(parse_label("Role=x"), Err(LabelError::BadKey(_))));
        assert!(matches!(
            parse_label("k=a\nb"),
            Err(LabelError::BadValue(_))
        ));
    }

    #[test]
    fn roles_order_and_parse() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        assert_eq!("operator".parse(), Ok(Role::Operator));
        assert!("root".parse::<Role>().is_err());
        assert!(Severity::Info < Severity::Critical);
    }
}
