//! Replicas for a test: `init` of the first, `join` of the others, each
//! against `endpoints` and started on a free loopback port; and the admin
//! bundle `init` wrote, aimed at any of them.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use picket_tests::postgres::Postgres;
use picket_tests::{Control, World, agents, ctl_json, free_port, merge_config, stderr, wait_for};

/// `n` replicas `cp-0`… in folders `cp0`…, `extra` merged into each one's
/// control.toml and `alerts` (if any) its alerts.toml; and the CA's
/// fingerprint.
pub fn start(
    w: &World,
    endpoints: &[String],
    n: usize,
    extra: &str,
    alerts: Option<&str>,
) -> Result<(Vec<Option<Control>>, String)> {
    let mut cps = Vec::new();
    let mut fp = String::new();
    for i in 0..n {
        let listen = format!("127.0.0.1:{}", free_port()?);
        let (dir, node) = (format!("cp{i}"), format!("cp-{i}"));
        let mut args = vec![
            if i == 0 { "init" } else { "join" },
            "--data-dir",
            &dir,
            "--node",
            &node,
            "--advertise",
            &listen,
        ];
        for e in endpoints {
            args.extend(["--cluster-etcd", e.as_str()]);
        }
        let out = w.run("picket-control", &args)?;
        ensure!(out.status.success(), "{}", stderr(&out));
        if let Some(f) = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .find(|s| s.starts_with("sha256:"))
        {
            fp = f.to_string();
        }
        let cfg = w.path(&format!("{dir}/control.toml"));
        let mut extra = extra.to_string();
        if let Some(rules) = alerts {
            std::fs::write(w.path(&format!("{dir}/alerts.toml")), rules)?;
            // Top level: before any table `extra` opens.
            extra = format!("alerts = \"alerts.toml\"\n{extra}");
        }
        let text = std::fs::read_to_string(&cfg)?;
        std::fs::write(&cfg, merge_config(&text, &extra))?;
        cps.push(Some(Control::start_on(w, &dir, &listen)?));
    }
    Ok((cps, fp))
}

/// picketctl flags: init's admin bundle (in `cp0`), replica `i`.
pub fn admin(w: &World, cps: &[Option<Control>], i: usize) -> Result<Vec<String>> {
    let c = cps[i].as_ref().context("a live replica")?;
    let d = |f: &str| w.path(&format!("cp0/{f}")).display().to_string();
    Ok(vec![
        "--server".into(),
        c.grpc.clone(),
        "--ca".into(),
        d("ca.crt"),
        "--cert".into(),
        d("admin.crt"),
        "--key".into(),
        d("admin.key"),
    ])
}

/// How many agents a replica lists online.
pub fn online(w: &World, flags: &[String]) -> Option<usize> {
    let a = agents(w, flags).ok()?;
    Some(a.values().filter(|a| a["status"] == "online").count())
}

/// A PostgreSQL server for the replicas' records (SPEC §12), and the
/// `[cluster]` lines naming it (after `top`, the top-level lines).
pub fn records_in_postgres(top: &str) -> Result<(Postgres, String)> {
    let pg = Postgres::start(&["fsync=off"])?;
    let extra = format!(
        "{top}\n[cluster]\npostgres = {:?}\npassword_file = {:?}\n",
        pg.url(),
        pg.password_file.display().to_string()
    );
    Ok((pg, extra))
}

/// The live replica that leads (as `status` through any live one says),
/// within `limit`.
pub fn leader_of(w: &World, cps: &[Option<Control>], limit: Duration) -> Result<usize> {
    wait_for("a live leader", limit, || {
        (0..cps.len()).find_map(|i| {
            let s = ctl_json(w, &admin(w, cps, i).ok()?, &["status"]).ok()?;
            let n: usize = s.first()?["leader"]
                .as_str()?
                .strip_prefix("cp-")?
                .parse()
                .ok()?;
            cps.get(n)?.is_some().then_some(n)
        })
    })
}
