//! The reference fleet for the deploy tests (`e2e/rollouts.rs`,
//! `e2e/run.rs`): five real agents labelled as the five VMs, a control
//! plane on a fixed port (so it can be killed and restarted), and marker
//! files that the steps write.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::*;

/// The reference fleet: (name, env). Store order (by name) is plan order.
pub const FLEET: [(&str, &str); 5] = [
    ("vm-devops", "staging"),
    ("vm-monitor", "prod"),
    ("vm-prod", "prod"),
    ("vm-security", "prod"),
    ("vm-staging", "staging"),
];

/// The fleet's `[exec]`: steps that name no user run as root.
pub const STEPS_AS_ROOT: &str = "[exec]\ndefault_user = \"root\"\n";

pub struct Fleet {
    pub w: World,
    pub fp: String,
    pub cp: Control,
    pub listen: String,
    pub admin: Vec<String>,
    pub agents: Vec<Proc>,
}

impl Fleet {
    pub fn start() -> Result<Fleet> {
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
            // The steps write marker files into the test's folder: they
            // run as root, named as the default user (it is never implied).
            let p = enroll_with(&f.w, &f.cp, &f.fp, name, &[&role, &env], &[], STEPS_AS_ROOT)?;
            f.agents.push(p);
        }
        wait_for("five agents online", Duration::from_secs(30), || {
            let a = agents(&f.w, &f.admin).ok()?;
            (a.values().filter(|v| v["status"] == "online").count() == 5).then_some(())
        })?;
        Ok(f)
    }

    /// Merges `toml` into agent `i`'s agent.toml ([`merge_config`]) and
    /// restarts it.
    pub fn reconfigure(&mut self, i: usize, toml: &str) -> Result<()> {
        let name = FLEET[i].0;
        let cfg = self.w.path(&format!("agents/{name}/agent.toml"));
        let text = std::fs::read_to_string(&cfg)?;
        std::fs::write(&cfg, merge_config(&text, toml))?;
        self.agents[i].kill9();
        self.agents[i] = run_agent(&self.w, name)?;
        wait_for(&format!("{name} online"), Duration::from_secs(30), || {
            (status_of(&self.w, &self.admin, name)? == "online").then_some(())
        })
    }

    pub fn marks(&self) -> String {
        self.w.path("marks").display().to_string()
    }

    pub fn marked(&self) -> Vec<String> {
        std::fs::read_to_string(self.w.path("marks"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn ctl(&self, args: &[&str]) -> Result<std::process::Output> {
        ctl(&self.w, &self.admin, args)
    }

    /// `rollout create -f` of `toml`; the id.
    pub fn create(&self, toml: &str) -> Result<String> {
        let file = self.w.path("rollout.toml");
        std::fs::write(&file, toml)?;
        let out = self.ctl(&["rollout", "create", "-f", &file.display().to_string()])?;
        if !out.status.success() {
            bail!("rollout create: {}", stderr(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    pub fn status(&self, id: &str) -> Result<Value> {
        ctl_json(&self.w, &self.admin, &["rollout", "status", id])?
            .pop()
            .context("no status line")
    }

    pub fn wait_state(&self, id: &str, state: &str, limit: Duration) -> Result<Value> {
        wait_for(&format!("rollout {id} {state}"), limit, || {
            let s = self.status(id).ok()?;
            (s["state"] == state).then_some(s)
        })
        .with_context(|| format!("status: {:?}", self.status(id).ok()))
    }
}

/// The steps: a deploy and a rollback that write markers, a health gate
/// that fails on `bad` (none when empty).
pub fn spec(f: &Fleet, extra: &str, bad: &str, sleep: &str) -> String {
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

pub fn host_states(s: &Value) -> Vec<(String, String)> {
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
