//! Zero loss under fire: 200,000 lines appended across four sources while
//! the files are rotated (rename and copytruncate, alternately) every
//! 20,000 lines, and the agent and the control plane are each killed with
//! SIGKILL several times. Afterwards the central store holds every line
//! exactly once.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use picket_tests::*;

const SOURCES: usize = 4;
const TOTAL: usize = 200_000;
const ROTATE_EVERY: usize = 20_000;

fn append_lines(p: &Path, lines: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)?;
    f.write_all(lines.as_bytes())?;
    Ok(())
}

/// logrotate's two ways, with a fresh name for each rotated file.
fn rotate(p: &Path, n: usize, copytruncate: bool) -> Result<()> {
    let rotated = PathBuf::from(format!("{}.{n}", p.display()));
    if copytruncate {
        std::fs::copy(p, &rotated)?;
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(p)?;
    } else {
        std::fs::rename(p, &rotated)?;
        std::fs::File::create(p)?;
    }
    Ok(())
}

#[test]
fn every_line_exactly_once_through_rotation_and_kill_9() -> Result<()> {
    let w = World::new()?;
    let fp = w.init("cp", "heartbeat_interval = \"1s\"")?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let mut cp = Control::start_on(&w, "cp", &listen)?;
    let admin = cp.admin_flags();
    let dir = w.path("logs");
    std::fs::create_dir_all(&dir)?;
    let paths: Vec<PathBuf> = (0..SOURCES)
        .map(|s| dir.join(format!("s{s}.log")))
        .collect();
    for p in &paths {
        std::fs::File::create(p)?;
    }
    let tok = token(&w, &cp, &[])?;
    let out = enroll(&w, &cp, &fp, &tok, "chaos", &[])?;
    anyhow::ensure!(out.status.success(), "{}", stderr(&out));
    let cfg = w.path("agents/chaos/agent.toml");
    let mut text = std::fs::read_to_string(&cfg)?;
    for p in &paths {
        text.push_str(&format!(
            "\n[[source]]\nkind = \"raw\"\npath = \"{}\"\nfrom_start = true\n",
            p.display()
        ));
    }
    std::fs::write(&cfg, text)?;
    let mut agent = run_agent(&w, "chaos")?;

    // The writer: batches of 500 lines round-robin over the sources, a
    // rotation every 20,000 lines, paced to last about 15 s.
    let written = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (paths, written, done) = (paths.clone(), written.clone(), done.clone());
        std::thread::spawn(move || -> Result<()> {
            let mut i = 0;
            let mut rotations = 0;
            while i < TOTAL {
                for (s, p) in paths.iter().enumerate() {
                    let chunk: String = (i..i + 125).map(|n| format!("s{s} line {n}\n")).collect();
                    append_lines(p, &chunk)?;
                }
                i += 125 * SOURCES;
                written.store(i, Ordering::Relaxed);
                if i % ROTATE_EVERY == 0 {
                    rotations += 1;
                    for p in &paths {
                        rotate(p, rotations, rotations % 2 == 0)?;
                    }
                }
                std::thread::sleep(Duration::from_millis(35));
            }
            done.store(true, Ordering::Relaxed);
            Ok(())
        })
    };

    // Kill -9 each side three times while lines flow, alternately.
    for round in 0..6 {
        std::thread::sleep(Duration::from_millis(1800));
        if round % 2 == 0 {
            agent.kill9();
            std::thread::sleep(Duration::from_millis(300));
            agent = run_agent(&w, "chaos")?;
        } else {
            cp.proc.kill9();
            std::thread::sleep(Duration::from_millis(300));
            cp = Control::start_on(&w, "cp", &listen)?;
        }
    }
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    assert!(done.load(Ordering::Relaxed));
    assert_eq!(written.load(Ordering::Relaxed), TOTAL);

    // Wait for the agent to catch up, then count every stored line.
    let counts = wait_for("every line stored", Duration::from_secs(240), || {
        let out = ctl(&w, &admin, &["logs", "-o", "json"]).ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let n = text.lines().count();
        if n < TOTAL {
            return None;
        }
        let mut counts: HashMap<String, usize> = HashMap::with_capacity(TOTAL);
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            *counts.entry(v["line"].as_str()?.to_string()).or_default() += 1;
        }
        Some(counts)
    })
    .with_context(|| {
        format!(
            "agent log tail: {}",
            agent
                .stderr()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(dups.is_empty(), "duplicates: {dups:?}");
    // Rebuild the exact set written: each round, source s got the lines
    // numbered i..i+125.
    let mut missing = Vec::new();
    let mut i = 0;
    while i < TOTAL {
        for s in 0..SOURCES {
            for n in i..i + 125 {
                let line = format!("s{s} line {n}");
                if !counts.contains_key(&line) {
                    missing.push(line);
                }
            }
        }
        i += 125 * SOURCES;
    }
    assert!(
        missing.is_empty(),
        "{} lines lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(counts.len(), TOTAL);
    Ok(())
}

/// SIGTERM while an agent streams: the control plane ends its sessions,
/// stores and acks what they had queued, flushes and exits 0 without
/// waiting out its drain limit; after a restart every line is there once.
#[test]
fn sigterm_drains_sessions_then_exits_and_loses_nothing() -> Result<()> {
    let w = World::new()?;
    let fp = w.init("cp", "heartbeat_interval = \"1s\"")?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let mut cp = Control::start_on(&w, "cp", &listen)?;
    let admin = cp.admin_flags();
    let log = w.path("app.log");
    std::fs::File::create(&log)?;
    let _agent = enroll_with_sources(&w, &cp, &fp, "term", &[], &[("raw", &log)])?;
    const LINES: usize = 20_000;
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || -> Result<()> {
            for chunk in 0..40 {
                let text: String = (chunk * 500..(chunk + 1) * 500)
                    .map(|n| format!("term line {n}\n"))
                    .collect();
                append_lines(&log, &text)?;
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    let started = std::time::Instant::now();
    cp.proc.signal(nix::sys::signal::Signal::SIGTERM);
    let status = cp.proc.wait_exit(Duration::from_secs(20))?;
    let took = started.elapsed();
    let err = cp.proc.stderr();
    assert!(status.success(), "exit {status:?}: {err}");
    assert!(err.contains("control plane stopped"), "{err}");
    assert!(
        !err.contains("tasks still running"),
        "sessions did not drain: {err}"
    );
    // The session ended (its queue stored and acked) before the last flush.
    let ended = err.find("agent disconnected");
    let stopped = err.find("control plane stopped");
    assert!(
        ended.is_some() && ended < stopped,
        "the session must end before the store is closed: {err}"
    );
    assert!(took < Duration::from_secs(9), "shutdown took {took:?}");
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;

    cp = Control::start_on(&w, "cp", &listen)?;
    let lines = wait_for("every line stored", Duration::from_secs(60), || {
        let got = ctl_json(&w, &admin, &["logs"]).ok()?;
        (got.len() >= LINES).then_some(got)
    })?;
    let mut seen = std::collections::HashSet::new();
    for l in &lines {
        let text = l["line"].as_str().unwrap_or_default().to_string();
        assert!(seen.insert(text.clone()), "{text} stored twice");
    }
    assert_eq!(seen.len(), LINES);
    drop(cp);
    Ok(())
}
