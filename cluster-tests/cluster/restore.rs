//! Backup and restore in cluster mode (docs/cluster.md): a replica's
//! backup restored into a fresh etcd brings the cluster back (CA, users,
//! agents, audit), an enrolled agent is let in again, and ids go on above
//! the restored ones; restored into the etcd of the same cluster, nothing
//! is written; into another cluster's etcd, it is refused.

use std::time::Duration;

use anyhow::{Context, Result};
use picket_tests::etcd::EtcdCluster;
use picket_tests::*;

#[test]
fn a_replica_restored_into_a_fresh_etcd_brings_the_cluster_back() -> Result<()> {
    let w = World::new()?;
    let mut old_etcd = EtcdCluster::start(&w, 1)?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let out = w.run(
        "picket-control",
        &[
            "init",
            "--data-dir",
            "cp0",
            "--node",
            "cp-0",
            "--advertise",
            &listen,
            "--cluster-etcd",
            &old_etcd.endpoints()[0],
        ],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let fp = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|s| s.starts_with("sha256:"))
        .context("a fingerprint")?
        .to_string();
    let cp = Control::start_on(&w, "cp0", &listen)?;
    let admin = cp.admin_flags();

    // State worth restoring: a user, an enrolled agent, audit records.
    let out = ctl(
        &w,
        &admin,
        &["user", "add", "ops", "--role", "viewer", "--out", "ops"],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let tok = token(&w, &cp, &[])?;
    let out = enroll(&w, &cp, &fp, &tok, "web-1", &["role=web"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let mut agent = run_agent(&w, "web-1")?;
    wait_for("web-1 online", Duration::from_secs(30), || {
        (status_of(&w, &admin, "web-1")? == "online").then_some(())
    })?;
    let audited = ctl_json(&w, &admin, &["audit"])?.len();
    let out = w.run(
        "picket-control",
        &[
            "backup",
            "--config",
            &w.path("cp0/control.toml").display().to_string(),
            "--out",
            "cp0.tar",
        ],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));

    // The whole cluster is lost: its replica and its etcd.
    agent.kill9();
    drop(cp);
    old_etcd.kill(0);
    let elsewhere = World::new()?;
    let new_etcd = EtcdCluster::start(&elsewhere, 1)?;
    let endpoint = new_etcd.endpoints()[0].clone();

    let restore = |dir: &str, endpoint: &str| {
        w.run(
            "picket-control",
            &[
                "restore",
                "--from",
                "cp0.tar",
                "--data-dir",
                dir,
                "--cluster-etcd",
                endpoint,
            ],
        )
    };
    let out = restore("cpr", &endpoint)?;
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("into the fresh etcd"), "{said}");
    let cfg = std::fs::read_to_string(w.path("cpr/control.toml"))?;
    assert!(cfg.contains(&format!("etcd = [\"{endpoint}\"]")), "{cfg}");

    let listen = format!("127.0.0.1:{}", free_port()?);
    let cp = Control::start_on(&w, "cpr", &listen)?;
    // The old admin bundle works (same CA, the admin user restored), and
    // so does the restored user's.
    let mut admin = admin;
    admin[1] = cp.grpc.clone();
    let mut ops = admin.clone();
    ops[5] = w.path("ops/ops.crt").display().to_string();
    ops[7] = w.path("ops/ops.key").display().to_string();
    let listed = agents(&w, &ops)?;
    assert_eq!(listed["web-1"]["labels"]["role"], "web", "{listed:?}");

    // The agent, pointed at the restored replica, is let in: its record
    // (certificate serial) came back through etcd.
    let cfg = w.path("agents/web-1/agent.toml");
    let text = std::fs::read_to_string(&cfg)?;
    std::fs::write(
        &cfg,
        merge_config(&text, &format!("server = \"{}\"", cp.grpc)),
    )?;
    let agent = run_agent(&w, "web-1")?;
    wait_for(
        "web-1 online on the restored replica",
        Duration::from_secs(30),
        || (status_of(&w, &admin, "web-1")? == "online").then_some(()),
    )
    .with_context(|| agent.stderr())?;

    // Audit ids go on above the restored ones: nothing overwritten.
    let out = ctl(&w, &admin, &["token", "create"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let audit = ctl_json(&w, &admin, &["audit"])?;
    assert!(
        audit.len() > audited,
        "{} audit records after the restore, {audited} before",
        audit.len()
    );
    assert!(
        audit
            .iter()
            .any(|a| a["action"] == "user.add" && a["target"] == "user:ops"),
        "{audit:?}"
    );
    let tokens = audit
        .iter()
        .filter(|a| a["action"] == "token.create" && a["outcome"] == "ok")
        .count();
    assert_eq!(
        tokens, 2,
        "the restored token.create and the new one: {audit:?}"
    );
    // In id order, which is time order only if the new ids are above the
    // restored ones (RFC 3339 times in UTC sort as text).
    let times: Vec<&str> = audit.iter().filter_map(|a| a["time"].as_str()).collect();
    assert!(
        times.windows(2).all(|p| p[0] <= p[1]),
        "audit out of order: {times:?}"
    );

    // Restored again into the same cluster's etcd: nothing written.
    let out = restore("cpr2", &endpoint)?;
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("holds this cluster"), "{said}");

    // Into another cluster's etcd: refused.
    let other = World::new()?;
    let other_etcd = EtcdCluster::start(&other, 1)?;
    let out = other.run(
        "picket-control",
        &[
            "init",
            "--data-dir",
            "x",
            "--node",
            "x-0",
            "--advertise",
            "127.0.0.1:1",
            "--cluster-etcd",
            &other_etcd.endpoints()[0],
        ],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = restore("cpr3", &other_etcd.endpoints()[0])?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("another cluster's CA"),
        "{}",
        stderr(&out)
    );
    Ok(())
}
