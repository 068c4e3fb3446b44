//! The operator's bad day (issue #13): backup and restore of a running
//! control plane, server certificate renewal under connected agents, a
//! revoked user, and a forgotten agent that enrolls again.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use picket_tests::*;

/// The numbers of the `line N` log lines a control plane holds, and how
/// many times each.
fn numbered_lines(w: &World, flags: &[String]) -> Result<HashMap<usize, usize>> {
    let out = ctl(w, flags, &["logs", "-o", "json"])?;
    if !out.status.success() {
        bail!("logs: {}", stderr(&out));
    }
    let mut counts = HashMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(l)?;
        let n = v["line"]
            .as_str()
            .and_then(|l| l.strip_prefix("line "))
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("unexpected line {l}"))?;
        *counts.entry(n).or_default() += 1;
    }
    Ok(counts)
}

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

/// How many lines the store holds, if it answers.
fn numbered_or_any(w: &World, flags: &[String]) -> Option<usize> {
    let out = ctl(w, flags, &["logs", "-o", "json"]).ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).lines().count())
}

/// Appends `line N` for N in `from..to` to `path`, a few at a time.
fn write_lines(path: &std::path::Path, from: usize, to: usize) -> Result<()> {
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
fn wait_all(w: &World, flags: &[String], n: usize) -> Result<()> {
    let counts = wait_for("every line stored", Duration::from_secs(90), || {
        let c = numbered_lines(w, flags).ok()?;
        (c.len() >= n - 1).then_some(c)
    })?;
    for i in 1..n {
        assert_eq!(counts.get(&i), Some(&1), "line {i}");
    }
    Ok(())
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

/// The leaf certificate the gRPC port at `addr` presents, checked against
/// the pinned CA `fp`.
fn served_leaf(addr: &str, fp: &str) -> Result<Vec<u8>> {
    let pin: [u8; 32] = hex_decode(fp.trim_start_matches("sha256:"))?;
    let (cfg, _) = picket_tls::client::pinned_config(pin);
    let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name)?;
    let mut tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    Ok(conn
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no certificate")?
        .as_ref()
        .to_vec())
}

fn hex_decode(s: &str) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        bail!("bad fingerprint {s}");
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)?;
    }
    Ok(out)
}

fn file_leaf(cp: &Control) -> Result<Vec<u8>> {
    let pem = std::fs::read(cp.data_dir.join("server.crt"))?;
    let first = rustls_pemfile_first(&pem)?;
    Ok(first)
}

fn rustls_pemfile_first(pem: &[u8]) -> Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    let c = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .next()
        .context("no certificate in server.crt")??;
    Ok(c.as_ref().to_vec())
}

#[test]
fn the_server_certificate_is_renewed_under_connected_agents() -> Result<()> {
    let w = World::new()?;
    let fp = w.init("cp", "")?;
    let cp = Control::start(&w, "cp")?;
    let admin = cp.admin_flags();
    let log = w.path("app.log");
    std::fs::write(&log, "")?;
    let mut agent = enroll_with_sources(&w, &cp, &fp, "vm-staging", &[], &[("raw", &log)])?;
    write_lines(&log, 1, 1000)?;
    wait_all(&w, &admin, 1000)?;
    let before = served_leaf(&cp.grpc, &fp)?;
    assert_eq!(before, file_leaf(&cp)?);
    let expiry = || -> Result<u64> {
        let (_, body) = http_get(&cp.http, "/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix("picket_control_server_cert_expiry_timestamp_seconds "))
            .context("no certificate expiry on /metrics")?
            .trim()
            .parse()
            .context("expiry")
    };
    let expiry_before = expiry()?;

    let cfg = cp.data_dir.join("control.toml").display().to_string();
    let out = w.run(
        "picket-control",
        &[
            "rotate-server-cert",
            "--config",
            &cfg,
            "--san",
            "picket.example",
        ],
    )?;
    assert!(out.status.success(), "rotate: {}", stderr(&out));
    let bad = w.run(
        "picket-control",
        &["rotate-server-cert", "--config", &cfg, "--san", "bad name"],
    )?;
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    let renewed = file_leaf(&cp)?;
    assert_ne!(renewed, before);
    // Served from the next handshake on, once the control plane is told.
    assert_eq!(served_leaf(&cp.grpc, &fp)?, before);
    cp.proc.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for(
        "the renewed certificate served",
        Duration::from_secs(20),
        || (served_leaf(&cp.grpc, &fp).ok()? == renewed).then_some(()),
    )?;
    assert!(
        expiry()? >= expiry_before,
        "the renewed certificate's expiry is exported"
    );

    // The agent never noticed: same process, same stream, nothing lost.
    write_lines(&log, 1000, 2000)?;
    wait_all(&w, &admin, 2000)?;
    assert!(agent.child_alive(), "the agent was not restarted");
    assert_eq!(
        agent.stderr().matches("connected").count(),
        1,
        "one stream all along: {}",
        agent.stderr()
    );
    // A new agent enrolls against the renewed certificate (the CA is pinned).
    let _late = enroll_with_sources(&w, &cp, &fp, "vm-late", &[], &[])?;
    wait_for("the late agent online", Duration::from_secs(30), || {
        (status_of(&w, &admin, "vm-late")? == "online").then_some(())
    })?;
    // And the first one reconnects fine after a cut.
    agent.kill9();
    let mut agent = run_agent(&w, "vm-staging")?;
    write_lines(&log, 2000, 2500)?;
    wait_all(&w, &admin, 2500)?;
    agent.kill9();
    Ok(())
}

#[test]
fn a_revoked_user_is_cut_off_and_a_forgotten_agent_enrolls_again() -> Result<()> {
    let w = World::new()?;
    let fp = w.init("cp", "")?;
    let cp = Control::start(&w, "cp")?;
    let admin = cp.admin_flags();

    // A line in the store, for alice's follow to print.
    let log = w.path("app.log");
    std::fs::write(&log, "hello from vm-log\n")?;
    let _logger = enroll_with_sources(&w, &cp, &fp, "vm-log", &[], &[("raw", &log)])?;
    wait_for("the line stored", Duration::from_secs(30), || {
        (numbered_or_any(&w, &admin)? > 0).then_some(())
    })?;

    // alice follows the logs; revoking her ends the follow and refuses her.
    let out = ctl(
        &w,
        &admin,
        &[
            "user", "add", "alice", "--role", "operator", "--out", "alice",
        ],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let alice = {
        let mut f = cp.flags("x", "y");
        f[5] = w.path("alice/alice.crt").display().to_string();
        f[7] = w.path("alice/alice.key").display().to_string();
        f
    };
    assert!(ctl(&w, &alice, &["status"])?.status.success());
    let mut follow = {
        let mut c = w.cmd("picketctl");
        c.args(&alice).args(["logs", "-f"]);
        Proc::spawn(c)?
    };
    // Connected once the backlog's line is printed.
    wait_for(
        "the follow to print the backlog",
        Duration::from_secs(20),
        || follow.stdout().contains("hello from vm-log").then_some(()),
    )
    .with_context(|| follow.stderr())?;
    assert!(follow.child_alive(), "the follow runs: {}", follow.stderr());
    let out = ctl_json(&w, &admin, &["user", "revoke", "alice"])?;
    assert_eq!(out[0]["name"], "alice");
    assert_eq!(out[0]["streams_cut"], 1);
    let status = follow.wait_exit(Duration::from_secs(10))?;
    assert!(!status.success());
    wait_for("the follow to say why", Duration::from_secs(5), || {
        follow.stderr().contains("revoked").then_some(())
    })
    .with_context(|| follow.stderr())?;
    let refused = ctl(&w, &alice, &["status"])?;
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("revoked"), "{}", stderr(&refused));
    let unknown = ctl(&w, &admin, &["user", "revoke", "mallory"])?;
    assert!(!unknown.status.success() && stderr(&unknown).contains("no user named mallory"));
    let again = ctl(
        &w,
        &admin,
        &[
            "user", "add", "alice", "--role", "viewer", "--out", "alice2",
        ],
    )?;
    assert!(
        !again.status.success() && stderr(&again).contains("revoked"),
        "{}",
        stderr(&again)
    );

    // An online agent is not forgotten; a revoked one is, and its name
    // enrolls again (a rebuilt VM) while its old certificate stays refused.
    let tok = token(&w, &cp, &[])?;
    let out = enroll(&w, &cp, &fp, &tok, "vm-old", &["role=prod"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let mut old = run_agent(&w, "vm-old")?;
    wait_for("vm-old online", Duration::from_secs(30), || {
        (status_of(&w, &admin, "vm-old")? == "online").then_some(())
    })?;
    let refused = ctl(&w, &admin, &["agents", "forget", "vm-old"])?;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("not revoked"),
        "{}",
        stderr(&refused)
    );
    assert!(
        ctl(&w, &admin, &["agents", "revoke", "vm-old"])?
            .status
            .success()
    );
    old.wait_exit(Duration::from_secs(20))?;
    let out = ctl(&w, &admin, &["agents", "forget", "vm-old"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!agents(&w, &admin)?.contains_key("vm-old"));
    let audit = String::from_utf8_lossy(&ctl(&w, &admin, &["audit"])?.stdout).into_owned();
    assert!(
        audit.contains("agents.forget") && audit.contains("user.revoke"),
        "{audit}"
    );

    // The old host's state folder moves aside; the rebuilt host enrolls.
    std::fs::rename(w.path("agents/vm-old"), w.path("old-state"))?;
    let tok = token(&w, &cp, &[])?;
    let out = enroll(&w, &cp, &fp, &tok, "vm-old", &["role=prod"])?;
    assert!(out.status.success(), "re-enroll: {}", stderr(&out));
    let _new = run_agent(&w, "vm-old")?;
    wait_for("the rebuilt vm-old online", Duration::from_secs(30), || {
        (status_of(&w, &admin, "vm-old")? == "online").then_some(())
    })?;
    // The old certificate predates the new enrollment: refused.
    let old_cfg = w.path("old-state/agent.toml");
    let text = std::fs::read_to_string(&old_cfg)?.replace(
        &w.path("agents/vm-old").display().to_string(),
        &w.path("old-state").display().to_string(),
    );
    std::fs::write(&old_cfg, text)?;
    let mut c = w.cmd("picket-agent");
    c.args(["run", "--config"]).arg(&old_cfg);
    let mut stale = Proc::spawn(c)?;
    let st = stale
        .wait_exit(Duration::from_secs(30))
        .with_context(|| stale.stderr())?;
    assert!(!st.success());
    assert!(
        stale.stderr().contains("predates its enrollment"),
        "{}",
        stale.stderr()
    );
    assert_eq!(status_of(&w, &admin, "vm-old").as_deref(), Some("online"));
    Ok(())
}

#[test]
fn logs_are_plain_text_off_a_terminal_and_json_lines_on_request() -> Result<()> {
    let w = World::new()?;
    w.init("cp", "")?;
    // Text, as journald gets it: no colour codes.
    let cp = Control::start(&w, "cp")?;
    let text = cp.proc.stderr();
    assert!(
        text.contains("control plane listening") && !text.contains('\u{1b}'),
        "{text}"
    );
    drop(cp);
    // JSON for log shippers, one object a line, fields kept apart.
    let mut c = w.cmd("picket-control");
    c.args(["--log-format", "json", "run", "--config"])
        .arg(w.path("cp/control.toml"))
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]);
    let p = Proc::spawn(c)?;
    let line = wait_for("the listening line", Duration::from_secs(20), || {
        p.stderr()
            .lines()
            .find(|l| l.contains("control plane listening"))
            .map(str::to_string)
    })?;
    let v: serde_json::Value = serde_json::from_str(&line).with_context(|| line.clone())?;
    assert_eq!(v["level"], "INFO", "{v}");
    assert_eq!(v["fields"]["message"], "control plane listening", "{v}");
    assert!(
        v["fields"]["grpc"]
            .as_str()
            .is_some_and(|g| g.starts_with("127.0.0.1:")),
        "{v}"
    );
    for l in p.stderr().lines() {
        serde_json::from_str::<serde_json::Value>(l).with_context(|| format!("not JSON: {l}"))?;
    }
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
