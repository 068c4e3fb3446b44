//! Trust boundaries (issue #20): what a compromised host can and cannot
//! do to the rest of the fleet.

use std::time::Duration;

use anyhow::{Context, Result};
use picket_tests::*;

/// Adds `k = "v"` to the `[labels]` table of an enrolled agent's
/// agent.toml, as someone with root on that host would.
fn report_label(w: &World, name: &str, k: &str, v: &str) -> Result<()> {
    let path = w.path(&format!("agents/{name}/agent.toml"));
    let line = format!("{k} = \"{v}\"");
    let text: String = std::fs::read_to_string(&path)?
        .lines()
        .filter(|l| !l.starts_with(&format!("{k} =")))
        .map(|l| format!("{l}\n"))
        .collect();
    let text = match text.find("[labels]\n") {
        Some(at) => {
            let end = at + "[labels]\n".len();
            format!("{}{line}\n{}", &text[..end], &text[end..])
        }
        None => format!("{text}\n[labels]\n{line}\n"),
    };
    std::fs::write(path, text)?;
    Ok(())
}

/// `rollout create` of `toml` as the user of `flags`.
fn create_rollout(w: &World, flags: &[String], toml: &str) -> Result<std::process::Output> {
    let file = w.path("rollout.toml");
    std::fs::write(&file, toml)?;
    ctl(
        w,
        flags,
        &["rollout", "create", "-f", &file.display().to_string()],
    )
}

#[test]
fn a_host_that_relabels_itself_is_not_selected_until_an_admin_labels_it() -> Result<()> {
    let w = World::new()?;
    let fp = w.init("cp", "heartbeat_interval = \"1s\"")?;
    let cp = Control::start(&w, "cp")?;
    let admin = cp.admin_flags();
    let tok = token(&w, &cp, &[])?;
    let out = enroll(&w, &cp, &fp, &tok, "web", &["role=web"])?;
    anyhow::ensure!(out.status.success(), "{}", stderr(&out));
    // Root on the host: it claims to be a production host.
    report_label(&w, "web", "env", "prod")?;
    report_label(&w, "web", "role", "db")?;
    let agent = run_agent(&w, "web")?;
    let a = wait_for("web online", Duration::from_secs(20), || {
        let a = agents(&w, &admin).ok()?.get("web")?.clone();
        (a["status"] == "online" && a["reported_labels"]["env"] == "prod").then_some(a)
    })
    .with_context(|| {
        format!(
            "{:?}\n{}\n{}",
            agents(&w, &admin).ok(),
            agent.stderr(),
            std::fs::read_to_string(w.path("agents/web/agent.toml")).unwrap_or_default()
        )
    })?;
    assert_eq!(a["labels"]["role"], "web", "{a}");
    assert!(a["labels"].get("env").is_none(), "{a}");
    // No selector reaches it by what it reports.
    for sel in ["env=prod", "role=db"] {
        let out = ctl(&w, &admin, &["run", "--selector", sel, "--", "true"])?;
        assert_eq!(out.status.code(), Some(1), "{sel}: {}", stderr(&out));
        assert!(stderr(&out).contains("no host"), "{sel}: {}", stderr(&out));
    }
    let (_, metrics) = http_get(&cp.http, "/metrics")?;
    let up = metrics
        .lines()
        .find(|l| l.starts_with("picket_agent_up{"))
        .unwrap_or_default();
    assert!(up.contains("role=\"web\"") && !up.contains("env="), "{up}");

    // An admin labels it: from then on it is selected, and it is audited.
    let out = ctl(&w, &admin, &["agents", "label", "web", "env=prod"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ctl(&w, &admin, &["run", "--selector", "env=prod", "--", "true"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ctl(
        &w,
        &admin,
        &["agents", "label", "web", "env-", "tier=front"],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let a = &agents(&w, &admin)?["web"];
    assert!(a["labels"].get("env").is_none(), "{a}");
    assert_eq!(a["labels"]["tier"], "front");
    let audit = ctl(&w, &admin, &["audit"])?;
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit.contains("agents.label") && audit.contains("web env=prod"),
        "{audit}"
    );
    // Only an admin may.
    let out = ctl(
        &w,
        &admin,
        &["user", "add", "ops", "--role", "operator", "--out", "ops"],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let ops = cp.flags("../ops/ops.crt", "../ops/ops.key");
    let out = ctl(&w, &ops, &["agents", "label", "web", "env=prod"])?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("permission") || stderr(&out).contains("PERMISSION"),
        "{}",
        stderr(&out)
    );
    Ok(())
}

#[test]
fn steps_run_as_nobody_by_default_with_a_clean_environment_and_enter_their_folder_as_their_user()
-> Result<()> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "this test runs its agent as root, as the shipped unit does (CI runs as root)"
    );
    let w = World::new()?;
    let fp = w.init("cp", "heartbeat_interval = \"1s\"")?;
    let cp = Control::start(&w, "cp")?;
    let admin = cp.admin_flags();
    let tok = token(&w, &cp, &[])?;
    let out = enroll(&w, &cp, &fp, &tok, "box", &[])?;
    anyhow::ensure!(out.status.success(), "{}", stderr(&out));
    // The agent's own environment holds a secret no step may see.
    let mut c = w.cmd("picket-agent");
    c.args(["run", "--config"])
        .arg(w.path("agents/box/agent.toml"))
        .env("AGENT_SECRET", "hunter2");
    let _agent = Proc::spawn(c)?;
    wait_for("box online", Duration::from_secs(20), || {
        (status_of(&w, &admin, "box")? == "online").then_some(())
    })?;
    let run = |argv: &[&str]| -> Result<serde_json::Value> {
        let mut args = vec!["run", "--selector", "name=box", "-o", "json", "--"];
        args.extend(argv);
        let out = ctl(&w, &admin, &args)?;
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(serde_json::from_str(
            line.lines().last().context("a result line")?,
        )?)
    };
    // Root is never implied: no default_user on a root agent is nobody.
    let r = run(&["id", "-un"])?;
    assert_eq!(r["output"], "nobody\n", "{r}");
    assert_eq!(r["state"], "succeeded", "{r}");
    // The environment is PATH, LANG, HOME and PICKET_*, nothing else.
    let r = run(&["env"])?;
    let out = r["output"].as_str().unwrap_or_default();
    let mut keys: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "HOME",
            "LANG",
            "PATH",
            "PICKET_HOST",
            "PICKET_ROLLOUT",
            "PICKET_STEP"
        ],
        "{out}"
    );
    assert!(!out.contains("hunter2"));
    // A folder its user may not enter is not entered as root.
    std::fs::create_dir_all(w.path("private"))?;
    std::fs::set_permissions(
        w.path("private"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    let toml = format!(
        "name = \"cwd\"\nselector = \"name=box\"\n[[step]]\nexec = [\"pwd\"]\ncwd = \"{}\"\n",
        w.path("private").display()
    );
    let out = create_rollout(&w, &admin, &toml)?;
    anyhow::ensure!(out.status.success(), "{}", stderr(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let s = wait_for("the rollout to fail", Duration::from_secs(30), || {
        let s = ctl_json(&w, &admin, &["rollout", "status", &id])
            .ok()?
            .pop()?;
        (s["state"] == "failed").then_some(s)
    })?;
    let step = &s["waves"][0]["hosts"][0]["steps"][0];
    let output = step["output"].as_str().unwrap_or_default();
    assert!(output.contains("Permission denied"), "{step}");
    Ok(())
}

#[test]
fn a_step_user_must_be_granted_to_the_caller_admins_excepted() -> Result<()> {
    let w = World::new()?;
    let fp = w.init("cp", "heartbeat_interval = \"1s\"")?;
    let cp = Control::start(&w, "cp")?;
    let admin = cp.admin_flags();
    let _agent = enroll_with(
        &w,
        &cp,
        &fp,
        "box",
        &[],
        &[],
        "[exec]\ndefault_user = \"root\"\nusers = [\"nobody\"]",
    )?;
    wait_for("box online", Duration::from_secs(20), || {
        (status_of(&w, &admin, "box")? == "online").then_some(())
    })?;
    for (name, grant) in [("ops", None), ("deployer", Some("nobody"))] {
        let mut args = vec!["user", "add", name, "--role", "operator", "--out", name];
        if let Some(g) = grant {
            args.extend(["--run-as", g]);
        }
        let out = ctl(&w, &admin, &args)?;
        anyhow::ensure!(out.status.success(), "{}", stderr(&out));
    }
    let flags = |u: &str| cp.flags(&format!("../{u}/{u}.crt"), &format!("../{u}/{u}.key"));
    let run = |who: &[String], user: Option<&str>| -> Result<std::process::Output> {
        let mut args = vec!["run", "--selector", "name=box", "-o", "json"];
        if let Some(u) = user {
            args.extend(["--user", u]);
        }
        args.extend(["--", "id", "-un"]);
        ctl(&w, who, &args)
    };
    // The step's output, from the one JSON result line.
    let said = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .and_then(|v| v["output"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    // The host's default needs no grant; a named user does.
    let out = run(&flags("ops"), None)?;
    assert!(
        out.status.success() && said(&out) == "root\n",
        "{}",
        stderr(&out)
    );
    let out = run(&flags("ops"), Some("nobody"))?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("may not run steps as \"nobody\""),
        "{}",
        stderr(&out)
    );
    // Granted, or an admin: runs as that user.
    for who in [flags("deployer"), admin.clone()] {
        let out = run(&who, Some("nobody"))?;
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(said(&out) == "nobody\n", "{}", said(&out));
    }
    // A rollout naming a user not granted is refused before it starts.
    let out = create_rollout(
        &w,
        &flags("deployer"),
        "name = \"x\"\nselector = \"name=box\"\n[[step]]\nexec = [\"true\"]\nuser = \"root\"\n",
    )?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("\"root\""), "{}", stderr(&out));
    let audit = ctl(&w, &admin, &["audit"])?;
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit.contains("denied: run-as nobody not granted"),
        "{audit}"
    );
    assert!(audit.contains("denied: run-as root not granted"), "{audit}");
    let users = ctl_json(&w, &admin, &["user", "list"])?;
    let deployer = users.iter().find(|u| u["name"] == "deployer");
    assert_eq!(
        deployer.map(|u| u["run_as"].clone()),
        Some(serde_json::json!(["nobody"]))
    );
    Ok(())
}

#[test]
fn a_scoped_user_sees_and_reaches_only_the_hosts_in_scope() -> Result<()> {
    let w = World::new()?;
    let fp = w.init("cp", "heartbeat_interval = \"1s\"")?;
    let cp = Control::start(&w, "cp")?;
    let admin = cp.admin_flags();
    let mut procs = Vec::new();
    for (name, env) in [("stage-1", "staging"), ("prod-1", "prod")] {
        let log = w.path(&format!("{name}.log"));
        std::fs::write(&log, format!("line from {name}\n"))?;
        procs.push(enroll_with(
            &w,
            &cp,
            &fp,
            name,
            &[&format!("env={env}")],
            &[("raw", &log)],
            "[exec]\ndefault_user = \"root\"",
        )?);
    }
    wait_for("both online", Duration::from_secs(20), || {
        let a = agents(&w, &admin).ok()?;
        (a.values().filter(|v| v["status"] == "online").count() == 2).then_some(())
    })?;
    wait_for("both lines stored", Duration::from_secs(20), || {
        let out = ctl(&w, &admin, &["logs", "-o", "json"]).ok()?;
        (String::from_utf8_lossy(&out.stdout).lines().count() >= 2).then_some(())
    })?;
    let out = ctl(
        &w,
        &admin,
        &[
            "user",
            "add",
            "stager",
            "--role",
            "operator",
            "--hosts",
            "env=staging",
            "--out",
            "stager",
        ],
    )?;
    anyhow::ensure!(out.status.success(), "{}", stderr(&out));
    // Admins are never scoped.
    let out = ctl(
        &w,
        &admin,
        &[
            "user",
            "add",
            "boss",
            "--role",
            "admin",
            "--hosts",
            "env=staging",
            "--out",
            "boss",
        ],
    )?;
    assert!(
        !out.status.success() && stderr(&out).contains("never scoped"),
        "{}",
        stderr(&out)
    );
    let me = cp.flags("../stager/stager.crt", "../stager/stager.key");

    // Reads: only hosts in scope.
    let seen = agents(&w, &me)?;
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["stage-1"]);
    let out = ctl(&w, &me, &["agents", "show", "prod-1"])?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let logs = ctl(&w, &me, &["logs", "-o", "json"])?;
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.contains("line from stage-1") && !logs.contains("prod-1"),
        "{logs}"
    );
    let out = ctl(&w, &me, &["metrics", "prod-1"])?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let status = ctl_json(&w, &me, &["status"])?;
    assert_eq!(status[0]["hosts"]["up"], 1, "{status:?}");

    // Run selects among hosts in scope; a selector of hosts outside it
    // matches nothing.
    let out = ctl(
        &w,
        &me,
        &[
            "run",
            "--selector",
            "name in (stage-1,prod-1)",
            "-o",
            "json",
            "--",
            "true",
        ],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("stage-1") && !text.contains("prod-1"),
        "{text}"
    );
    let out = ctl(&w, &me, &["run", "--selector", "env=prod", "--", "true"])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("in your scope"), "{}", stderr(&out));

    // A rollout reaching a host outside the scope is refused, audited.
    let all = "name = \"all\"\nselector = \"env\"\n[[step]]\nexec = [\"true\"]\n";
    let out = create_rollout(&w, &me, all)?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 host(s) are outside your scope"),
        "{}",
        stderr(&out)
    );
    let audit = ctl(&w, &admin, &["audit"])?;
    assert!(String::from_utf8_lossy(&audit.stdout).contains("outside the user's scope"));
    // The same rollout created by an admin cannot be acted on by the user.
    let out = create_rollout(&w, &admin, all)?;
    anyhow::ensure!(out.status.success(), "{}", stderr(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = ctl(&w, &me, &["rollout", "abort", &id])?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("outside your scope"),
        "{}",
        stderr(&out)
    );
    // Within the scope, it works.
    let out = create_rollout(
        &w,
        &me,
        "name = \"stage\"\nselector = \"env=staging\"\n[[step]]\nexec = [\"true\"]\n",
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let users = ctl_json(&w, &admin, &["user", "list"])?;
    let stager = users.iter().find(|u| u["name"] == "stager").cloned();
    assert_eq!(
        stager.map(|u| u["hosts"].clone()),
        Some(serde_json::json!("env=staging"))
    );
    drop(procs);
    Ok(())
}
