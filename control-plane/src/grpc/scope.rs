//! Scoped users (SPEC §4): `user add --hosts SELECTOR` limits every
//! host-level thing a user may see or do to the hosts the selector
//! matches (by their assigned labels and name). Admins are never scoped.
//! Reads are filtered (agents, events, logs, metrics, alerts, status);
//! `run` selects among hosts in scope; a rollout that reaches a host
//! outside it is refused, and so is acting on one.

use std::collections::HashSet;

use picket_model::{Role, Selector};
use picket_store::AgentRecord;
use tonic::Status;

use super::auth::Caller;
use super::state::State;
use super::status::store_error;

/// The hosts a caller may see and reach.
pub(super) struct Scope(Option<Selector>);

impl Scope {
    /// The caller's scope (agents and admins: everything).
    pub(super) fn of(st: &State, caller: &Caller) -> Result<Scope, Status> {
        let Caller::User { name, role } = caller else {
            return Ok(Scope(None));
        };
        if *role == Role::Admin {
            return Ok(Scope(None));
        }
        let Some(hosts) = st
            .store
            .user(name)
            .map_err(store_error)?
            .and_then(|u| u.hosts)
        else {
            return Ok(Scope(None));
        };
        let sel = hosts.parse::<Selector>().map_err(|e| {
            Status::internal(format!("user {name}'s --hosts no longer parses: {e}"))
        })?;
        Ok(Scope(Some(sel)))
    }

    /// Whether the caller sees everything.
    pub(super) fn is_all(&self) -> bool {
        self.0.is_none()
    }

    pub(super) fn holds(&self, a: &AgentRecord) -> bool {
        self.0
            .as_ref()
            .is_none_or(|s| s.matches_host(&a.name, &a.labels()))
    }

    /// The names of the hosts in scope now (`None`: every host).
    pub(super) fn hosts(&self, st: &State) -> Result<Option<HashSet<String>>, Status> {
        if self.is_all() {
            return Ok(None);
        }
        Ok(Some(
            st.store
                .agents()
                .map_err(store_error)?
                .iter()
                .filter(|a| self.holds(a))
                .map(|a| a.name.clone())
                .collect(),
        ))
    }

    /// Whether host `name` is in scope (an unknown host is not).
    pub(super) fn admits(&self, st: &State, name: &str) -> Result<bool, Status> {
        if self.is_all() {
            return Ok(true);
        }
        Ok(st
            .store
            .agent(name)
            .map_err(store_error)?
            .is_some_and(|a| self.holds(&a)))
    }

    /// Refuses (`PERMISSION_DENIED`, audited as `action` on `target`) when
    /// any of `hosts` is outside the scope, naming how many.
    pub(super) fn confine(
        &self,
        st: &State,
        caller: &Caller,
        hosts: &[String],
        action: &str,
        target: &str,
    ) -> Result<(), Status> {
        let Some(inside) = self.hosts(st)? else {
            return Ok(());
        };
        let outside = hosts.iter().filter(|h| !inside.contains(*h)).count();
        if outside == 0 {
            return Ok(());
        }
        st.audit.record(
            &caller.actor(),
            action,
            target,
            &format!("denied: {outside} host(s) outside the user's scope"),
        );
        Err(Status::permission_denied(format!(
            "{outside} host(s) are outside your scope (user add --hosts)"
        )))
    }
}
