//! Foundation, end to end: init, run, tokens, enrollment, sessions,
//! revocation, roles, renewal, and every bad input of issue #2 (dev mode:
//! `e2e/dev.rs`).

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use picket_tests::*;

const ONLINE_WAIT: Duration = Duration::from_secs(30);

#[test]
fn fleet_enrolls_goes_offline_and_is_revoked() -> Result<()> {
    let w = World::new()?;
    let fp = w.init("cp", "")?;
    let cp = Control::start(&w, "cp")?;
    let admin = cp.admin_flags();
    let tok = token(&w, &cp, &["--uses", "3", "--label", "fleet=test"])?;
    assert!(tok.starts_with("pkt_") && !tok.contains(char::is_whitespace));

    let hosts = [
        ("vm-prod", "role=prod"),
        ("vm-staging", "role=staging"),
        ("vm-monitor", "role=monitor"),
    ];
    let mut procs = Vec::new();
    for (name, label) in hosts {
        let out = enroll(&w, &cp, &fp, &tok, name, &[label])?;
        assert!(out.status.success(), "enroll {name}: {}", stderr(&out));
        let key = w.path(&format!("agents/{name}/agent.key"));
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key)?.permissions());
        assert_eq!(mode & 0o777, 0o600, "agent key is owner-only");
        procs.push(run_agent(&w, name)?);
    }
    // A fourth use of a three-use token is refused.
    let out = enroll(&w, &cp, &fp, &tok, "vm-extra", &[])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("enrollment refused: the token is not valid"),
        "{}",
        stderr(&out)
    );

    let all = wait_for("three online agents", ONLINE_WAIT, || {
        let a = agents(&w, &admin).ok()?;
        (a.len() == 3 && a.values().all(|x| x["status"] == "online")).then_some(a)
    })?;
    for (name, label) in hosts {
        let a = &all[name];
        let (k, v) = label.split_once('=').unwrap();
        assert_eq!(a["labels"][k], v, "{a}");
        assert_eq!(a["labels"]["fleet"], "test", "token label pinned: {a}");
        assert!(a["os"].as_str().is_some_and(|s| !s.is_empty()), "{a}");
        assert!(a["kernel"].as_str().is_some_and(|s| !s.is_empty()), "{a}");
        // The release, and the commit it was built from.
        let version = a["version"].as_str().unwrap_or_default();
        assert!(
            version.starts_with(concat!(env!("CARGO_PKG_VERSION"), "+")),
            "{a}"
        );
        assert!(
            a["last_seen"].as_str().is_some_and(|s| s.ends_with('Z')),
            "{a}"
        );
        assert!(a["addresses"].is_array(), "{a}");
    }

    // kill -9 one agent: it shows offline well within 30 s.
    procs[1].kill9();
    wait_for("vm-staging offline", ONLINE_WAIT, || {
        (status_of(&w, &admin, "vm-staging")? == "offline").then_some(())
    })?;

    // Revoke one: its stream is cut, the agent stops, and it cannot return.
    let out = ctl(&w, &admin, &["agents", "revoke", "vm-monitor"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let status = procs[2].wait_exit(Duration::from_secs(15))?;
    assert_eq!(status.code(), Some(1));
    assert!(
        procs[2].stderr().contains("revoked"),
        "{}",
        procs[2].stderr()
    );
    assert_eq!(
        status_of(&w, &admin, "vm-monitor").as_deref(),
        Some("revoked")
    );
    let mut again = run_agent(&w, "vm-monitor")?;
    let status = again.wait_exit(Duration::from_secs(15))?;
    assert_eq!(status.code(), Some(1));
    assert!(
        again.stderr().contains("vm-monitor is revoked"),
        "{}",
        again.stderr()
    );
    assert_eq!(status_of(&w, &admin, "vm-prod").as_deref(), Some("online"));

    // The agent's own certificate cannot call the admin service.
    let agent_flags = cp.flags("../agents/vm-prod/agent.crt", "../agents/vm-prod/agent.key");
    let out = ctl(&w, &agent_flags, &["agents", "list"])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );

    // Every change, and the refusal, is in the audit log.
    let audit = ctl_json(&w, &admin, &["audit"])?;
    let has = |action: &str, outcome: &str| {
        audit.iter().any(|r| {
            r["action"] == action && r["outcome"].as_str().unwrap_or("").starts_with(outcome)
        })
    };
    assert!(has("token.create", "ok"));
    assert_eq!(
        audit
            .iter()
            .filter(|r| r["action"] == "agent.enroll" && r["outcome"] == "ok")
            .count(),
        3
    );
    assert!(has("agent.enroll", "refused"));
    assert!(has("agents.revoke", "ok"));
    assert!(has("agents.list", "denied"));

    // `status` agrees.
    let st = &ctl_json(&w, &admin, &["status"])?[0];
    assert_eq!(st["hosts"]["up"], 1);
    assert_eq!(st["hosts"]["down"], 1);
    assert_eq!(st["hosts"]["revoked"], 1);
    Ok(())
}

#[test]
fn tokens_and_fingerprints_are_checked_before_anything_is_sent() -> Result<()> {
    let w = World::new()?;
    let fp = w.init("cp", "")?;
    let cp = Control::start(&w, "cp")?;

    // Wrong fingerprint: aborts before the token is sent, so the same
    // single-use token still works afterwards.
    let tok = token(&w, &cp, &[])?;
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let out = enroll(&w, &cp, &wrong, &tok, "a1", &[])?;
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(
        e.contains("CA fingerprint mismatch") && e.contains(&fp) && e.contains("not sent"),
        "{e}"
    );
    let out = enroll(&w, &cp, &fp, &tok, "a1", &[])?;
    assert!(out.status.success(), "{}", stderr(&out));

    // A used, an expired and an unknown token get one and the same
    // answer, which says nothing of which it was, nor of the name asked
    // for (a1 exists): without a token nothing is learnt. The audit log
    // has the real reason.
    let invalid = "the token is not valid";
    // (The agent's own state folder would refuse before asking.)
    std::fs::remove_dir_all(w.path("agents/a1"))?;
    let out = enroll(&w, &cp, &fp, &tok, "a1", &[])?;
    assert_eq!(out.status.code(), Some(1));
    let used = stderr(&out);
    assert!(
        used.contains(invalid) && !used.contains("already enrolled"),
        "{used}"
    );
    let short = token(&w, &cp, &["--ttl", "1s"])?;
    std::thread::sleep(Duration::from_millis(2100));
    let out = enroll(&w, &cp, &fp, &short, "a1", &[])?;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), used, "expired reads as used");
    let out = enroll(&w, &cp, &fp, "pkt_nope", "a1", &[])?;
    assert_eq!(stderr(&out), used, "unknown reads as used");
    let audit = ctl_json(&w, &cp.admin_flags(), &["audit"])?;
    for why in ["token already used", "token expired", "unknown token"] {
        assert!(
            audit.iter().any(|r| r["action"] == "agent.enroll"
                && r["outcome"].as_str().is_some_and(|o| o.contains(why))),
            "{why} not audited: {audit:?}"
        );
    }

    // Malformed fingerprint, taken name, bad name.
    let out = enroll(&w, &cp, "md5:00", &tok, "a5", &[])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--ca-fingerprint"),
        "{}",
        stderr(&out)
    );
    let t2 = token(&w, &cp, &[])?;
    let out = enroll(&w, &cp, &fp, &t2, "a1", &[])?;
    assert!(
        stderr(&out).contains("already enrolled"),
        "{}",
        stderr(&out)
    );
    let out = enroll(&w, &cp, &fp, &t2, "../etc", &[])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--name"), "{}", stderr(&out));
    // Still unused after all those refusals.
    let out = enroll(&w, &cp, &fp, &t2, "a6", &[])?;
    assert!(out.status.success(), "{}", stderr(&out));
    Ok(())
}

#[test]
fn roles_and_certificates_are_enforced() -> Result<()> {
    let w = World::new()?;
    w.init("cp", "user_cert_ttl = \"4s\"")?;
    w.init("other", "")?;
    let cp = Control::start(&w, "cp")?;
    let admin = cp.admin_flags();

    // A viewer can read but not revoke; the refusal is audited.
    let out = ctl(
        &w,
        &admin,
        &["user", "add", "bob", "--role", "viewer", "--out", "bob"],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(w.path("bob/bob.key"))?.permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);
    let bob = cp.flags("../bob/bob.crt", "../bob/bob.key");
    let me = ctl_json(&w, &bob, &["whoami"])?;
    assert_eq!(me[0]["role"], "viewer");
    assert!(ctl(&w, &bob, &["agents", "list"])?.status.success());
    let out = ctl(&w, &bob, &["agents", "revoke", "anything"])?;
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(
        e.contains("permission denied") && e.contains("needs admin"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    let out = ctl(&w, &bob, &["token", "create"])?;
    assert!(stderr(&out).contains("permission denied"));
    let audit = ctl_json(&w, &admin, &["audit"])?;
    assert!(audit.iter().any(|r| r["actor"] == "user:bob"
        && r["action"] == "agents.revoke"
        && r["outcome"] == "denied"));

    // Wrong CA on the client side.
    let mut wrong_ca = admin.clone();
    wrong_ca[3] = w.path("other/ca.crt").display().to_string();
    let out = ctl(&w, &wrong_ca, &["agents", "list"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("was not issued by the CA in")
            && stderr(&out).contains("other/ca.crt"),
        "{}",
        stderr(&out)
    );
    // With a matching client bundle from the other CA, the server's own
    // certificate is what fails to verify.
    let mut other_ca = cp.flags("../other/admin.crt", "../other/admin.key");
    other_ca[3] = w.path("other/ca.crt").display().to_string();
    let out = ctl(&w, &other_ca, &["agents", "list"])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not signed by the CA"),
        "{}",
        stderr(&out)
    );

    // A client certificate from another CA.
    let foreign = cp.flags("../other/admin.crt", "../other/admin.key");
    let out = ctl(&w, &foreign, &["agents", "list"])?;
    assert_eq!(
        out.status.code(),
        Some(2),
        "bad credentials are configuration"
    );
    assert!(
        stderr(&out).contains("was not issued by the CA"),
        "{}",
        stderr(&out)
    );

    // An expired certificate (bob's lives 4 s).
    std::thread::sleep(Duration::from_secs(5));
    let out = ctl(&w, &bob, &["agents", "list"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("has expired"), "{}", stderr(&out));

    // The CLI checks credentials before it dials; the control plane does
    // not rely on that: a raw client with the foreign or the expired
    // certificate is refused by the server itself.
    let rt = tokio::runtime::Runtime::new()?;
    for (cert, key) in [
        ("other/admin.crt", "other/admin.key"),
        ("bob/bob.crt", "bob/bob.key"),
    ] {
        let refused = rt.block_on(async {
            let cfg = picket_tls::client::mtls_config(
                &picket_tls::files::read_certs(&w.path("cp/ca.crt"))?,
                picket_tls::files::read_certs(&w.path(cert))?,
                picket_tls::files::read_key(&w.path(key))?,
            )?;
            let Ok(ch) = picket_tls::client::connect(&cp.grpc, cfg).await else {
                return anyhow::Ok(true);
            };
            let mut c = picket_proto::v1::admin_service_client::AdminServiceClient::new(ch);
            Ok(c.list_agents(picket_proto::v1::ListAgentsRequest {})
                .await
                .is_err())
        })?;
        assert!(refused, "the server must refuse {cert}");
    }

    // No client certificate at all: UNAUTHENTICATED from the admin service.
    let fp = picket_tls::fingerprint::parse(&picket_tls::fingerprint::of_der(
        picket_tls::files::read_certs(&w.path("cp/ca.crt"))?[0].as_ref(),
    ))?;
    let code = rt.block_on(async {
        let (cfg, _) = picket_tls::client::pinned_config(fp);
        let ch = picket_tls::client::connect(&cp.grpc, cfg).await?;
        let mut c = picket_proto::v1::admin_service_client::AdminServiceClient::new(ch);
        let r = c.list_agents(picket_proto::v1::ListAgentsRequest {}).await;
        anyhow::Ok(r.err().map(|s| (s.code(), s.message().to_string())))
    })?;
    let (code, msg) = code.expect("call without a certificate must fail");
    assert_eq!(code, tonic::Code::Unauthenticated);
    assert!(msg.contains("client certificate"), "{msg}");
    Ok(())
}

#[test]
fn health_and_reflection_answer_any_grpc_client() -> Result<()> {
    let w = World::new()?;
    w.init("cp", "")?;
    let cp = Control::start(&w, "cp")?;
    let rt = tokio::runtime::Runtime::new()?;
    let d = |f: &str| w.path(&format!("cp/{f}"));
    let cfg = picket_tls::client::mtls_config(
        &picket_tls::files::read_certs(&d("ca.crt"))?,
        picket_tls::files::read_certs(&d("admin.crt"))?,
        picket_tls::files::read_key(&d("admin.key"))?,
    )?;
    let services = rt.block_on(async {
        let ch = picket_tls::client::connect(&cp.grpc, cfg).await?;
        let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "picket.v1.AdminService".into(),
            })
            .await?
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );

        use tonic_reflection::pb::v1::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut refl = ServerReflectionClient::new(ch);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = refl
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await?
            .into_inner();
        let resp = stream.message().await?.expect("a reflection answer");
        let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
            anyhow::bail!("unexpected reflection answer");
        };
        anyhow::Ok(list.service.into_iter().map(|s| s.name).collect::<Vec<_>>())
    })?;
    for s in [
        "picket.v1.AdminService",
        "picket.v1.AgentService",
        "picket.v1.Enrollment",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.iter().any(|x| x == s),
            "{s} missing from {services:?}"
        );
    }

    // Many clients still speak reflection v1alpha: the standard Python
    // tooling (grpcio-reflection), older grpcurl, Postman. Asked by the
    // real grpcio-reflection client, over mTLS.
    let py = tests_dir().join("tools/reflection_v1alpha.py");
    let out = Command::new("python3")
        .arg(&py)
        .arg(&cp.grpc)
        .arg(d("ca.crt"))
        .arg(d("admin.crt"))
        .arg(d("admin.key"))
        .output()
        .context("running python3 (scripts/test installs grpcio-reflection)")?;
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    for s in [
        "picket.v1.AdminService",
        "picket.v1.AgentService",
        "grpc.health.v1.Health",
        "method ListAgents",
        "method StreamEvents",
    ] {
        assert!(listed.lines().any(|l| l == s), "{s} missing from {listed}");
    }
    // And without a certificate, v1alpha is refused like every service.
    let out = Command::new("python3")
        .arg(&py)
        .arg(&cp.grpc)
        .arg(d("ca.crt"))
        .output()?;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "error UNAUTHENTICATED"
    );
    // HTTP side.
    let health = std::net::TcpStream::connect(&cp.http).is_ok();
    assert!(health);
    Ok(())
}

#[test]
fn agent_certificates_renew_before_expiry() -> Result<()> {
    let w = World::new()?;
    let fp = w.init(
        "cp",
        "agent_cert_ttl = \"12s\"\nheartbeat_interval = \"1s\"",
    )?;
    let cp = Control::start(&w, "cp")?;
    let admin = cp.admin_flags();
    let tok = token(&w, &cp, &[])?;
    assert!(enroll(&w, &cp, &fp, &tok, "short", &[])?.status.success());
    let first = std::fs::read_to_string(w.path("agents/short/agent.crt"))?;
    let expires0 = agents(&w, &admin)?["short"]["cert_expires"].clone();
    let _agent = run_agent(&w, "short")?;
    // Renewal is due at 8 s; allow for start-up.
    wait_for("a renewed certificate", Duration::from_secs(30), || {
        let now = std::fs::read_to_string(w.path("agents/short/agent.crt")).ok()?;
        (now != first).then_some(())
    })?;
    // Past the first certificate's expiry, the agent is still online.
    std::thread::sleep(Duration::from_secs(6));
    wait_for("online after renewal", Duration::from_secs(10), || {
        (status_of(&w, &admin, "short")? == "online").then_some(())
    })?;
    let expires1 = agents(&w, &admin)?["short"]["cert_expires"].clone();
    assert_ne!(expires0, expires1);
    // No renewal is left half done (the next one, due every 8 s, may be
    // under way at any moment: its `.next` files then exist briefly).
    wait_for("no half-done renewal", Duration::from_secs(10), || {
        (!w.path("agents/short/agent.key.next").exists()
            && !w.path("agents/short/agent.crt.next").exists())
        .then_some(())
    })?;
    Ok(())
}

#[test]
fn bad_configuration_and_usage_exit_2_with_one_line() -> Result<()> {
    let w = World::new()?;
    w.init("cp", "")?;

    // init refuses to overwrite.
    let out = w.run("picket-control", &["init", "--data-dir", "cp"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("refusing to overwrite"),
        "{}",
        stderr(&out)
    );

    // Corrupt and missing control.toml.
    std::fs::write(w.path("bad.toml"), "data_dir = \"cp\"\nlisten = 7443\n")?;
    let out = w.run("picket-control", &["run", "--config", "bad.toml"])?;
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(e.contains("bad.toml") && e.contains("listen"), "{e}");
    let out = w.run("picket-control", &["run", "--config", "missing.toml"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("missing.toml"));

    // Corrupt agent.toml.
    std::fs::write(
        w.path("agent.toml"),
        "server = \"x:1\"\nname = \"n\"\n[[source]]\nkind = \"nginx\"\npath = \"/x\"\n",
    )?;
    let out = w.run("picket-agent", &["run", "--config", "agent.toml"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("agent.toml") && stderr(&out).contains("nginx"),
        "{}",
        stderr(&out)
    );

    // Corrupt profile, missing named profile, no settings at all.
    std::fs::create_dir_all(w.path("home/.config/picket"))?;
    std::fs::write(w.path("home/.config/picket/broken.toml"), "server = [\n")?;
    let out = w.run("picketctl", &["--profile", "broken", "agents", "list"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("broken.toml"), "{}", stderr(&out));
    let out = w.run("picketctl", &["--profile", "nosuch", "status"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("nosuch.toml"), "{}", stderr(&out));
    let out = w.run("picketctl", &["status"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--server"), "{}", stderr(&out));

    // A key file that is not a key.
    let cp_dir = w.path("cp");
    let out = w.run(
        "picketctl",
        &[
            "--server",
            "127.0.0.1:1",
            "--ca",
            &cp_dir.join("ca.crt").display().to_string(),
            "--cert",
            &cp_dir.join("admin.crt").display().to_string(),
            "--key",
            &cp_dir.join("ca.crt").display().to_string(),
            "status",
        ],
    )?;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("ca.crt") && stderr(&out).contains("private key"),
        "{}",
        stderr(&out)
    );

    // Unknown subcommand.
    let out = w.run("picketctl", &["agents", "frobnicate"])?;
    assert_eq!(out.status.code(), Some(2));

    // Port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let out = w.run(
        "picket-control",
        &["run", "--config", "cp/control.toml", "--listen", &addr],
    )?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("cannot listen on {addr}")),
        "{}",
        stderr(&out)
    );

    // Control plane down: a runtime failure, exit 1, naming the address.
    let out = w.run(
        "picketctl",
        &[
            "--server",
            &addr,
            "--ca",
            &cp_dir.join("ca.crt").display().to_string(),
            "--cert",
            &cp_dir.join("admin.crt").display().to_string(),
            "--key",
            &cp_dir.join("admin.key").display().to_string(),
            "status",
        ],
    )?;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&addr), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"));
    Ok(())
}
