//! What an agent can do, as it says in `Hello` (`v1::Capabilities`), and
//! what a step needs: the control plane refuses a step a host cannot run
//! at once, with the reason, instead of waiting for an answer that never
//! comes (an older agent ignores a message it does not know).

use crate::v1;

/// The protocol revision of this build. 1: before `Hello` carried
/// capabilities (those agents are taken to run no steps). 2: capabilities,
/// `Welcome.server_unix_ms`.
pub const PROTOCOL: u32 = 2;

/// The step kinds this build's agent runs.
pub const STEP_KINDS: &[&str] = &["exec", "shell", "http", "tcp"];

/// The record kinds this build's agent sends.
pub const RECORD_KINDS: &[&str] = &["metrics", "event", "log"];

/// This build's capabilities, for its agent's `Hello`.
pub fn ours() -> v1::Capabilities {
    v1::Capabilities {
        protocol: PROTOCOL,
        step_kinds: STEP_KINDS.iter().map(|k| k.to_string()).collect(),
        record_kinds: RECORD_KINDS.iter().map(|k| k.to_string()).collect(),
    }
}

/// The kind of a step: the first of its action fields that is set.
pub fn step_kind(step: &v1::Step) -> &'static str {
    if !step.exec.is_empty() {
        "exec"
    } else if step.shell.is_some() {
        "shell"
    } else if step.http.is_some() {
        "http"
    } else if step.tcp.is_some() {
        "tcp"
    } else {
        "empty"
    }
}

/// Why an agent of `version` with `caps` cannot run `step`, if it cannot.
pub fn refusal(version: &str, caps: Option<&v1::Capabilities>, step: &v1::Step) -> Option<String> {
    let version = if version.is_empty() {
        "(unknown version)"
    } else {
        version
    };
    let Some(caps) = caps else {
        return Some(format!(
            "agent {version} cannot run steps (it predates protocol revision 2); upgrade it"
        ));
    };
    let kind = step_kind(step);
    (!caps.step_kinds.iter().any(|k| k == kind))
        .then(|| format!("agent {version} cannot run {kind} steps; upgrade it"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_agents_and_unknown_kinds_are_refused_with_the_version() {
        let exec = v1::Step {
            exec: vec!["true".into()],
            ..Default::default()
        };
        let tcp = v1::Step {
            tcp: Some("127.0.0.1:22".into()),
            ..Default::default()
        };
        let old = refusal("0.0.9", None, &exec).unwrap_or_default();
        assert!(
            old.contains("agent 0.0.9 cannot run steps") && old.contains("upgrade"),
            "{old}"
        );
        let ours = ours();
        assert_eq!(refusal("0.1.0", Some(&ours), &exec), None);
        assert_eq!(refusal("0.1.0", Some(&ours), &tcp), None);
        let exec_only = v1::Capabilities {
            step_kinds: vec!["exec".into()],
            ..ours
        };
        assert_eq!(
            refusal("0.1.0", Some(&exec_only), &tcp).as_deref(),
            Some("agent 0.1.0 cannot run tcp steps; upgrade it")
        );
    }
}
