//! Run-as grants (SPEC §4, "Scoped users and step users"): a step that
//! names a host user runs only if the caller may use that name: admins
//! any, other users only the names an admin gave them with `user add
//! --run-as`. (The host must list the name in `[exec] users` too: the
//! agent checks that.) Root is never implied: it is a name like any other.

use tonic::Status;

use super::auth::Caller;
use super::state::State;
use super::status::store_error;
use picket_model::Role;

/// Refuses (`PERMISSION_DENIED`, audited as `action` on `target`) when
/// `caller` may not run steps as one of `users`.
pub(super) async fn check(
    st: &State,
    caller: &Caller,
    users: &[String],
    action: &str,
    target: &str,
) -> Result<(), Status> {
    let Caller::User { name, role } = caller else {
        return Err(Status::permission_denied("agents may not run steps"));
    };
    if users.is_empty() || *role == Role::Admin {
        return Ok(());
    }
    let n = name.clone();
    let granted = st
        .store
        .blocking(move |s| s.user(&n))
        .await
        .map_err(store_error)?
        .map(|u| u.run_as)
        .unwrap_or_default();
    let Some(missing) = users.iter().find(|u| !granted.contains(u)) else {
        return Ok(());
    };
    st.audit.record(
        &caller.actor(),
        action,
        target,
        &format!("denied: run-as {missing} not granted"),
    );
    Err(Status::permission_denied(format!(
        "user {name} may not run steps as {missing:?}: an admin grants it with `picketctl user add {name} --run-as {missing}`"
    )))
}

/// Validates a host user name as `--run-as` and `--user` take it: what
/// useradd accepts (`[a-z_][a-z0-9_-]*`, at most 32).
pub fn valid_user(u: &str) -> Result<(), String> {
    let ok = !u.is_empty()
        && u.len() <= 32
        && u.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && u.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{u:?} is not a host user name ([a-z_][a-z0-9_-]*, at most 32 characters)"
        ))
    }
}
