//! Checking a rollout spec's parts: amounts, durations, selectors and
//! steps, each problem recorded with its field.

use std::time::Duration;

use super::{Action, Amount, Probe, Problem, RawAmount, RawStep, Run, Step};
use crate::Selector;

pub(super) const EXEC_TIMEOUT: Duration = Duration::from_secs(300);
pub(super) const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const CHECK_INTERVAL: Duration = Duration::from_secs(2);
pub(super) const HOST_TIMEOUT: Duration = Duration::from_secs(120);

/// Collects problems while a spec is checked.
pub(super) struct Check(pub(super) Vec<Problem>);

impl Check {
    pub(super) fn problem(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }

    pub(super) fn duration(
        &mut self,
        field: &str,
        text: Option<&str>,
        default: Duration,
    ) -> Duration {
        match text {
            None => default,
            Some(t) => match parse_duration(t) {
                Ok(d) => d,
                Err(e) => {
                    self.problem(field, e);
                    default
                }
            },
        }
    }

    pub(super) fn selector(&mut self, field: &str, text: &str) -> Option<Selector> {
        match text.parse() {
            Ok(s) => Some(s),
            Err(e) => {
                self.problem(field, format!("{e}"));
                None
            }
        }
    }

    pub(super) fn amount(
        &mut self,
        field: &str,
        raw: Option<&RawAmount>,
        min: u32,
        default: Amount,
    ) -> Amount {
        let bad = |c: &mut Check, what: &str| {
            c.problem(
                field,
                format!("{what}: a count of at least {min}, or a percentage such as \"25%\" (at most \"100%\")"),
            );
            default
        };
        match raw {
            None => default,
            Some(RawAmount::Count(n)) => match u32::try_from(*n) {
                Ok(n) if n >= min => Amount::Count(n),
                _ => bad(self, &n.to_string()),
            },
            Some(RawAmount::Text(t)) => {
                let p = t
                    .trim()
                    .strip_suffix('%')
                    .and_then(|p| p.trim().parse::<u8>().ok());
                match p {
                    Some(p) if p <= 100 && u32::from(p) >= min => Amount::Percent(p),
                    _ => bad(self, &format!("{t:?}")),
                }
            }
        }
    }

    pub(super) fn step(&mut self, field: &str, raw: &RawStep) -> Option<Step> {
        let kinds: Vec<&str> = [
            raw.exec.as_ref().map(|_| "exec"),
            raw.shell.as_ref().map(|_| "shell"),
            raw.http.as_ref().map(|_| "http"),
            raw.tcp.as_ref().map(|_| "tcp"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let [kind] = kinds[..] else {
            let found = if kinds.is_empty() {
                "none".to_string()
            } else {
                kinds.join(" and ")
            };
            self.problem(
                field,
                format!("exactly one of exec, shell, http, tcp (found {found})"),
            );
            return None;
        };
        let process = matches!(kind, "exec" | "shell");
        let only = |c: &mut Check, key: &str, set: bool, for_what: &str| {
            if set {
                c.problem(
                    format!("{field}.{key}"),
                    format!("only for {for_what} steps"),
                );
            }
        };
        only(
            self,
            "expect_status",
            raw.expect_status.is_some() && kind != "http",
            "http",
        );
        if process {
            only(self, "retries", raw.retries.is_some(), "http and tcp");
            only(self, "interval", raw.interval.is_some(), "http and tcp");
        } else {
            only(self, "env", raw.env.is_some(), "exec and shell");
            only(self, "cwd", raw.cwd.is_some(), "exec and shell");
            only(self, "user", raw.user.is_some(), "exec and shell");
        }
        let default = if process { EXEC_TIMEOUT } else { CHECK_TIMEOUT };
        let timeout = self.duration(&format!("{field}.timeout"), raw.timeout.as_deref(), default);
        if timeout.is_zero() {
            self.problem(format!("{field}.timeout"), "must be more than 0s");
        }
        let run = || Run {
            env: raw.env.clone().unwrap_or_default(),
            cwd: raw.cwd.clone(),
            user: raw.user.clone(),
        };
        let probe = |c: &mut Check| Probe {
            retries: match raw.retries.map(u32::try_from) {
                None => 0,
                Some(Ok(n)) if n <= 1_000 => n,
                Some(_) => {
                    c.problem(format!("{field}.retries"), "a count from 0 to 1000");
                    0
                }
            },
            interval: c.duration(
                &format!("{field}.interval"),
                raw.interval.as_deref(),
                CHECK_INTERVAL,
            ),
        };
        let action = match kind {
            "exec" => {
                let argv = raw.exec.clone().unwrap_or_default();
                if argv.first().is_none_or(|a| a.is_empty()) {
                    self.problem(
                        format!("{field}.exec"),
                        "the program to run (a non-empty first element)",
                    );
                }
                Action::Exec { argv, run: run() }
            }
            "shell" => {
                let script = raw.shell.clone().unwrap_or_default();
                if script.trim().is_empty() {
                    self.problem(format!("{field}.shell"), "an empty script");
                }
                Action::Shell { script, run: run() }
            }
            "http" => {
                let url = raw.http.clone().unwrap_or_default();
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    self.problem(
                        format!("{field}.http"),
                        format!("{url:?} is not an http:// or https:// URL"),
                    );
                }
                let expect_status = match raw.expect_status.map(u16::try_from) {
                    None => 200,
                    Some(Ok(s)) if (100..=599).contains(&s) => s,
                    Some(_) => {
                        self.problem(
                            format!("{field}.expect_status"),
                            "an HTTP status from 100 to 599",
                        );
                        200
                    }
                };
                Action::Http {
                    url,
                    expect_status,
                    probe: probe(self),
                }
            }
            _ => {
                let addr = raw.tcp.clone().unwrap_or_default();
                let port = addr
                    .rsplit_once(':')
                    .and_then(|(h, p)| (!h.is_empty()).then_some(p));
                if port
                    .and_then(|p| p.parse::<u16>().ok())
                    .is_none_or(|p| p == 0)
                {
                    self.problem(format!("{field}.tcp"), format!("{addr:?} is not HOST:PORT"));
                }
                Action::Tcp {
                    addr,
                    probe: probe(self),
                }
            }
        };
        Some(Step {
            name: raw.name.clone(),
            action,
            timeout,
        })
    }
}

/// `"30s"`, `"5m"`, `"1h30m"`, `"1w"`: humantime's grammar, the one
/// duration syntax of every Picket file and flag (rollout files, the alert
/// file, control.toml, agent.toml, picketctl's `--since` and `--for`).
/// Picket counts time in milliseconds, so a finer duration (`"3us"`) is
/// refused rather than rounded.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|_| format!("{text:?} is not a duration such as \"30s\", \"5m\" or \"1h30m\""))?;
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!("{text:?} is finer than a millisecond"));
    }
    Ok(d)
}

/// Serde for a `Duration` written as [`parse_duration`] reads it
/// (`#[serde(with = "picket_model::duration")]`); written back as
/// humantime formats it (`"1day 2h"`).
pub mod serde_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}
