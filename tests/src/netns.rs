//! The reference fleet's network: `tests/fleet/fleet.sh` run from a test,
//! its namespaces removed when the test ends, even after a failure.

use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};

use crate::tests_dir;

/// The seeds' hosts: name, address, role. The control plane is on the last.
pub const HOSTS: [(&str, &str, &str); 5] = [
    ("vm-prod", "10.0.1.10", "prod"),
    ("vm-staging", "10.0.1.20", "staging"),
    ("vm-monitor", "10.0.1.30", "monitor"),
    ("vm-security", "10.0.1.40", "security"),
    ("vm-devops", "10.0.1.50", "devops"),
];
/// vm-devops's address, where the control plane listens.
pub const CONTROL: &str = "10.0.1.50";

/// The namespaces, removed when dropped (even after a failed assertion).
pub struct Net {
    pub prefix: String,
    /// One fleet at a time in a test process: the tests that use it run
    /// one after another, whatever else runs beside them.
    _alone: std::sync::MutexGuard<'static, ()>,
}

static ONE_FLEET: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Net {
    pub fn script() -> PathBuf {
        tests_dir().join("fleet/fleet.sh")
    }

    pub fn sh(&self, args: &[&str]) -> Result<Output> {
        let out = Command::new("bash")
            .arg(Self::script())
            .args(args)
            .env("FLEET_PREFIX", &self.prefix)
            .output()
            .context("running tests/fleet/fleet.sh")?;
        ensure!(
            out.status.success(),
            "fleet.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    pub fn up() -> Result<Net> {
        ensure!(
            nix::unistd::geteuid().is_root(),
            "the namespace fleet needs root (ip netns); run the suite as root, as CI does"
        );
        let alone = ONE_FLEET.lock().unwrap_or_else(|p| p.into_inner());
        let net = Net {
            prefix: format!("pk{}", std::process::id() % 10_000),
            _alone: alone,
        };
        net.sh(&["down"])?;
        net.sh(&["up"])?;
        Ok(net)
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// Enrolls `host`'s agent (in its namespace) through `servers` with
    /// `token` and the CA fingerprint `fp`, gives it a raw source on
    /// `HOST.log` in the test's folder (made empty), and starts it.
    pub fn enroll_and_run(
        &self,
        w: &crate::World,
        host: &str,
        servers: &str,
        token: &str,
        fp: &str,
    ) -> Result<crate::Proc> {
        let state = w.path(&format!("agents/{host}")).display().to_string();
        self.run_in(
            w,
            host,
            "picket-agent",
            &[
                "enroll",
                "--server",
                servers,
                "--token",
                token,
                "--ca-fingerprint",
                fp,
                "--name",
                host,
                "--state-dir",
                &state,
            ],
        )?;
        let log = w.path(&format!("{host}.log"));
        std::fs::write(&log, "")?;
        let cfg = w.path(&format!("agents/{host}/agent.toml"));
        crate::add_source(&cfg, "raw", &log)?;
        let mut c = w.cmd_in(&self.ns(host), "picket-agent");
        c.args(["run", "--config"]).arg(&cfg);
        crate::Proc::spawn(c)
    }

    /// Runs `bin` with `args` on `host` (in its namespace); fails with its
    /// stderr unless it succeeds.
    pub fn run_in(&self, w: &crate::World, host: &str, bin: &str, args: &[&str]) -> Result<Output> {
        let out = w
            .cmd_in(&self.ns(host), bin)
            .args(args)
            .output()
            .with_context(|| format!("{bin} {args:?} on {host}"))?;
        ensure!(
            out.status.success(),
            "{bin} {args:?} on {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = self.sh(&["down"]);
    }
}
