//! Faults a fleet meets (issue #24): the control plane's disk fills under
//! ingest and is grown again, without a restart.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use picket_tests::lines::numbered_lines;
use picket_tests::*;

/// Lines written: more than the small disk holds.
const LINES: usize = 200_000;

/// `line N <noise>`: noise that packs poorly, so that the disk fills.
fn write_noisy_lines(path: &std::path::Path, from: usize, to: usize) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut chunk = String::new();
    for n in from..to {
        // xorshift: cheap noise, the same on every run.
        let mut noise = String::new();
        for _ in 0..3 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            noise.push_str(&format!("{x:016x}"));
        }
        chunk.push_str(&format!("line {n} {noise}\n"));
        if n % 10_000 == 0 {
            f.write_all(chunk.as_bytes())?;
            chunk.clear();
        }
    }
    f.write_all(chunk.as_bytes())?;
    Ok(())
}

fn metric(http: &str, name: &str) -> Option<f64> {
    let (_, body) = http_get(http, "/metrics").ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
}

#[test]
fn a_full_disk_refuses_records_until_it_is_grown_then_every_line_arrives_once() -> Result<()> {
    let w = World::new()?;
    let fp = w.init("cp", "heartbeat_interval = \"1s\"\nmin_free_percent = 0")?;
    // The data folder on an 8 MiB tmpfs in the control plane's own mount
    // namespace: it fills while the agent sends.
    let disk = w.path("disk");
    std::fs::create_dir_all(&disk)?;
    let cp_dir = w.path("cp");
    let text = std::fs::read_to_string(cp_dir.join("control.toml"))?;
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("data_dir =") {
                format!("data_dir = \"{}\"\n", disk.display())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let cfg = w.path("disk.toml");
    std::fs::write(&cfg, text)?;
    let mut c = Command::new("unshare");
    c.args(["-m", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o size=8m tmpfs {d} && cp -a {cp}/. {d}/ && exec \"$0\" \"$@\"",
            d = disk.display(),
            cp = cp_dir.display()
        ))
        .arg(bin("picket-control"))
        .env("HOME", w.path("home"))
        .env("RUST_LOG", "info")
        .current_dir(w.path(""));
    let cp = Control::start_with(cp_dir, &cfg, c, "127.0.0.1:0", "127.0.0.1:0")
        .context("starting the control plane on a small tmpfs (unshare -m: needs root)")?;
    let pid = cp.proc.pid();
    let admin = cp.admin_flags();
    let src = w.path("app.log");
    std::fs::File::create(&src)?;
    let agent = enroll_with_sources(&w, &cp, &fp, "busy", &[], &[("raw", &src)])?;
    let said = |what: &str| cp.proc.stderr().matches(what).count();
    let in_ns = |script: &str| -> Result<()> {
        let out = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-m", "sh", "-c", script])
            .output()
            .context("nsenter (util-linux)")?;
        anyhow::ensure!(out.status.success(), "{script}: {}", stderr(&out));
        Ok(())
    };
    let all_once = |n: usize| -> Result<()> {
        let counts = wait_for("every line stored", Duration::from_secs(120), || {
            let c = numbered_lines(&w, &admin).ok()?;
            (c.len() >= n).then_some(c)
        })
        .with_context(|| format!("control plane: {}", cp.proc.stderr()))?;
        for i in 0..n {
            assert_eq!(counts.get(&i), Some(&1), "line {i}");
        }
        assert_eq!(counts.len(), n);
        Ok(())
    };
    const FIRST: usize = 2_000;
    write_noisy_lines(&src, 0, FIRST)?;
    all_once(FIRST)?;

    // Another process takes every byte left. Writes that must be durable
    // fail with a clear error, not Internal, and are counted; sled refuses
    // every write from then on, until it is reopened.
    let filler = disk.join("filler");
    in_ns(&format!(
        "dd if=/dev/zero of={} bs=64k 2>/dev/null; true",
        filler.display()
    ))?;
    let refused = (0..5000).find_map(|_| {
        let out = ctl(&w, &admin, &["token", "create"]).ok()?;
        (!out.status.success()).then(|| stderr(&out))
    });
    let refused = refused.context("token create never failed on a full disk")?;
    assert!(
        refused.contains("cannot write to its store now"),
        "{refused}"
    );
    assert!(
        metric(&cp.http, "picket_control_store_write_failures").unwrap_or(0.0) > 0.0,
        "failed writes are counted"
    );
    // Records sent meanwhile are refused; everyone can see it.
    write_noisy_lines(&src, FIRST, 2 * FIRST)?;
    let (_, body) = wait_for(
        "/readyz to say the store is not writable",
        Duration::from_secs(30),
        || {
            http_get(&cp.http, "/readyz")
                .ok()
                .filter(|(c, _)| *c == 503)
        },
    )?;
    assert!(body.contains("store not writable"), "{body}");
    assert_eq!(metric(&cp.http, "picket_control_store_writable"), Some(0.0));
    let shown = wait_for(
        "the host shown online (not stored)",
        Duration::from_secs(30),
        || {
            let a = agents(&w, &admin).ok()?;
            let busy = a.get("busy")?;
            (busy["status"] == "online" && busy["not_stored"] == true).then_some(())
        },
    );
    shown.with_context(|| format!("agents: {:?}", agents(&w, &admin).ok()))?;
    let table = ctl(&w, &admin, &["agents", "list"])?;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("online (not stored)"), "{table}");
    // Still refusing a while later, and logged once, not per attempt.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(metric(&cp.http, "picket_control_store_writable"), Some(0.0));
    assert_eq!(said("store: not writable"), 1, "{}", cp.proc.stderr());

    // Room again: the store is reopened, the session ends so that the
    // agent sends again all it had not had acked, and every line is there
    // once.
    in_ns(&format!("rm {}", filler.display()))?;
    all_once(2 * FIRST)?;
    assert_eq!(http_get(&cp.http, "/readyz")?.0, 200);
    assert_eq!(metric(&cp.http, "picket_control_store_writable"), Some(1.0));
    assert_eq!(said("store: writable again"), 1, "{}", cp.proc.stderr());
    assert!(
        agent.stderr().contains("reopened its store"),
        "the session ended when the store was reopened: {}",
        agent.stderr()
    );
    let out = ctl(&w, &admin, &["token", "create"])?;
    assert!(out.status.success(), "{}", stderr(&out));

    // Ingest fills the disk itself: records are refused before a write
    // fails (the batch would not fit), until the disk is grown.
    write_noisy_lines(&src, 2 * FIRST, LINES)?;
    wait_for(
        "records to be refused again",
        Duration::from_secs(90),
        || metric(&cp.http, "picket_control_store_writable").filter(|v| *v == 0.0),
    )
    .with_context(|| format!("control plane: {}", cp.proc.stderr()))?;
    let partial = numbered_lines(&w, &admin)?;
    assert!(
        partial.len() < LINES,
        "the small disk held everything; make it smaller"
    );
    assert!(partial.values().all(|n| *n == 1), "nothing stored twice");
    let grow = Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-m",
            "mount",
            "-o",
            "remount,size=400m",
        ])
        .arg(&disk)
        .output()
        .context("nsenter (util-linux)")?;
    anyhow::ensure!(grow.status.success(), "remount: {}", stderr(&grow));
    all_once(LINES)?;
    assert_eq!(http_get(&cp.http, "/readyz")?.0, 200);
    assert_eq!(cp.proc.pid(), pid, "no restart");
    Ok(())
}
