//! The reference fleet on one machine: five hosts in their own network
//! namespaces (`tests/fleet/fleet.sh`), with the seeds' names and
//! addresses, the control plane on vm-devops. A host whose cable is
//! pulled shows offline, and once plugged back in delivers everything it
//! buffered meanwhile, nothing lost and nothing twice. Needs root (CI runs
//! as root); it fails, never skips, without it.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use picket_tests::netns::{CONTROL, HOSTS, Net};
use picket_tests::*;
use serde_json::Value;

#[test]
fn five_hosts_enroll_and_a_cut_host_delivers_all_it_buffered() -> Result<()> {
    let net = Net::up()?;
    let w = World::new()?;
    let cp_dir = w.path("cp").display().to_string();
    let out = net.run_in(
        &w,
        "vm-devops",
        "picket-control",
        &["init", "--data-dir", &cp_dir, "--san", CONTROL],
    )?;
    let fp = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|s| s.starts_with("sha256:"))
        .context("no fingerprint from init")?
        .to_string();
    let grpc = format!("{CONTROL}:7443");
    let cp = Control::start_with(
        w.path("cp"),
        &w.path("cp/control.toml"),
        w.cmd_in(&net.ns("vm-devops"), "picket-control"),
        &grpc,
        &format!("{CONTROL}:9464"),
    )?;
    let flags = cp.admin_flags();
    let ctl =
        |args: &[&str]| ctl_json_with(w.cmd_in(&net.ns("vm-devops"), "picketctl"), &flags, args);

    let mut agents = Vec::new();
    for (host, _, role) in HOSTS {
        let tok = ctl(&["token", "create", "--label", &format!("role={role}")])?;
        let tok = tok
            .first()
            .and_then(|t| t["token"].as_str())
            .context("no token")?
            .to_string();
        agents.push(net.enroll_and_run(&w, host, &grpc, &tok, &fp)?);
    }

    // All five enroll with their roles and their own addresses.
    let listed = wait_for("five agents online", Duration::from_secs(60), || {
        let a = ctl(&["agents", "list"]).ok()?;
        (a.len() == 5 && a.iter().all(|a| a["status"] == "online")).then_some(a)
    })?;
    let by_name: HashMap<&str, &Value> = listed
        .iter()
        .filter_map(|a| Some((a["name"].as_str()?, a)))
        .collect();
    for (host, addr, role) in HOSTS {
        let a = by_name
            .get(host)
            .with_context(|| format!("{host} listed"))?;
        assert_eq!(a["labels"]["role"], role, "{host}");
        let addrs = a["addresses"].as_array().context("addresses")?;
        assert!(addrs.iter().any(|x| x == addr), "{host}: {addrs:?}");
    }

    // vm-prod's cable is pulled while it writes.
    let log = w.path("vm-prod.log");
    let mut f = std::fs::OpenOptions::new().append(true).open(&log)?;
    for n in 0..1000 {
        writeln!(f, "line {n}")?;
    }
    f.flush()?;
    net.sh(&["cut", "vm-prod"])?;
    let cut_at = Instant::now();
    for n in 1000..3000 {
        writeln!(f, "line {n}")?;
    }
    f.flush()?;
    wait_for("vm-prod offline", Duration::from_secs(30), || {
        let a = ctl(&["agents", "show", "vm-prod"]).ok()?;
        (a.first()?["status"] == "offline").then_some(())
    })?;
    let offline_after = cut_at.elapsed();
    assert!(
        ctl(&["agents", "list"])?
            .iter()
            .filter(|a| a["status"] == "online")
            .count()
            == 4,
        "the other four stay online"
    );
    net.sh(&["restore", "vm-prod"])?;
    let counts = wait_for(
        "every vm-prod line stored",
        Duration::from_secs(120),
        || {
            let lines = ctl(&["logs", "--host", "vm-prod"]).ok()?;
            let mut counts: HashMap<String, usize> = HashMap::new();
            for l in &lines {
                *counts.entry(l["line"].as_str()?.to_string()).or_default() += 1;
            }
            (counts.len() == 3000).then_some(counts)
        },
    )?;
    for n in 0..3000 {
        assert_eq!(counts.get(&format!("line {n}")), Some(&1), "line {n}");
    }
    wait_for("vm-prod back online", Duration::from_secs(30), || {
        (ctl(&["agents", "show", "vm-prod"]).ok()?.first()?["status"] == "online").then_some(())
    })?;
    eprintln!("vm-prod showed offline {offline_after:?} after its link was cut");
    drop(agents);
    drop(cp);
    Ok(())
}
