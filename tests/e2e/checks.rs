//! The offline checks a CI pipeline runs (`picketctl rollout check`,
//! `picketctl alerts check`, `picket-control check`, `picket-agent
//! check`): the real binaries, no control plane anywhere, no credentials.
//! Good files pass (the shipped examples among them); each kind of
//! problem is printed as `FILE:LINE:COL: field: message`, exit 1; an
//! unreadable file is exit 2.

use std::process::Output;

use anyhow::{Context, Result};
use picket_tests::*;
use serde_json::Value;

fn run(w: &World, bin: &str, args: &[&str]) -> Result<Output> {
    let mut c = w.cmd(bin);
    // Nothing to connect to: a check must not try.
    c.env("PICKET_SERVER", "127.0.0.1:1").args(args);
    c.output().with_context(|| format!("running {bin}"))
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The TOML block of docs/rollouts.md that follows "## The rollout file".
fn shipped_rollout() -> Result<String> {
    let md = std::fs::read_to_string(tests_dir().join("../docs/rollouts.md"))?;
    let after = md
        .split("## The rollout file")
        .nth(1)
        .context("docs/rollouts.md has a rollout file section")?;
    let block = after
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .context("a toml block")?;
    Ok(block.to_string())
}

#[test]
fn good_files_pass_with_no_server_and_the_shipped_examples_are_good() -> Result<()> {
    let w = World::new()?;
    let rollout = w.path("frontend.toml");
    std::fs::write(&rollout, shipped_rollout()?)?;
    let alerts = tests_dir().join("../docs/alerts.toml");
    let o = run(
        &w,
        "picketctl",
        &["rollout", "check", "-f", &rollout.display().to_string()],
    )?;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(out(&o), "");
    let o = run(
        &w,
        "picketctl",
        &["alerts", "check", &alerts.display().to_string()],
    )?;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    // The control plane's template config, and an agent's.
    let data = w.path("data");
    std::fs::create_dir_all(&data)?;
    let cfg = w.path("control.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nalerts = {:?}\nmetrics_raw_retention = \"1w\"\n",
            data.display().to_string(),
            alerts.display().to_string()
        ),
    )?;
    let o = run(
        &w,
        "picket-control",
        &["check", "--config", &cfg.display().to_string()],
    )?;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let agent = w.path("agent.toml");
    std::fs::write(
        &agent,
        "server = \"10.0.1.50:7443\"\nname = \"vm-prod\"\n\n[[source]]\nkind = \"sshd\"\npath = \"/var/log/auth.log\"\n",
    )?;
    let o = run(
        &w,
        "picket-agent",
        &["check", "--config", &agent.display().to_string()],
    )?;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    Ok(())
}

#[test]
fn each_kind_of_problem_is_put_at_its_line_and_column() -> Result<()> {
    let w = World::new()?;
    let f = |name: &str, text: &str| -> Result<String> {
        let p = w.path(name);
        std::fs::write(&p, text)?;
        Ok(p.display().to_string())
    };
    // Syntax: an unclosed string.
    let syntax = f("syntax.toml", "name = \"x\nselector = \"role=prod\"\n")?;
    let o = run(&w, "picketctl", &["rollout", "check", "-f", &syntax])?;
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).starts_with(&format!("{syntax}:1:")), "{}", out(&o));
    // An unknown key, a bad duration and a bad selector, each where it is.
    let bad = f(
        "bad.toml",
        "name = \"x\"\nselector = \"role in (prod\"\nmax_parallel = 1\n\n[[step]]\nexec = [\"true\"]\ntimeout = \"soon\"\n",
    )?;
    let o = run(&w, "picketctl", &["rollout", "check", "-f", &bad])?;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        out(&o),
        format!(
            "{bad}:2:1: selector: ',' or ')' at character 14 of \"role in (prod\"\n\
             {bad}:7:1: step[0].timeout: \"soon\" is not a duration such as \"30s\", \"5m\" or \"1h30m\"\n"
        )
    );
    let typo = f(
        "typo.toml",
        "name = \"x\"\nselector = \"role=prod\"\nmax_paralel = 1\n",
    )?;
    let o = run(&w, "picketctl", &["rollout", "check", "-f", &typo])?;
    let text = out(&o);
    assert!(
        text.starts_with(&format!(
            "{typo}:3:1: max_paralel: unknown field `max_paralel`"
        )),
        "{text}"
    );
    // The alert file: an unknown notifier and a bad duration; a series no
    // agent reports is a warning that fails only with --strict.
    let alerts = f(
        "alerts.toml",
        "[[rule]]\nname = \"HighCpu\"\nkind = \"threshold\"\nmetric = \"cpu_usage_percent\"\nop = \">\"\nvalue = 90\nfor = \"five minutes\"\n\n[[route]]\nnotifiers = [\"nope\"]\n",
    )?;
    let o = run(&w, "picketctl", &["alerts", "check", &alerts])?;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        out(&o),
        format!(
            "{alerts}:7:1: rule \"HighCpu\".for: \"five minutes\" is not a duration such as \"30s\", \"5m\" or \"1h30m\"\n\
             {alerts}:10:1: route[0].notifiers: no notifier named \"nope\"\n"
        )
    );
    let warn = f(
        "warn.toml",
        "[[rule]]\nname = \"Odd\"\nkind = \"threshold\"\nmetric = \"cpu_usage_percnt\"\nop = \">\"\nvalue = 90\n",
    )?;
    let o = run(&w, "picketctl", &["alerts", "check", &warn])?;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(
        out(&o).starts_with(&format!("{warn}:4:1: warning: rule \"Odd\".metric: ")),
        "{}",
        out(&o)
    );
    let o = run(&w, "picketctl", &["alerts", "check", "--strict", &warn])?;
    assert_eq!(o.status.code(), Some(1));
    // -o json: one object a finding, for CI annotations.
    let o = run(&w, "picketctl", &["-o", "json", "alerts", "check", &alerts])?;
    let lines: Vec<Value> = out(&o)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["line"], 10);
    assert_eq!(lines[1]["column"], 1);
    assert_eq!(lines[1]["field"], "route[0].notifiers");
    assert_eq!(lines[1]["level"], "error");
    // control.toml, with the alert file it names; agent.toml.
    let cfg = f(
        "control.toml",
        "data_dir = \"data\"\nalerts = \"alerts.toml\"\nheartbeat_interval = \"1ms\"\n",
    )?;
    let o = run(&w, "picket-control", &["check", "--config", &cfg])?;
    assert_eq!(o.status.code(), Some(1));
    let text = out(&o);
    assert!(
        text.starts_with(&format!(
            "{cfg}:3:1: heartbeat_interval: must be at least 100ms\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("{alerts}:10:1: route[0].notifiers")),
        "{text}"
    );
    let agent = f(
        "agent.toml",
        "server = \"x\"\nname = \"vm-prod\"\nmetrics_intervl = \"10s\"\n",
    )?;
    let o = run(&w, "picket-agent", &["check", "--config", &agent])?;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        out(&o).starts_with(&format!("{agent}:3:1: metrics_intervl: unknown field")),
        "{}",
        out(&o)
    );
    // A file that is not there: bad usage.
    let o = run(
        &w,
        "picketctl",
        &[
            "rollout",
            "check",
            "-f",
            &w.path("none.toml").display().to_string(),
        ],
    )?;
    assert_eq!(o.status.code(), Some(2));
    let o = run(
        &w,
        "picket-control",
        &[
            "check",
            "--config",
            &w.path("none.toml").display().to_string(),
        ],
    )?;
    assert_eq!(o.status.code(), Some(2));
    Ok(())
}

#[test]
fn rollout_create_checks_the_file_before_it_connects() -> Result<()> {
    let w = World::new()?;
    let bad = w.path("bad.toml");
    std::fs::write(
        &bad,
        "name = \"x\"\nselector = \"role in (prod\"\n[[step]]\nexec = [\"true\"]\n",
    )?;
    // The server named does not exist: a bad file is still reported as such.
    let o = run(
        &w,
        "picketctl",
        &["rollout", "create", "-f", &bad.display().to_string()],
    )?;
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains(&format!("{}:2:1: selector:", bad.display())),
        "{e}"
    );
    let o = run(
        &w,
        "picketctl",
        &[
            "rollout",
            "create",
            "-f",
            &w.path("none.toml").display().to_string(),
        ],
    )?;
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read"));
    Ok(())
}
