//! The systemd units (`systemd/`) and what they rely on: `systemd-analyze
//! verify` accepts both, `systemd-analyze security --offline=true` scores
//! them under their targets (control plane below 3.0, agent below 6.0),
//! and both daemons speak sd_notify (READY, WATCHDOG, STOPPING) on a real
//! notify socket, as systemd gives one to a `Type=notify` service.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use picket_tests::*;

fn repo() -> PathBuf {
    tests_dir().join("..")
}

/// The unit, with its binary's path pointing at the one just built (so
/// that `verify` checks a real executable).
fn unit_copy(w: &World, name: &str, binary: &str) -> Result<PathBuf> {
    let text = std::fs::read_to_string(repo().join("systemd").join(name))?;
    let text = text.replace(
        &format!("/usr/local/bin/{binary}"),
        &bin(binary).display().to_string(),
    );
    let out = w.path(name);
    std::fs::write(&out, text)?;
    Ok(out)
}

fn exposure(analyze: &Path, unit: &Path) -> Result<f64> {
    let out = std::process::Command::new(analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .with_context(|| format!("no exposure level in: {text}{}", stderr(&out)))?;
    let score = line
        .rsplit(':')
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok())
        .with_context(|| format!("unreadable: {line}"))?;
    Ok(score)
}

#[test]
fn both_units_verify_and_meet_their_security_targets() -> Result<()> {
    let analyze = tool("systemd-analyze", "systemd")?;
    let w = World::new()?;
    for (unit, binary, target) in [
        ("picket-control.service", "picket-control", 3.0),
        ("picket-agent.service", "picket-agent", 6.0),
    ] {
        let path = unit_copy(&w, unit, binary)?;
        let out = std::process::Command::new(&analyze)
            .arg("verify")
            .arg(&path)
            .output()?;
        let err = stderr(&out);
        let about_ours: Vec<&str> = err.lines().filter(|l| l.contains(unit)).collect();
        assert!(
            out.status.success() && about_ours.is_empty(),
            "systemd-analyze verify {unit}: {err}"
        );
        let score = exposure(&analyze, &path)?;
        assert!(
            score < target,
            "{unit}: exposure {score}, target below {target}"
        );
    }
    Ok(())
}

/// Reads sd_notify datagrams until one holds `want`, for at most `limit`.
fn expect(sock: &UnixDatagram, want: &str, limit: Duration) -> Result<Vec<String>> {
    let end = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = msg.lines().any(|l| l == want);
            seen.push(msg);
            if hit {
                return Ok(seen);
            }
        }
    }
    bail!("no {want} within {limit:?}; got {seen:?}")
}

fn notify_socket(w: &World, name: &str) -> Result<(UnixDatagram, PathBuf)> {
    let path = w.path(name);
    Ok((UnixDatagram::bind(&path)?, path))
}

#[test]
fn both_daemons_tell_systemd_ready_watchdog_and_stopping() -> Result<()> {
    let w = World::new()?;
    let fp = w.init("cp", "")?;
    let (cp_sock, cp_path) = notify_socket(&w, "cp.notify")?;
    let mut c = w.cmd("picket-control");
    c.args(["run", "--config"])
        .arg(w.path("cp/control.toml"))
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &cp_path)
        .env("WATCHDOG_USEC", "1000000");
    let cp_proc = Proc::spawn(c)?;
    expect(&cp_sock, "READY=1", Duration::from_secs(20)).context(cp_proc.stderr())?;
    expect(&cp_sock, "WATCHDOG=1", Duration::from_secs(3))?;
    expect(&cp_sock, "WATCHDOG=1", Duration::from_secs(3))?;
    // The agent: enrolled against this control plane, run with its own
    // notify socket.
    let grpc = wait_for("the listening line", Duration::from_secs(10), || {
        cp_proc
            .stderr()
            .lines()
            .find(|l| l.contains("control plane listening"))?
            .split_whitespace()
            .find_map(|x| x.strip_prefix("grpc="))
            .map(str::to_string)
    })?;
    let cp = Control {
        proc: cp_proc,
        grpc,
        http: String::new(),
        data_dir: w.path("cp"),
    };
    let tok = token(&w, &cp, &[])?;
    let out = enroll(&w, &cp, &fp, &tok, "vm-prod", &[])?;
    anyhow::ensure!(out.status.success(), "enroll: {}", stderr(&out));
    let (ag_sock, ag_path) = notify_socket(&w, "agent.notify")?;
    let mut a = w.cmd("picket-agent");
    a.args(["run", "--config"])
        .arg(w.path("agents/vm-prod/agent.toml"))
        .env("NOTIFY_SOCKET", &ag_path)
        .env("WATCHDOG_USEC", "1000000");
    let agent = Proc::spawn(a)?;
    expect(&ag_sock, "READY=1", Duration::from_secs(20)).context(agent.stderr())?;
    expect(&ag_sock, "WATCHDOG=1", Duration::from_secs(3))?;
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    expect(&ag_sock, "STOPPING=1", Duration::from_secs(10))?;
    cp.proc.signal(nix::sys::signal::Signal::SIGTERM);
    expect(&cp_sock, "STOPPING=1", Duration::from_secs(10))?;
    Ok(())
}
