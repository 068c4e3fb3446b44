//! `logs -f` never cut off: a follower that reads slowly while a burst
//! is stored falls behind its live queue (made small here, 8 KiB, so a
//! burst a test can afford overflows it many times), reads what it missed
//! from the store, and goes on live: every line exactly once, in order.

use std::time::Duration;

use anyhow::{Context, Result};
use picket_tests::lines::{follow_logs, write_lines};
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

    // Two followers, JSON and table, each with a reader that is not there
    // at first: the pipe, the stream and the control plane's queue for it
    // fill up behind it.
    let late = Duration::from_secs(3);
    let (mut json, json_rx) = follow_logs(&w, &admin, &["-o", "json"], late)?;
    let (mut table, table_rx) = follow_logs(&w, &admin, &[], late)?;
    write_lines(&app, 0, LINES)?;
    let json_line = |l: &str| -> Result<String> {
        let v: serde_json::Value = serde_json::from_str(l)?;
        Ok(v["line"].as_str().unwrap_or_default().to_string())
    };
    // A table line is `HOST SOURCE| LINE`.
    let table_line = |l: &str| -> Result<String> {
        Ok(l.split_once("| ")
            .map(|(_, t)| t.to_string())
            .unwrap_or_default())
    };
    let want: Vec<String> = (0..=LINES).map(|i| format!("line {i}")).collect();
    let mut seen_json = take(&json_rx, LINES, json_line)?;
    let mut seen_table = take(&table_rx, LINES, table_line)?;
    // Still following: a line written now arrives too.
    write_lines(&app, LINES, LINES + 1)?;
    seen_json.extend(take(&json_rx, 1, json_line)?);
    seen_table.extend(take(&table_rx, 1, table_line)?);
    let _ = json.kill();
    let _ = table.kill();
    for (name, seen) in [("json", &seen_json), ("table", &seen_table)] {
        assert!(
            *seen == want,
            "{name}: every line once, in order (first difference at {:?})",
            seen.iter().zip(&want).position(|(a, b)| a != b)
        );
    }
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

/// The next `n` lines of a follower, each as `parse` reads it.
fn take(
    rx: &std::sync::mpsc::Receiver<String>,
    n: usize,
    parse: impl Fn(&str) -> Result<String>,
) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .with_context(|| format!("follower stalled after {} lines", out.len()))?;
        out.push(parse(&line)?);
    }
    Ok(out)
}

#[test]
fn a_follower_restarted_with_its_last_cursor_resumes_exactly() -> Result<()> {
    let w = World::new()?;
    let fp = w.init("cp", "")?;
    let cp = Control::start(&w, "cp")?;
    let admin = cp.admin_flags();
    let app = w.path("app.log");
    std::fs::write(&app, "")?;
    let _agent = enroll_with_sources(&w, &cp, &fp, "app-1", &[], &[("raw", &app)])?;
    write_lines(&app, 0, 500)?;
    let (mut first, rx) = follow_logs(&w, &admin, &["-o", "json"], Duration::ZERO)?;
    let got: Vec<serde_json::Value> = take(&rx, 200, |l| Ok(l.to_string()))?
        .iter()
        .map(|l| serde_json::from_str(l))
        .collect::<Result<_, _>>()?;
    // The forwarder dies after line 199; more lines come meanwhile.
    let _ = first.kill();
    let _ = first.wait();
    let cursor = got[199]["cursor"]
        .as_str()
        .context("a cursor on every JSON line")?
        .to_string();
    assert_eq!(got[199]["line"], "line 199");
    write_lines(&app, 500, 1000)?;
    let after = ["-o", "json", "--after", &cursor];
    let (mut second, rx) = follow_logs(&w, &admin, &after, Duration::ZERO)?;
    let rest = take(&rx, 800, |l| {
        let v: serde_json::Value = serde_json::from_str(l)?;
        Ok(v["line"].as_str().unwrap_or_default().to_string())
    })?;
    let _ = second.kill();
    let want: Vec<String> = (200..1000).map(|i| format!("line {i}")).collect();
    assert_eq!(
        rest, want,
        "resumed right after the cursor: nothing lost, nothing repeated"
    );
    // A cursor that is not one is refused, saying so.
    let o = ctl(&w, &admin, &["logs", "--after", "yesterday"])?;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is not a cursor"), "{}", stderr(&o));
    Ok(())
}
