//! Rollouts end to end (SPEC §9): five real agents labelled as the
//! reference fleet's VMs, real processes running the steps, marker files
//! written by the steps saying which host ran what, in which order, once.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use picket_tests::*;
use serde_json::Value;

/// The reference fleet: (name, env). Store order (by name) is plan order.
const FLEET: [(&str, &str); 5] = [
    ("vm-devops", "staging"),
    ("vm-monitor", "prod"),
    ("vm-prod", "prod"),
    ("vm-security", "prod"),
    ("vm-staging", "staging"),
];

struct Fleet {
    w: World,
    fp: String,
    cp: Control,
    listen: String,
    admin: Vec<String>,
    agents: Vec<Proc>,
}

impl Fleet {
    fn start() -> Result<Fleet> {
        let w = World::new()?;
        let fp = w.init("cp", "heartbeat_interval = \"1s\"")?;
        let listen = format!("127.0.0.1:{}", free_port()?);
        let cp = Control::start_on(&w, "cp", &listen)?;
        let admin = cp.admin_flags();
        let mut f = Fleet {
            w,
            fp,
            cp,
            listen,
            admin,
            agents: Vec::new(),
        };
        for (name, env) in FLEET {
            let role = format!("role={}", name.trim_start_matches("vm-"));
            let env = format!("env={env}");
            let p = enroll_with_sources(&f.w, &f.cp, &f.fp, name, &[&role, &env], &[])?;
            f.agents.push(p);
        }
        wait_for("five agents online", Duration::from_secs(30), || {
            let a = agents(&f.w, &f.admin).ok()?;
            (a.values().filter(|v| v["status"] == "online").count() == 5).then_some(())
        })?;
        Ok(f)
    }

    /// Appends `toml` to agent `i`'s agent.toml and restarts it.
    fn reconfigure(&mut self, i: usize, toml: &str) -> Result<()> {
        let name = FLEET[i].0;
        let cfg = self.w.path(&format!("agents/{name}/agent.toml"));
        let text = std::fs::read_to_string(&cfg)?;
        std::fs::write(&cfg, format!("{text}\n{toml}\n"))?;
        self.agents[i].kill9();
        self.agents[i] = run_agent(&self.w, name)?;
        wait_for(&format!("{name} online"), Duration::from_secs(30), || {
            (status_of(&self.w, &self.admin, name)? == "online").then_some(())
        })
    }

    fn marks(&self) -> String {
        self.w.path("marks").display().to_string()
    }

    fn marked(&self) -> Vec<String> {
        std::fs::read_to_string(self.w.path("marks"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn ctl(&self, args: &[&str]) -> Result<std::process::Output> {
        ctl(&self.w, &self.admin, args)
    }

    /// `rollout create -f` of `toml`; the id.
    fn create(&self, toml: &str) -> Result<String> {
        let file = self.w.path("rollout.toml");
        std::fs::write(&file, toml)?;
        let out = self.ctl(&["rollout", "create", "-f", &file.display().to_string()])?;
        if !out.status.success() {
            bail!("rollout create: {}", stderr(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn status(&self, id: &str) -> Result<Value> {
        ctl_json(&self.w, &self.admin, &["rollout", "status", id])?
            .pop()
            .context("no status line")
    }

    fn wait_state(&self, id: &str, state: &str, limit: Duration) -> Result<Value> {
        wait_for(&format!("rollout {id} {state}"), limit, || {
            let s = self.status(id).ok()?;
            (s["state"] == state).then_some(s)
        })
        .with_context(|| format!("status: {:?}", self.status(id).ok()))
    }
}

/// The steps: a deploy and a rollback that write markers, a health gate
/// that fails on `bad` (none when empty).
fn spec(f: &Fleet, extra: &str, bad: &str, sleep: &str) -> String {
    let m = f.marks();
    format!(
        r#"
name = "react-frontend v2.1.7"
selector = "env in (staging,prod)"
max_parallel = 1
auto_rollback = true
{extra}

[[wave]]
name = "staging"
selector = "env=staging"

[[wave]]
name = "prod"
selector = "env=prod"

[[step]]
name = "deploy"
shell = "echo \"$PICKET_HOST deploy $PICKET_ROLLOUT $PICKET_STEP\" >> {m}; sleep {sleep}"

[[health]]
name = "gate"
shell = "test \"$PICKET_HOST\" != \"{bad}\""

[[rollback]]
shell = "echo \"$PICKET_HOST rollback\" >> {m}"
"#
    )
}

fn host_states(s: &Value) -> Vec<(String, String)> {
    s["waves"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|w| w["hosts"].as_array().cloned().unwrap_or_default())
        .map(|h| {
            (
                h["name"].as_str().unwrap_or_default().to_string(),
                h["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

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
