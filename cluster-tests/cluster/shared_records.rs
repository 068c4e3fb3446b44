//! Replicas with their records in PostgreSQL (SPEC §12): any replica
//! answers `logs` and `logs -f` for the whole fleet. Two real replicas on
//! one etcd member and one PostgreSQL server, an agent on each; what each
//! agent's file gets is read through both replicas, each line once.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use picket_tests::etcd::EtcdCluster;
use picket_tests::lines::{follow_logs, write_lines};
use picket_tests::*;
use serde_json::Value;

/// A line's host and text, checked to be one JSON object.
fn key(l: &str) -> Result<(String, String)> {
    let v: Value = serde_json::from_str(l).with_context(|| format!("not JSON: {l}"))?;
    Ok((
        v["host"].as_str().context("host")?.to_string(),
        v["line"].as_str().context("line")?.to_string(),
    ))
}

#[test]
fn every_replica_answers_for_the_whole_fleet() -> Result<()> {
    let w = World::new()?;
    let etcd = EtcdCluster::start(&w, 1)?;
    let (pg, extra) = crate::replicas::records_in_postgres("")?;
    let (mut cps, fp) = crate::replicas::start(&w, &etcd.endpoints(), 2, &extra, None)?;
    let admin = |i: usize| crate::replicas::admin(&w, &cps, i).unwrap_or_default();

    // A follower on each replica before anything is written.
    let followers: Vec<_> = (0..2)
        .map(|i| follow_logs(&w, &admin(i), &["-o", "json"], Duration::ZERO))
        .collect::<Result<_>>()?;

    // One agent on each replica, each tailing a file of its own.
    let mut agents = Vec::new();
    for (i, name) in ["app-0", "app-1"].iter().enumerate() {
        let file = w.path(&format!("{name}.log"));
        std::fs::write(&file, "")?;
        let out = ctl(&w, &admin(i), &["token", "create"])?;
        assert!(out.status.success(), "{}", stderr(&out));
        let tok = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let cp = cps[i].as_ref().context("a replica")?;
        let out = enroll(&w, cp, &fp, &tok, name, &[])?;
        assert!(out.status.success(), "{}", stderr(&out));
        add_source(&w.path(&format!("agents/{name}/agent.toml")), "raw", &file)?;
        set_agent_key(&w, name, "metrics_interval", "\"1s\"")?;
        agents.push((run_agent(&w, name)?, file));
    }
    for (_, file) in &agents {
        write_lines(file, 0, 300)?;
    }
    let want: BTreeSet<(String, String)> = ["app-0", "app-1"]
        .iter()
        .flat_map(|h| (0..300).map(move |n| (h.to_string(), format!("line {n}"))))
        .collect();

    // Each follower gets both agents' lines, each once, whichever
    // replica stored them.
    for (i, (_, rx)) in followers.iter().enumerate() {
        let mut got = Vec::new();
        while got.len() < want.len() {
            let l = rx.recv_timeout(Duration::from_secs(60)).with_context(|| {
                format!("the follower on cp-{i} stalled after {} lines", got.len())
            })?;
            got.push(key(&l)?);
        }
        // Nothing more comes (no repeat).
        assert!(
            rx.recv_timeout(Duration::from_secs(2)).is_err(),
            "a line came twice"
        );
        let set: BTreeSet<_> = got.iter().cloned().collect();
        assert_eq!(set.len(), got.len(), "cp-{i}: a line twice");
        assert!(set == want, "cp-{i}: another set of lines");
    }

    // How long a line app-1 reads takes to reach a follower on its own
    // replica (cp-1) and on the other (cp-0, through the database's
    // notification): printed for docs/benchmarks.md, asserted only to come.
    let mut took: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for k in 0..10 {
        let started = std::time::Instant::now();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&agents[1].1)?;
        std::io::Write::write_all(&mut f, format!("probe {k}\n").as_bytes())?;
        for (i, (_, rx)) in followers.iter().enumerate() {
            loop {
                let l = rx
                    .recv_timeout(Duration::from_secs(30))
                    .with_context(|| format!("probe {k} never reached cp-{i}"))?;
                if key(&l)?.1 == format!("probe {k}") {
                    took[i].push(started.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
            }
        }
    }
    for (i, ms) in took.iter_mut().enumerate() {
        ms.sort_by(f64::total_cmp);
        eprintln!(
            "line read on app-1 (cp-1) → follower on cp-{i}: p50 {:.0} ms, max {:.0} ms",
            ms[ms.len() / 2],
            ms[ms.len() - 1]
        );
    }
    for (mut child, _) in followers {
        let _ = child.kill();
        let _ = child.wait();
    }
    let probes: BTreeSet<(String, String)> = (0..10)
        .map(|k| ("app-1".to_string(), format!("probe {k}")))
        .collect();
    let want: BTreeSet<_> = want.union(&probes).cloned().collect();

    // A query through either replica: the whole fleet, in one order.
    let mut answers = Vec::new();
    for i in 0..2 {
        let out = ctl(&w, &admin(i), &["logs", "-o", "json"])?;
        assert!(out.status.success(), "{}", stderr(&out));
        let lines: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(key)
            .collect::<Result<_>>()?;
        assert_eq!(lines.len(), want.len(), "cp-{i}");
        answers.push(lines);
    }
    assert!(answers[0] == answers[1], "the replicas answer alike");
    // Metrics too: each host's samples through the replica it does not
    // stream with.
    for (i, host) in [(1, "app-0"), (0, "app-1")] {
        let points = wait_for(
            "samples through the other replica",
            Duration::from_secs(30),
            || {
                let p = ctl_json(
                    &w,
                    &admin(i),
                    &["metrics", host, "--since", "5m", "--field", "cpu"],
                )
                .ok()?;
                (p.len() >= 2).then_some(p)
            },
        )?;
        assert!(points.iter().all(|p| p["host"] == host), "{points:?}");
    }
    // The rows are blocks, not lines.
    let rows: usize = pg.psql("SELECT count(*) FROM picket_blocks")?.parse()?;
    assert!(
        rows < want.len() / 4,
        "{rows} rows for {} lines",
        want.len()
    );

    // The database away: /readyz and /metrics say so on both replicas,
    // and the agents keep what they read meanwhile; back: ready, and the
    // lines come in, each once.
    let mut pg = pg;
    pg.stop()?;
    let up = |cp: &Control| -> Option<String> {
        let (_, m) = http_get(&cp.http, "/metrics").ok()?;
        m.lines()
            .find_map(|l| l.strip_prefix("picket_control_postgres_up "))
            .map(str::to_string)
    };
    for cp in cps.iter().flatten() {
        wait_for(
            "readyz naming the database",
            Duration::from_secs(20),
            || {
                let (code, body) = http_get(&cp.http, "/readyz").ok()?;
                (code == 503 && body.contains("records database")).then_some(())
            },
        )?;
        assert_eq!(up(cp).as_deref(), Some("0"));
    }
    // A query says why it cannot answer.
    let out = ctl(&w, &admin(0), &["logs"])?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot reach its records database"),
        "{}",
        stderr(&out)
    );
    for (_, file) in &agents {
        write_lines(file, 300, 400)?;
    }
    std::thread::sleep(Duration::from_secs(2));
    pg.resume()?;
    for cp in cps.iter().flatten() {
        wait_for("ready again", Duration::from_secs(20), || {
            let (code, _) = http_get(&cp.http, "/readyz").ok()?;
            (code == 200).then_some(())
        })?;
        assert_eq!(up(cp).as_deref(), Some("1"));
    }
    let want: BTreeSet<(String, String)> = ["app-0", "app-1"]
        .iter()
        .flat_map(|h| (0..400).map(move |n| (h.to_string(), format!("line {n}"))))
        .collect();
    let want: BTreeSet<_> = want.union(&probes).cloned().collect();
    for i in 0..2 {
        let lines = wait_for(
            "the lines read while it was away",
            Duration::from_secs(60),
            || {
                let out = ctl(&w, &admin(i), &["logs", "-o", "json"]).ok()?;
                let lines: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(key)
                    .collect::<Result<_>>()
                    .ok()?;
                (lines.len() >= want.len()).then_some(lines)
            },
        )?;
        let set: BTreeSet<_> = lines.iter().cloned().collect();
        assert_eq!(lines.len(), set.len(), "cp-{i}: a line stored twice");
        assert!(set == want, "cp-{i}: another set of lines");
    }
    // A replica restarted while the database is away starts (not ready,
    // saying why), and serves once the database is back.
    pg.stop()?;
    let admin1 = admin(1);
    let listen = cps[1].as_ref().context("cp-1")?.grpc.clone();
    drop(cps.pop());
    let cp1 = Control::start_on(&w, "cp1", &listen)?;
    let (code, body) = http_get(&cp1.http, "/readyz")?;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("records database"), "{body}");
    pg.resume()?;
    wait_for(
        "the restarted replica ready",
        Duration::from_secs(20),
        || {
            let (code, _) = http_get(&cp1.http, "/readyz").ok()?;
            (code == 200).then_some(())
        },
    )?;
    let out = ctl(&w, &admin1, &["logs", "-o", "json"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        want.len()
    );
    Ok(())
}
