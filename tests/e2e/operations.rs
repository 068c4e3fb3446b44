//! The operator's bad day (issue #13): server certificate renewal under
//! connected agents, a revoked user, a forgotten agent that enrolls again,
//! and logs for journald and log shippers. Backup and restore:
//! `backup.rs`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use picket_tests::lines::{logs_count, wait_all, write_lines};
use picket_tests::*;

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
        (logs_count(&w, &admin)? > 0).then_some(())
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
    assert_eq!(
        out[0]["streams_cut"],
        1,
        "follow: {}\ncontrol plane: {}",
        follow.stderr(),
        cp.proc.stderr()
    );
    let status = follow.wait_exit(Duration::from_secs(10))?;
    assert!(!status.success());
    wait_for("the follow to say why", Duration::from_secs(5), || {
        follow.stderr().contains("revoked").then_some(())
    })
    .with_context(|| follow.stderr())?;
    let refused = ctl(&w, &alice, &["status"])?;
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("revoked"), "{}", stderr(&refused));
    let users = ctl_json(&w, &admin, &["user", "list"])?;
    let listed = |n: &str| users.iter().find(|u| u["name"] == n).cloned();
    let a = listed("alice").context("alice listed")?;
    assert_eq!(a["role"], "operator");
    assert!(a["revoked"].is_string(), "{a}");
    assert!(listed("admin").is_some_and(|u| u["revoked"].is_null()));
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
