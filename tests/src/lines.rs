//! Numbered lines: written to an agent's source file, then counted in
//! the control plane's store, for tests that check that nothing was lost
//! and nothing stored twice.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{World, ctl, stderr, wait_for};

/// The numbers of the `line N …` log lines a control plane holds, and how
/// many times each.
pub fn numbered_lines(w: &World, flags: &[String]) -> Result<HashMap<usize, usize>> {
    let out = ctl(w, flags, &["logs", "-o", "json"])?;
    if !out.status.success() {
        bail!("logs: {}", stderr(&out));
    }
    let mut counts = HashMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(l)?;
        // `line N`, perhaps followed by more text.
        let n = v["line"]
            .as_str()
            .and_then(|l| l.strip_prefix("line "))
            .and_then(|n| n.split(' ').next()?.parse().ok())
            .with_context(|| format!("unexpected line {l}"))?;
        *counts.entry(n).or_default() += 1;
    }
    Ok(counts)
}

/// How many lines the store holds, if it answers.
pub fn logs_count(w: &World, flags: &[String]) -> Option<usize> {
    let out = ctl(w, flags, &["logs", "-o", "json"]).ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).lines().count())
}

/// Appends `line N` for N in `from..to` to `path`, a few at a time.
pub fn write_lines(path: &std::path::Path, from: usize, to: usize) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    for n in from..to {
        writeln!(f, "line {n}")?;
        if n % 50 == 0 {
            f.flush()?;
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(())
}

/// Waits until `flags`' control plane holds every line `1..n` once.
pub fn wait_all(w: &World, flags: &[String], n: usize) -> Result<()> {
    let counts = wait_for("every line stored", Duration::from_secs(90), || {
        let c = numbered_lines(w, flags).ok()?;
        (c.len() >= n - 1).then_some(c)
    })?;
    for i in 1..n {
        assert_eq!(counts.get(&i), Some(&1), "line {i}");
    }
    Ok(())
}

/// A `picketctl logs -f` follower (with `admin`'s flags and `extra`) whose reader starts `late`, its lines as they
/// come.
pub fn follow_logs(
    w: &World,
    admin: &[String],
    extra: &[&str],
    late: Duration,
) -> Result<(std::process::Child, std::sync::mpsc::Receiver<String>)> {
    let mut c = w.cmd("picketctl");
    c.args(admin)
        .args(["logs", "-f"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        std::thread::sleep(late);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok((child, rx))
}
