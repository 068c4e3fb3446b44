//! `provisioning/site.yml` run by ansible-playbook for the provisioning
//! tests, on the namespace fleet.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};

use crate::{World, tests_dir};

pub fn repo() -> PathBuf {
    tests_dir().join("..")
}

pub fn playbook(w: &World, inventory: &Path, extra: &[&str]) -> Result<Output> {
    let out = Command::new("ansible-playbook")
        .arg("-i")
        .arg(inventory)
        .arg(repo().join("provisioning/site.yml"))
        .args(extra)
        .env("HOME", w.path("home"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_FORCE_COLOR", "0")
        .env("ANSIBLE_LOCAL_TEMP", w.path("ansible-tmp"))
        .env("ANSIBLE_REMOTE_TEMP", w.path("ansible-tmp"))
        .output()
        .context("running ansible-playbook (scripts/test installs ansible-core with pip)")?;
    ensure!(
        out.status.success(),
        "ansible-playbook {extra:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// The PLAY RECAP lines: host and its `changed=` count.
pub fn changed(out: &Output) -> Vec<(String, u32)> {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .skip_while(|l| !l.starts_with("PLAY RECAP"))
        .skip(1)
        .filter_map(|l| {
            let host = l.split_whitespace().next()?.to_string();
            let n = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("changed="))?
                .parse()
                .ok()?;
            Some((host, n))
        })
        .collect()
}

/// `host`'s inventory line for the namespace fleet: a local connection
/// whose Python runs in the host's namespace (a wrapper script written
/// here), a staging root of its own under `roots/HOST`, no systemd, no
/// system user, the binaries from `bin_dir`; `extra` appended (host
/// variables outrank the playbook's group_vars).
pub fn host_line(
    w: &World,
    net: &crate::netns::Net,
    (host, addr, role): (&str, &str, &str),
    bin_dir: &Path,
    extra: &str,
) -> Result<String> {
    let py = w.path(&format!("python-{host}"));
    std::fs::write(
        &py,
        format!(
            "#!/bin/sh\nexec ip netns exec {} python3 \"$@\"\n",
            net.ns(host)
        ),
    )?;
    std::fs::set_permissions(&py, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(format!(
        "{host} ansible_host={addr} picket_agent_role={role} ansible_connection=local \
         ansible_become=false ansible_python_interpreter={} picket_root={} \
         picket_manage_services=false picket_create_user=false picket_control_user=root \
         picket_bin_dir={}{extra}\n",
        py.display(),
        root(w, host).display(),
        bin_dir.display()
    ))
}

/// `host`'s staging root (`picket_root`), as [`host_line`] sets it.
pub fn root(w: &World, host: &str) -> PathBuf {
    w.path(&format!("roots/{host}"))
}

/// The binary `bin` the playbook installed on `host`, run in its
/// namespace.
pub fn installed(w: &World, net: &crate::netns::Net, host: &str, bin: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &net.ns(host)])
        .arg(root(w, host).join("usr/local/bin").join(bin));
    c
}

/// The agent the playbook installed and configured on `host`, started.
pub fn run_installed_agent(w: &World, net: &crate::netns::Net, host: &str) -> Result<crate::Proc> {
    let mut c = installed(w, net, host, "picket-agent");
    c.args(["run", "--config"])
        .arg(root(w, host).join("etc/picket/agent.toml"));
    crate::Proc::spawn(c)
}
