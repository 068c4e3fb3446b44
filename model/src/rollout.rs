//! A rollout's specification: the TOML of `picketctl rollout create -f`
//! (and, converted at the edge, the API's message), read into [`RawSpec`]
//! and checked whole into a [`Spec`]. Every problem is reported, each
//! naming its field the way the file spells it (`wave[1].selector: …`,
//! `step[0]: exactly one of exec, shell, http, tcp`).
//!
//! Where the contract gives no default, these hold (docs/rollouts.md):
//! `max_parallel = 1`, `max_failures = 0`, `auto_rollback = false`,
//! `pause_between_waves = "0s"`, `min_healthy_time = "0s"`,
//! `host_timeout = "2m"`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Labels, Selector};

/// The file as written: every key optional, so that checking can name
/// each one that is missing or wrong.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    pub name: Option<String>,
    pub selector: Option<String>,
    pub max_parallel: Option<RawAmount>,
    pub max_failures: Option<RawAmount>,
    pub auto_rollback: Option<bool>,
    pub pause_between_waves: Option<String>,
    pub min_healthy_time: Option<String>,
    pub host_timeout: Option<String>,
    #[serde(default)]
    pub wave: Vec<RawWave>,
    #[serde(default)]
    pub step: Vec<RawStep>,
    #[serde(default)]
    pub health: Vec<RawStep>,
    #[serde(default)]
    pub rollback: Vec<RawStep>,
}

/// A count (`1`) or a percentage (`"25%"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawAmount {
    Count(i64),
    Text(String),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWave {
    pub name: Option<String>,
    pub selector: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub name: Option<String>,
    pub exec: Option<Vec<String>>,
    pub shell: Option<String>,
    pub http: Option<String>,
    pub tcp: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    pub timeout: Option<String>,
    pub expect_status: Option<i64>,
    pub retries: Option<i64>,
    pub interval: Option<String>,
}

/// A checked rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub name: String,
    pub selector: Selector,
    pub max_parallel: Amount,
    pub max_failures: Amount,
    pub auto_rollback: bool,
    pub pause_between_waves: Pause,
    pub min_healthy_time: Duration,
    pub host_timeout: Duration,
    /// At least one: without `[[wave]]`, every selected host is one wave.
    pub waves: Vec<Wave>,
    pub steps: Vec<Step>,
    pub health: Vec<Step>,
    pub rollback: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Wave {
    pub name: String,
    /// `None`: the rollout's own selector alone.
    pub selector: Option<Selector>,
}

/// How many hosts: a count, or a percentage of the hosts concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Count(u32),
    Percent(u8),
}

impl Amount {
    /// The count this stands for out of `n` hosts. A percentage rounds
    /// down, but `max_parallel` is never below one (see [`Amount::at_least_one`]).
    pub fn of(self, n: usize) -> usize {
        match self {
            Amount::Count(c) => c as usize,
            Amount::Percent(p) => n * p as usize / 100,
        }
    }

    /// [`Amount::of`], at least 1: how many hosts may run at once.
    pub fn at_least_one(self, n: usize) -> usize {
        self.of(n).max(1)
    }
}

/// What happens between two waves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    Wait(Duration),
    Approval,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: Option<String>,
    pub action: Action,
    pub timeout: Duration,
}

/// How a step ended, as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Running,
    Succeeded,
    Failed,
    TimedOut,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Running => "running",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::TimedOut => "timed_out",
        }
    }
}

/// An operator's command on a running rollout (`picketctl rollout
/// pause|resume|approve|abort|rollback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutAction {
    Pause,
    Resume,
    Approve,
    Abort,
    Rollback,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Exec {
        argv: Vec<String>,
        run: Run,
    },
    Shell {
        script: String,
        run: Run,
    },
    Http {
        url: String,
        expect_status: u16,
        probe: Probe,
    },
    Tcp {
        addr: String,
        probe: Probe,
    },
}

/// How a process step runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Run {
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub user: Option<String>,
}

/// How a check step retries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    pub retries: u32,
    pub interval: Duration,
}

/// One problem, at one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// As the file spells it: `max_parallel`, `wave[1].selector`, `step[0]`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Everything wrong with a spec, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct SpecError(pub Vec<Problem>);

mod check;
use check::{Check, HOST_TIMEOUT};
pub use check::{parse_duration, serde_duration};

impl RawSpec {
    /// Checks the whole spec; every problem is reported at once.
    pub fn check(&self) -> Result<Spec, SpecError> {
        let mut c = Check(Vec::new());
        let name = match self.name.as_deref().map(str::trim) {
            Some(n) if !n.is_empty() && n.len() <= 200 => n.to_string(),
            Some(n) if !n.is_empty() => {
                c.problem("name", "at most 200 characters");
                n.to_string()
            }
            _ => {
                c.problem("name", "required: what is being rolled out");
                String::new()
            }
        };
        let selector = match self.selector.as_deref() {
            Some(s) => c.selector("selector", s),
            None => {
                c.problem("selector", "required: the hosts the rollout is for");
                None
            }
        };
        let max_parallel = c.amount(
            "max_parallel",
            self.max_parallel.as_ref(),
            1,
            Amount::Count(1),
        );
        let max_failures = c.amount(
            "max_failures",
            self.max_failures.as_ref(),
            0,
            Amount::Count(0),
        );
        let pause_between_waves = match self.pause_between_waves.as_deref() {
            Some("approval") => Pause::Approval,
            Some(t) => Pause::Wait(c.duration("pause_between_waves", Some(t), Duration::ZERO)),
            None => Pause::Wait(Duration::ZERO),
        };
        let min_healthy_time = c.duration(
            "min_healthy_time",
            self.min_healthy_time.as_deref(),
            Duration::ZERO,
        );
        let host_timeout = c.duration("host_timeout", self.host_timeout.as_deref(), HOST_TIMEOUT);
        if host_timeout.is_zero() {
            c.problem("host_timeout", "must be more than 0s");
        }
        let mut waves = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for (i, w) in self.wave.iter().enumerate() {
            let field = format!("wave[{i}]");
            let name = w.name.clone().unwrap_or_else(|| format!("wave {}", i + 1));
            if !names.insert(name.clone()) {
                c.problem(
                    format!("{field}.name"),
                    format!("{name:?} is the name of an earlier wave"),
                );
            }
            let selector = match w.selector.as_deref() {
                Some(s) => c.selector(&format!("{field}.selector"), s),
                None => {
                    c.problem(
                        format!("{field}.selector"),
                        "required: which of the selected hosts are in this wave",
                    );
                    None
                }
            };
            waves.push(Wave { name, selector });
        }
        if waves.is_empty() {
            waves.push(Wave {
                name: "all".into(),
                selector: None,
            });
        }
        let steps_of = |c: &mut Check, table: &str, raw: &[RawStep]| -> Vec<Step> {
            raw.iter()
                .enumerate()
                .filter_map(|(i, s)| c.step(&format!("{table}[{i}]"), s))
                .collect()
        };
        let steps = steps_of(&mut c, "step", &self.step);
        let health = steps_of(&mut c, "health", &self.health);
        let rollback = steps_of(&mut c, "rollback", &self.rollback);
        if self.step.is_empty() {
            c.problem("step", "at least one [[step]]: what to run on each host");
        }
        let auto_rollback = self.auto_rollback.unwrap_or(false);
        if auto_rollback && self.rollback.is_empty() {
            c.problem(
                "auto_rollback",
                "true, but there is no [[rollback]] step to run",
            );
        }
        match (c.0.is_empty(), selector) {
            (true, Some(selector)) => Ok(Spec {
                name,
                selector,
                max_parallel,
                max_failures,
                auto_rollback,
                pause_between_waves,
                min_healthy_time,
                host_timeout,
                waves,
                steps,
                health,
                rollback,
            }),
            _ => Err(SpecError(c.0)),
        }
    }
}

impl RawStep {
    /// Checks one step on its own, as an agent does with what it is sent.
    pub fn check_one(&self) -> Result<Step, SpecError> {
        let mut c = Check(Vec::new());
        match c.step("step", self) {
            Some(step) if c.0.is_empty() => Ok(step),
            _ => Err(SpecError(c.0)),
        }
    }
}

impl Step {
    /// What `PICKET_STEP` holds: the step's name, or its index.
    pub fn label(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| index.to_string())
    }
}

impl Spec {
    /// The hosts of each wave, in order, out of the fleet's `(name,
    /// labels)`: selected by the rollout, in the first wave that matches.
    /// A wave with no host, or a rollout with none, is a problem.
    pub fn plan<'a>(
        &self,
        fleet: impl IntoIterator<Item = (&'a str, &'a Labels)>,
    ) -> Result<Vec<Vec<String>>, SpecError> {
        let mut plan = vec![Vec::new(); self.waves.len()];
        let mut selected = 0;
        for (name, labels) in fleet {
            if !self.selector.matches_host(name, labels) {
                continue;
            }
            selected += 1;
            let wave = self.waves.iter().position(|w| {
                w.selector
                    .as_ref()
                    .is_none_or(|s| s.matches_host(name, labels))
            });
            if let Some(i) = wave {
                plan[i].push(name.to_string());
            }
        }
        let mut problems = Vec::new();
        if selected == 0 {
            problems.push(Problem {
                field: "selector".into(),
                message: format!("{} matches no host", self.selector),
            });
        } else {
            for (i, (w, hosts)) in self.waves.iter().zip(&plan).enumerate() {
                if hosts.is_empty() {
                    problems.push(Problem {
                        field: format!("wave[{i}].selector"),
                        message: format!("matches none of the selected hosts (wave {:?})", w.name),
                    });
                }
            }
        }
        if problems.is_empty() {
            Ok(plan)
        } else {
            Err(SpecError(problems))
        }
    }
}

#[cfg(test)]
mod tests;
