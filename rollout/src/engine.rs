//! The rollout engine: a pure state machine, as quinn-proto's `Connection`
//! is one. Inputs (commands, step results, hosts coming and going, time)
//! go in, decisions come out; it does no I/O and reads no clock: `now`
//! (Unix ms, wall time, since deadlines must survive a restart) is an
//! argument. It imports no tokio, sled or tonic.
//!
//! Method families, and the order to call them:
//! 1. Construction: [`Engine::create`] for a new rollout (with the waves
//!    planned from the fleet, `Spec::plan`), or [`Engine::restore`] from
//!    what was persisted, then [`Engine::resume`] to dispatch again the
//!    steps that had no result.
//! 2. Inputs: [`Engine::handle`]`(input, now)` returns the outputs.
//! 3. Time: [`Engine::next_deadline`] says when to call
//!    `handle(Input::Tick, now)` next.
//! 4. Getters: [`Engine::state`], [`Engine::hosts`], [`Engine::persisted`].
//!
//! Outputs are carried out in order, and every [`Output::Persist`] comes
//! first: the driver writes it durably before it dispatches anything
//! (persist before acting), so a restart never forgets a step it sent.

use picket_model::rollout::{RawSpec, Spec, SpecError, Step};

use super::state::{
    Ending, HostRun, HostState, Persisted, Phase, RolloutState, StepRecord, StepRef, StepResult,
    StepState,
};

/// What the engine is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Start the first wave (right after `create`, once persisted).
    Start,
    Pause,
    Resume,
    Approve,
    Abort,
    /// Roll a finished or aborted rollout back by hand.
    Rollback,
    StepFinished {
        host: String,
        step: StepRef,
        result: StepResult,
    },
    HostConnected(String),
    HostDisconnected(String),
    /// Time has reached [`Engine::next_deadline`].
    Tick,
}

/// What the engine decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Write [`Engine::persisted`] durably before what follows.
    Persist,
    /// Run `step` on `host` (again, after a reconnect or a restart: the
    /// agent's ledger answers a repeat with the recorded result).
    Dispatch {
        host: String,
        at: StepRef,
        step: Step,
    },
    /// Stop this step if it still runs (the host was given up on).
    Cancel { host: String, at: StepRef },
    /// The rollout finished: `kind` is `rollout_succeeded`,
    /// `rollout_failed`, `rollout_rolled_back` or `rollout_aborted`.
    Finished { kind: &'static str },
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rollout {id} is {state}; {action} needs it {wanted}")]
pub struct Refused {
    pub id: String,
    pub state: &'static str,
    pub action: &'static str,
    pub wanted: &'static str,
}

pub struct Engine {
    p: Persisted,
    spec: Spec,
}

const VERSION: u32 = 1;

impl Engine {
    /// A new rollout over `plan` (host names per wave, from
    /// `Spec::plan`). Nothing runs until `Input::Start`.
    pub fn create(
        id: String,
        raw: RawSpec,
        plan: Vec<Vec<String>>,
        now: i64,
    ) -> Result<Self, SpecError> {
        let spec = raw.check()?;
        let hosts = plan
            .into_iter()
            .enumerate()
            .flat_map(|(w, names)| names.into_iter().map(move |n| HostRun::new(n, w)))
            .collect();
        Ok(Engine {
            p: Persisted {
                version: VERSION,
                id,
                spec: raw,
                state: RolloutState::Pending,
                created_ms: now,
                finished_ms: None,
                wave: 0,
                hosts,
                next_order: 0,
                pause_until: None,
                ending: None,
                rollbacks: 0,
            },
            spec,
        })
    }

    /// The engine as it was persisted.
    pub fn restore(p: Persisted) -> Result<Self, SpecError> {
        let spec = p.spec.check()?;
        Ok(Engine { p, spec })
    }

    /// After `restore`: dispatches again every step that was sent and has
    /// no result (the agent ran it at most once; its ledger answers).
    pub fn resume(&self) -> Vec<Output> {
        self.p
            .hosts
            .iter()
            .filter_map(|h| h.current.and_then(|at| self.dispatch(h, at)))
            .collect()
    }

    pub fn id(&self) -> &str {
        &self.p.id
    }

    pub fn state(&self) -> RolloutState {
        self.p.state
    }

    pub fn hosts(&self) -> &[HostRun] {
        &self.p.hosts
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    pub fn persisted(&self) -> &Persisted {
        &self.p
    }

    /// The earliest time at which `Input::Tick` has something to do.
    pub fn next_deadline(&self) -> Option<i64> {
        let hosts = self.p.hosts.iter();
        let away = hosts.clone().filter_map(|h| self.away_deadline(h));
        let recheck = hosts.filter_map(|h| h.recheck_at);
        away.chain(recheck).chain(self.p.pause_until).min()
    }

    /// When a host that is away is given up on: `host_timeout` after it
    /// left, or after its turn began if it was away already; a rollback
    /// step counts from when it left. `None` while it is present or has
    /// nothing to do.
    fn away_deadline(&self, h: &HostRun) -> Option<i64> {
        let since = h.away_since?;
        let timeout = picket_model::millis(self.spec.host_timeout);
        let rollback = h.current.is_some_and(|c| c.phase == Phase::Rollback);
        let from = if rollback {
            since
        } else if h.state == HostState::Running {
            since.max(h.started_ms.unwrap_or(i64::MIN))
        } else {
            return None;
        };
        Some(from.saturating_add(timeout))
    }

    /// Applies one input at `now`; a refused command changes nothing.
    pub fn handle(&mut self, input: Input, now: i64) -> Result<Vec<Output>, Refused> {
        let mut out = Vec::new();
        let changed = match input {
            Input::Start => self.command(
                "start",
                "pending",
                |s| s == RolloutState::Pending,
                |e| {
                    e.p.state = RolloutState::Running;
                },
            )?,
            Input::Pause => self.command(
                "pause",
                "running",
                |s| s == RolloutState::Running,
                |e| {
                    e.p.state = RolloutState::Paused;
                },
            )?,
            Input::Resume => self.command(
                "resume",
                "paused",
                |s| s == RolloutState::Paused,
                |e| {
                    e.p.state = RolloutState::Running;
                },
            )?,
            Input::Approve => self.command(
                "approve",
                "awaiting_approval",
                |s| s == RolloutState::AwaitingApproval,
                |e| {
                    e.p.state = RolloutState::Running;
                    e.p.wave += 1;
                },
            )?,
            Input::Abort => self.command(
                "abort",
                "pending, running, paused or awaiting_approval",
                |s| !s.is_finished() && s != RolloutState::RollingBack,
                |e| {
                    e.p.ending = Some(Ending::Abort);
                    e.p.pause_until = None;
                    if e.p.state != RolloutState::Paused {
                        e.p.state = RolloutState::Running;
                    }
                },
            )?,
            Input::Rollback if self.spec.rollback.is_empty() => {
                return Err(Refused {
                    id: self.p.id.clone(),
                    state: self.p.state.as_str(),
                    action: "rollback",
                    wanted: "to have [[rollback]] steps",
                });
            }
            Input::Rollback => self.command(
                "rollback",
                "succeeded, failed or aborted",
                |s| {
                    matches!(
                        s,
                        RolloutState::Succeeded | RolloutState::Failed | RolloutState::Aborted
                    )
                },
                |e| e.start_rollback(),
            )?,
            Input::StepFinished { host, step, result } => {
                self.step_finished(&host, step, result, now, &mut out)
            }
            Input::HostConnected(host) => self.connected(&host, &mut out),
            Input::HostDisconnected(host) => self.with_host(&host, |h| {
                h.away_since.get_or_insert(now);
            }),
            Input::Tick => self.tick(now, &mut out),
        };
        if changed {
            self.advance(now, &mut out);
            out.insert(0, Output::Persist);
        }
        Ok(out)
    }

    fn command(
        &mut self,
        action: &'static str,
        wanted: &'static str,
        allowed: impl Fn(RolloutState) -> bool,
        apply: impl FnOnce(&mut Self),
    ) -> Result<bool, Refused> {
        if !allowed(self.p.state) {
            return Err(Refused {
                id: self.p.id.clone(),
                state: self.p.state.as_str(),
                action,
                wanted,
            });
        }
        apply(self);
        Ok(true)
    }

    fn with_host(&mut self, name: &str, f: impl FnOnce(&mut HostRun)) -> bool {
        match self.p.hosts.iter_mut().find(|h| h.name == name) {
            Some(h) => {
                f(h);
                true
            }
            None => false,
        }
    }

    /// The step at `at` in the spec.
    fn step_at(&self, at: StepRef) -> Option<&Step> {
        at.phase.steps(&self.spec).get(at.index)
    }

    fn dispatch(&self, h: &HostRun, at: StepRef) -> Option<Output> {
        Some(Output::Dispatch {
            host: h.name.clone(),
            at,
            step: self.step_at(at)?.clone(),
        })
    }

    /// The step after `at` in its host's sequence (deploy steps, health
    /// steps, and after `min_healthy_time` the health steps again), or
    /// `None` when `at` was the last.
    fn next_step(&self, at: StepRef) -> Option<StepRef> {
        let next = StepRef {
            index: at.index + 1,
            ..at
        };
        if self.step_at(next).is_some() {
            return Some(next);
        }
        let first = |phase| StepRef {
            phase,
            index: 0,
            attempt: at.attempt,
        };
        match at.phase {
            Phase::Deploy if !self.spec.health.is_empty() => Some(first(Phase::Health)),
            _ => None,
        }
    }

    fn step_finished(
        &mut self,
        host: &str,
        at: StepRef,
        result: StepResult,
        now: i64,
        out: &mut Vec<Output>,
    ) -> bool {
        let Some(i) = self.p.hosts.iter().position(|h| h.name == host) else {
            return false;
        };
        // A late or repeated answer for a step no longer awaited.
        if self.p.hosts[i].current != Some(at) {
            return false;
        }
        let name = self.step_at(at).map_or_else(
            || format!("{:?} {}", at.phase, at.index),
            |s| s.label(at.index),
        );
        let ok = result.state == StepState::Succeeded;
        let next = if ok { self.next_step(at) } else { None };
        let min_healthy = picket_model::millis(self.spec.min_healthy_time);
        let dispatch_next = next.and_then(|n| self.step_at(n).map(|s| (n, s.clone())));
        let h = &mut self.p.hosts[i];
        h.steps.push(StepRecord {
            at,
            name,
            state: result.state,
            exit_code: result.exit_code,
            duration_ms: result.duration_ms,
            output: result.output,
        });
        h.current = None;
        match (at.phase, ok, dispatch_next) {
            (_, true, Some((n, step))) => {
                h.current = Some(n);
                out.push(Output::Dispatch {
                    host: h.name.clone(),
                    at: n,
                    step,
                });
            }
            (Phase::Rollback, true, None) => h.state = HostState::RolledBack,
            (Phase::Rollback, false, _) => h.rollback_failed = true,
            (Phase::Health, true, None) if min_healthy > 0 => {
                h.recheck_at = Some(now.saturating_add(min_healthy));
            }
            (_, true, None) => h.state = HostState::Succeeded,
            (_, false, _) => h.state = HostState::Failed,
        }
        true
    }

    fn connected(&mut self, host: &str, out: &mut Vec<Output>) -> bool {
        let Some(h) = self.p.hosts.iter_mut().find(|h| h.name == host) else {
            return false;
        };
        h.away_since = None;
        if let Some(at) = h.current {
            let h = h.clone();
            out.extend(self.dispatch(&h, at));
        }
        true
    }

    fn tick(&mut self, now: i64, out: &mut Vec<Output>) -> bool {
        let mut changed = false;
        for i in 0..self.p.hosts.len() {
            let given_up = self
                .away_deadline(&self.p.hosts[i])
                .is_some_and(|d| now >= d);
            let h = &mut self.p.hosts[i];
            if given_up {
                let at = h.current.take();
                if at.is_some_and(|c| c.phase == Phase::Rollback) {
                    h.rollback_failed = true;
                } else {
                    h.state = HostState::Unreachable;
                    h.recheck_at = None;
                }
                if let Some(at) = at {
                    out.push(Output::Cancel {
                        host: h.name.clone(),
                        at,
                    });
                }
                changed = true;
                continue;
            }
            if let Some(at) = h.recheck_at
                && now >= at
            {
                h.recheck_at = None;
                // Set only after health steps passed, so there is a first.
                match self.spec.health.first().cloned() {
                    Some(step) => {
                        let first = StepRef {
                            phase: Phase::Recheck,
                            index: 0,
                            attempt: 1,
                        };
                        h.current = Some(first);
                        out.push(Output::Dispatch {
                            host: h.name.clone(),
                            at: first,
                            step,
                        });
                    }
                    None => h.state = HostState::Succeeded,
                }
                changed = true;
            }
        }
        if let Some(until) = self.p.pause_until
            && now >= until
        {
            self.p.pause_until = None;
            self.p.wave += 1;
            changed = true;
        }
        changed
    }
}

mod schedule;

#[cfg(test)]
mod tests;
