//! Rollouts end to end (SPEC §9): five real agents labelled as the
//! reference fleet's VMs, real processes running the steps, marker files
//! written by the steps saying which host ran what, in which order, once.

use std::time::Duration;

use anyhow::{Context, Result};
use picket_tests::fleet::*;
use picket_tests::*;

#[test]
fn a_failing_gate_in_prod_rolls_back_touched_hosts_newest_first() -> Result<()> {
    let f = Fleet::start()?;
    let id = f.create(&spec(&f, "", "vm-monitor", "0"))?;
    assert!(id.starts_with("rollout-"), "{id}");
    let s = f.wait_state(&id, "rolled_back", Duration::from_secs(60))?;
    let name = |h: &str, what: &str| format!("{h} {what}");
    assert_eq!(
        f.marked(),
        [
            format!("vm-devops deploy {id} deploy"),
            format!("vm-staging deploy {id} deploy"),
            format!("vm-monitor deploy {id} deploy"),
            name("vm-monitor", "rollback"),
            name("vm-staging", "rollback"),
            name("vm-devops", "rollback"),
        ],
        "markers"
    );
    let states = host_states(&s);
    let of = |h: &str| states.iter().find(|(n, _)| n == h).map(|(_, s)| s.as_str());
    for h in ["vm-devops", "vm-staging", "vm-monitor"] {
        assert_eq!(of(h), Some("rolled_back"), "{h}: {s}");
    }
    for h in ["vm-prod", "vm-security"] {
        assert_eq!(of(h), Some("skipped"), "{h}: {s}");
    }
    // The failed gate is in the status, with its exit code.
    let monitor = s["waves"][1]["hosts"][0].clone();
    let gate = monitor["steps"]
        .as_array()
        .and_then(|st| st.iter().find(|x| x["name"] == "gate").cloned())
        .context("gate step")?;
    assert_eq!(
        (gate["state"].as_str(), gate["exit_code"].as_i64()),
        (Some("failed"), Some(1))
    );
    // `watch` of a finished rollout that did not succeed exits 1.
    let out = f.ctl(&["rollout", "watch", &id])?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // The finished rollout is an event of source picket.
    let events = wait_for("the rollout's event", Duration::from_secs(10), || {
        let e = ctl_json(&f.w, &f.admin, &["events", "--source", "picket"]).ok()?;
        (!e.is_empty()).then_some(e)
    })?;
    assert_eq!(events[0]["kind"], "rollout_rolled_back");
    assert_eq!(events[0]["fields"]["rollout"], id.as_str());
    // Every command is in the audit log with the rollout's id.
    let audit = String::from_utf8_lossy(&f.ctl(&["audit"])?.stdout).into_owned();
    assert!(
        audit.contains("rollout.create") && audit.contains(&id),
        "{audit}"
    );
    Ok(())
}

#[test]
fn approval_between_waves_and_commands_in_the_wrong_state() -> Result<()> {
    let f = Fleet::start()?;
    let id = f.create(&spec(&f, "pause_between_waves = \"approval\"", "", "0"))?;
    f.wait_state(&id, "awaiting_approval", Duration::from_secs(60))?;
    let st = ctl_json(&f.w, &f.admin, &["status"])?;
    assert_eq!(st[0]["rollouts_running"], 1, "{st:?}");
    let staging_only: Vec<String> = f.marked();
    assert_eq!(staging_only.len(), 2, "{staging_only:?}");
    assert!(
        staging_only
            .iter()
            .all(|l| l.starts_with("vm-devops") || l.starts_with("vm-staging"))
    );
    // Not paused: resume is refused, naming the state.
    let out = f.ctl(&["rollout", "resume", &id])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("awaiting_approval"),
        "{}",
        stderr(&out)
    );
    let out = f.ctl(&["rollout", "approve", &id])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = f.ctl(&["rollout", "watch", &id])?;
    assert!(out.status.success(), "watch: {}", stderr(&out));
    assert_eq!(f.status(&id)?["state"], "succeeded");
    let marked = f.marked();
    assert_eq!(marked.len(), 5, "{marked:?}");
    // Approving again: not awaiting approval.
    let out = f.ctl(&["rollout", "approve", &id])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is succeeded"), "{}", stderr(&out));
    // A bad file: every problem at once, each naming its field, exit 2.
    let bad = f.w.path("bad-keys.toml");
    std::fs::write(
        &bad,
        spec(&f, "", "", "0")
            .replace("max_parallel = 1", "max_parallel = \"150%\"")
            .replace(
                "name = \"deploy\"",
                "name = \"deploy\"\nexec = [\"/bin/true\"]",
            ),
    )?;
    let out = f.ctl(&["rollout", "create", "-f", &bad.display().to_string()])?;
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(
        e.contains("max_parallel") && e.contains("step[0]: exactly one of"),
        "{e}"
    );
    // Unknown id.
    let out = f.ctl(&["rollout", "status", "rollout-999999"])?;
    assert!(
        stderr(&out).contains("no rollout with id rollout-999999"),
        "{}",
        stderr(&out)
    );
    // agents show: the last rollout that touched the host.
    let a = ctl_json(&f.w, &f.admin, &["agents", "show", "vm-prod"])?;
    assert_eq!(a[0]["last_rollout"]["id"], id.as_str());
    assert_eq!(a[0]["last_rollout"]["host_state"], "succeeded");
    // list shows it.
    let l = ctl_json(&f.w, &f.admin, &["rollout", "list"])?;
    assert_eq!(l[0]["id"], id.as_str());
    // A wave selector that matches none of the selected hosts.
    let file = f.w.path("bad.toml");
    std::fs::write(
        &file,
        spec(&f, "", "", "0").replace("selector = \"env=prod\"", "selector = \"env=qa\""),
    )?;
    let out = f.ctl(&["rollout", "create", "-f", &file.display().to_string()])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("wave[1].selector"),
        "{}",
        stderr(&out)
    );
    Ok(())
}

#[test]
fn a_rollout_survives_two_control_plane_kills_and_runs_each_step_once() -> Result<()> {
    let mut f = Fleet::start()?;
    let id = f.create(&spec(&f, "", "", "1"))?;
    for n in [2, 4] {
        wait_for(
            &format!("{n} hosts deployed"),
            Duration::from_secs(60),
            || (f.marked().len() >= n).then_some(()),
        )?;
        f.cp.proc.kill9();
        f.cp = Control::start_on(&f.w, "cp", &f.listen)?;
    }
    f.wait_state(&id, "succeeded", Duration::from_secs(120))?;
    let mut hosts: Vec<String> = f
        .marked()
        .iter()
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect();
    hosts.sort();
    let want: Vec<String> = FLEET.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(hosts, want, "every host deployed exactly once");
    Ok(())
}

#[test]
fn an_agent_killed_mid_step_does_not_run_it_again() -> Result<()> {
    let mut f = Fleet::start()?;
    let id = f.create(
        &spec(&f, "max_failures = 1\nauto_rollback = false", "", "3")
            .replace("auto_rollback = true\n", ""),
    )?;
    wait_for("the first deploy to start", Duration::from_secs(30), || {
        (!f.marked().is_empty()).then_some(())
    })?;
    // vm-devops runs first; kill its agent during the step and restart it.
    f.agents[0].kill9();
    f.agents[0] = run_agent(&f.w, "vm-devops")?;
    let s = f.wait_state(&id, "succeeded", Duration::from_secs(120))?;
    let states = host_states(&s);
    assert_eq!(
        states[0],
        ("vm-devops".to_string(), "failed".to_string()),
        "{s}"
    );
    let step = &s["waves"][0]["hosts"][0]["steps"][0];
    assert!(
        step["output"]
            .as_str()
            .unwrap_or_default()
            .contains("agent restarted during the step"),
        "{step}"
    );
    let devops = f
        .marked()
        .iter()
        .filter(|l| l.starts_with("vm-devops"))
        .count();
    assert_eq!(devops, 1, "the step ran once: {:?}", f.marked());
    assert_eq!(f.marked().len(), 5);
    Ok(())
}

#[test]
fn pause_resume_abort_and_a_rollback_by_hand() -> Result<()> {
    let f = Fleet::start()?;
    let text = spec(&f, "", "", "1").replace("auto_rollback = true\n", "");
    let id = f.create(&text)?;
    wait_for("the first deploy", Duration::from_secs(30), || {
        (!f.marked().is_empty()).then_some(())
    })?;
    let out = f.ctl(&["rollout", "pause", &id])?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{id}: paused")
    );
    // The running host finishes; no new one starts.
    wait_for(
        "the running host to finish",
        Duration::from_secs(30),
        || {
            let s = f.status(&id).ok()?;
            host_states(&s)
                .iter()
                .all(|(_, st)| st != "running")
                .then_some(())
        },
    )?;
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(f.marked().len(), 1, "{:?}", f.marked());
    assert_eq!(f.status(&id)?["state"], "paused");
    assert!(f.ctl(&["rollout", "resume", &id])?.status.success());
    wait_for("a second deploy", Duration::from_secs(30), || {
        (f.marked().len() >= 2).then_some(())
    })?;
    assert!(f.ctl(&["rollout", "abort", &id])?.status.success());
    let s = f.wait_state(&id, "aborted", Duration::from_secs(30))?;
    let started = host_states(&s)
        .iter()
        .filter(|(_, st)| st == "succeeded")
        .count();
    assert_eq!(started, f.marked().len(), "{s}");
    // By hand: every host that ran, newest first.
    assert!(f.ctl(&["rollout", "rollback", &id])?.status.success());
    f.wait_state(&id, "rolled_back", Duration::from_secs(30))?;
    let marks = f.marked();
    let deployed: Vec<&str> = marks
        .iter()
        .filter(|l| l.contains(" deploy "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let rolled: Vec<&str> = marks
        .iter()
        .filter(|l| l.ends_with(" rollback"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut newest_first = deployed.clone();
    newest_first.reverse();
    assert_eq!(rolled, newest_first, "{marks:?}");
    Ok(())
}
