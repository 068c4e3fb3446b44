//! Deterministic tests of the rollout engine: a `Sim` plays the fleet
//! and the clock (as quinn-proto's `Pair` does), with no sleeps and no
//! I/O. Each step takes a simulated second; a host can be told to fail a
//! phase or to go away.

use std::collections::BTreeSet;

use super::*;

mod sim;
use sim::{STEP_MS, Sim, spec};

#[test]
fn success_runs_each_wave_one_host_at_a_time() {
    let mut sim = Sim::new(spec("max_parallel = 1"));
    sim.input(Input::Start).unwrap();
    sim.run_until_idle();
    assert_eq!(sim.engine.state(), RolloutState::Succeeded);
    assert_eq!(sim.finished, ["rollout_succeeded"]);
    assert_eq!(
        sim.ran(Phase::Deploy),
        ["vm-staging", "vm-prod", "vm-security", "vm-devops"]
    );
    assert_eq!(sim.most_running, 1);
    assert!(sim.states().iter().all(|(_, s)| *s == HostState::Succeeded));
    assert!(sim.ran(Phase::Rollback).is_empty());
    // Untouched by the selector: vm-monitor is not in the rollout at all.
    assert!(sim.engine.hosts().iter().all(|h| h.name != "vm-monitor"));
    assert_eq!(sim.engine.persisted().finished_ms, Some(sim.now));
}

#[test]
fn a_failing_gate_spends_the_budget_and_rolls_back_newest_first() {
    let mut sim = Sim::new(spec("auto_rollback = true"));
    sim.fail.insert(("vm-security".into(), Phase::Health));
    sim.input(Input::Start).unwrap();
    sim.run_until_idle();
    assert_eq!(sim.engine.state(), RolloutState::RolledBack);
    assert_eq!(sim.finished, ["rollout_rolled_back"]);
    // vm-devops never started: skipped, and not rolled back.
    assert_eq!(sim.host("vm-devops"), HostState::Skipped);
    assert_eq!(
        sim.ran(Phase::Rollback),
        ["vm-security", "vm-prod", "vm-staging"]
    );
    for h in ["vm-staging", "vm-prod", "vm-security"] {
        assert_eq!(sim.host(h), HostState::RolledBack, "{h}");
    }
    assert!(!sim.ran.iter().any(|(h, _, _)| h == "vm-devops"));
}

#[test]
fn without_auto_rollback_a_spent_budget_ends_failed() {
    let mut sim = Sim::new(spec(""));
    sim.fail.insert(("vm-prod".into(), Phase::Deploy));
    sim.input(Input::Start).unwrap();
    sim.run_until_idle();
    assert_eq!(sim.engine.state(), RolloutState::Failed);
    assert_eq!(sim.finished, ["rollout_failed"]);
    assert_eq!(sim.host("vm-prod"), HostState::Failed);
    assert_eq!(sim.host("vm-security"), HostState::Skipped);
    assert!(
        sim.ran(Phase::Health).iter().all(|h| *h != "vm-prod"),
        "the first failure fails the host"
    );
}

#[test]
fn max_failures_as_a_count_and_as_a_percentage() {
    // One failure tolerated of four hosts: the rollout succeeds.
    for budget in ["1", "\"25%\""] {
        let mut sim = Sim::new(spec(&format!("max_failures = {budget}")));
        sim.fail.insert(("vm-prod".into(), Phase::Deploy));
        sim.input(Input::Start).unwrap();
        sim.run_until_idle();
        assert_eq!(sim.engine.state(), RolloutState::Succeeded, "{budget}");
        assert_eq!(sim.host("vm-prod"), HostState::Failed);
        assert_eq!(sim.host("vm-devops"), HostState::Succeeded);
    }
    // Two failures are more than 25% of four.
    let mut sim = Sim::new(spec("max_failures = \"25%\""));
    sim.fail.insert(("vm-prod".into(), Phase::Deploy));
    sim.fail.insert(("vm-security".into(), Phase::Deploy));
    sim.input(Input::Start).unwrap();
    sim.run_until_idle();
    assert_eq!(sim.engine.state(), RolloutState::Failed);
    assert_eq!(sim.host("vm-devops"), HostState::Skipped);
}

#[test]
fn max_parallel_as_a_percentage_of_the_wave() {
    // Two thirds of the three prod hosts: two at once.
    let mut sim = Sim::new(spec("max_parallel = \"67%\""));
    sim.input(Input::Start).unwrap();
    sim.run_until_idle();
    assert_eq!(sim.engine.state(), RolloutState::Succeeded);
    assert_eq!(sim.most_running, 2);
}

#[test]
fn a_host_away_past_host_timeout_is_unreachable_and_a_failure() {
    let mut sim = Sim::new(spec("host_timeout = \"30s\"\nmax_failures = 1"));
    sim.input(Input::Start).unwrap();
    sim.go_away("vm-prod");
    sim.run_until_idle();
    assert_eq!(sim.host("vm-prod"), HostState::Unreachable);
    assert_eq!(
        sim.engine.state(),
        RolloutState::Succeeded,
        "within the budget"
    );
    assert!(!sim.ran.iter().any(|(h, _, _)| h == "vm-prod"));
    // Back within the timeout instead: its step is dispatched again and
    // runs once.
    let mut sim = Sim::new(spec("host_timeout = \"30s\""));
    sim.input(Input::Start).unwrap();
    sim.go_away("vm-staging");
    sim.now += 10_000;
    sim.input(Input::Tick).unwrap();
    sim.come_back("vm-staging");
    sim.run_until_idle();
    assert_eq!(sim.engine.state(), RolloutState::Succeeded);
    let deploys = sim
        .ran
        .iter()
        .filter(|(h, p, _)| h == "vm-staging" && *p == Phase::Deploy)
        .count();
    assert_eq!(deploys, 1);
}

#[test]
fn pause_lets_running_hosts_finish_and_resume_goes_on() {
    let mut sim = Sim::new(spec(""));
    sim.input(Input::Start).unwrap();
    sim.input(Input::Pause).unwrap();
    sim.run_until_idle();
    assert_eq!(sim.engine.state(), RolloutState::Paused);
    assert_eq!(
        sim.host("vm-staging"),
        HostState::Succeeded,
        "the running host finished"
    );
    assert_eq!(
        sim.host("vm-prod"),
        HostState::Pending,
        "nothing new started"
    );
    assert!(
        sim.engine.handle(Input::Pause, sim.now).is_err(),
        "already paused"
    );
    sim.input(Input::Resume).unwrap();
    sim.run_until_idle();
    assert_eq!(sim.engine.state(), RolloutState::Succeeded);
}

#[test]
fn approval_between_waves() {
    let mut sim = Sim::new(spec("pause_between_waves = \"approval\""));
    let e = sim.engine.handle(Input::Approve, 0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "rollout r1 is pending; approve needs it awaiting_approval"
    );
    sim.input(Input::Start).unwrap();
    sim.run_until_idle();
    assert_eq!(sim.engine.state(), RolloutState::AwaitingApproval);
    assert_eq!(sim.ran(Phase::Deploy), ["vm-staging"]);
    sim.input(Input::Approve).unwrap();
    sim.run_until_idle();
    assert_eq!(sim.engine.state(), RolloutState::Succeeded);
}

#[test]
fn a_timed_pause_between_waves() {
    let mut sim = Sim::new(spec("pause_between_waves = \"5m\""));
    sim.input(Input::Start).unwrap();
    sim.run_until_idle();
    assert_eq!(sim.engine.state(), RolloutState::Succeeded);
    let staging_done = 2 * STEP_MS;
    assert!(
        sim.now >= staging_done + 300_000,
        "prod waited five minutes: {}",
        sim.now
    );
}

#[test]
fn abort_lets_running_hosts_finish_and_rolls_nothing_back() {
    let mut sim = Sim::new(spec("auto_rollback = true"));
    sim.input(Input::Start).unwrap();
    sim.input(Input::Abort).unwrap();
    sim.run_until_idle();
    assert_eq!(sim.engine.state(), RolloutState::Aborted);
    assert_eq!(sim.finished, ["rollout_aborted"]);
    assert_eq!(sim.host("vm-staging"), HostState::Succeeded);
    assert_eq!(sim.host("vm-prod"), HostState::Skipped);
    assert!(sim.ran(Phase::Rollback).is_empty());
    // Then by hand.
    sim.input(Input::Rollback).unwrap();
    sim.run_until_idle();
    assert_eq!(sim.engine.state(), RolloutState::RolledBack);
    assert_eq!(sim.ran(Phase::Rollback), ["vm-staging"]);
}

#[test]
fn manual_rollback_of_a_finished_rollout_newest_first() {
    let mut sim = Sim::new(spec(""));
    assert!(
        sim.engine.handle(Input::Rollback, 0).is_err(),
        "not finished"
    );
    sim.input(Input::Start).unwrap();
    sim.run_until_idle();
    sim.input(Input::Rollback).unwrap();
    sim.run_until_idle();
    assert_eq!(sim.engine.state(), RolloutState::RolledBack);
    assert_eq!(
        sim.ran(Phase::Rollback),
        ["vm-devops", "vm-security", "vm-prod", "vm-staging"]
    );
    assert_eq!(sim.finished, ["rollout_succeeded", "rollout_rolled_back"]);
    // Rolled back is final.
    let e = sim.engine.handle(Input::Rollback, sim.now).unwrap_err();
    assert!(e.to_string().contains("is rolled_back"), "{e}");
}

#[test]
fn a_failed_rollback_ends_failed_and_can_be_retried_where_it_failed() {
    let mut sim = Sim::new(spec("auto_rollback = true"));
    sim.fail.insert(("vm-security".into(), Phase::Health));
    sim.fail.insert(("vm-prod".into(), Phase::Rollback));
    sim.input(Input::Start).unwrap();
    sim.run_until_idle();
    assert_eq!(sim.engine.state(), RolloutState::Failed);
    assert_eq!(sim.finished, ["rollout_failed"]);
    assert_eq!(sim.host("vm-security"), HostState::RolledBack);
    assert!(
        sim.engine
            .hosts()
            .iter()
            .any(|h| h.name == "vm-prod" && h.rollback_failed)
    );
    // Fixed by hand, then retried: only vm-prod's rollback runs, as a new
    // attempt that the agent's ledger has not seen.
    sim.fail.clear();
    let before = sim.ran.len();
    sim.input(Input::Rollback).unwrap();
    sim.run_until_idle();
    assert_eq!(sim.engine.state(), RolloutState::RolledBack);
    let again: Vec<_> = sim.ran[before..]
        .iter()
        .map(|(h, p, _)| (h.as_str(), *p))
        .collect();
    assert_eq!(again, [("vm-prod", Phase::Rollback)]);
    assert_eq!(sim.host("vm-prod"), HostState::RolledBack);
}

#[test]
fn min_healthy_time_runs_the_health_steps_again_after_it() {
    let mut sim = Sim::new(spec("min_healthy_time = \"10s\""));
    sim.input(Input::Start).unwrap();
    sim.run_until_idle();
    assert_eq!(sim.engine.state(), RolloutState::Succeeded);
    assert_eq!(sim.ran(Phase::Recheck).len(), 4);
    // Each host: deploy 1 s, health 1 s, 10 s, health again 1 s.
    assert_eq!(sim.now, 4 * 13 * STEP_MS);
    // A host that fails its second look fails.
    let mut sim = Sim::new(spec("min_healthy_time = \"10s\""));
    sim.fail.insert(("vm-staging".into(), Phase::Recheck));
    sim.input(Input::Start).unwrap();
    sim.run_until_idle();
    assert_eq!(sim.host("vm-staging"), HostState::Failed);
    assert_eq!(sim.engine.state(), RolloutState::Failed);
}

/// A control plane restart after every single input, in every state the
/// scenarios pass through: the outcome is the same as without restarts,
/// and no step ran twice on any host.
#[test]
fn a_restart_after_every_input_changes_nothing() {
    let scenarios: Vec<(&str, Vec<(&str, Phase)>)> = vec![
        ("max_parallel = 2", vec![]),
        ("auto_rollback = true", vec![("vm-security", Phase::Health)]),
        (
            "min_healthy_time = \"10s\"\nmax_failures = 1",
            vec![("vm-prod", Phase::Recheck)],
        ),
        ("pause_between_waves = \"30s\"", vec![]),
    ];
    for (extra, fails) in scenarios {
        let run = |restarts: bool| {
            let mut sim = Sim::new(spec(extra));
            sim.restart_every_input = restarts;
            for (h, p) in &fails {
                sim.fail.insert((h.to_string(), *p));
            }
            sim.input(Input::Start).unwrap();
            sim.run_until_idle();
            (
                sim.engine.state(),
                sim.states(),
                sim.ran.clone(),
                sim.finished.clone(),
            )
        };
        let (plain, restarted) = (run(false), run(true));
        assert_eq!(plain, restarted, "{extra}");
        let mut seen = BTreeSet::new();
        for step in &restarted.2 {
            assert!(seen.insert(step.clone()), "{step:?} ran twice ({extra})");
        }
    }
    // And with approval: restart while awaiting it.
    let mut sim = Sim::new(spec("pause_between_waves = \"approval\""));
    sim.restart_every_input = true;
    sim.input(Input::Start).unwrap();
    sim.run_until_idle();
    sim.restart();
    assert_eq!(sim.engine.state(), RolloutState::AwaitingApproval);
    sim.input(Input::Approve).unwrap();
    sim.run_until_idle();
    assert_eq!(sim.engine.state(), RolloutState::Succeeded);
}

#[test]
fn late_and_repeated_results_are_ignored() {
    let mut sim = Sim::new(spec(""));
    sim.input(Input::Start).unwrap();
    let result = StepResult {
        state: StepState::Succeeded,
        exit_code: Some(0),
        duration_ms: 1,
        output: String::new(),
    };
    let wrong = StepRef {
        phase: Phase::Health,
        index: 0,
        attempt: 1,
    };
    let before = sim.engine.persisted().clone();
    let out = sim
        .engine
        .handle(
            Input::StepFinished {
                host: "vm-staging".into(),
                step: wrong,
                result: result.clone(),
            },
            0,
        )
        .unwrap();
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(sim.engine.persisted(), &before);
    let out = sim
        .engine
        .handle(
            Input::StepFinished {
                host: "vm-nowhere".into(),
                step: wrong,
                result,
            },
            0,
        )
        .unwrap();
    assert!(out.is_empty());
}
