//! Trust boundaries (issue #20): what a compromised host can and cannot
//! do to the rest of the fleet.

use std::time::Duration;

use anyhow::{Context, Result};
use picket_tests::*;

/// Adds `k = "v"` to the `[labels]` table of an enrolled agent's
/// agent.toml, as someone with root on that host would.
fn report_label(w: &World, name: &str, k: &str, v: &str) -> Result<()> {
    let path = w.path(&format!("agents/{name}/agent.toml"));
    let line = format!("{k} = \"{v}\"");
    let text: String = std::fs::read_to_string(&path)?
        .lines()
        .filter(|l| !l.starts_with(&format!("{k} =")))
        .map(|l| format!("{l}\n"))
        .collect();
    let text = match text.find("[labels]\n") {
        Some(at) => {
            let end = at + "[labels]\n".len();
            format!("{}{line}\n{}", &text[..end], &text[end..])
        }
        None => format!("{text}\n[labels]\n{line}\n"),
    };
    std::fs::write(path, text)?;
    Ok(())
}

#[test]
fn a_host_that_relabels_itself_is_not_selected_until_an_admin_labels_it() -> Result<()> {
    let w = World::new()?;
    let fp = w.init("cp", "heartbeat_interval = \"1s\"")?;
    let cp = Control::start(&w, "cp")?;
    let admin = cp.admin_flags();
    let tok = token(&w, &cp, &[])?;
    let out = enroll(&w, &cp, &fp, &tok, "web", &["role=web"])?;
    anyhow::ensure!(out.status.success(), "{}", stderr(&out));
    // Root on the host: it claims to be a production host.
    report_label(&w, "web", "env", "prod")?;
    report_label(&w, "web", "role", "db")?;
    let agent = run_agent(&w, "web")?;
    let a = wait_for("web online", Duration::from_secs(20), || {
        let a = agents(&w, &admin).ok()?.get("web")?.clone();
        (a["status"] == "online" && a["reported_labels"]["env"] == "prod").then_some(a)
    })
    .with_context(|| {
        format!(
            "{:?}\n{}\n{}",
            agents(&w, &admin).ok(),
            agent.stderr(),
            std::fs::read_to_string(w.path("agents/web/agent.toml")).unwrap_or_default()
        )
    })?;
    assert_eq!(a["labels"]["role"], "web", "{a}");
    assert!(a["labels"].get("env").is_none(), "{a}");
    // No selector reaches it by what it reports.
    for sel in ["env=prod", "role=db"] {
        let out = ctl(&w, &admin, &["run", "--selector", sel, "--", "true"])?;
        assert_eq!(out.status.code(), Some(1), "{sel}: {}", stderr(&out));
        assert!(stderr(&out).contains("no host"), "{sel}: {}", stderr(&out));
    }
    let (_, metrics) = http_get(&cp.http, "/metrics")?;
    let up = metrics
        .lines()
        .find(|l| l.starts_with("picket_agent_up{"))
        .unwrap_or_default();
    assert!(up.contains("role=\"web\"") && !up.contains("env="), "{up}");

    // An admin labels it: from then on it is selected, and it is audited.
    let out = ctl(&w, &admin, &["agents", "label", "web", "env=prod"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ctl(&w, &admin, &["run", "--selector", "env=prod", "--", "true"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ctl(
        &w,
        &admin,
        &["agents", "label", "web", "env-", "tier=front"],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let a = &agents(&w, &admin)?["web"];
    assert!(a["labels"].get("env").is_none(), "{a}");
    assert_eq!(a["labels"]["tier"], "front");
    let audit = ctl(&w, &admin, &["audit"])?;
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit.contains("agents.label") && audit.contains("web env=prod"),
        "{audit}"
    );
    // Only an admin may.
    let out = ctl(
        &w,
        &admin,
        &["user", "add", "ops", "--role", "operator", "--out", "ops"],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let ops = cp.flags("../ops/ops.crt", "../ops/ops.key");
    let out = ctl(&w, &ops, &["agents", "label", "web", "env=prod"])?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("permission") || stderr(&out).contains("PERMISSION"),
        "{}",
        stderr(&out)
    );
    Ok(())
}
