//! Host metrics end to end: agents sample, the control plane stores and
//! exports, `promtool` accepts the exposition, a real Prometheus scrapes it,
//! `picketctl metrics` shows it, and a stopped host reads `picket_agent_up 0`.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use picket_tests::*;

const HOSTILE: &str = r#"owner=x",host="db1\"#;

fn enrolled_fleet(w: &World, cp: &Control, fp: &str, names: &[&str]) -> Result<Vec<Proc>> {
    let tok = token(w, cp, &["--uses", &names.len().to_string()])?;
    let mut procs = Vec::new();
    for n in names {
        // A label value that would end the quote and add labels if it
        // were written unescaped (one host blinding Prometheus).
        let out = enroll(w, cp, fp, &tok, n, &["role=web", "team.name=ops", HOSTILE])?;
        if !out.status.success() {
            bail!("enroll {n}: {}", stderr(&out));
        }
        set_agent_key(w, n, "metrics_interval", "\"1s\"")?;
        procs.push(run_agent(w, n)?);
    }
    Ok(procs)
}

#[test]
fn prometheus_scrapes_every_host_and_promtool_accepts_the_exposition() -> Result<()> {
    let promtool = tool("promtool", "prometheus")?;
    let prometheus = tool("prometheus", "prometheus")?;
    let w = World::new()?;
    let fp = w.init("cp", "")?;
    let cp = Control::start(&w, "cp")?;
    let admin = cp.admin_flags();
    let mut agents = enrolled_fleet(&w, &cp, &fp, &["web-1", "web-2"])?;

    // picketctl metrics shows samples once they arrive.
    for host in ["web-1", "web-2"] {
        let points = wait_for(
            "cpu samples in picketctl metrics",
            Duration::from_secs(30),
            || {
                let p = ctl_json(
                    &w,
                    &admin,
                    &["metrics", host, "--since", "5m", "--field", "cpu"],
                )
                .ok()?;
                (p.len() >= 2).then_some(p)
            },
        )?;
        assert!(
            points
                .iter()
                .all(|p| p["metric"] == "cpu_usage_percent" && p["host"] == host)
        );
        assert!(points.iter().all(|p| {
            p["value"]
                .as_f64()
                .is_some_and(|v| (0.0..=100.0).contains(&v))
        }));
    }
    let table = ctl(&w, &admin, &["metrics", "web-1", "--since", "5m"])?;
    let text = String::from_utf8_lossy(&table.stdout);
    for m in [
        "cpu_usage_percent",
        "memory_used_bytes",
        "load1",
        "disk_used_bytes",
        "uptime_seconds",
        "processes",
    ] {
        assert!(text.contains(m), "{m} missing from:\n{text}");
    }

    // The live exposition passes promtool.
    let (code, body) = http_get(&cp.http, "/metrics")?;
    assert_eq!(code, 200);
    assert!(
        body.contains("picket_host_cpu_usage_percent{host=\"web-1\""),
        "{body}"
    );
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(check.stdin.as_mut().context("stdin")?, body.as_bytes())?;
    let out = check.wait_with_output()?;
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus scrapes it and answers a query for every host.
    let port = free_port()?;
    let cfg = w.path("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: picket\n    static_configs:\n      - targets: ['{}']\n",
            cp.http
        ),
    )?;
    let mut cmd = Command::new(&prometheus);
    cmd.arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            w.path("prom-data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let prom = Proc::spawn(cmd)?;
    let addr = format!("127.0.0.1:{port}");
    let hosts = wait_for(
        "Prometheus to answer for both hosts",
        Duration::from_secs(60),
        || {
            let (code, body) =
                http_get(&addr, "/api/v1/query?query=picket_host_cpu_usage_percent").ok()?;
            if code != 200 {
                return None;
            }
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let mut hosts: Vec<String> = v["data"]["result"]
                .as_array()?
                .iter()
                .filter_map(|r| r["metric"]["host"].as_str().map(str::to_string))
                .collect();
            hosts.sort();
            (hosts.len() == 2).then_some((hosts, v))
        },
    )
    .with_context(|| format!("prometheus stderr: {}", prom.stderr()))?;
    assert_eq!(hosts.0, vec!["web-1", "web-2"]);
    let series = &hosts.1["data"]["result"][0]["metric"];
    assert_eq!(
        series["role"], "web",
        "agent labels become Prometheus labels: {series}"
    );
    assert_eq!(
        series["owner"],
        HOSTILE.trim_start_matches("owner="),
        "a value with quotes and a backslash arrives whole: {series}"
    );
    assert_eq!(
        series["team_name"], "ops",
        "label keys are made Prometheus-safe: {series}"
    );

    // Every query of the Grafana dashboard runs, and the host panels show
    // both hosts.
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../provisioning/grafana/picket-fleet.json"
    ))?)?;
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .context("panels")?
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(|e| e.replace("$host", ".*")))
        .collect();
    assert!(exprs.len() >= 10);
    for e in &exprs {
        let url = format!("/api/v1/query?query={}", urlencode(e));
        let v = wait_for(
            &format!("dashboard query {e}"),
            Duration::from_secs(30),
            || {
                let (code, body) = http_get(&addr, &url).ok()?;
                let v: serde_json::Value = serde_json::from_str(&body).ok()?;
                let ok = code == 200 && v["status"] == "success";
                let needs_hosts =
                    e.starts_with("picket_host_cpu") || e.starts_with("picket_host_memory");
                let hosts = v["data"]["result"].as_array().map_or(0, Vec::len);
                (ok && (!needs_hosts || hosts == 2)).then_some(v)
            },
        )?;
        assert_eq!(v["status"], "success", "{e}");
    }

    // A host that stops reads picket_agent_up 0.
    agents[1].kill9();
    wait_for(
        "picket_agent_up 0 for web-2",
        Duration::from_secs(30),
        || {
            let (_, body) = http_get(&cp.http, "/metrics").ok()?;
            let line = body
                .lines()
                .find(|l| l.starts_with("picket_agent_up{host=\"web-2\""))?;
            line.ends_with(" 0").then_some(())
        },
    )?;
    let (_, body) = http_get(&cp.http, "/metrics")?;
    assert!(
        body.lines()
            .any(|l| l.starts_with("picket_agent_up{host=\"web-1\"") && l.ends_with(" 1"))
    );
    assert!(
        !body.contains("picket_host_cpu_usage_percent{host=\"web-2\""),
        "a gone host's values are not repeated"
    );
    Ok(())
}

#[test]
fn samples_buffered_while_the_control_plane_is_down_arrive_once() -> Result<()> {
    let w = World::new()?;
    let fp = w.init("cp", "")?;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let mut cp = Control::start_on(&w, "cp", &listen)?;
    let admin = cp.admin_flags();
    let _agents = enrolled_fleet(&w, &cp, &fp, &["db-1"])?;
    let count = |flags: &[String]| -> Option<usize> {
        ctl_json(
            &w,
            flags,
            &["metrics", "db-1", "--since", "10m", "--field", "uptime"],
        )
        .ok()
        .map(|p| p.len())
    };
    wait_for("first samples", Duration::from_secs(30), || {
        count(&admin).filter(|n| *n >= 2)
    })?;

    // Down for a while: the agent keeps sampling into its buffer.
    cp.proc.kill9();
    std::thread::sleep(Duration::from_secs(5));
    cp = Control::start_on(&w, "cp", &listen)?;
    let admin = cp.admin_flags();
    let points = wait_for("the outage's samples", Duration::from_secs(60), || {
        let p = ctl_json(
            &w,
            &admin,
            &["metrics", "db-1", "--since", "10m", "--field", "uptime"],
        )
        .ok()?;
        // Back online and several more samples in.
        (status_of(&w, &admin, "db-1")? == "online" && p.len() >= 10).then_some(p)
    })?;
    // No gap: consecutive samples are about a second apart, even across
    // the outage, and no sample is stored twice.
    let times: Vec<&str> = points.iter().filter_map(|p| p["time"].as_str()).collect();
    let mut sorted = times.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), times.len(), "no duplicate samples");
    let ms: Vec<i64> = points
        .iter()
        .filter_map(|p| p["value"].as_f64())
        .map(|v| v as i64)
        .collect();
    let gaps: Vec<i64> = ms.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g <= 3),
        "uptime advances ~1s per sample, no hole: {gaps:?}"
    );
    Ok(())
}

/// Percent-encodes a PromQL expression for a query string.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
