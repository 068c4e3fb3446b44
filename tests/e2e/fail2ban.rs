//! The real fail2ban daemon (Debian package) reads a generated auth.log,
//! bans with its `dummy` action and writes its own fail2ban.log, which the
//! agent tails: every ban fail2ban logs appears in
//! `picketctl events --source fail2ban -o json` with the right jail and IP.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use picket_tests::*;

fn syslog_now() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // `date -u` formats it as sshd's syslog lines have it.
    Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%b %e %H:%M:%S"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim_end().to_string())
        .unwrap_or_default()
}

#[test]
fn every_ban_fail2ban_logs_is_an_event_with_jail_and_ip() -> Result<()> {
    let server = tool("fail2ban-server", "fail2ban")?;
    let w = World::new()?;
    let fp = w.init("cp", "")?;
    let cp = Control::start(&w, "cp")?;
    let admin = cp.admin_flags();

    // A private fail2ban: Debian's filters and actions, our own settings.
    let f2b = w.path("f2b");
    let etc = f2b.join("etc");
    std::fs::create_dir_all(&f2b)?;
    let st = Command::new("cp")
        .args(["-r", "/etc/fail2ban"])
        .arg(&etc)
        .status()?;
    anyhow::ensure!(st.success(), "copying /etc/fail2ban");
    for entry in std::fs::read_dir(etc.join("jail.d"))? {
        std::fs::remove_file(entry?.path())?;
    }
    let log = f2b.join("fail2ban.log");
    let auth = f2b.join("auth.log");
    std::fs::write(&auth, "")?;
    std::fs::write(
        etc.join("fail2ban.local"),
        format!(
            "[Definition]\nloglevel = INFO\nlogtarget = {}\nsocket = {}\npidfile = {}\ndbfile = :memory:\n",
            log.display(),
            f2b.join("f2b.sock").display(),
            f2b.join("f2b.pid").display()
        ),
    )?;
    std::fs::write(
        etc.join("jail.local"),
        format!(
            "[DEFAULT]\nbackend = polling\nbantime = 600\nfindtime = 600\nmaxretry = 3\n\n\
             [sshd]\nenabled = true\nport = ssh\nlogpath = {}\naction = dummy[target=\"{}\"]\n",
            auth.display(),
            f2b.join("dummy.target").display()
        ),
    )?;
    std::fs::write(&log, "")?;

    // The agent tails fail2ban's own log.
    let _agent = enroll_with_sources(
        &w,
        &cp,
        &fp,
        "vm-security",
        &["role=security"],
        &[("fail2ban", &log)],
    )?;

    let mut cmd = Command::new(&server);
    cmd.arg("-f").arg("-x").arg("-c").arg(&etc);
    let _daemon = Proc::spawn(cmd)?;
    wait_for(
        "fail2ban to start the sshd jail",
        Duration::from_secs(30),
        || {
            let t = std::fs::read_to_string(&log).ok()?;
            t.contains("Jail 'sshd' started").then_some(())
        },
    )
    .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;

    // Four failures from each of three addresses.
    let ips = ["203.0.113.5", "198.51.100.23", "2001:db8::77"];
    let mut f = std::fs::OpenOptions::new().append(true).open(&auth)?;
    for round in 0..4 {
        for (k, ip) in ips.iter().enumerate() {
            writeln!(
                f,
                "{} vm-security sshd[{}]: Failed password for invalid user admin from {ip} port {} ssh2",
                syslog_now(),
                1000 + k,
                40000 + round
            )?;
        }
        f.flush()?;
        std::thread::sleep(Duration::from_millis(300));
    }

    // fail2ban bans all three (its log says so) ...
    let logged = wait_for("fail2ban to ban all three", Duration::from_secs(60), || {
        let t = std::fs::read_to_string(&log).ok()?;
        let bans: Vec<String> = t
            .lines()
            .filter(|l| l.contains("] Ban "))
            .map(str::to_string)
            .collect();
        (bans.len() >= ips.len()).then_some(bans)
    })
    .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
    // ... and every ban it logged is an event, with its jail and address.
    let events = wait_for("the bans as events", Duration::from_secs(30), || {
        let e = ctl_json(
            &w,
            &admin,
            &["events", "--source", "fail2ban", "--limit", "10000"],
        )
        .ok()?;
        let bans: Vec<serde_json::Value> = e.into_iter().filter(|e| e["kind"] == "ban").collect();
        (bans.len() == logged.len()).then_some(bans)
    })?;
    for ip in ips {
        let e = events
            .iter()
            .find(|e| e["fields"]["ip"] == ip)
            .with_context(|| format!("no ban event for {ip}: {events:?}"))?;
        assert_eq!(e["fields"]["jail"], "sshd");
        assert_eq!(e["severity"], "medium");
        assert_eq!(e["host"], "vm-security");
    }
    for (line, e) in logged.iter().zip(&events) {
        assert_eq!(e["message"].as_str(), Some(line.as_str()));
    }
    Ok(())
}
