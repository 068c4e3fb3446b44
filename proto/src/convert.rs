//! Conversions between wire types ([`crate::v1`]) and domain types
//! ([`picket_model`]). The only module that knows both.

use crate::v1;
use picket_model::rollout::{RolloutAction, StepState};
use picket_model::{AgentStatus, Role, Severity};

impl From<Role> for v1::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::Viewer => v1::Role::Viewer,
            Role::Operator => v1::Role::Operator,
            Role::Admin => v1::Role::Admin,
        }
    }
}

/// A wire enum value that has no domain meaning (unspecified or unknown).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{what} is unspecified or unknown ({value})")]
pub struct Unspecified {
    pub what: &'static str,
    pub value: i32,
}

/// A wire `Role` value as the domain's, if it has a meaning.
pub fn role(value: i32) -> Result<Role, Unspecified> {
    match v1::Role::try_from(value) {
        Ok(v1::Role::Viewer) => Ok(Role::Viewer),
        Ok(v1::Role::Operator) => Ok(Role::Operator),
        Ok(v1::Role::Admin) => Ok(Role::Admin),
        _ => Err(Unspecified {
            what: "role",
            value,
        }),
    }
}

impl From<AgentStatus> for v1::AgentStatus {
    fn from(s: AgentStatus) -> Self {
        match s {
            AgentStatus::Online => v1::AgentStatus::Online,
            AgentStatus::Offline => v1::AgentStatus::Offline,
            AgentStatus::Revoked => v1::AgentStatus::Revoked,
        }
    }
}

/// A wire `AgentStatus` value as the domain's, if it has a meaning.
pub fn agent_status(value: i32) -> Result<AgentStatus, Unspecified> {
    match v1::AgentStatus::try_from(value) {
        Ok(v1::AgentStatus::Online) => Ok(AgentStatus::Online),
        Ok(v1::AgentStatus::Offline) => Ok(AgentStatus::Offline),
        Ok(v1::AgentStatus::Revoked) => Ok(AgentStatus::Revoked),
        _ => Err(Unspecified {
            what: "agent status",
            value,
        }),
    }
}

impl From<Severity> for v1::Severity {
    fn from(s: Severity) -> Self {
        match s {
            Severity::Info => v1::Severity::Info,
            Severity::Low => v1::Severity::Low,
            Severity::Medium => v1::Severity::Medium,
            Severity::High => v1::Severity::High,
            Severity::Critical => v1::Severity::Critical,
        }
    }
}

/// A wire `Severity` value as the domain's, if it has a meaning.
pub fn severity(value: i32) -> Result<Severity, Unspecified> {
    match v1::Severity::try_from(value) {
        Ok(v1::Severity::Info) => Ok(Severity::Info),
        Ok(v1::Severity::Low) => Ok(Severity::Low),
        Ok(v1::Severity::Medium) => Ok(Severity::Medium),
        Ok(v1::Severity::High) => Ok(Severity::High),
        Ok(v1::Severity::Critical) => Ok(Severity::Critical),
        _ => Err(Unspecified {
            what: "severity",
            value,
        }),
    }
}

/// A wire `StepState` as a step's outcome: anything but success or a
/// timeout (unspecified included) is a failure.
pub fn step_state(value: i32) -> StepState {
    match v1::StepState::try_from(value) {
        Ok(v1::StepState::Succeeded) => StepState::Succeeded,
        Ok(v1::StepState::TimedOut) => StepState::TimedOut,
        _ => StepState::Failed,
    }
}

/// A wire `RolloutAction` value as the operator's command.
pub fn rollout_action(value: i32) -> Result<RolloutAction, Unspecified> {
    match v1::RolloutAction::try_from(value) {
        Ok(v1::RolloutAction::Pause) => Ok(RolloutAction::Pause),
        Ok(v1::RolloutAction::Resume) => Ok(RolloutAction::Resume),
        Ok(v1::RolloutAction::Approve) => Ok(RolloutAction::Approve),
        Ok(v1::RolloutAction::Abort) => Ok(RolloutAction::Abort),
        Ok(v1::RolloutAction::Rollback) => Ok(RolloutAction::Rollback),
        _ => Err(Unspecified {
            what: "rollout action",
            value,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_round_trip() {
        for r in [Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(role(v1::Role::from(r) as i32), Ok(r));
        }
        assert!(role(0).is_err());
        assert!(role(99).is_err());
    }

    #[test]
    fn severity_round_trip() {
        use Severity::*;
        for s in [Info, Low, Medium, High, Critical] {
            assert_eq!(severity(v1::Severity::from(s) as i32), Ok(s));
        }
        assert!(severity(0).is_err());
    }

    #[test]
    fn step_states_and_rollout_actions() {
        assert_eq!(
            step_state(v1::StepState::Succeeded as i32),
            StepState::Succeeded
        );
        assert_eq!(
            step_state(v1::StepState::TimedOut as i32),
            StepState::TimedOut
        );
        assert_eq!(step_state(0), StepState::Failed);
        assert_eq!(step_state(99), StepState::Failed);
        assert_eq!(
            rollout_action(v1::RolloutAction::Rollback as i32),
            Ok(RolloutAction::Rollback)
        );
        assert!(rollout_action(0).is_err());
    }

    #[test]
    fn status_round_trip() {
        for s in [
            AgentStatus::Online,
            AgentStatus::Offline,
            AgentStatus::Revoked,
        ] {
            assert_eq!(agent_status(v1::AgentStatus::from(s) as i32), Ok(s));
        }
    }
}

mod rollout;
