//! Faults a fleet meets (issue #24): the control plane's disk fills under
//! ingest and is grown again, without a restart.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
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
    let fp = w.init(
        "cp",
        "heartbeat_interval = \"1s\"\nmin_free_percent = 0\nalerts = \"alerts.toml\"",
    )?;
    // A store_unwritable rule, notified by a webhook: sent while the store
    // cannot queue anything.
    let rx = picket_tests::receiver::Receiver::start()?;
    std::fs::write(
        w.path("alerts.toml"),
        format!(
            "[defaults]\ngroup_wait = \"0s\"\ngroup_interval = \"1s\"\n\n\
             [[rule]]\nname = \"StoreUnwritable\"\nkind = \"store_unwritable\"\nafter = \"1s\"\nseverity = \"critical\"\nsummary = \"{{{{ host }}}}: {{{{ value }}}}\"\n\n\
             [[notifier]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n\n[[route]]\nnotifiers = [\"hook\"]\n",
            rx.url("/webhook")
        ),
    )?;
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
    let is = |status: &'static str| {
        move |v: &serde_json::Value| {
            v["status"] == status && v["alerts"][0]["labels"]["alertname"] == "StoreUnwritable"
        }
    };
    let firing = rx.wait("/webhook", Duration::from_secs(30), is("firing"))?;
    let summary = firing["alerts"][0]["annotations"]["summary"]
        .as_str()
        .unwrap_or_default();
    assert!(summary.contains("No space left"), "{firing}");
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
    rx.wait("/webhook", Duration::from_secs(30), is("resolved"))?;
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

/// Runs `c` with its wall clock shifted by `offset` (Debian's `faketime`
/// package, its multi-threaded library preloaded as `faketime -m -f`
/// would; the monotonic clock, tokio's timers, untouched). Preloaded
/// directly rather than through the `faketime` program, which forks: a
/// test's kill of it would leave the agent running.
fn faketime(c: &mut Command, offset: &str) -> Result<()> {
    tool("faketime", "faketime")?;
    let lib = std::fs::read_dir("/usr/lib")?
        .filter_map(|d| d.ok())
        .map(|d| d.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.exists())
        .context("libfaketimeMT.so.1 (Debian package libfaketime) not found under /usr/lib")?;
    c.env("LD_PRELOAD", lib)
        .env("FAKETIME", offset)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    Ok(())
}

#[test]
fn agents_ten_minutes_behind_and_two_hours_ahead_enroll_stream_renew_and_show_their_offset()
-> Result<()> {
    let w = World::new()?;
    // Certificates of 12 s: renewed by the control plane's clock at 8 s.
    let fp = w.init(
        "cp",
        "agent_cert_ttl = \"12s\"\nheartbeat_interval = \"1s\"",
    )?;
    let cp = Control::start(&w, "cp")?;
    let admin = cp.admin_flags();
    let mut agents_run = Vec::new();
    for (name, offset) in [("late", "-10m"), ("early", "+2h")] {
        let tok = token(&w, &cp, &[])?;
        let state = w.path(&format!("agents/{name}"));
        let mut c = w.cmd("picket-agent");
        c.args(["enroll", "--server", &cp.grpc, "--token", &tok])
            .args(["--ca-fingerprint", &fp, "--name", name])
            .arg("--state-dir")
            .arg(&state);
        faketime(&mut c, offset)?;
        let out = c.output()?;
        anyhow::ensure!(out.status.success(), "{name} enrolls: {}", stderr(&out));
        let log = w.path(&format!("{name}.log"));
        std::fs::write(&log, format!("line 1 from {name}\n"))?;
        let cfg = state.join("agent.toml");
        let mut text = std::fs::read_to_string(&cfg)?;
        text.push_str(&format!(
            "\n[[source]]\nkind = \"raw\"\npath = \"{}\"\nfrom_start = true\n",
            log.display()
        ));
        std::fs::write(&cfg, text)?;
        let mut c = w.cmd("picket-agent");
        c.args(["run", "--config"]).arg(&cfg);
        faketime(&mut c, offset)?;
        agents_run.push((name, Proc::spawn(c)?, state));
    }
    // Both stream, and show how far off their clocks are.
    for (name, ms) in [("late", -600_000.0), ("early", 7_200_000.0)] {
        let a = wait_for(
            &format!("{name} online with its offset"),
            Duration::from_secs(30),
            || {
                let a = agents(&w, &admin).ok()?.get(name)?.clone();
                (a["status"] == "online" && a["clock_offset_ms"].is_i64()).then_some(a)
            },
        )?;
        let off = a["clock_offset_ms"].as_f64().unwrap_or(0.0);
        assert!((off - ms).abs() < 5_000.0, "{name}: {off} ms");
        let lines = ctl(&w, &admin, &["logs", "--host", name, "-o", "json"])?;
        wait_for(
            &format!("{name}'s line stored"),
            Duration::from_secs(20),
            || {
                let out = ctl(&w, &admin, &["logs", "--host", name, "-o", "json"]).ok()?;
                String::from_utf8_lossy(&out.stdout)
                    .contains(&format!("line 1 from {name}"))
                    .then_some(())
            },
        )
        .with_context(|| String::from_utf8_lossy(&lines.stdout).into_owned())?;
    }
    let table = ctl(&w, &admin, &["agents", "list"])?;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("online (clock 10m"), "{table}");
    assert!(table.contains("behind"), "{table}");
    assert!(table.contains("online (clock 2h0m ahead)"), "{table}");
    let (_, metrics) = http_get(&cp.http, "/metrics")?;
    let exported = metrics
        .lines()
        .find(|l| {
            l.starts_with("picket_agent_clock_offset_seconds{") && l.contains("host=\"late\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(
        exported.is_some_and(|s| (s + 600.0).abs() < 5.0),
        "{metrics}"
    );
    // Both renew (by the control plane's clock, not their own) and are
    // still online past their first certificate's end.
    for (name, _, state) in &agents_run {
        let first = std::fs::read_to_string(state.join("agent.crt"))?;
        wait_for(&format!("{name} renewed"), Duration::from_secs(30), || {
            let now = std::fs::read_to_string(state.join("agent.crt")).ok()?;
            (now != first).then_some(())
        })?;
    }
    std::thread::sleep(Duration::from_secs(13));
    for (name, proc, _) in &agents_run {
        wait_for(
            &format!("{name} online after renewals"),
            Duration::from_secs(10),
            || (status_of(&w, &admin, name)? == "online").then_some(()),
        )
        .with_context(|| proc.stderr())?;
        assert!(
            proc.stderr().contains("this host's clock is"),
            "the agent warns of its clock: {}",
            proc.stderr()
        );
    }
    Ok(())
}

/// What an agent from before protocol revision 2 sends: a `Hello` without
/// capabilities (the bytes such a build encodes are these, less the new
/// field), then records and heartbeats, as it always has.
fn old_hello() -> picket_proto::v1::AgentMessage {
    use picket_proto::v1::{self, agent_message::Body};
    v1::AgentMessage {
        body: Some(Body::Hello(v1::Hello {
            inventory: Some(v1::Inventory {
                hostname: "old".into(),
                os: "Ubuntu 22.04".into(),
                kernel: "5.15".into(),
                cpu_count: 2,
                memory_bytes: 1 << 30,
                agent_version: "0.1.0".into(),
                ..Default::default()
            }),
            next_seq: 1,
            capabilities: None,
        })),
    }
}

#[test]
fn an_agent_of_the_previous_protocol_streams_and_is_refused_steps_at_once() -> Result<()> {
    use picket_proto::v1::{
        self, agent_message::Body, agent_service_client::AgentServiceClient, control_message,
    };
    let w = World::new()?;
    let fp = w.init("cp", "heartbeat_interval = \"1s\"")?;
    let cp = Control::start(&w, "cp")?;
    let admin = cp.admin_flags();
    let tok = token(&w, &cp, &[])?;
    let out = enroll(&w, &cp, &fp, &tok, "old", &[])?;
    anyhow::ensure!(out.status.success(), "{}", stderr(&out));
    // A current agent beside it, for the version counts.
    let tok = token(&w, &cp, &[])?;
    let out = enroll(&w, &cp, &fp, &tok, "new", &[])?;
    anyhow::ensure!(out.status.success(), "{}", stderr(&out));
    let _new = run_agent(&w, "new")?;
    let state = w.path("agents/old");
    let rt = tokio::runtime::Runtime::new()?;
    let (tx, rx) = tokio::sync::mpsc::channel::<v1::AgentMessage>(16);
    let mut inbound = rt.block_on(async {
        let cfg = picket_tls::client::mtls_config(
            &picket_tls::files::read_certs(&state.join("ca.crt"))?,
            picket_tls::files::read_certs(&state.join("agent.crt"))?,
            picket_tls::files::read_key(&state.join("agent.key"))?,
        )?;
        let ch = picket_tls::client::connect(&cp.grpc, cfg).await?;
        tx.send(old_hello()).await?;
        let mut client = AgentServiceClient::new(ch);
        let s = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?;
        anyhow::Ok(s.into_inner())
    })?;
    let next = |inbound: &mut tonic::Streaming<v1::ControlMessage>| {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), inbound.message())
                .await
                .context("nothing from the control plane")?
                .context("the stream failed")?
                .and_then(|m| m.body)
                .context("the stream ended")
        })
    };
    let Some(control_message::Body::Welcome(welcome)) = Some(next(&mut inbound)?) else {
        bail!("no Welcome");
    };
    assert_eq!(welcome.acked_seq, 0);
    // It streams: a log line, an event and a sample are stored and acked.
    let now = picket_clock::now_ms();
    let records = [
        v1::record::Payload::Log(v1::LogLine {
            source: "raw".into(),
            path: "/var/log/app.log".into(),
            line: "hello from an old agent".into(),
            read_unix_ms: now,
            ..Default::default()
        }),
        v1::record::Payload::Event(v1::Event {
            source: "sshd".into(),
            kind: "auth_failure".into(),
            severity: v1::Severity::Medium as i32,
            message: "Failed password for root".into(),
            time_unix_ms: now,
            ..Default::default()
        }),
        v1::record::Payload::Metrics(v1::MetricSample {
            time_unix_ms: now,
            gauges: vec![v1::Gauge {
                name: "load1".into(),
                value: 0.5,
                ..Default::default()
            }],
        }),
    ];
    let records: Vec<v1::Record> = records
        .into_iter()
        .enumerate()
        .map(|(i, p)| v1::Record {
            seq: i as u64 + 1,
            payload: Some(p),
        })
        .collect();
    let batch = picket_proto::frame::batch_of(&records);
    rt.block_on(tx.send(v1::AgentMessage {
        body: Some(Body::Records(batch)),
    }))?;
    loop {
        match next(&mut inbound)? {
            control_message::Body::Ack(a) if a.acked_seq == 3 => break,
            control_message::Body::Ack(_) => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    // Heartbeats keep its session while the rest is checked.
    let beat = tx.clone();
    rt.spawn(async move {
        loop {
            let hb = v1::AgentMessage {
                body: Some(Body::Heartbeat(v1::Heartbeat {
                    sent_unix_ms: picket_clock::now_ms(),
                })),
            };
            if beat.send(hb).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let logs = ctl(&w, &admin, &["logs", "--host", "old"])?;
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("hello from an old agent"),
        "{}",
        stderr(&logs)
    );
    let events = ctl(&w, &admin, &["events", "--host", "old", "-o", "json"])?;
    assert!(
        String::from_utf8_lossy(&events.stdout).contains("Failed password"),
        "{} {} {}",
        String::from_utf8_lossy(&events.stdout),
        stderr(&events),
        cp.proc.stderr()
    );

    // A step it could not run is refused at once, saying why; the current
    // agent runs it.
    wait_for("new online", Duration::from_secs(20), || {
        (status_of(&w, &admin, "new")? == "online").then_some(())
    })?;
    let started = std::time::Instant::now();
    let out = ctl(
        &w,
        &admin,
        &[
            "run",
            "--selector",
            "name in (old,new)",
            "-o",
            "json",
            "--",
            "true",
        ],
    )?;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let results: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let of = |h: &str| results.iter().find(|r| r["host"] == h).cloned();
    let old = of("old").context("a result for old")?;
    assert_eq!(old["state"], "failed");
    let why = old["output"].as_str().unwrap_or_default();
    assert!(
        why.contains("agent 0.1.0 cannot run steps") && why.contains("upgrade it"),
        "{why}"
    );
    assert_eq!(of("new").context("a result for new")?["state"], "succeeded");
    assert!(
        took < Duration::from_secs(60),
        "refused at once, not after the step timeout"
    );
    // Nothing was sent to it: the old agent's stream carried no dispatch.
    while let Ok(Ok(Some(m))) = rt.block_on(async {
        tokio::time::timeout(Duration::from_millis(200), inbound.message()).await
    }) {
        assert!(
            !matches!(m.body, Some(control_message::Body::Dispatch(_))),
            "a step was sent to an agent that cannot run it"
        );
    }

    // Hosts by version.
    let status = ctl(&w, &admin, &["status", "-o", "json"])?;
    let status: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    assert_eq!(status["agent_versions"]["0.1.0"], 1, "{status}");
    let current = status["agent_versions"]
        .as_object()
        .and_then(|v| v.keys().find(|k| k.starts_with("0.1.0+")).cloned())
        .context("the current agent's version carries its commit")?;
    assert_eq!(status["agent_versions"][&current], 1, "{status}");
    let v = w.run("picket-agent", &["--version"])?;
    assert!(
        String::from_utf8_lossy(&v.stdout).contains(&current),
        "--version says the same as the agent reports"
    );
    drop(tx);
    Ok(())
}
