//! Backup and restore of a running control plane (issue #13): a backup
//! taken under load restores a gap-free prefix that serves the agents;
//! bad archives, an occupied folder, a full disk and read-only state
//! folders are refused with clear errors and nothing half-written.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use picket_tests::lines::{numbered_lines, wait_all, write_lines};
use picket_tests::*;

/// `picket-control VERB FLAG A FLAG B`: `backup --config C --out F` or
/// `restore --from F --data-dir D`.
fn control(w: &World, args: [&str; 3], a: &Path, b: &Path) -> Result<std::process::Output> {
    let [verb, fa, fb] = args;
    w.cmd("picket-control")
        .args([verb, fa])
        .arg(a)
        .arg(fb)
        .arg(b)
        .output()
        .with_context(|| format!("running picket-control {verb}"))
}

fn backup(w: &World, cfg: &Path, out: &Path) -> Result<std::process::Output> {
    control(w, ["backup", "--config", "--out"], cfg, out)
}

fn restore(w: &World, from: &Path, dir: &Path) -> Result<std::process::Output> {
    control(w, ["restore", "--from", "--data-dir"], from, dir)
}

#[test]
fn a_backup_taken_under_load_restores_a_gap_free_prefix_that_serves_agents() -> Result<()> {
    let w = World::new()?;
    let fp = w.init("cp", "")?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let mut cp = Control::start_on(&w, "cp", &listen)?;
    let admin = cp.admin_flags();
    let log = w.path("app.log");
    std::fs::write(&log, "")?;
    let agent = enroll_with_sources(&w, &cp, &fp, "vm-prod", &[], &[("raw", &log)])?;
    const TOTAL: usize = 20_000;

    // Lines flow while the backup is taken.
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (log, done) = (log.clone(), done.clone());
        std::thread::spawn(move || {
            let r = write_lines(&log, 1, TOTAL);
            done.store(true, Ordering::Relaxed);
            r
        })
    };
    wait_for("some lines stored", Duration::from_secs(30), || {
        (numbered_lines(&w, &admin).ok()?.len() > 500).then_some(())
    })?;
    let cfg = cp.data_dir.join("control.toml");
    let archive = w.path("backup.tar");
    let out = backup(&w, &cfg, &archive)?;
    assert!(out.status.success(), "backup: {}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("writes held for"), "{said}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&archive)?.permissions());
    assert_eq!(mode & 0o777, 0o600, "the archive holds the CA key");
    assert!(
        !cp.data_dir.join("snapshots").read_dir()?.any(|_| true),
        "the snapshot folder is cleaned up"
    );
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    assert!(done.load(Ordering::Relaxed));
    wait_all(&w, &admin, TOTAL)?;

    // A second backup to the same path is refused without --force.
    let again = backup(&w, &cfg, &archive)?;
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));

    // Bad archives write nothing.
    let bytes = std::fs::read(&archive)?;
    let truncated = w.path("truncated.tar");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2])?;
    let future = w.path("future.tar");
    let mut fb = bytes.clone();
    let at = fb
        .windows(10)
        .position(|x| x == b"\"format\": ")
        .context("format in header")?;
    fb[at + 10] = b'9';
    std::fs::write(&future, fb)?;
    for (bad, why) in [(&truncated, "truncated"), (&future, "format 9")] {
        let dir = w.path("bad-restore");
        let out = restore(&w, bad, &dir)?;
        assert!(!out.status.success());
        assert!(stderr(&out).contains(why), "{why}: {}", stderr(&out));
        assert!(!dir.exists(), "nothing written for a {why} archive");
        let leftovers: Vec<_> = std::fs::read_dir(w.dir.path())?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("restoring"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
    // A folder that holds a store is refused.
    let out = restore(&w, &archive, &cp.data_dir)?;
    assert!(
        !out.status.success() && stderr(&out).contains("not empty"),
        "{}",
        stderr(&out)
    );

    let restored = w.path("restored");
    let out = restore(&w, &archive, &restored)?;
    assert!(out.status.success(), "restore: {}", stderr(&out));

    // The restored store alone: a gap-free prefix, nothing twice.
    let side = Control::start(&w, "restored")?;
    let counts = numbered_lines(&w, &side.admin_flags())?;
    let k = counts.len();
    assert!(
        k > 500,
        "the snapshot holds what was stored before it ({k})"
    );
    for i in 1..=k {
        assert_eq!(counts.get(&i), Some(&1), "line {i} of a prefix of {k}");
    }
    drop(side);

    // The restored control plane takes the original's place and serves
    // the agent, which delivers what it writes next.
    cp.proc.signal(nix::sys::signal::Signal::SIGTERM);
    cp.proc.wait_exit(Duration::from_secs(20))?;
    let cp2 = Control::start_on(&w, "restored", &listen)?;
    let flags = cp2.admin_flags();
    write_lines(&log, TOTAL, TOTAL + 200)?;
    let counts = wait_for(
        "new lines at the restored control plane",
        Duration::from_secs(60),
        || {
            let c = numbered_lines(&w, &flags).ok()?;
            (TOTAL..TOTAL + 200)
                .all(|n| c.contains_key(&n))
                .then_some(c)
        },
    )?;
    assert!(counts.values().all(|&c| c == 1), "nothing twice");
    assert_eq!(status_of(&w, &flags, "vm-prod").as_deref(), Some("online"));
    drop(agent);
    Ok(())
}

fn cp_fingerprint(w: &World, cp: &Control) -> Result<String> {
    let dir = cp.data_dir.display().to_string();
    let out = w.run("picket-control", &["ca-fingerprint", "--data-dir", &dir])?;
    anyhow::ensure!(out.status.success(), "{}", stderr(&out));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `sh -c SCRIPT` in a mount namespace of its own (as root): a full disk
/// or a read-only folder seen by one command only.
fn in_mount_ns(w: &World, script: &str) -> Result<std::process::Output> {
    std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", script])
        .env("HOME", w.path("home"))
        .output()
        .context("running unshare -m (util-linux; needs root, as CI runs)")
}

#[test]
fn a_full_disk_and_a_read_only_state_folder_get_clear_errors() -> Result<()> {
    let w = World::new()?;
    let init_fp = w.init("cp", "")?;
    let cp = Control::start(&w, "cp")?;
    let cfg = cp.data_dir.join("control.toml").display().to_string();
    let mnt = w.path("small");
    std::fs::create_dir_all(&mnt)?;
    let pc = bin("picket-control").display().to_string();
    // A backup onto a disk that fills up: an error, and nothing left that
    // could pass for an archive.
    let out = in_mount_ns(
        &w,
        &format!(
            "mount -t tmpfs -o size=8k tmpfs {m} && {pc} backup --config {cfg} --out {m}/b.tar; rc=$?; ls -A {m}; exit $rc",
            m = mnt.display()
        ),
    )?;
    assert!(!out.status.success(), "a backup onto a full disk failed");
    assert!(stderr(&out).contains("No space left"), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "",
        "nothing left behind"
    );
    assert!(
        !cp.data_dir.join("snapshots").read_dir()?.any(|_| true),
        "the snapshot is cleaned up"
    );

    // An agent whose state folder cannot be written: it says which.
    let fp = cp_fingerprint(&w, &cp)?;
    assert_eq!(fp, init_fp, "ca-fingerprint prints what init did");
    let tok = token(&w, &cp, &[])?;
    let out = enroll(&w, &cp, &fp, &tok, "vm-ro", &[])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let state = w.path("agents/vm-ro").display().to_string();
    let pa = bin("picket-agent").display().to_string();
    let out = in_mount_ns(
        &w,
        &format!(
            "mount --bind {state} {state} && mount -o remount,bind,ro {state} && \
             exec {pa} run --config {state}/agent.toml"
        ),
    )?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("Read-only file system") && err.contains(&state),
        "{err}"
    );
    drop(cp);

    // A control plane whose data folder cannot be written: it says which.
    let data = w.path("cp").display().to_string();
    let out = in_mount_ns(
        &w,
        &format!(
            "mount --bind {data} {data} && mount -o remount,bind,ro {data} && \
             exec {pc} run --config {cfg} --listen 127.0.0.1:0 --http-listen 127.0.0.1:0"
        ),
    )?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("Read-only file system") && err.contains(&data),
        "{err}"
    );
    Ok(())
}
