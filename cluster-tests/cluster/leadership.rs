//! Cluster mode's leadership (SPEC §12, picket-cluster) against a real
//! three-member etcd (Debian `etcd-server`, started here): one leader
//! among the replicas, a new one when it dies, fencing of a deposed
//! leader's writes, and what losing etcd members does; first with the
//! library's campaigns in this process, then with real `picket-control`
//! replicas, one of which is killed.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use picket_cluster::etcd::put_op;
use picket_cluster::{Etcd, EtcdError, Leadership, Options, Role, Term};
use picket_tests::etcd::EtcdCluster;
use picket_tests::{Control, World, ctl, ctl_json, free_port, http_get, stderr, wait_for};

fn options() -> Options {
    Options {
        ttl: Duration::from_secs(5),
        renew_every: Duration::from_secs(1),
        prefix: "/picket".into(),
        advertise: "127.0.0.1:7443".into(),
    }
}

/// Three replicas campaigning on `etcd`.
fn replicas(etcd: &EtcdCluster) -> Result<Vec<(String, Leadership)>> {
    (0..3)
        .map(|i| {
            let name = format!("cp-{i}");
            let c = Etcd::connect(&etcd.endpoints())?;
            Ok((name.clone(), Leadership::campaign(c, name, options())))
        })
        .collect()
}

/// Waits until one of `rs` leads and every other names it; returns its
/// index and term.
async fn one_leader(rs: &[(String, Leadership)], limit: Duration) -> Result<(usize, Term)> {
    let start = Instant::now();
    loop {
        let roles: Vec<Role> = rs.iter().map(|(_, l)| l.role()).collect();
        let leaders: Vec<usize> = (0..roles.len())
            .filter(|&i| matches!(roles[i], Role::Leader(_)))
            .collect();
        if let [i] = leaders[..] {
            let named = roles.iter().enumerate().all(|(j, r)| {
                j == i
                    || *r
                        == Role::Follower {
                            leader: Some(rs[i].0.clone()),
                        }
            });
            if named && let Role::Leader(t) = &roles[i] {
                return Ok((i, t.clone()));
            }
        }
        if start.elapsed() > limit {
            bail!("no single leader after {limit:?}: {roles:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

#[test]
fn one_leader_a_new_one_when_it_dies_and_the_old_ones_writes_refused() -> Result<()> {
    let w = World::new()?;
    let etcd = EtcdCluster::start(&w, 3)?;
    runtime()?.block_on(async {
        let client = Etcd::connect(&etcd.endpoints())?;
        let mut rs = replicas(&etcd)?;
        let (first, term) = one_leader(&rs, Duration::from_secs(20)).await?;
        term.fenced(&client, vec![put_op("/picket/step", b"1", 0)])
            .await
            .context("the leader's write")?;

        // The leader dies without a word (as kill -9): its lease runs out,
        // another takes over.
        let died = Instant::now();
        let (name, gone) = rs.remove(first);
        drop(gone);
        let (next, new_term) = one_leader(&rs, Duration::from_secs(20)).await?;
        let took = died.elapsed();
        eprintln!("leader {name} died; {} leads after {took:?}", rs[next].0);
        assert_ne!(new_term.revision, term.revision);

        // The dead leader's term is fenced off: nothing it writes lands,
        // however late it wakes up.
        let refused = term
            .fenced(&client, vec![put_op("/picket/step", b"stale", 0)])
            .await;
        assert!(matches!(refused, Err(EtcdError::Deposed)), "{refused:?}");
        new_term
            .fenced(&client, vec![put_op("/picket/step", b"2", 0)])
            .await?;
        let (kv, _) = client.get("/picket/step").await?;
        assert_eq!(kv.context("the key")?.value, b"2");

        // A clean stop hands over without waiting for the lease's end.
        let (_, leader) = rs.remove(next);
        let resigned = Instant::now();
        leader.resign().await;
        let (_, last) = one_leader(&rs, Duration::from_secs(20)).await?;
        eprintln!("resigned; a new leader after {:?}", resigned.elapsed());
        assert!(matches!(
            new_term
                .fenced(&client, vec![put_op("/picket/step", b"stale", 0)])
                .await,
            Err(EtcdError::Deposed)
        ));
        last.fenced(&client, vec![put_op("/picket/step", b"3", 0)])
            .await?;
        Ok(())
    })
}

#[test]
fn one_etcd_member_down_goes_on_two_down_refuses_writes_until_back() -> Result<()> {
    let w = World::new()?;
    let mut etcd = EtcdCluster::start(&w, 3)?;
    runtime()?.block_on(async {
        let client = Etcd::connect(&etcd.endpoints())?;
        let rs = replicas(&etcd)?;
        let (_, term) = one_leader(&rs, Duration::from_secs(20)).await?;

        // One of three down: quorum holds, the leader keeps leading and
        // writing (its lease renewed through the others).
        etcd.kill(0);
        for n in 0..8u8 {
            term.fenced(&client, vec![put_op("/picket/n", &[n], 0)])
                .await
                .with_context(|| format!("write {n} with one member down"))?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let (_, still) = one_leader(&rs, Duration::from_secs(20)).await?;
        assert_eq!(still, term, "the leader changed with one member down");

        // Two of three down: no quorum. Writes fail with a clear error,
        // and no replica leads once its lease cannot be renewed.
        etcd.kill(1);
        let e = term
            .fenced(&client, vec![put_op("/picket/n", b"x", 0)])
            .await
            .expect_err("a write without quorum");
        assert!(matches!(e, EtcdError::Unavailable { .. }), "{e:?}: {e}");
        eprintln!("without quorum: {e}");
        let start = Instant::now();
        while rs.iter().any(|(_, l)| matches!(l.role(), Role::Leader(_))) {
            if start.elapsed() > Duration::from_secs(20) {
                bail!("a replica still leads without quorum");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Back: a leader again, and its writes land.
        etcd.start_member(0)?;
        etcd.start_member(1)?;
        let (_, back) = one_leader(&rs, Duration::from_secs(60)).await?;
        back.fenced(&client, vec![put_op("/picket/n", b"back", 0)])
            .await?;
        assert!(matches!(
            term.fenced(&client, vec![put_op("/picket/n", b"old", 0)])
                .await,
            Err(EtcdError::Deposed)
        ));
        Ok(())
    })
}

/// A replica's `picket_control_leader` and `picket_control_etcd_up`
/// (`None` when the page has no such line).
pub(crate) fn gauges(cp: &Control) -> Option<(u8, Option<u8>)> {
    let (code, body) = http_get(&cp.http, "/metrics").ok()?;
    if code != 200 {
        return None;
    }
    let value = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse::<u8>().ok())
    };
    Some((
        value("picket_control_leader")?,
        value("picket_control_etcd_up"),
    ))
}

/// Waits until exactly one of `cps` (the live ones) says it leads; its
/// index.
pub(crate) fn leading(cps: &[Option<Control>], limit: Duration) -> Result<usize> {
    wait_for("one replica leading", limit, || {
        let leaders: Vec<usize> = cps
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let c = c.as_ref()?;
                (gauges(c)?.0 == 1).then_some(i)
            })
            .collect();
        let live = cps.iter().filter(|c| c.is_some()).count();
        let answered = cps.iter().flatten().filter(|c| gauges(c).is_some()).count();
        match leaders[..] {
            [i] if answered == live => Some(i),
            _ => None,
        }
    })
}

#[test]
fn replicas_elect_one_leader_and_another_after_a_kill_9() -> Result<()> {
    let w = World::new()?;
    let mut etcd = EtcdCluster::start(&w, 3)?;
    let etcd_flags: Vec<String> = etcd
        .endpoints()
        .iter()
        .flat_map(|e| ["--cluster-etcd".to_string(), e.clone()])
        .collect();
    let make = |cmd: &str, i: usize, listen: &str| -> Result<std::process::Output> {
        let dir = format!("cp{i}");
        let node = format!("cp-{i}");
        let mut args = vec![
            cmd,
            "--data-dir",
            &dir,
            "--node",
            &node,
            "--advertise",
            listen,
        ];
        args.extend(etcd_flags.iter().map(String::as_str));
        w.run("picket-control", &args)
    };
    // A replica cannot join before the cluster has a CA.
    let out = make("join", 9, "127.0.0.1:7443")?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("holds no Picket CA"),
        "{}",
        stderr(&out)
    );

    // init writes the CA into etcd; the others join from it; a second init
    // against the same etcd is refused.
    let mut cps: Vec<Option<Control>> = Vec::new();
    let mut fingerprint = String::new();
    for i in 0..3 {
        let listen = format!("127.0.0.1:{}", free_port()?);
        let out = make(if i == 0 { "init" } else { "join" }, i, &listen)?;
        assert!(out.status.success(), "{}", stderr(&out));
        if let Some(fp) = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .find(|w| w.starts_with("sha256:"))
        {
            fingerprint = fp.to_string();
        }
        cps.push(Some(Control::start_on(&w, &format!("cp{i}"), &listen)?));
    }
    let out = make("init", 8, "127.0.0.1:7443")?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already holds a Picket CA"),
        "{}",
        stderr(&out)
    );
    let ca = |i: usize| std::fs::read(w.path(&format!("cp{i}/ca.crt")));
    assert_eq!(ca(1)?, ca(0)?);
    assert_eq!(ca(2)?, ca(0)?);
    assert_ne!(
        std::fs::read(w.path("cp1/server.key"))?,
        std::fs::read(w.path("cp2/server.key"))?,
        "each replica its own server key"
    );
    let first = leading(&cps, Duration::from_secs(30))?;
    // One admin bundle, init's, for every replica (one CA).
    let admin = |cps: &[Option<Control>], i: usize| crate::replicas::admin(&w, cps, i);
    let status = |cps: &[Option<Control>], i: usize| -> Result<serde_json::Value> {
        ctl_json(&w, &admin(cps, i)?, &["status"])?
            .pop()
            .context("a status line")
    };
    let other = (first + 1) % 3;
    let s = status(&cps, other)?;
    assert_eq!(s["leader"], format!("cp-{first}"), "{s}");
    assert!(s["leader_since"].is_string(), "{s}");
    let nodes: Vec<&str> = s["replicas"]
        .as_array()
        .context("replicas")?
        .iter()
        .filter_map(|r| r["node"].as_str())
        .collect();
    assert_eq!(nodes, ["cp-0", "cp-1", "cp-2"], "{s}");
    for c in cps.iter().flatten() {
        assert_eq!(gauges(c).map(|g| g.1), Some(Some(1)));
        assert_eq!(http_get(&c.http, "/readyz")?.0, 200);
    }

    // Users are shared: added through one replica, known on the others;
    // revoked through another, refused everywhere and their streams cut.
    let out = ctl(
        &w,
        &admin(&cps, 0)?,
        &["user", "add", "bob", "--role", "viewer", "--out", "bob"],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let bob = |cps: &[Option<Control>], i: usize| -> Result<Vec<String>> {
        let mut f = admin(cps, i)?;
        f[5] = w.path("bob/bob.crt").display().to_string();
        f[7] = w.path("bob/bob.key").display().to_string();
        Ok(f)
    };
    let added = std::time::Instant::now();
    wait_for("bob known on every replica", Duration::from_secs(5), || {
        (0..3)
            .all(|i| {
                bob(&cps, i)
                    .is_ok_and(|f| ctl(&w, &f, &["status"]).is_ok_and(|o| o.status.success()))
            })
            .then_some(())
    })?;
    eprintln!("bob usable on all three after {:?}", added.elapsed());
    let mut follow = {
        let mut c = w.cmd("picketctl");
        c.args(bob(&cps, 2)?).args(["logs", "-f"]);
        picket_tests::Proc::spawn(c)?
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(follow.child_alive(), "{}", follow.stderr());
    let out = ctl_json(&w, &admin(&cps, 1)?, &["user", "revoke", "bob"])?;
    assert_eq!(out[0]["name"], "bob");
    let ended = follow.wait_exit(Duration::from_secs(5))?;
    assert!(!ended.success());
    // What it printed is read by another thread: wait for it.
    wait_for("the follow to say why", Duration::from_secs(5), || {
        follow.stderr().contains("revoked").then_some(())
    })
    .with_context(|| follow.stderr())?;
    for i in 0..3 {
        let out = ctl(&w, &bob(&cps, i)?, &["status"])?;
        assert!(
            !out.status.success() && stderr(&out).contains("revoked"),
            "{}",
            stderr(&out)
        );
    }
    let again = ctl(
        &w,
        &admin(&cps, 2)?,
        &["user", "add", "bob", "--role", "viewer", "--out", "bob2"],
    )?;
    assert!(
        !again.status.success() && stderr(&again).contains("revoked"),
        "{}",
        stderr(&again)
    );

    // kill -9 the leader: another leads within the lease's TTL (5 s) and a
    // moment; the dead one's presence goes with its lease.
    let died = std::time::Instant::now();
    if let Some(mut c) = cps[first].take() {
        c.proc.kill9();
    }
    let next = leading(&cps, Duration::from_secs(30))?;
    eprintln!(
        "cp-{first} killed; cp-{next} leads after {:?}",
        died.elapsed()
    );
    let s = wait_for(
        "the dead replica gone from status",
        Duration::from_secs(20),
        || {
            let s = status(&cps, next).ok()?;
            (s["replicas"].as_array()?.len() == 2).then_some(s)
        },
    )?;
    assert_eq!(s["leader"], format!("cp-{next}"), "{s}");

    // SIGSTOP the leader for 10 s (a pause, as a partition looks): the
    // last replica takes over; woken, the paused one finds its lease gone
    // and steps down by itself.
    let paused = cps[next].take().context("the leader")?;
    paused.proc.signal(nix::sys::signal::Signal::SIGSTOP);
    let stopped = std::time::Instant::now();
    let third = leading(&cps, Duration::from_secs(30))?;
    eprintln!(
        "cp-{next} paused; cp-{third} leads after {:?}",
        stopped.elapsed()
    );
    std::thread::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed()));
    paused.proc.signal(nix::sys::signal::Signal::SIGCONT);
    cps[next] = Some(paused);
    let woke = std::time::Instant::now();
    wait_for(
        "the woken replica to step down",
        Duration::from_secs(10),
        || {
            let c = cps[next].as_ref()?;
            (gauges(c)? == (0, Some(1))).then_some(())
        },
    )?;
    eprintln!("cp-{next} woke and stepped down after {:?}", woke.elapsed());
    assert_eq!(leading(&cps, Duration::from_secs(10))?, third);

    // etcd without quorum: no replica is ready or leads, and status says
    // why; back, a leader again.
    etcd.kill(0);
    etcd.kill(1);
    wait_for(
        "replicas unready without etcd",
        Duration::from_secs(30),
        || {
            cps.iter()
                .flatten()
                .all(|c| {
                    http_get(&c.http, "/readyz")
                        .is_ok_and(|(code, body)| code == 503 && body.contains("etcd unreachable"))
                        && gauges(c) == Some((0, Some(0)))
                })
                .then_some(())
        },
    )?;
    let out = ctl(&w, &admin(&cps, next)?, &["status"])?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("etcd unavailable"),
        "{}",
        stderr(&out)
    );
    etcd.start_member(0)?;
    etcd.start_member(1)?;
    leading(&cps, Duration::from_secs(60))?;
    for c in cps.iter().flatten() {
        assert_eq!(http_get(&c.http, "/readyz")?.0, 200);
    }
    // The users' copies follow etcd again after their watches broke.
    let live: Vec<usize> = (0..3).filter(|&i| cps[i].is_some()).collect();
    let out = ctl(
        &w,
        &admin(&cps, live[0])?,
        &["user", "add", "carol", "--role", "viewer", "--out", "carol"],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let mut f = admin(&cps, live[1])?;
    f[5] = w.path("carol/carol.crt").display().to_string();
    f[7] = w.path("carol/carol.key").display().to_string();
    wait_for(
        "carol known on the other replica",
        Duration::from_secs(10),
        || {
            ctl(&w, &f, &["status"])
                .is_ok_and(|o| o.status.success())
                .then_some(())
        },
    )?;

    // Agents are shared: a token made through one replica enrolls through
    // the other; the agent, given both, is listed by both, and when the
    // replica holding its stream dies it is let in by the other (its
    // certificate's record is the cluster's).
    let out = ctl(
        &w,
        &admin(&cps, live[0])?,
        &["token", "create", "--label", "role=web"],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let tok = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let list: Vec<String> = live
        .iter()
        .filter_map(|&i| Some(cps[i].as_ref()?.grpc.clone()))
        .collect();
    let mut c = w.cmd("picket-agent");
    c.args(["enroll", "--server", &list[1], "--token", &tok])
        .args(["--ca-fingerprint", &fingerprint, "--name", "web-1"])
        .arg("--state-dir")
        .arg(w.path("agents/web-1"));
    let out = c.output()?;
    assert!(out.status.success(), "enroll: {}", stderr(&out));
    let cfg = w.path("agents/web-1/agent.toml");
    let text = std::fs::read_to_string(&cfg)?;
    std::fs::write(
        &cfg,
        picket_tests::merge_config(&text, &format!("server = {list:?}")),
    )?;
    let mut agent = picket_tests::run_agent(&w, "web-1")?;
    let on = |cps: &[Option<Control>], i: usize| -> Option<String> {
        picket_tests::status_of(&w, &admin(cps, i).ok()?, "web-1")
    };
    // Presence: the replica holding the stream is named in etcd, and both
    // replicas say online.
    let rt = runtime()?;
    let client = {
        let _in = rt.enter();
        Etcd::connect(&etcd.endpoints())?
    };
    let presence = || -> Option<String> {
        let (kv, _) = rt.block_on(client.get("/picket/presence/web-1")).ok()?;
        Some(String::from_utf8_lossy(&kv?.value).into_owned())
    };
    let holder = wait_for("web-1's presence in etcd", Duration::from_secs(30), || {
        let node = presence()?;
        live.iter().copied().find(|&i| format!("cp-{i}") == node)
    })
    .with_context(|| agent.stderr())?;
    let other = if holder == live[0] { live[1] } else { live[0] };
    wait_for(
        "web-1 online on both replicas",
        Duration::from_secs(10),
        || {
            live.iter()
                .all(|&i| on(&cps, i).as_deref() == Some("online"))
                .then_some(())
        },
    )?;
    let listed = picket_tests::agents(&w, &admin(&cps, other)?)?;
    assert_eq!(listed["web-1"]["labels"]["role"], "web", "{listed:?}");
    if let Some(mut c) = cps[holder].take() {
        c.proc.kill9();
    }
    let moved = std::time::Instant::now();
    wait_for(
        "web-1 streaming with the other replica",
        Duration::from_secs(60),
        || (presence()? == format!("cp-{other}")).then_some(()),
    )
    .with_context(|| agent.stderr())?;
    eprintln!(
        "web-1 on cp-{other} {:?} after cp-{holder} died",
        moved.elapsed()
    );
    assert_eq!(on(&cps, other).as_deref(), Some("online"));
    assert!(agent.child_alive(), "{}", agent.stderr());

    // A clean stop takes the replica's presence with it at once.
    let last = cps[other].take().context("the last replica")?;
    last.proc.signal(nix::sys::signal::Signal::SIGTERM);
    let stopped = std::time::Instant::now();
    wait_for("web-1's presence gone", Duration::from_secs(20), || {
        presence().is_none().then_some(())
    })?;
    eprintln!("presence gone {:?} after SIGTERM", stopped.elapsed());
    drop(last);
    Ok(())
}
