//! Rollout specs and steps between the wire ([`v1::RolloutSpec`],
//! [`v1::Step`]) and the file's form ([`RawSpec`], [`RawStep`]). Both are
//! unchecked; `RawSpec::check` does the checking for either path.

use crate::v1;
use picket_model::rollout::{Action, RawAmount, RawSpec, RawStep, RawWave, Step};

impl From<v1::Step> for RawStep {
    fn from(s: v1::Step) -> Self {
        RawStep {
            name: s.name,
            exec: (!s.exec.is_empty()).then_some(s.exec),
            shell: s.shell,
            http: s.http,
            tcp: s.tcp,
            env: (!s.env.is_empty()).then_some(s.env),
            cwd: s.cwd,
            user: s.user,
            timeout: s.timeout,
            expect_status: s.expect_status,
            retries: s.retries,
            interval: s.interval,
        }
    }
}

impl From<RawStep> for v1::Step {
    fn from(s: RawStep) -> Self {
        v1::Step {
            name: s.name,
            exec: s.exec.unwrap_or_default(),
            shell: s.shell,
            http: s.http,
            tcp: s.tcp,
            env: s.env.unwrap_or_default(),
            cwd: s.cwd,
            user: s.user,
            timeout: s.timeout,
            expect_status: s.expect_status,
            retries: s.retries,
            interval: s.interval,
        }
    }
}

fn ms(d: std::time::Duration) -> Option<String> {
    Some(format!("{}ms", d.as_millis()))
}

/// A checked step written out again in full (every default explicit), as
/// the control plane dispatches it.
impl From<&Step> for v1::Step {
    fn from(s: &Step) -> Self {
        let mut w = v1::Step {
            name: s.name.clone(),
            timeout: ms(s.timeout),
            ..Default::default()
        };
        match &s.action {
            Action::Exec { argv, run } => {
                w.exec = argv.clone();
                w.env = run.env.clone();
                w.cwd = run.cwd.clone();
                w.user = run.user.clone();
            }
            Action::Shell { script, run } => {
                w.shell = Some(script.clone());
                w.env = run.env.clone();
                w.cwd = run.cwd.clone();
                w.user = run.user.clone();
            }
            Action::Http {
                url,
                expect_status,
                probe,
            } => {
                w.http = Some(url.clone());
                w.expect_status = Some(i64::from(*expect_status));
                w.retries = Some(i64::from(probe.retries));
                w.interval = ms(probe.interval);
            }
            Action::Tcp { addr, probe } => {
                w.tcp = Some(addr.clone());
                w.retries = Some(i64::from(probe.retries));
                w.interval = ms(probe.interval);
            }
        }
        w
    }
}

/// `""` is unset; an integer is a count; anything else is text for the
/// check to judge (`"25%"`, or a mistake it names).
fn amount(text: String) -> Option<RawAmount> {
    if text.is_empty() {
        return None;
    }
    Some(match text.trim().parse::<i64>() {
        Ok(n) => RawAmount::Count(n),
        Err(_) => RawAmount::Text(text),
    })
}

fn amount_text(a: Option<RawAmount>) -> String {
    match a {
        None => String::new(),
        Some(RawAmount::Count(n)) => n.to_string(),
        Some(RawAmount::Text(t)) => t,
    }
}

impl From<v1::RolloutSpec> for RawSpec {
    fn from(s: v1::RolloutSpec) -> Self {
        let steps = |v: Vec<v1::Step>| v.into_iter().map(RawStep::from).collect();
        RawSpec {
            name: s.name,
            selector: s.selector,
            max_parallel: amount(s.max_parallel),
            max_failures: amount(s.max_failures),
            auto_rollback: s.auto_rollback,
            pause_between_waves: s.pause_between_waves,
            min_healthy_time: s.min_healthy_time,
            host_timeout: s.host_timeout,
            wave: s
                .wave
                .into_iter()
                .map(|w| RawWave {
                    name: w.name,
                    selector: w.selector,
                })
                .collect(),
            step: steps(s.step),
            health: steps(s.health),
            rollback: steps(s.rollback),
        }
    }
}

impl From<RawSpec> for v1::RolloutSpec {
    fn from(s: RawSpec) -> Self {
        let steps = |v: Vec<RawStep>| v.into_iter().map(v1::Step::from).collect();
        v1::RolloutSpec {
            name: s.name,
            selector: s.selector,
            max_parallel: amount_text(s.max_parallel),
            max_failures: amount_text(s.max_failures),
            auto_rollback: s.auto_rollback,
            pause_between_waves: s.pause_between_waves,
            min_healthy_time: s.min_healthy_time,
            host_timeout: s.host_timeout,
            wave: s
                .wave
                .into_iter()
                .map(|w| v1::RolloutSpecWave {
                    name: w.name,
                    selector: w.selector,
                })
                .collect(),
            step: steps(s.step),
            health: steps(s.health),
            rollback: steps(s.rollback),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
name = "app v2"
selector = "role in (staging,prod)"
max_parallel = "50%"
max_failures = 1
auto_rollback = true
[[wave]]
name = "staging"
selector = "role=staging"
[[step]]
exec = ["/bin/true"]
env = { A = "1" }
[[health]]
http = "http://127.0.0.1:8000/health"
retries = 3
[[rollback]]
shell = "echo back"
"#;

    #[test]
    fn a_spec_goes_over_the_wire_and_back_unchanged() {
        let raw: RawSpec = toml::from_str(FILE).unwrap();
        let wire = v1::RolloutSpec::from(raw.clone());
        assert_eq!(wire.max_parallel, "50%");
        assert_eq!(wire.max_failures, "1");
        assert_eq!(RawSpec::from(wire), raw);
    }

    #[test]
    fn a_checked_step_written_out_checks_to_the_same_step() {
        let spec = toml::from_str::<RawSpec>(FILE).unwrap().check().unwrap();
        for step in spec.steps.iter().chain(&spec.health).chain(&spec.rollback) {
            let again = RawStep::from(v1::Step::from(step)).check_one().unwrap();
            assert_eq!(&again, step);
        }
    }
}
