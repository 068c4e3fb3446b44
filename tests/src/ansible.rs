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
