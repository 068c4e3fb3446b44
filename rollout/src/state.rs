//! What a rollout is at a moment, as it is persisted: the states SPEC §9
//! names, each host's progress and each step's result. Plain data with
//! serde; the engine ([`super::engine`]) is what changes it.

use picket_model::rollout::{RawSpec, Spec, Step};
use serde::{Deserialize, Serialize};

/// A rollout's state (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Pending,
    Running,
    Paused,
    AwaitingApproval,
    Succeeded,
    Failed,
    RollingBack,
    RolledBack,
    Aborted,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Pending => "pending",
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::AwaitingApproval => "awaiting_approval",
            RolloutState::Succeeded => "succeeded",
            RolloutState::Failed => "failed",
            RolloutState::RollingBack => "rolling_back",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Aborted => "aborted",
        }
    }

    /// No more steps will be dispatched (a manual rollback may still start).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RolloutState::Succeeded
                | RolloutState::Failed
                | RolloutState::RolledBack
                | RolloutState::Aborted
        )
    }
}

/// A host's state within a rollout (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unreachable,
    RolledBack,
    Skipped,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Pending => "pending",
            HostState::Running => "running",
            HostState::Succeeded => "succeeded",
            HostState::Failed => "failed",
            HostState::Unreachable => "unreachable",
            HostState::RolledBack => "rolled_back",
            HostState::Skipped => "skipped",
        }
    }

    /// The host counts against `max_failures`.
    pub fn is_failure(self) -> bool {
        matches!(self, HostState::Failed | HostState::Unreachable)
    }
}

/// Which list of the spec a step comes from. `Recheck` is the health
/// steps run again after `min_healthy_time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Deploy,
    Health,
    Recheck,
    Rollback,
}

impl Phase {
    /// As a step key on the wire spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Deploy => "deploy",
            Phase::Health => "health",
            Phase::Recheck => "recheck",
            Phase::Rollback => "rollback",
        }
    }

    /// The spec's steps this phase runs.
    pub fn steps(self, spec: &Spec) -> &[Step] {
        match self {
            Phase::Deploy => &spec.steps,
            Phase::Health | Phase::Recheck => &spec.health,
            Phase::Rollback => &spec.rollback,
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        [
            Phase::Deploy,
            Phase::Health,
            Phase::Recheck,
            Phase::Rollback,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// One step of one host: with the rollout's id and the host's name, what
/// the agent's ledger knows a step by, so that a repeated dispatch never
/// runs it twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StepRef {
    pub phase: Phase,
    pub index: usize,
    /// 1 for a rollout's steps; a manual rollback after an earlier one
    /// runs its steps as attempt 2, 3, ….
    pub attempt: u32,
}

pub use picket_model::rollout::StepState;

/// A step's result (the output is the agent's newest 64 KiB at most).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    pub state: StepState,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub output: String,
}

/// A step as `rollout status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub at: StepRef,
    pub name: String,
    pub state: StepState,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub output: String,
}

/// One host's progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRun {
    pub name: String,
    pub wave: usize,
    pub state: HostState,
    /// The step dispatched and not yet finished.
    pub current: Option<StepRef>,
    /// When its turn began, and its place in the order hosts began (a
    /// rollback goes newest first).
    pub started_ms: Option<i64>,
    pub started_order: Option<u64>,
    /// Since when its agent has been away (none while connected).
    pub away_since: Option<i64>,
    /// Its health steps run again at this time (`min_healthy_time`).
    pub recheck_at: Option<i64>,
    /// A rollback step failed on it.
    pub rollback_failed: bool,
    pub steps: Vec<StepRecord>,
}

impl HostRun {
    pub fn new(name: String, wave: usize) -> Self {
        HostRun {
            name,
            wave,
            state: HostState::Pending,
            current: None,
            started_ms: None,
            started_order: None,
            away_since: None,
            recheck_at: None,
            rollback_failed: false,
            steps: Vec::new(),
        }
    }
}

/// Why dispatching stopped early, to be settled once running hosts
/// finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// The failure budget was spent.
    Failure,
    /// An operator aborted.
    Abort,
}

/// Everything the engine is, as persisted; rebuilt by `Engine::restore`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    /// A format version, so a later layout can read this one.
    pub version: u32,
    pub id: String,
    pub spec: RawSpec,
    pub state: RolloutState,
    pub created_ms: i64,
    pub finished_ms: Option<i64>,
    /// The wave whose hosts are being started.
    pub wave: usize,
    /// Every selected host, in wave order.
    pub hosts: Vec<HostRun>,
    pub next_order: u64,
    /// Waiting between waves until then.
    pub pause_until: Option<i64>,
    pub ending: Option<Ending>,
    /// How many rollbacks have run (the attempt of the next one's steps).
    pub rollbacks: u32,
}
