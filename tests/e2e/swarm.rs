//! `picket-swarm` (issue #21): 300 simulated agents from one process, each
//! enrolled with its own key and certificate and holding its own mTLS
//! stream through the agent's session code. All show online, a step
//! dispatched to every one of them comes back, all return after the
//! control plane is killed with -9 and restarted, and a second run of the
//! swarm reuses the identities it kept (its token is used up).
//! The 1,000–10,000-agent runs are benchmarks (docs/benchmarks.md).

use std::time::Duration;

use anyhow::Result;
use picket_tests::*;

const N: usize = 300;

/// One host may hold every connection and enrollment of the swarm.
const LIMITS: &str = r#"
[limits]
max_unauthenticated = 1024
max_unauthenticated_per_address = 1024
enroll_per_minute = 100000
"#;

fn online(w: &World, admin: &[String]) -> usize {
    agents(w, admin).map_or(0, |a| {
        a.values()
            .filter(|a| {
                a["status"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("online"))
            })
            .count()
    })
}

#[test]
fn a_swarm_enrolls_streams_answers_steps_and_comes_back_after_a_kill() -> Result<()> {
    let w = World::new()?;
    let fp = w.init("cp", LIMITS)?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let mut cp = Control::start_on(&w, "cp", &listen)?;
    let admin = cp.admin_flags();
    let tok = token(&w, &cp, &["--uses", &N.to_string()])?;
    let swarm = |token: &str| {
        let mut c = w.cmd("picket-swarm");
        c.args([
            "--server",
            &listen,
            "--ca-fingerprint",
            &fp,
            "--token",
            token,
        ])
        .args(["--agents", &N.to_string(), "--metrics-interval", "1s"])
        .arg("--state-dir")
        .arg(w.path("swarm"));
        Proc::spawn(c)
    };
    let mut s = swarm(&tok)?;
    let all_online = |what: &str| {
        wait_for(what, Duration::from_secs(180), || {
            (online(&w, &admin) == N).then_some(())
        })
    };
    all_online("every swarm agent online")?;
    let names = agents(&w, &admin)?;
    assert_eq!(names.len(), N);
    assert!(names.contains_key("swarm-00001") && names.contains_key("swarm-00300"));

    // A step on every host: each answers once.
    let rows = ctl_json(
        &w,
        &admin,
        &["run", "-l", "none!=x", "-o", "json", "--", "true"],
    )?;
    assert_eq!(rows.len(), N, "{rows:?}");
    assert!(rows.iter().all(|r| r["state"] == "succeeded"), "{rows:?}");
    // Their samples are stored.
    let (_, body) = http_get(&cp.http, "/metrics")?;
    assert!(
        body.lines()
            .any(|l| l.starts_with("picket_host_cpu_usage_percent{") && l.contains("swarm-")),
        "no swarm samples on /metrics"
    );

    // The control plane dies and comes back: so do the streams.
    cp.proc.kill9();
    // Same folder, same port: the same admin flags.
    let _cp = Control::start_on(&w, "cp", &listen)?;
    all_online("every swarm agent back after kill -9")?;
    let json = wait_for("the swarm's JSON line", Duration::from_secs(30), || {
        s.stdout()
            .lines()
            .rev()
            .find(|l| l.contains(&format!("\"connected\":{N}")))
            .map(str::to_string)
    })?;
    let v: serde_json::Value = serde_json::from_str(&json)?;
    assert_eq!(v["enrolled"], N);
    assert_eq!(v["dispatches"], N);

    // A second run enrolls nothing: the token it is given is used up.
    s.signal(nix::sys::signal::Signal::SIGTERM);
    s.wait_exit(Duration::from_secs(20))?;
    wait_for("every swarm agent offline", Duration::from_secs(30), || {
        (online(&w, &admin) == 0).then_some(())
    })?;
    let _s = swarm(&tok)?;
    all_online("every swarm agent online from the kept identities")?;
    Ok(())
}
