//! `picket-control dev`, the README's first command: a loopback control
//! plane, the real `picket-agent` as a child process, and a `picketctl`
//! profile so the CLI works with no flags.

use std::time::Duration;

use anyhow::Result;
use nix::sys::signal::Signal;
use picket_tests::*;

const ONLINE_WAIT: Duration = Duration::from_secs(30);

#[test]
fn dev_mode_then_picketctl_with_no_flags() -> Result<()> {
    let w = World::new()?;
    let mut c = w.cmd("picket-control");
    c.args([
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ]);
    let mut dev = Proc::spawn(c)?;
    wait_for("dev mode ready", Duration::from_secs(30), || {
        dev.stdout().contains("Ctrl-C stops").then_some(())
    })
    .map_err(|e| anyhow::anyhow!("{e}: {}", dev.stderr()))?;
    assert!(
        dev.stdout().contains("picketctl -- agents list"),
        "{}",
        dev.stdout()
    );
    let online = wait_for("the local agent online", ONLINE_WAIT, || {
        let a = agents(&w, &[]).ok()?;
        (a.len() == 1 && a.values().all(|x| x["status"] == "online")).then_some(a)
    })?;
    let agent = online.values().next().unwrap();
    assert_eq!(agent["labels"]["role"], "dev");
    let out = ctl(&w, &[], &["agents", "list"])?;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("NAME") && table.contains("online"),
        "{table}"
    );
    // The agent is a real process of its own (the control plane carries
    // no agent code), and it stops with dev mode.
    let agent_cmd = |pid: &str| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default()
    };
    let agents_running = || {
        std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| agent_cmd(&e.file_name().to_string_lossy()))
                    .filter(|c| c.contains("picket-agent run") && c.contains(".picket-dev"))
                    .filter(|c| c.contains(&w.path("").display().to_string()))
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(agents_running(), 1, "one picket-agent child");
    dev.signal(Signal::SIGINT);
    let st = dev.wait_exit(Duration::from_secs(15))?;
    assert!(st.success(), "dev mode exits 0 on Ctrl-C: {}", dev.stderr());
    assert_eq!(agents_running(), 0, "the agent stopped with dev mode");
    Ok(())
}
