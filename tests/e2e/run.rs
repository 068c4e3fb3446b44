//! `picketctl run` and what hosts refuse (SPEC §9), end to end on the
//! reference fleet: results per host, exit codes, a timeout that kills a
//! process tree, a 1 GiB step, roles, `[exec]` and run-as users.

use std::time::Duration;

use anyhow::{Context, Result};
use picket_tests::fleet::*;
use picket_tests::*;
use serde_json::Value;

#[test]
fn run_on_a_selector_with_results_exit_codes_and_a_timeout() -> Result<()> {
    let f = Fleet::start()?;
    let out = f.ctl(&[
        "run",
        "--selector",
        "env=prod",
        "-o",
        "json",
        "--",
        "sh",
        "-c",
        "echo hi from $PICKET_HOST",
    ])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let mut hosts: Vec<&str> = rows.iter().filter_map(|r| r["host"].as_str()).collect();
    hosts.sort();
    assert_eq!(hosts, ["vm-monitor", "vm-prod", "vm-security"]);
    for r in &rows {
        assert_eq!(r["state"], "succeeded", "{r}");
        assert_eq!(r["exit_code"], 0);
        assert_eq!(
            r["output"],
            format!("hi from {}\n", r["host"].as_str().unwrap_or_default())
        );
    }
    // One host fails: exit 1, and its row says so.
    let out = f.ctl(&[
        "run",
        "-l",
        "env=staging",
        "-o",
        "json",
        "--",
        "sh",
        "-c",
        "test $PICKET_HOST = vm-devops",
    ])?;
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(r#""exit_code":1"#) && text.contains(r#""state":"failed""#),
        "{text}"
    );
    // A selector matching nothing: exit 1, one line.
    let out = f.ctl(&["run", "-l", "env=qa", "--", "true"])?;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("matches no host"));
    // A command that does not exist.
    let rows = ctl(
        &f.w,
        &f.admin,
        &[
            "run",
            "-l",
            "name=vm-prod",
            "-o",
            "json",
            "--",
            "/no/such/tool",
        ],
    )?;
    let text = String::from_utf8_lossy(&rows.stdout).into_owned();
    assert!(
        text.contains("cannot start") && text.contains("\"failed\""),
        "{text}"
    );
    // A timeout kills the whole tree, a child ignoring SIGTERM included.
    let pidfile = f.w.path("grandchild.pid");
    let script = format!(
        "sh -c 'trap \"\" TERM; echo $$ > {}; exec sleep 60' & sleep 60",
        pidfile.display()
    );
    let out = f.ctl(&[
        "run",
        "-l",
        "name=vm-prod",
        "--timeout",
        "1s",
        "-o",
        "json",
        "--",
        "sh",
        "-c",
        &script,
    ])?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains(r#""state":"timed_out""#), "{text}");
    let pid: i32 = std::fs::read_to_string(&pidfile)?.trim().parse()?;
    wait_for("the grandchild to be gone", Duration::from_secs(10), || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        (stat.is_empty() || stat.contains(") Z ")).then_some(())
    })?;
    // A step that prints 1 GiB: the tail comes back, the agent stays small.
    let out = f.ctl(&[
        "run",
        "-l",
        "name=vm-prod",
        "-o",
        "json",
        "--",
        "sh",
        "-c",
        "head -c 1073741824 /dev/zero | tr '\\0' x; echo; echo end",
    ])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let row: Value = serde_json::from_slice(&out.stdout)?;
    let tail = row["output"].as_str().unwrap_or_default();
    assert!(
        tail.ends_with("xxx\nend\n") && tail.len() <= 64 * 1024,
        "{} bytes",
        tail.len()
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", f.agents[2].pid()))?;
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM")?;
    assert!(
        peak_kib < 64 * 1024,
        "agent peak RSS {peak_kib} KiB after a 1 GiB step"
    );
    // A viewer may not run commands (and it is audited).
    let out = f.ctl(&[
        "user",
        "add",
        "vic",
        "--role",
        "viewer",
        "--out",
        &f.w.path("vic").display().to_string(),
    ])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let mut viewer = f.cp.flags("x", "y");
    let vic = f.w.path("vic");
    viewer[5] = vic.join("vic.crt").display().to_string();
    viewer[7] = vic.join("vic.key").display().to_string();
    let out = ctl(&f.w, &viewer, &["run", "-l", "env=prod", "--", "true"])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("needs operator"), "{}", stderr(&out));
    let file = f.w.path("viewer.toml");
    std::fs::write(&file, spec(&f, "", "", "0"))?;
    let out = ctl(
        &f.w,
        &viewer,
        &["rollout", "create", "-f", &file.display().to_string()],
    )?;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("needs operator"), "{}", stderr(&out));
    assert!(f.marked().is_empty(), "nothing ran");
    let audit = String::from_utf8_lossy(&f.ctl(&["audit"])?.stdout).into_owned();
    assert!(
        audit.contains("user:vic") && audit.contains("denied"),
        "{audit}"
    );
    Ok(())
}

#[test]
fn hosts_refuse_steps_they_may_not_run() -> Result<()> {
    let mut f = Fleet::start()?;
    // vm-security: [exec] enabled = false. Restart it with that.
    f.reconfigure(3, "[exec]\nenabled = false\nusers = [\"nobody\"]")?;
    let out = f.ctl(&["run", "-l", "name=vm-security", "-o", "json", "--", "true"])?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("[exec] enabled = false"), "{text}");
    // A run-as user not listed on vm-prod; listed and allowed would run.
    let rollout = |user: &str| {
        format!(
            "name = \"as {user}\"\nselector = \"name=vm-prod\"\n[[step]]\nexec = [\"id\", \"-un\"]\nuser = \"{user}\"\n"
        )
    };
    let id = f.create(&rollout("nobody"))?;
    let s = f.wait_state(&id, "failed", Duration::from_secs(30))?;
    let out = s["waves"][0]["hosts"][0]["steps"][0]["output"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        out.contains("\"nobody\" is not allowed on host vm-prod"),
        "{out}"
    );
    // vm-prod with nobody allowed: runs as nobody.
    f.reconfigure(2, "[exec]\nusers = [\"nobody\"]")?;
    let id = f.create(&rollout("nobody"))?;
    let s = f.wait_state(&id, "succeeded", Duration::from_secs(30))?;
    assert_eq!(s["waves"][0]["hosts"][0]["steps"][0]["output"], "nobody\n");
    Ok(())
}
