//! Security events and raw lines end to end: the agent tails real files
//! (`tests/corpus`), the control plane stores them, and `picketctl
//! events` / `logs` (with `-f`) read them back.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use picket_tests::*;

fn corpus(rel: &str) -> String {
    let p = tests_dir().join("corpus").join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn events_from_every_parser_and_raw_lines() -> Result<()> {
    let w = World::new()?;
    let fp = w.init("cp", "")?;
    let cp = Control::start(&w, "cp")?;
    let admin = cp.admin_flags();
    let logs = w.path("logs");
    std::fs::create_dir_all(&logs)?;
    let f2b = corpus("fail2ban/fail2ban-1.0.2-generated.log");
    std::fs::write(logs.join("fail2ban.log"), &f2b)?;
    let sshd: String = corpus("sshd/fail2ban-tests-sshd.log")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(logs.join("auth.log"), &sshd)?;
    std::fs::write(
        logs.join("eve.json"),
        corpus("suricata/alert-testmyids.eve.json"),
    )?;
    std::fs::write(
        logs.join("alerts.log"),
        corpus("ossec/ossec-docs-alerts.log"),
    )?;
    // A raw file with a bad byte and a partial last line.
    std::fs::write(logs.join("app.log"), b"hello\nbad \xff byte\npartial")?;
    let _agent = enroll_with_sources(
        &w,
        &cp,
        &fp,
        "sec-1",
        &[],
        &[
            ("fail2ban", &logs.join("fail2ban.log")),
            ("sshd", &logs.join("auth.log")),
            ("suricata", &logs.join("eve.json")),
            ("ossec", &logs.join("alerts.log")),
            ("raw", &logs.join("app.log")),
        ],
    )?;

    let want_bans = f2b.lines().filter(|l| l.contains("] Ban ")).count();
    let bans = wait_for("every fail2ban ban", Duration::from_secs(30), || {
        let e = ctl_json(
            &w,
            &admin,
            &["events", "--source", "fail2ban", "--limit", "100000"],
        )
        .ok()?;
        let bans: Vec<_> = e.into_iter().filter(|e| e["kind"] == "ban").collect();
        (bans.len() == want_bans).then_some(bans)
    })?;
    for b in &bans {
        assert_eq!(b["host"], "sec-1");
        assert_eq!(b["severity"], "medium");
        assert_eq!(b["fields"]["jail"], "sshd");
        assert!(
            b["fields"]["ip"]
                .as_str()
                .is_some_and(|ip| ip.parse::<std::net::IpAddr>().is_ok())
        );
        assert!(b["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert!(b["received"].is_string() && b["seq"].is_u64());
        assert!(b["message"].as_str().is_some_and(|m| m.contains("Ban")));
    }

    let alerts = wait_for("suricata and ossec events", Duration::from_secs(30), || {
        let s = ctl_json(&w, &admin, &["events", "--source", "suricata"]).ok()?;
        let o = ctl_json(&w, &admin, &["events", "--source", "ossec"]).ok()?;
        (!s.is_empty() && o.len() == 4).then_some((s, o))
    })?;
    assert_eq!(alerts.0[0]["kind"], "alert");
    assert!(alerts.0[0]["fields"]["signature_id"].is_string());
    assert_eq!(alerts.1[0]["fields"]["rule_id"], "1005");

    // Host filter (served by the per-host index).
    let mine = ctl_json(
        &w,
        &admin,
        &[
            "events", "--host", "sec-1", "--source", "fail2ban", "--limit", "100000",
        ],
    )?;
    assert_eq!(
        mine.iter().filter(|e| e["kind"] == "ban").count(),
        want_bans
    );
    assert!(ctl_json(&w, &admin, &["events", "--host", "nobody"])?.is_empty());
    assert!(ctl_json(&w, &admin, &["logs", "--host", "nobody"])?.is_empty());

    // Severity filter: nothing below medium.
    let med = ctl_json(
        &w,
        &admin,
        &["events", "--severity", "medium", "--limit", "100000"],
    )?;
    assert!(!med.is_empty());
    assert!(
        med.iter()
            .all(|e| matches!(e["severity"].as_str(), Some("medium" | "high" | "critical")))
    );
    // sshd failures, filtered by grep.
    let fails = ctl_json(
        &w,
        &admin,
        &[
            "events",
            "--source",
            "sshd",
            "--grep",
            "Failed password",
            "--limit",
            "100000",
        ],
    )?;
    assert!(!fails.is_empty());
    assert!(
        fails
            .iter()
            .all(|e| e["kind"] == "auth_failure" || e["kind"] == "invalid_user"),
        "{fails:?}"
    );
    // --limit keeps the newest N, oldest first.
    let two = ctl_json(
        &w,
        &admin,
        &["events", "--source", "fail2ban", "--limit", "2"],
    )?;
    assert_eq!(two.len(), 2);
    assert!(two[0]["time"].as_str() <= two[1]["time"].as_str());

    // Raw lines: kept, the bad byte flagged, the partial line held back.
    let raw = wait_for("raw lines", Duration::from_secs(20), || {
        let l = ctl_json(&w, &admin, &["logs", "--source", "raw"]).ok()?;
        (l.len() == 2).then_some(l)
    })?;
    assert_eq!(raw[0]["line"], "hello");
    assert_eq!(raw[1]["invalid_utf8"], true);
    assert!(raw.iter().all(
        |l| l["host"] == "sec-1" && l["path"].as_str().is_some_and(|p| p.ends_with("app.log"))
    ));
    assert!(
        ctl_json(&w, &admin, &["events", "--source", "raw"])?.is_empty(),
        "raw sources ship lines only"
    );
    append(&logs.join("app.log"), " line\n")?;
    wait_for("the joined partial line", Duration::from_secs(20), || {
        let l = ctl_json(&w, &admin, &["logs", "--source", "raw", "--tail", "1"]).ok()?;
        (l.len() == 1 && l[0]["line"] == "partial line").then_some(())
    })?;
    // Every source's lines are in the log store too.
    let all = ctl_json(&w, &admin, &["logs", "--source", "sshd"])?;
    assert_eq!(all.len(), sshd.lines().count());
    Ok(())
}

#[test]
fn logs_follow_prints_backlog_then_live_with_no_gap_or_repeat() -> Result<()> {
    let w = World::new()?;
    let fp = w.init("cp", "")?;
    let cp = Control::start(&w, "cp")?;
    let admin = cp.admin_flags();
    let app = w.path("app.log");
    let backlog: String = (0..50).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&app, &backlog)?;
    let _agent = enroll_with_sources(&w, &cp, &fp, "app-1", &[], &[("raw", &app)])?;
    wait_for("the backlog stored", Duration::from_secs(30), || {
        (ctl_json(&w, &admin, &["logs"]).ok()?.len() == 50).then_some(())
    })?;

    let mut c = w.cmd("picketctl");
    c.args(&admin)
        .args(["logs", "-f", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut follow = c.spawn()?;
    let stdout = follow.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Appends while the follower reads the backlog and after.
    for i in 50..200 {
        append(&app, &format!("line {i}\n"))?;
        if i % 25 == 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let mut seen = Vec::new();
    while seen.len() < 200 {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .context("follower stalled")?;
        let v: serde_json::Value = serde_json::from_str(&line)?;
        seen.push(v["line"].as_str().unwrap_or_default().to_string());
    }
    let _ = follow.kill();
    let want: Vec<String> = (0..200).map(|i| format!("line {i}")).collect();
    assert_eq!(seen, want, "every line once, in order");
    Ok(())
}
