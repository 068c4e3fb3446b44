//! A step goes to whichever replica holds the host's stream (SPEC §12):
//! `run` through one replica on hosts that stream with another, through
//! etcd's relay, with results as if the hosts streamed with it; and a
//! rollout's steps the same way.

use std::time::Duration;

use anyhow::{Context, Result};
use picket_tests::etcd::EtcdCluster;
use picket_tests::*;
use serde_json::Value;

#[test]
fn run_through_one_replica_reaches_hosts_held_by_another() -> Result<()> {
    let w = World::new()?;
    let etcd = EtcdCluster::start(&w, 1)?;
    let endpoint = etcd.endpoints()[0].clone();
    // A host_silent rule (the same file on both replicas; the leader's
    // engine decides), records in PostgreSQL.
    let rules = "[[rule]]\nname = \"HostDown\"\nkind = \"host_silent\"\nafter = \"4s\"\n";
    let (_pg, extra) = crate::replicas::records_in_postgres("heartbeat_interval = \"1s\"")?;
    let (cps, fp) = crate::replicas::start(&w, &[endpoint], 2, &extra, Some(rules))?;
    let admin = |i: usize| crate::replicas::admin(&w, &cps, i).unwrap_or_default();
    let cp = |i: usize| cps[i].as_ref().context("a replica");

    // Two agents, each given one replica only.
    let mut agents_running = Vec::new();
    for (i, name) in ["web-0", "web-1"].iter().enumerate() {
        let out = ctl(&w, &admin(i), &["token", "create"])?;
        assert!(out.status.success(), "{}", stderr(&out));
        let tok = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let out = enroll(&w, cp(i)?, &fp, &tok, name, &["role=web"])?;
        assert!(out.status.success(), "{}", stderr(&out));
        // The rollout's steps write a marker file here: as root.
        let cfg = w.path(&format!("agents/{name}/agent.toml"));
        let text = std::fs::read_to_string(&cfg)?;
        std::fs::write(&cfg, merge_config(&text, fleet::STEPS_AS_ROOT))?;
        agents_running.push(run_agent(&w, name)?);
    }
    wait_for(
        "both agents online on both replicas",
        Duration::from_secs(30),
        || {
            (0..2)
                .all(|i| {
                    ["web-0", "web-1"]
                        .iter()
                        .all(|n| status_of(&w, &admin(i), n).as_deref() == Some("online"))
                })
                .then_some(())
        },
    )?;

    // `status` on each counts both hosts up (presence), and so does
    // `/metrics`' picket_agent_up (an alert on it means the same on both).
    for i in 0..2 {
        let s = ctl_json(&w, &admin(i), &["status"])?;
        let s = s.first().context("a status line")?;
        assert_eq!(s["hosts"]["up"], 2, "{s}");
        let (_, m) = http_get(&cp(i)?.http, "/metrics")?;
        for host in ["web-0", "web-1"] {
            let prefix = format!("picket_agent_up{{host=\"{host}\"");
            let line = m.lines().find(|l| l.starts_with(&prefix));
            assert!(
                line.is_some_and(|l| l.ends_with(" 1")),
                "cp-{i}, {host}: {line:?}"
            );
        }
    }

    // `run` through each replica reaches both hosts, its own and the
    // other's, with each host's output and exit code.
    for i in 0..2 {
        let started = std::time::Instant::now();
        let out = ctl(
            &w,
            &admin(i),
            &[
                "run",
                "-l",
                "role=web",
                "-o",
                "json",
                "--",
                "sh",
                "-c",
                "echo hi from $PICKET_HOST; exit 3",
            ],
        )?;
        let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .with_context(|| stderr(&out))?;
        eprintln!(
            "run through cp-{i}: {} rows in {:?}",
            rows.len(),
            started.elapsed()
        );
        let mut hosts: Vec<&str> = rows.iter().filter_map(|r| r["host"].as_str()).collect();
        hosts.sort();
        assert_eq!(hosts, ["web-0", "web-1"], "{rows:?} {}", stderr(&out));
        for r in &rows {
            assert_eq!(r["state"], "failed", "{r}");
            assert_eq!(r["exit_code"], 3, "{r}");
            let host = r["host"].as_str().unwrap_or_default();
            assert_eq!(r["output"], format!("hi from {host}\n"), "{r}");
        }
    }

    // What the relay costs: `run` on cp-0's own host, then on the other's
    // (the whole command, picketctl's start included), for
    // docs/benchmarks.md; asserted only to succeed.
    for (host, how) in [("web-0", "held here"), ("web-1", "relayed")] {
        let mut ms = Vec::new();
        for _ in 0..10 {
            let started = std::time::Instant::now();
            let out = ctl(
                &w,
                &admin(0),
                &["run", "-l", &format!("name={host}"), "--", "true"],
            )?;
            assert!(out.status.success(), "{}", stderr(&out));
            ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        eprintln!(
            "run on {host} ({how}): p50 {:.1} ms, max {:.1} ms",
            ms[5], ms[9]
        );
    }

    // A rollout (only the leader drives rollouts) runs its steps on both
    // hosts, its own and the other replica's, once each, and finishes;
    // the follower reads its status from the shared rollouts.
    let leader = wait_for("a leader", Duration::from_secs(30), || {
        let s = ctl_json(&w, &admin(0), &["status"]).ok()?;
        let node = s.first()?["leader"].as_str()?.to_string();
        node.strip_prefix("cp-")?.parse::<usize>().ok()
    })?;
    let follower = 1 - leader;
    let marks = w.path("marks");
    let spec = format!(
        r#"
name = "relayed"
selector = "role=web"
max_parallel = 2

[[wave]]
name = "all"
selector = "role=web"

[[step]]
name = "deploy"
shell = "echo \"$PICKET_HOST $PICKET_ROLLOUT\" >> {}; echo \"working on $PICKET_HOST\"; sleep 4"
"#,
        marks.display()
    );
    std::fs::write(w.path("rollout.toml"), spec)?;
    let file = w.path("rollout.toml").display().to_string();
    // An API client asking the follower is refused, the leader named.
    let rt = tokio::runtime::Runtime::new()?;
    let client = |i: usize| {
        let d = |f: &str| w.path(&format!("cp0/{f}"));
        let addr = cp(i).map(|c| c.grpc.clone());
        async move {
            let cfg = picket_tls::client::mtls_config(
                &picket_tls::files::read_certs(&d("ca.crt"))?,
                picket_tls::files::read_certs(&d("admin.crt"))?,
                picket_tls::files::read_key(&d("admin.key"))?,
            )?;
            let ch = picket_tls::client::connect(&addr?, cfg).await?;
            anyhow::Ok(picket_proto::v1::admin_service_client::AdminServiceClient::new(ch))
        }
    };
    let refused = rt.block_on(async {
        let mut c = client(follower).await?;
        let spec: picket_model::rollout::RawSpec =
            toml::from_str(&std::fs::read_to_string(&file)?)?;
        let r = c
            .create_rollout(picket_proto::v1::CreateRolloutRequest {
                spec: Some(spec.into()),
            })
            .await;
        anyhow::Ok(r.err().map(|s| (s.code(), s.message().to_string())))
    })?;
    let (code, message) = refused.context("the follower must refuse a rollout")?;
    assert_eq!(code, tonic::Code::Unavailable);
    assert!(
        message.contains(&format!("driven by the leader, cp-{leader}")),
        "{message}"
    );
    // picketctl, given the follower, finds the leader through `status`.
    let out = ctl(&w, &admin(follower), &["rollout", "create", "-f", &file])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // While the step runs, the leader shows each host's newest output
    // line, the follower's host's relayed back.
    let relayed = format!("web-{follower}");
    let line = rt.block_on(async {
        let mut c = client(leader).await?;
        let limit = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let r = c
                .get_rollout(picket_proto::v1::GetRolloutRequest { id: id.clone() })
                .await?
                .into_inner();
            let line = r.waves.iter().flat_map(|w| &w.hosts).find_map(|h| {
                (h.name == relayed && !h.last_line.is_empty()).then(|| h.last_line.clone())
            });
            if let Some(l) = line {
                return anyhow::Ok(l);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < limit,
                "no live line for {relayed}: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })?;
    assert_eq!(line, format!("working on {relayed}"));
    // `rollout watch` through the follower follows it to its end.
    let mut watching = {
        let mut c = w.cmd("picketctl");
        c.args(admin(follower))
            .args(["rollout", "watch", &id, "-o", "json"]);
        Proc::spawn(c)?
    };
    wait_for("the rollout to succeed", Duration::from_secs(60), || {
        let s = ctl_json(&w, &admin(follower), &["rollout", "status", &id]).ok()?;
        (s.first()?["state"] == "succeeded").then_some(())
    })
    .with_context(|| {
        format!(
            "{:?}",
            ctl_json(&w, &admin(leader), &["rollout", "status", &id])
        )
    })?;
    let ended = watching.wait_exit(Duration::from_secs(10))?;
    assert!(ended.success(), "{}", watching.stderr());
    wait_for("the watch's last line", Duration::from_secs(5), || {
        let out = watching.stdout();
        let last: serde_json::Value = serde_json::from_str(out.lines().last()?).ok()?;
        (last["state"] == "succeeded").then_some(())
    })
    .with_context(|| watching.stdout())?;
    let mut marked: Vec<String> = std::fs::read_to_string(&marks)?
        .lines()
        .map(str::to_string)
        .collect();
    marked.sort();
    assert_eq!(marked, [format!("web-0 {id}"), format!("web-1 {id}")]);

    // host_silent: a host streaming with the other replica is not silent
    // here (presence vouches for it); a host no replica hears from fires
    // on both.
    let firing = |i: usize| -> Vec<String> {
        ctl_json(&w, &admin(i), &["alerts", "list"])
            .unwrap_or_default()
            .iter()
            .filter(|a| a["state"] == "firing")
            .filter_map(|a| a["labels"]["host"].as_str().map(str::to_string))
            .collect()
    };
    std::thread::sleep(Duration::from_secs(6));
    for i in 0..2 {
        assert!(firing(i).is_empty(), "cp-{i}: {:?}", firing(i));
    }
    agents_running[0].kill9();
    wait_for(
        "web-0's host_silent on both replicas",
        Duration::from_secs(30),
        || (0..2).all(|i| firing(i) == ["web-0"]).then_some(()),
    )?;
    Ok(())
}
