//! A rollout survives its leader (SPEC §12): three replicas on a
//! three-member etcd, three agents given all three; the leader is killed
//! (`kill -9`) mid-rollout; another leads within the lease's TTL and a
//! moment, resumes the rollout from etcd, and it finishes with its step
//! run once on every host (marker files written by the steps). Then the
//! new leader is paused for 10 s mid-rollout: the last replica finishes
//! it, and the woken one, fenced, runs nothing more.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use picket_tests::etcd::EtcdCluster;
use picket_tests::*;

const HOSTS: [&str; 3] = ["web-0", "web-1", "web-2"];

#[test]
fn a_new_leader_finishes_the_rollout_of_a_killed_one_each_step_once() -> Result<()> {
    let w = World::new()?;
    let etcd = EtcdCluster::start(&w, 3)?;
    let (_pg, extra) = crate::replicas::records_in_postgres("")?;
    let (mut cps, fp) = crate::replicas::start(&w, &etcd.endpoints(), 3, &extra, None)?;
    let admin_of = |cps: &[Option<Control>], i: usize| crate::replicas::admin(&w, cps, i);
    let leader_of =
        |cps: &[Option<Control>], limit: Duration| crate::replicas::leader_of(&w, cps, limit);

    // Three agents given every replica; steps as root (they write the
    // marker file).
    let servers: Vec<String> = cps.iter().flatten().map(|c| c.grpc.clone()).collect();
    let mut agents = Vec::new();
    for (i, name) in HOSTS.iter().enumerate() {
        let out = ctl(&w, &admin_of(&cps, i)?, &["token", "create"])?;
        assert!(out.status.success(), "{}", stderr(&out));
        let tok = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let c = cps[i].as_ref().context("replica")?;
        let out = enroll(&w, c, &fp, &tok, name, &["role=web"])?;
        assert!(out.status.success(), "{}", stderr(&out));
        let cfg = w.path(&format!("agents/{name}/agent.toml"));
        let text = std::fs::read_to_string(&cfg)?;
        let extra = format!("server = {servers:?}\n{}", fleet::STEPS_AS_ROOT);
        std::fs::write(&cfg, merge_config(&text, &extra))?;
        agents.push(run_agent(&w, name)?);
    }
    let first = leader_of(&cps, Duration::from_secs(30))?;
    wait_for("three agents online", Duration::from_secs(30), || {
        let a = crate::replicas::online(&w, &admin_of(&cps, first).ok()?)?;
        (a == 3).then_some(())
    })?;

    // One host at a time, each step a few seconds long.
    let marks = w.path("marks");
    std::fs::write(
        w.path("rollout.toml"),
        format!(
            r#"
name = "failover"
selector = "role=web"
max_parallel = 1

[[step]]
name = "deploy"
shell = "echo \"$PICKET_HOST $PICKET_ROLLOUT\" >> {}; sleep 2"
"#,
            marks.display()
        ),
    )?;
    let file = w.path("rollout.toml").display().to_string();
    let out = ctl(
        &w,
        &admin_of(&cps, first)?,
        &["rollout", "create", "-f", &file],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let marked = || -> Vec<String> {
        std::fs::read_to_string(&marks)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    wait_for("the first host's step", Duration::from_secs(30), || {
        (!marked().is_empty()).then_some(())
    })?;

    // The leader dies mid-rollout.
    if let Some(mut c) = cps[first].take() {
        c.proc.kill9();
    }
    let died = Instant::now();
    let next = leader_of(&cps, Duration::from_secs(30))?;
    eprintln!(
        "cp-{first} killed mid-rollout; cp-{next} leads after {:?}",
        died.elapsed()
    );
    let other = (0..3)
        .find(|&i| i != first && i != next)
        .context("a third replica")?;
    let s = wait_for("the rollout to succeed", Duration::from_secs(90), || {
        let s = ctl_json(
            &w,
            &admin_of(&cps, other).ok()?,
            &["rollout", "status", &id],
        )
        .ok()?;
        let s = s.into_iter().next()?;
        (s["state"] == "succeeded").then_some(s)
    })
    .with_context(|| {
        format!(
            "{:?} {:?}",
            ctl_json(
                &w,
                &admin_of(&cps, next).unwrap_or_default(),
                &["rollout", "status", &id]
            ),
            marked()
        )
    })?;
    eprintln!("the rollout succeeded {:?} after the kill", died.elapsed());
    assert_eq!(s["id"], id.as_str());
    let mut m = marked();
    m.sort();
    let want: Vec<String> = HOSTS.iter().map(|h| format!("{h} {id}")).collect();
    assert_eq!(m, want, "each host's step exactly once");

    // The new leader is paused (SIGSTOP, as a partition looks) for 10 s
    // mid-rollout: the last replica takes over and finishes; woken, the
    // paused one finds its writes fenced and dispatches nothing more.
    std::fs::write(&marks, "")?;
    let out = ctl(
        &w,
        &admin_of(&cps, next)?,
        &["rollout", "create", "-f", &file],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    wait_for("the first host's step", Duration::from_secs(30), || {
        (!marked().is_empty()).then_some(())
    })?;
    let paused = cps[next].take().context("the leader")?;
    paused.proc.signal(nix::sys::signal::Signal::SIGSTOP);
    let stopped = Instant::now();
    let third = leader_of(&cps, Duration::from_secs(30))?;
    assert_eq!(third, other);
    eprintln!(
        "cp-{next} paused; cp-{third} leads after {:?}",
        stopped.elapsed()
    );
    std::thread::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed()));
    paused.proc.signal(nix::sys::signal::Signal::SIGCONT);
    cps[next] = Some(paused);
    wait_for(
        "the second rollout to succeed",
        Duration::from_secs(90),
        || {
            let s = ctl_json(
                &w,
                &admin_of(&cps, third).ok()?,
                &["rollout", "status", &id],
            )
            .ok()?;
            (s.first()?["state"] == "succeeded").then_some(())
        },
    )
    .with_context(|| format!("{:?}", marked()))?;
    // A moment for a late dispatch of the woken replica to show.
    std::thread::sleep(Duration::from_secs(3));
    let mut m = marked();
    m.sort();
    let want: Vec<String> = HOSTS.iter().map(|h| format!("{h} {id}")).collect();
    assert_eq!(m, want, "each host's step exactly once across the pause");
    let woken = cps[next].as_ref().context("the woken replica")?;
    for l in woken.proc.stderr().lines() {
        if l.contains("not the leader any more") || l.contains("leading") {
            eprintln!("woken cp-{next}: {l}");
        }
    }
    assert_eq!(leader_of(&cps, Duration::from_secs(5))?, third);
    assert!(
        woken
            .proc
            .stderr()
            .contains("not leading: rollouts no longer driven here"),
        "{}",
        woken.proc.stderr()
    );
    drop(agents);
    Ok(())
}
