//! Alerts end to end (SPEC §10): real agents tail real files, the control
//! plane's rules fire, and real receivers on loopback get the
//! notifications: the Slack, Discord, PagerDuty and webhook payloads from
//! a test HTTP receiver, a real Alertmanager (`prometheus-alertmanager`)
//! and a real SMTP server (Python's aiosmtpd). Notifications wait while a
//! receiver is down, across a control-plane SIGKILL, and arrive once.

use std::time::Duration;

use anyhow::{Context, Result};
use picket_tests::receiver::Receiver;
use picket_tests::*;
use serde_json::Value;

/// A Suricata alert of severity 1 (Picket's `high`), from the corpus
/// (tests/corpus/suricata/alert-testmyids.eve.json) with its severity
/// raised.
fn ids_alert() -> String {
    let p = tests_dir().join("corpus/suricata/alert-testmyids.eve.json");
    let text = std::fs::read_to_string(&p).unwrap_or_default();
    let line = text.lines().next().unwrap_or_default();
    format!("{}\n", line.replace("\"severity\":2", "\"severity\":1"))
}

const FAST: &str =
    "[defaults]\ngroup_wait = \"1s\"\ngroup_interval = \"2s\"\nrepeat_interval = \"1h\"\n\n";

/// A control plane on a fixed port reading `cp/alerts.toml`.
fn control(w: &World, alerts: &str) -> Result<(String, Control, String)> {
    let fp = w.init(
        "cp",
        "heartbeat_interval = \"1s\"\nalerts = \"alerts.toml\"",
    )?;
    std::fs::write(w.path("cp/alerts.toml"), alerts)?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let cp = Control::start_on(w, "cp", &listen)?;
    Ok((fp, cp, listen))
}

fn alerts(w: &World, admin: &[String]) -> Vec<Value> {
    ctl_json(w, admin, &["alerts", "list"]).unwrap_or_default()
}

fn firing(v: &Value) -> bool {
    v["status"] == "firing"
}

#[test]
fn events_notify_every_http_receiver_then_resolve_and_wait_out_a_down_receiver_across_a_sigkill()
-> Result<()> {
    let w = World::new()?;
    let mut rx = Receiver::start()?;
    let rules = format!(
        "{FAST}[[rule]]\nname = \"IdsAlert\"\nkind = \"event\"\nmatch = {{ source = \"suricata\", kind = \"alert\", severity = \"high\" }}\nseverity = \"critical\"\nresolve_after = \"4s\"\nlabels = {{ team = \"security\" }}\nsummary = \"{{{{ fields.signature }}}} from {{{{ fields.src_ip }}}} on {{{{ host }}}}\"\n\n\
         [[notifier]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n\n\
         [[notifier]]\nname = \"ops\"\nkind = \"slack\"\nurl = \"{}\"\n\n\
         [[notifier]]\nname = \"chat\"\nkind = \"discord\"\nurl = \"{}\"\n\n\
         [[notifier]]\nname = \"oncall\"\nkind = \"pagerduty\"\nrouting_key = \"R0UT1NG\"\nurl = \"{}\"\n\n\
         [[route]]\nnotifiers = [\"hook\", \"ops\", \"chat\", \"oncall\"]\n",
        rx.url("/webhook"),
        rx.url("/slack/T0/B0/secret"),
        rx.url("/discord/1/secret"),
        rx.url("/pd/v2/enqueue"),
    );
    let (fp, mut cp, listen) = control(&w, &rules)?;
    let admin = cp.admin_flags();
    let eve = w.path("eve.json");
    std::fs::write(&eve, "")?;
    let _agent = enroll_with_sources(
        &w,
        &cp,
        &fp,
        "vm-security",
        &["role=security"],
        &[("suricata", &eve)],
    )?;
    append(&eve, &ids_alert())?;

    // Every receiver gets its payload.
    let hook = rx.wait("/webhook", Duration::from_secs(30), firing)?;
    assert_eq!(hook["version"], "4");
    assert_eq!(hook["receiver"], "hook");
    let a = &hook["alerts"][0];
    assert_eq!(a["labels"]["alertname"], "IdsAlert");
    assert_eq!(a["labels"]["host"], "vm-security");
    assert_eq!(a["labels"]["role"], "security");
    assert_eq!(a["labels"]["team"], "security");
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(
        a["annotations"]["summary"],
        "GPL ATTACK_RESPONSE id check returned root from 82.165.177.154 on vm-security"
    );
    assert_eq!(a["endsAt"], "0001-01-01T00:00:00Z");
    let fingerprint = a["fingerprint"]
        .as_str()
        .context("fingerprint")?
        .to_string();
    let slack = rx.wait("/slack", Duration::from_secs(10), |_| true)?;
    assert!(
        slack["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("[FIRING:1]") && t.contains("GPL ATTACK_RESPONSE")),
        "{slack}"
    );
    assert!(slack["blocks"].is_array());
    let discord = rx.wait("/discord", Duration::from_secs(10), |_| true)?;
    assert!(
        discord["content"]
            .as_str()
            .is_some_and(|c| c.starts_with("[FIRING:1]"))
    );
    assert_eq!(discord["embeds"][0]["title"], "IdsAlert");
    let pd = rx.wait("/pd", Duration::from_secs(10), |v| {
        v["event_action"] == "trigger"
    })?;
    assert_eq!(pd["routing_key"], "R0UT1NG");
    assert_eq!(pd["dedup_key"], fingerprint.as_str());
    assert_eq!(pd["payload"]["severity"], "critical");
    assert_eq!(pd["payload"]["source"], "vm-security");

    // `alerts list` shows it, with the SPEC's fields.
    let list = alerts(&w, &admin);
    let mine = list
        .iter()
        .find(|a| a["fingerprint"] == fingerprint.as_str())
        .with_context(|| format!("{list:?}"))?;
    assert_eq!(mine["rule"], "IdsAlert");
    assert_eq!(mine["severity"], "critical");
    assert_eq!(mine["silenced"], false);
    assert!(mine["started"].is_string() && mine["value"].is_string());
    let status = ctl_json(&w, &admin, &["status"])?;
    assert_eq!(status[0]["alerts_firing"], 1, "{status:?}");

    // No matching event for `resolve_after`: resolved, notified once.
    let resolved = rx.wait("/webhook", Duration::from_secs(30), |v| {
        v["status"] == "resolved"
    })?;
    assert!(resolved["alerts"][0]["endsAt"].as_str() != Some("0001-01-01T00:00:00Z"));
    rx.wait("/pd", Duration::from_secs(10), |v| {
        v["event_action"] == "resolve" && v["dedup_key"] == fingerprint.as_str()
    })?;
    rx.wait("/slack", Duration::from_secs(10), |v| {
        v["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("[RESOLVED]"))
    })?;
    rx.wait("/discord", Duration::from_secs(10), |v| {
        v["content"]
            .as_str()
            .is_some_and(|t| t.starts_with("[RESOLVED]"))
    })?;
    std::thread::sleep(Duration::from_secs(3));
    let hooks = rx.got("/webhook");
    assert_eq!(hooks.len(), 2, "one firing, one resolved: {hooks:?}");

    // The receiver goes down; the alert fires again and its notifications
    // wait, failing, in the outbox...
    rx.down();
    append(&eve, &ids_alert())?;
    wait_for("the notifications to fail", Duration::from_secs(30), || {
        let r = ctl_json(&w, &admin, &["alerts", "rules"]).ok()?;
        let hook = r[0]["notifiers"]
            .as_array()?
            .iter()
            .find(|n| n["name"] == "hook")?
            .clone();
        (hook["failed"].as_u64()? >= 1 && hook["queued"].as_u64()? >= 1).then_some(())
    })?;
    let (_, metrics) = http_get(&cp.http, "/metrics")?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("picket_control_notifications_failed_total{notifier=\"hook\"}")),
        "{metrics}"
    );
    // ...across a SIGKILL of the control plane...
    cp.proc.kill9();
    let cp = Control::start_on(&w, "cp", &listen)?;
    let admin = cp.admin_flags();
    // ...and arrive once it is back.
    rx.up()?;
    wait_for("the waiting notifications", Duration::from_secs(60), || {
        (rx.got("/webhook").iter().filter(|v| firing(v)).count() >= 2).then_some(())
    })?;
    std::thread::sleep(Duration::from_secs(3));
    let fired: Vec<Value> = rx.got("/webhook").into_iter().filter(firing).collect();
    assert_eq!(fired.len(), 2, "the second firing arrives once: {fired:?}");
    for path in ["/slack", "/discord"] {
        let n = rx
            .got(path)
            .iter()
            .filter(|v| {
                v.get("text")
                    .or(v.get("content"))
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.starts_with("[FIRING"))
            })
            .count();
        assert_eq!(n, 2, "{path}: {:?}", rx.got(path));
    }
    // The restored alert resolves, notified once more.
    let resolved = |rx: &Receiver| {
        rx.got("/webhook")
            .iter()
            .filter(|v| v["status"] == "resolved")
            .count()
    };
    wait_for("the second resolve", Duration::from_secs(30), || {
        (resolved(&rx) >= 2).then_some(())
    })?;
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(resolved(&rx), 2, "{:?}", rx.got("/webhook"));
    assert!(
        alerts(&w, &admin).iter().all(|a| a["state"] != "firing"),
        "nothing fires any more"
    );
    Ok(())
}

#[test]
fn a_killed_host_raises_host_silent_and_a_silence_keeps_it_from_notifying() -> Result<()> {
    let w = World::new()?;
    let rx = Receiver::start()?;
    let rules = format!(
        "{FAST}[[rule]]\nname = \"HostDown\"\nkind = \"host_silent\"\nafter = \"3s\"\nseverity = \"critical\"\nsummary = \"{{{{ host }}}} has sent nothing for {{{{ value }}}}\"\n\n\
         [[notifier]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n\n[[route]]\nnotifiers = [\"hook\"]\n",
        rx.url("/webhook")
    );
    let (fp, mut cp, listen) = control(&w, &rules)?;
    let admin = cp.admin_flags();
    let mut a = enroll_with_sources(&w, &cp, &fp, "vm-prod", &["role=prod"], &[])?;
    let mut b = enroll_with_sources(&w, &cp, &fp, "vm-staging", &["role=staging"], &[])?;
    wait_for("two agents online", Duration::from_secs(30), || {
        let all = agents(&w, &admin).ok()?;
        (all.values().filter(|v| v["status"] == "online").count() == 2).then_some(())
    })?;

    // A silence needs a matcher.
    let out = ctl(&w, &admin, &["silence", "create", "--for", "1h"])?;
    assert!(!out.status.success());
    let out = ctl(
        &w,
        &admin,
        &[
            "silence",
            "create",
            "--match",
            "host=vm-staging",
            "--for",
            "1h",
            "--comment",
            "rebuild",
        ],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(id.starts_with("silence-"), "{id}");
    let listed = ctl_json(&w, &admin, &["silence", "list"])?;
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["matchers"]["host"], "vm-staging");
    assert_eq!(listed[0]["comment"], "rebuild");

    a.kill9();
    b.kill9();
    let down = rx.wait("/webhook", Duration::from_secs(30), firing)?;
    assert_eq!(down["alerts"][0]["labels"]["host"], "vm-prod");
    assert!(
        down["alerts"][0]["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("vm-prod has sent nothing for")),
        "{down}"
    );
    // Both fire; the silenced one is listed, marked, and notifies nobody.
    let both = wait_for("both alerts firing", Duration::from_secs(20), || {
        let l = alerts(&w, &admin);
        (l.iter().filter(|a| a["state"] == "firing").count() == 2).then_some(l)
    })?;
    let staging = both
        .iter()
        .find(|a| a["labels"]["host"] == "vm-staging")
        .context("vm-staging's alert")?;
    assert_eq!(staging["silenced"], true);
    std::thread::sleep(Duration::from_secs(3));
    let hosts: Vec<Value> = rx
        .got("/webhook")
        .iter()
        .flat_map(|v| v["alerts"].as_array().cloned().unwrap_or_default())
        .map(|a| a["labels"]["host"].clone())
        .collect();
    assert!(!hosts.contains(&Value::from("vm-staging")), "{hosts:?}");
    assert_eq!(ctl_json(&w, &admin, &["status"])?[0]["alerts_firing"], 2);

    // Expired, the silence no longer holds it back.
    let out = ctl(&w, &admin, &["silence", "expire", &id])?;
    assert!(out.status.success(), "{}", stderr(&out));
    rx.wait("/webhook", Duration::from_secs(20), |v| {
        v["alerts"][0]["labels"]["host"] == "vm-staging"
    })?;
    assert!(ctl_json(&w, &admin, &["silence", "list"])?.is_empty());
    let audit = ctl(&w, &admin, &["audit"])?;
    let text = String::from_utf8_lossy(&audit.stdout);
    assert!(
        text.contains("silence.create") && text.contains("silence.expire"),
        "{text}"
    );

    // A control-plane restart does not bring a dead host back: its alert
    // stays firing, and nothing is resolved.
    cp.proc.kill9();
    let cp = Control::start_on(&w, "cp", &listen)?;
    let admin = cp.admin_flags();
    std::thread::sleep(Duration::from_secs(5));
    let after = alerts(&w, &admin);
    assert_eq!(
        after.iter().filter(|a| a["state"] == "firing").count(),
        2,
        "{after:?}"
    );
    assert!(
        rx.got("/webhook").iter().all(|v| v["status"] == "firing"),
        "{:?}",
        rx.got("/webhook")
    );
    Ok(())
}

#[test]
fn reload_refuses_a_bad_file_and_keeps_the_rules_and_sighup_reads_a_good_one() -> Result<()> {
    let w = World::new()?;
    let good =
        format!("{FAST}[[rule]]\nname = \"HostDown\"\nkind = \"host_silent\"\nafter = \"30s\"\n");
    // At start, a bad file is a configuration error: exit 2, naming it.
    let bad = World::new()?;
    bad.init("cp", "alerts = \"alerts.toml\"")?;
    std::fs::write(
        bad.path("cp/alerts.toml"),
        "[[rule]]\nname = \"X\"\nkind = \"nope\"\n",
    )?;
    let cfg = bad.path("cp/control.toml").display().to_string();
    let out = bad.run(
        "picket-control",
        &[
            "run",
            "--config",
            &cfg,
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
    )?;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("rule \"X\".kind: unknown kind \"nope\""),
        "{}",
        stderr(&out)
    );

    let (_fp, cp, _) = control(&w, &good)?;
    let admin = cp.admin_flags();
    let names = |w: &World| -> Vec<String> {
        ctl_json(w, &admin, &["alerts", "rules"])
            .ok()
            .and_then(|r| r.first().cloned())
            .and_then(|r| r["rules"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r["name"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(names(&w), ["HostDown"]);

    std::fs::write(
        w.path("cp/alerts.toml"),
        "[[rule]]\nname = \"HighCpu\"\nkind = \"threshold\"\nmetric = \"cpu_usage_percent\"\nop = \">\"\nvalue = 90\nfor = \"five minutes\"\n\n[[route]]\nnotifiers = [\"pager\"]\n",
    )?;
    let out = ctl(&w, &admin, &["alerts", "reload"])?;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("rule \"HighCpu\".for"), "{err}");
    assert!(err.contains("no notifier named \"pager\""), "{err}");
    assert_eq!(names(&w), ["HostDown"], "the rules in force stay");

    std::fs::write(
        w.path("cp/alerts.toml"),
        format!(
            "{good}\n[[rule]]\nname = \"Disk\"\nkind = \"threshold\"\nmetric = \"no_such_series\"\nop = \">\"\nvalue = 1\n"
        ),
    )?;
    cp.proc.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for("the SIGHUP reload", Duration::from_secs(10), || {
        (names(&w) == ["HostDown", "Disk"]).then_some(())
    })?;
    let r = ctl_json(&w, &admin, &["alerts", "rules"])?;
    assert!(
        r[0]["warnings"].to_string().contains("no_such_series"),
        "an unknown series is a warning: {r:?}"
    );
    Ok(())
}

/// A real Alertmanager, started here, listening on a free port.
fn alertmanager(w: &World) -> Result<(Proc, String)> {
    let bin = tool("prometheus-alertmanager", "prometheus-alertmanager")?;
    let port = free_port()?;
    let cfg = w.path("am.yml");
    std::fs::write(
        &cfg,
        "route:\n  receiver: blackhole\n  group_wait: 1s\nreceivers:\n  - name: blackhole\n",
    )?;
    let mut cmd = std::process::Command::new(bin);
    cmd.arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.path={}", w.path("am-data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=");
    let am = Proc::spawn(cmd)?;
    let addr = format!("127.0.0.1:{port}");
    wait_for("Alertmanager to be ready", Duration::from_secs(30), || {
        http_get(&addr, "/-/ready").ok().filter(|(c, _)| *c == 200)
    })
    .with_context(|| am.stderr())?;
    Ok((am, addr))
}

/// A real SMTP server (aiosmtpd) printing each mail as a JSON line.
fn smtp_server() -> Result<(Proc, String)> {
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = std::process::Command::new("python3");
    cmd.env("PYTHONPATH", tests_dir().join("tools")).args([
        "-u",
        "-m",
        "aiosmtpd",
        "-n",
        "-l",
        &addr,
        "-c",
        "smtp_sink.Sink",
    ]);
    let p = Proc::spawn(cmd)?;
    wait_for("aiosmtpd to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(&addr).ok()
    })
    .with_context(|| p.stderr())?;
    Ok((p, addr))
}

fn mails(p: &Proc) -> Vec<Value> {
    p.stdout()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn a_real_alertmanager_shows_the_alert_and_its_resolve_and_a_real_smtp_server_gets_the_mail()
-> Result<()> {
    let w = World::new()?;
    let (_am, am_addr) = alertmanager(&w)?;
    let (smtp, smtp_addr) = smtp_server()?;
    let rules = format!(
        "{FAST}[[rule]]\nname = \"IdsAlert\"\nkind = \"event\"\nmatch = {{ source = \"suricata\", kind = \"alert\", severity = \"high\" }}\nseverity = \"critical\"\nresolve_after = \"4s\"\nsummary = \"{{{{ fields.signature }}}} on {{{{ host }}}}\"\n\n\
         [[notifier]]\nname = \"am\"\nkind = \"alertmanager\"\nurl = \"http://{am_addr}\"\n\n\
         [[notifier]]\nname = \"mail\"\nkind = \"email\"\nsmtp = \"{smtp_addr}\"\nstarttls = false\nfrom = \"picket@example.com\"\nto = [\"ops@example.com\", \"sec@example.com\"]\n\n\
         [[route]]\nnotifiers = [\"am\", \"mail\"]\n"
    );
    let (fp, cp, _) = control(&w, &rules)?;
    let admin = cp.admin_flags();
    let eve = w.path("eve.json");
    std::fs::write(&eve, "")?;
    let _agent = enroll_with_sources(&w, &cp, &fp, "vm-security", &[], &[("suricata", &eve)])?;

    // `alerts test` reaches the mail server at once.
    let out = ctl(&w, &admin, &["alerts", "test", "mail"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("the test mail", Duration::from_secs(20), || {
        mails(&smtp).into_iter().find(|m| {
            m["subject"]
                .as_str()
                .is_some_and(|s| s.contains("Test notification"))
        })
    })?;
    let out = ctl(&w, &admin, &["alerts", "test", "nobody"])?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no notifier named"),
        "{}",
        stderr(&out)
    );

    append(&eve, &ids_alert())?;
    let in_am = |want: bool| {
        let am_addr = am_addr.clone();
        move || {
            let (code, body) = http_get(&am_addr, "/api/v2/alerts").ok()?;
            let list: Vec<Value> = serde_json::from_str(&body).ok()?;
            let found = list.iter().find(|a| {
                a["labels"]["alertname"] == "IdsAlert" && a["labels"]["host"] == "vm-security"
            });
            (code == 200 && found.is_some() == want).then(|| found.cloned())
        }
    };
    let shown = wait_for(
        "the alert in Alertmanager",
        Duration::from_secs(30),
        in_am(true),
    )?
    .context("alert")?;
    assert_eq!(shown["labels"]["severity"], "critical");
    assert_eq!(
        shown["annotations"]["summary"],
        "GPL ATTACK_RESPONSE id check returned root on vm-security"
    );
    let mail = wait_for("the firing mail", Duration::from_secs(20), || {
        mails(&smtp).into_iter().find(|m| {
            m["subject"]
                .as_str()
                .is_some_and(|s| s.contains("GPL ATTACK"))
        })
    })?;
    assert_eq!(
        mail["subject"],
        "[FIRING:1] GPL ATTACK_RESPONSE id check returned root on vm-security"
    );
    assert_eq!(mail["mail_from"], "picket@example.com");
    assert_eq!(mail["rcpt_tos"].as_array().map(Vec::len), Some(2));
    assert!(
        mail["body"]
            .as_str()
            .is_some_and(|b| b.contains("host = vm-security"))
    );

    // Resolved: gone from Alertmanager's active alerts, and mailed.
    wait_for(
        "the resolve in Alertmanager",
        Duration::from_secs(40),
        in_am(false),
    )?;
    wait_for("the resolved mail", Duration::from_secs(20), || {
        mails(&smtp).into_iter().find(|m| {
            m["subject"]
                .as_str()
                .is_some_and(|s| s.starts_with("[RESOLVED]"))
        })
    })?;
    Ok(())
}
