//! `agent.toml`: the agent's configuration file.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::ConfigError;
use crate::check::Finding;
use picket_model::{Labels, SourceKind, validate_label, validate_name};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub kind: SourceKind,
    pub path: PathBuf,
    /// Read an existing file from its start the first time (default: from
    /// its end, as `tail -f`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_start: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The control plane: `HOST:PORT`, or several (a list, or a string
    /// with commas) of which the agent uses one at a time (SPEC §12).
    pub server: crate::Servers,
    /// Certificate, key, CA and the on-disk buffer.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The name this agent enrolled as (its certificate's name).
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default = "default_metrics_interval", with = "picket_model::duration")]
    pub metrics_interval: Duration,
    /// Lines longer than this are cut and marked.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Cap on the on-disk buffer of records not yet acknowledged.
    #[serde(default = "default_buffer_max_bytes")]
    pub buffer_max_bytes: u64,
    #[serde(default, rename = "source", skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceConfig>,
    /// Deploy steps (SPEC §9).
    #[serde(default, skip_serializing_if = "ExecConfig::is_default")]
    pub exec: ExecConfig,
}

/// `[exec]`: whether this host runs steps, and as which users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// `false`: every step is refused with a clear error.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The users a step's `user` may name (the caller must be granted the
    /// name too: SPEC §4).
    #[serde(default)]
    pub users: Vec<String>,
    /// Who runs a step that names no user. Absent: `nobody` when the agent
    /// runs as root (root is never implied), else the agent's own user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_user: Option<String>,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            enabled: true,
            users: Vec::new(),
            default_user: None,
        }
    }
}

impl ExecConfig {
    fn is_default(&self) -> bool {
        *self == ExecConfig::default()
    }
}

fn default_true() -> bool {
    true
}

pub fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/picket-agent")
}

fn default_max_line_bytes() -> usize {
    64 * 1024
}

fn default_buffer_max_bytes() -> u64 {
    256 * 1024 * 1024
}

fn default_metrics_interval() -> Duration {
    Duration::from_secs(10)
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&crate::read(path)?, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: AgentConfig = crate::from_toml(text, path)?;
        crate::check::all_problems(path, cfg.problems())?;
        Ok(cfg)
    }

    /// Every finding in `text` (named `file` in them), with the config
    /// when it reads: what `picket-agent check` prints.
    pub fn check(file: &str, text: &str) -> (Option<Self>, Vec<Finding>) {
        crate::check::config(file, text, |c| c, AgentConfig::problems)
    }

    /// What is wrong with the values, each with its field.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let mut bad = |field: String, msg: String| p.push((field, msg));
        if let Err(e) = validate_name(&self.name) {
            bad("name".into(), e.to_string());
        }
        for (k, v) in &self.labels {
            if let Err(e) = validate_label(k, v) {
                bad(format!("labels.{k}"), e.to_string());
            }
        }
        if self.max_line_bytes < 256 {
            bad("max_line_bytes".into(), "must be at least 256".into());
        }
        for (i, s) in self.sources.iter().enumerate() {
            if !s.path.is_absolute() {
                bad(
                    format!("source[{i}].path"),
                    format!("{:?} must be absolute", s.path),
                );
            }
        }
        if self.buffer_max_bytes < 64 * 1024 {
            bad("buffer_max_bytes".into(), "must be at least 65536".into());
        }
        if self.metrics_interval < Duration::from_millis(100) {
            bad("metrics_interval".into(), "must be at least 100ms".into());
        }
        p
    }

    /// The file `picket-agent enroll` writes, with comments.
    pub fn render(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!(
            "# Picket agent configuration (written by `picket-agent enroll`).\n\
             # Sources to tail, one [[source]] each; kind is fail2ban, suricata,\n\
             # ossec, sshd or raw:\n\
             #\n\
             # [[source]]\n\
             # kind = \"sshd\"\n\
             # path = \"/var/log/auth.log\"\n\
             #\n\
             # Deploy steps run as default_user (absent: `nobody` when the\n\
             # agent runs as root, else the agent's own user); a step's `user`\n\
             # must be listed in users (and granted to the caller), and\n\
             # `enabled = false` refuses every step:\n\
             #\n\
             # [exec]\n\
             # enabled = true\n\
             # default_user = \"deploy\"\n\
             # users = [\"deploy\"]\n\n{body}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
server = "10.0.1.50:7443"
state_dir = "/var/lib/picket-agent"
name = "vm-prod"
metrics_interval = "10s"
[labels]
role = "prod"

[[source]]
kind = "fail2ban"
path = "/var/log/fail2ban.log"
"#;

    #[test]
    fn spec_example_parses() {
        let c = AgentConfig::parse(GOOD, Path::new("agent.toml")).unwrap();
        assert_eq!(c.name, "vm-prod");
        assert_eq!(c.metrics_interval, Duration::from_secs(10));
        assert_eq!(c.sources[0].kind, SourceKind::Fail2ban);
        let again = AgentConfig::parse(&c.render(), Path::new("x")).unwrap();
        assert_eq!(again, c);
        // A freshly enrolled config takes appended [[source]] tables.
        let mut fresh = c.clone();
        fresh.sources.clear();
        let text = fresh.render() + "\n[[source]]\nkind = \"raw\"\npath = \"/var/log/app.log\"\n";
        assert_eq!(
            AgentConfig::parse(&text, Path::new("x"))
                .unwrap()
                .sources
                .len(),
            1
        );
    }

    #[test]
    fn errors_name_file_and_field() {
        let p = Path::new("/etc/picket/agent.toml");
        for (text, needle) in [
            (GOOD.replace("fail2ban\"", "nginx\""), "kind"),
            (GOOD.replace("\"10s\"", "\"ten\""), "metrics_interval"),
            (GOOD.replace("name = \"vm-prod\"", "name = \"a b\""), "name"),
            (GOOD.replace("role = ", "Role = "), "labels"),
            (GOOD.replace("10.0.1.50:7443", "nohost"), "server"),
            ("garbage [".to_string(), "agent.toml"),
        ] {
            let e = AgentConfig::parse(&text, p).unwrap_err().to_string();
            assert!(
                e.contains("/etc/picket/agent.toml") && e.contains(needle),
                "{needle}: {e}"
            );
        }
    }
}
