//! `logs -f` never cut off: a follower that reads slowly while a burst
//! is stored falls behind its live queue (made small here, 8 KiB, so a
//! burst a test can afford overflows it many times), reads what it missed
//! from the store, and goes on live: every line exactly once, in order.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use picket_tests::lines::write_lines;
use picket_tests::*;

const LINES: usize = 20_000;

#[test]
fn a_slow_follower_of_a_burst_gets_every_line_once_in_order_and_is_not_cut() -> Result<()> {
    let w = World::new()?;
    let fp = w.init("cp", "[limits]\nfollower_queue_bytes = 8192\n")?;
    let cp = Control::start(&w, "cp")?;
    let admin = cp.admin_flags();
    let app = w.path("app.log");
    std::fs::write(&app, "")?;
    let _agent = enroll_with_sources(&w, &cp, &fp, "app-1", &[], &[("raw", &app)])?;
    wait_for("the agent online", Duration::from_secs(30), || {
        (status_of(&w, &admin, "app-1")? == "online").then_some(())
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
        // A reader that is not there at first: the pipe, the stream and
        // the control plane's queue for it fill up behind it.
        std::thread::sleep(Duration::from_secs(3));
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    write_lines(&app, 0, LINES)?;
    let mut seen = Vec::with_capacity(LINES);
    while seen.len() < LINES {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .with_context(|| format!("follower stalled after {} lines", seen.len()))?;
        let v: serde_json::Value = serde_json::from_str(&line)?;
        seen.push(v["line"].as_str().unwrap_or_default().to_string());
    }
    // Still following: a line written now arrives too.
    write_lines(&app, LINES, LINES + 1)?;
    let last = rx
        .recv_timeout(Duration::from_secs(30))
        .context("live after catching up")?;
    let v: serde_json::Value = serde_json::from_str(&last)?;
    seen.push(v["line"].as_str().unwrap_or_default().to_string());
    let _ = follow.kill();
    let want: Vec<String> = (0..=LINES).map(|i| format!("line {i}")).collect();
    assert!(
        seen == want,
        "every line once, in order (first difference at {:?})",
        seen.iter().zip(&want).position(|(a, b)| a != b)
    );
    // It did fall behind, and caught up from the store rather than being cut.
    let (_, metrics) = http_get(&cp.http, "/metrics")?;
    let catch_ups: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("picket_control_follower_catch_ups "))
        .and_then(|v| v.trim().parse().ok())
        .context("picket_control_follower_catch_ups on /metrics")?;
    assert!(
        catch_ups >= 1.0,
        "the follower never fell behind: {catch_ups}"
    );
    Ok(())
}
