//! A rollout as `rollout status` shows it (SPEC §9): its waves, each
//! with a state derived from its hosts, each host with its steps and,
//! while it runs, its last output line. Built from what the engine
//! persisted; the gRPC edge turns it into `v1::Rollout`.

use std::collections::BTreeMap;

use picket_model::rollout::Spec;

use super::state::{HostRun, HostState, Persisted, StepRef};

#[derive(Debug, Clone)]
pub struct View {
    pub p: Persisted,
    /// The checked spec: wave names and step names as the engine has them.
    pub spec: Spec,
    /// The last line each running host wrote.
    pub lines: BTreeMap<String, String>,
}

impl View {
    /// `with_output: false` leaves step output out (lists, watches).
    pub fn of(
        p: &Persisted,
        spec: &Spec,
        lines: &BTreeMap<String, String>,
        with_output: bool,
    ) -> View {
        let mut p = p.clone();
        if !with_output {
            for h in &mut p.hosts {
                for s in &mut h.steps {
                    s.output.clear();
                }
            }
        }
        View {
            p,
            spec: spec.clone(),
            lines: lines.clone(),
        }
    }

    pub fn name(&self) -> &str {
        self.p.spec.name.as_deref().unwrap_or_default()
    }

    /// A step's name as `status` shows it: its own, or its index.
    pub fn step_label(&self, at: StepRef) -> String {
        at.phase
            .steps(&self.spec)
            .get(at.index)
            .map_or_else(|| at.index.to_string(), |s| s.label(at.index))
    }

    /// Wave names in order, with their hosts.
    pub fn waves(&self) -> Vec<(String, Vec<&HostRun>)> {
        self.spec
            .waves
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let hosts = self.p.hosts.iter().filter(|h| h.wave == i).collect();
                (w.name.clone(), hosts)
            })
            .collect()
    }
}

/// A wave's state from its hosts': `pending` until one starts, `running`
/// while any runs or waits its turn after another started, then
/// `rolled_back`, `failed` (a host failed or was unreachable), `skipped`
/// (none ran) or `succeeded`.
pub fn wave_state(hosts: &[&HostRun]) -> &'static str {
    let any = |s: HostState| hosts.iter().any(|h| h.state == s);
    let all = |f: &dyn Fn(HostState) -> bool| hosts.iter().all(|h| f(h.state));
    if all(&|s| s == HostState::Pending) {
        "pending"
    } else if any(HostState::Running)
        || hosts.iter().any(|h| h.current.is_some())
        || (any(HostState::Pending)
            && !all(&|s| s == HostState::Pending || s == HostState::Skipped))
    {
        "running"
    } else if any(HostState::RolledBack) {
        "rolled_back"
    } else if any(HostState::Failed) || any(HostState::Unreachable) {
        "failed"
    } else if all(&|s| s == HostState::Skipped) {
        "skipped"
    } else {
        "succeeded"
    }
}
