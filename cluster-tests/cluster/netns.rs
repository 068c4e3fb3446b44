//! Cluster mode on the namespace fleet (SPEC §12): etcd on vm-security,
//! replica cp-a on vm-devops, replica cp-b on vm-monitor, agents on
//! vm-prod and vm-staging given both. vm-devops's cable is pulled while
//! the agents write: they move to cp-b, and every line they wrote is
//! stored (by one replica or the other; each replica stores a line at
//! most once). With records in PostgreSQL (on vm-security too), each line
//! is stored once in all, and both replicas answer with all of them.
//! Needs root, as the namespace fleet does.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use picket_tests::etcd::EtcdCluster;
use picket_tests::netns::Net;
use picket_tests::postgres::Postgres;
use picket_tests::*;
use serde_json::Value;

const ETCD: &str = "10.0.1.40";
const CP_A: &str = "10.0.1.50";
const CP_B: &str = "10.0.1.30";
const AGENTS: [&str; 2] = ["vm-prod", "vm-staging"];

#[test]
fn a_replica_cut_off_loses_its_agents_to_the_other_and_no_line() -> Result<()> {
    cut_off(false)
}

#[test]
fn with_records_in_postgres_a_cut_stores_each_line_once() -> Result<()> {
    cut_off(true)
}

fn cut_off(postgres: bool) -> Result<()> {
    let net = Net::up()?;
    let w = World::new()?;
    let _etcd = EtcdCluster::start_in_namespace(&w, &net.ns("vm-security"), ETCD)?;
    let pg = postgres
        .then(|| Postgres::start_in_namespace(&net.ns("vm-security"), ETCD, &["fsync=off"]))
        .transpose()?;
    let etcd_url = format!("http://{ETCD}:2379");
    let make = |cmd: &str, host: &str, dir: &str, node: &str, ip: &str| {
        let data = w.path(dir).display().to_string();
        let advertise = format!("{ip}:7443");
        net.run_in(
            &w,
            host,
            "picket-control",
            &[
                cmd,
                "--data-dir",
                &data,
                "--san",
                ip,
                "--node",
                node,
                "--advertise",
                &advertise,
                "--cluster-etcd",
                &etcd_url,
            ],
        )
    };
    let out = make("init", "vm-devops", "cpa", "cp-a", CP_A)?;
    let fp = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|s| s.starts_with("sha256:"))
        .context("no fingerprint from init")?
        .to_string();
    make("join", "vm-monitor", "cpb", "cp-b", CP_B)?;
    if let Some(pg) = &pg {
        let records = format!(
            "[cluster]\npostgres = {:?}\npassword_file = {:?}\n",
            pg.url(),
            pg.password_file.display().to_string()
        );
        for dir in ["cpa", "cpb"] {
            let cfg = w.path(&format!("{dir}/control.toml"));
            let text = std::fs::read_to_string(&cfg)?;
            std::fs::write(&cfg, merge_config(&text, &records))?;
        }
    }
    let start = |host: &str, dir: &str, ip: &str| {
        Control::start_with(
            w.path(dir),
            &w.path(&format!("{dir}/control.toml")),
            w.cmd_in(&net.ns(host), "picket-control"),
            &format!("{ip}:7443"),
            &format!("{ip}:9464"),
        )
    };
    let cp_a = start("vm-devops", "cpa", CP_A)?;
    // cp-a's admin bundle for either replica (one CA, shared users).
    let flags = |ip: &str| {
        let mut f = cp_a.admin_flags();
        f[1] = format!("{ip}:7443");
        f
    };
    let ctl_on = |host: &str, ip: &str, args: &[&str]| {
        ctl_json_with(w.cmd_in(&net.ns(host), "picketctl"), &flags(ip), args)
    };

    // Agents given both replicas, while only cp-a serves: both stream
    // with cp-a.
    let servers = format!("{CP_A}:7443,{CP_B}:7443");
    let mut agents = Vec::new();
    for host in AGENTS {
        let tok = ctl_on("vm-devops", CP_A, &["token", "create"])?;
        let tok = tok
            .first()
            .and_then(|t| t["token"].as_str())
            .context("no token")?
            .to_string();
        agents.push(net.enroll_and_run(&w, host, &servers, &tok, &fp)?);
    }
    let online = |host: &str, ip: &str| -> Option<usize> {
        let a = ctl_on(host, ip, &["agents", "list"]).ok()?;
        Some(a.iter().filter(|a| a["status"] == "online").count())
    };
    wait_for(
        "both agents online on cp-a",
        Duration::from_secs(60),
        || (online("vm-devops", CP_A)? == 2).then_some(()),
    )?;
    let cp_b = start("vm-monitor", "cpb", CP_B)?;
    wait_for(
        "cp-b sees both agents online (presence)",
        Duration::from_secs(30),
        || (online("vm-monitor", CP_B)? == 2).then_some(()),
    )?;

    // Lines before the cut, then vm-devops's cable is pulled while the
    // agents go on writing.
    let mut logs: Vec<std::fs::File> = AGENTS
        .iter()
        .map(|h| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(w.path(&format!("{h}.log")))
        })
        .collect::<std::io::Result<_>>()?;
    let write = |logs: &mut Vec<std::fs::File>, from: usize, to: usize| -> Result<()> {
        for f in logs.iter_mut() {
            for n in from..to {
                writeln!(f, "line {n}")?;
            }
            f.flush()?;
        }
        Ok(())
    };
    write(&mut logs, 0, 500)?;
    std::thread::sleep(Duration::from_millis(500));
    net.sh(&["cut", "vm-devops"])?;
    let cut = Instant::now();
    write(&mut logs, 500, 1500)?;
    // Both agents stream with cp-b: the lines written after the cut
    // reach it.
    wait_for(
        "the agents' lines after the cut on cp-b",
        Duration::from_secs(120),
        || {
            AGENTS
                .iter()
                .all(|h| {
                    ctl_on("vm-monitor", CP_B, &["logs", "--host", h])
                        .is_ok_and(|l| l.iter().any(|r| r["line"] == "line 1499"))
                })
                .then_some(())
        },
    )
    .with_context(|| {
        format!(
            "agents: {:?}",
            agents.iter().map(Proc::stderr).collect::<Vec<_>>()
        )
    })?;
    eprintln!(
        "agents on cp-b {:?} after cp-a's cable was pulled",
        cut.elapsed()
    );
    net.sh(&["restore", "vm-devops"])?;

    // Every line stored, by one replica or the other, never twice by
    // one.
    let stored = |host: &str, ip: &str, agent: &str| -> Result<HashMap<String, usize>> {
        let mut counts = HashMap::new();
        for l in ctl_on(host, ip, &["logs", "--host", agent])? {
            if let Some(line) = l["line"].as_str() {
                *counts.entry(line.to_string()).or_default() += 1;
            }
        }
        Ok(counts)
    };
    for agent in AGENTS {
        let (a, b) = wait_for(
            &format!("cp-a answering again, every {agent} line stored"),
            Duration::from_secs(60),
            || {
                let a = stored("vm-devops", CP_A, agent).ok()?;
                let b = stored("vm-monitor", CP_B, agent).ok()?;
                (0..1500)
                    .all(|n| {
                        let l = format!("line {n}");
                        a.contains_key(&l) || b.contains_key(&l)
                    })
                    .then_some((a, b))
            },
        )?;
        assert!(
            a.values().chain(b.values()).all(|&n| n == 1),
            "{agent}: a line stored twice by one replica"
        );
        if pg.is_some() {
            // One store: both replicas answer with every line, once.
            assert_eq!(a.len(), 1500, "{agent} through cp-a");
            assert!(a == b, "{agent}: the replicas answer alike");
            continue;
        }
        let both = a.keys().filter(|l| b.contains_key(*l)).count();
        eprintln!(
            "{agent}: {} lines on cp-a, {} on cp-b, {both} on both (sent again after an ack lost in the cut)",
            a.len(),
            b.len()
        );
    }
    let still: Vec<Value> = ctl_on("vm-monitor", CP_B, &["agents", "list"])?;
    assert!(still.iter().all(|a| a["status"] == "online"), "{still:?}");
    drop(agents);
    drop(cp_b);
    drop(cp_a);
    Ok(())
}
