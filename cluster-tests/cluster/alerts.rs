//! Alerts in cluster mode (SPEC §12): the leader alone decides and
//! notifies, fed every replica's events from PostgreSQL by id. Two real
//! replicas on one etcd member and one PostgreSQL server, an agent on
//! each (given both replicas), a real HTTP receiver for the webhook. An
//! event stored through the follower is notified once; the follower
//! shows the alerts and takes a silence (picketctl sends it to the
//! leader). Then the leader is killed (`kill -9`) and events are written
//! before another leads: each is notified once by the new leader, and
//! nothing notified before is notified again. A leader paused with a
//! notification queued sends nothing once woken: the new leader sent it.
//! And the tap under it: what
//! two replicas commit, read from PostgreSQL from a cursor, once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use picket_store::records::{EventRecord, Records};
use picket_tests::etcd::EtcdCluster;
use picket_tests::postgres::Postgres;
use picket_tests::receiver::Receiver;
use picket_tests::*;
use serde_json::Value;

use crate::records::{connect, event, gauge, line};

/// A Suricata alert of severity 1 (Picket's `high`), from the corpus.
fn ids_alert() -> Result<String> {
    let p = tests_dir().join("corpus/suricata/alert-testmyids.eve.json");
    let text = std::fs::read_to_string(&p)?;
    let line = text.lines().next().context("a corpus line")?;
    Ok(format!(
        "{}\n",
        line.replace("\"severity\":2", "\"severity\":1")
    ))
}

fn append(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// The webhook notifications received with `status` for `host`.
fn notified(rx: &Receiver, status: &str, host: &str) -> usize {
    rx.got("/webhook")
        .iter()
        .filter(|b| b["status"] == status)
        .filter(|b| {
            b["alerts"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a["labels"]["host"] == host))
        })
        .count()
}

#[test]
fn the_leader_notifies_each_event_once_whichever_replica_stored_it_and_across_its_death()
-> Result<()> {
    let w = World::new()?;
    let mut rx = Receiver::start()?;
    let etcd = EtcdCluster::start(&w, 1)?;
    let (_pg, extra) = crate::replicas::records_in_postgres("heartbeat_interval = \"1s\"")?;
    let rules = format!(
        "[defaults]\ngroup_wait = \"1s\"\ngroup_interval = \"2s\"\nrepeat_interval = \"1h\"\n\n\
         [[rule]]\nname = \"IdsAlert\"\nkind = \"event\"\nmatch = {{ source = \"suricata\", kind = \"alert\", severity = \"high\" }}\nresolve_after = \"3s\"\n\n\
         [[notifier]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n\n\
         [[route]]\nnotifiers = [\"hook\"]\n",
        rx.url("/webhook")
    );
    let (mut cps, fp) = crate::replicas::start(&w, &etcd.endpoints(), 2, &extra, Some(&rules))?;
    let admin = |cps: &[Option<Control>], i: usize| crate::replicas::admin(&w, cps, i);
    let leader_of =
        |cps: &[Option<Control>]| crate::replicas::leader_of(&w, cps, Duration::from_secs(30));

    // One agent on each replica, given both, each with a Suricata file.
    let servers: Vec<String> = cps.iter().flatten().map(|c| c.grpc.clone()).collect();
    let mut eves = Vec::new();
    let mut agents = Vec::new();
    for (i, name) in ["ids-0", "ids-1"].iter().enumerate() {
        let eve = w.path(&format!("{name}.eve.json"));
        std::fs::write(&eve, "")?;
        let out = ctl(&w, &admin(&cps, i)?, &["token", "create"])?;
        assert!(out.status.success(), "{}", stderr(&out));
        let tok = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let cp = cps[i].as_ref().context("a replica")?;
        let out = enroll(&w, cp, &fp, &tok, name, &[])?;
        assert!(out.status.success(), "{}", stderr(&out));
        let cfg = w.path(&format!("agents/{name}/agent.toml"));
        add_source(&cfg, "suricata", &eve)?;
        let text = std::fs::read_to_string(&cfg)?;
        std::fs::write(
            &cfg,
            merge_config(&text, &format!("server = {servers:?}\n")),
        )?;
        agents.push(run_agent(&w, name)?);
        eves.push(eve);
    }
    let lead = leader_of(&cps)?;
    let follow = 1 - lead;
    // The agent that enrolled through the follower streams to it first.
    let (on_follower, on_leader) = (format!("ids-{follow}"), format!("ids-{lead}"));
    wait_for("both agents online", Duration::from_secs(30), || {
        (crate::replicas::online(&w, &admin(&cps, lead).ok()?)? == 2).then_some(())
    })?;

    // An event through the follower: the leader notifies it, once.
    append(&eves[follow], &ids_alert()?)?;
    rx.wait("/webhook", Duration::from_secs(30), |b| {
        b["status"] == "firing" && b["alerts"][0]["labels"]["host"] == on_follower.as_str()
    })?;
    // Both replicas show it: the leader's engine, the follower's copy of
    // the shared state.
    for i in [lead, follow] {
        let listed = ctl_json(&w, &admin(&cps, i)?, &["alerts", "list"])?;
        assert!(
            listed
                .iter()
                .any(|a: &Value| a["labels"]["host"] == on_follower.as_str()),
            "cp-{i}: {listed:?}"
        );
    }
    // A silence through the follower goes to the leader; any replica
    // lists it.
    let out = ctl(
        &w,
        &admin(&cps, follow)?,
        &[
            "silence",
            "create",
            "--match",
            "host=nowhere",
            "--for",
            "1h",
            "--comment",
            "test",
        ],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    for i in [lead, follow] {
        let s = wait_for(
            "the silence on each replica",
            Duration::from_secs(10),
            || {
                let s = ctl_json(&w, &admin(&cps, i).ok()?, &["silence", "list"]).ok()?;
                s.iter().any(|s| s["id"] == id.as_str()).then_some(())
            },
        );
        s.with_context(|| format!("cp-{i}"))?;
    }
    // It resolves (nothing more came for 3 s), notified once too.
    rx.wait("/webhook", Duration::from_secs(30), |b| {
        b["status"] == "resolved" && b["alerts"][0]["labels"]["host"] == on_follower.as_str()
    })?;

    // The leader dies; events come on both hosts before another leads
    // (the agent that streamed to it moves to the survivor).
    let lead_listen = cps[lead].as_ref().context("the leader")?.grpc.clone();
    if let Some(mut c) = cps[lead].take() {
        c.proc.kill9();
    }
    let killed = std::time::Instant::now();
    append(&eves[follow], &ids_alert()?)?;
    append(&eves[lead], &ids_alert()?)?;
    let next = leader_of(&cps)?;
    assert_eq!(next, follow);
    for host in [&on_follower, &on_leader] {
        rx.wait("/webhook", Duration::from_secs(60), |b| {
            b["status"] == "firing" && b["alerts"][0]["labels"]["host"] == host.as_str()
        })
        .with_context(|| format!("{host} notified by the new leader"))?;
        eprintln!(
            "leader killed; {host}'s event written then notified {:?} later",
            killed.elapsed()
        );
    }
    wait_for(
        "the second firing of the follower's host",
        Duration::from_secs(60),
        || (notified(&rx, "firing", &on_follower) >= 2).then_some(()),
    )?;
    // Long enough for a repeat to show: none comes.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        notified(&rx, "firing", &on_follower),
        2,
        "two episodes, each notified once: {:?}",
        rx.got("/webhook")
    );
    assert_eq!(
        notified(&rx, "firing", &on_leader),
        1,
        "{:?}",
        rx.got("/webhook")
    );
    // The first episode's resolution once (the second's may have come
    // meanwhile).
    assert!((1..=2).contains(&notified(&rx, "resolved", &on_follower)));

    // Fencing: the killed replica back (a follower), the receiver down,
    // a third episode: the leader queues its notification and retries.
    // Paused (SIGSTOP) for 10 s, it loses leadership; the other leads,
    // the receiver is back, and the new leader sends it. Woken, the
    // paused one finds its claim on the outbox refused by etcd and sends
    // nothing: the notification arrives once.
    cps[lead] = Some(Control::start_on(&w, &format!("cp{lead}"), &lead_listen)?);
    wait_for(
        "the follower's host resolved",
        Duration::from_secs(30),
        || (notified(&rx, "resolved", &on_follower) == 2).then_some(()),
    )?;
    rx.down();
    append(&eves[follow], &ids_alert()?)?;
    let paused = cps[follow].as_ref().context("the leader")?;
    wait_for("the notification tried", Duration::from_secs(30), || {
        paused
            .proc
            .stderr()
            .contains("notification failed")
            .then_some(())
    })?;
    paused.proc.signal(nix::sys::signal::Signal::SIGSTOP);
    rx.up()?;
    std::thread::sleep(Duration::from_secs(10));
    paused.proc.signal(nix::sys::signal::Signal::SIGCONT);
    wait_for(
        "the third episode notified",
        Duration::from_secs(30),
        || (notified(&rx, "firing", &on_follower) >= 3).then_some(()),
    )?;
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        notified(&rx, "firing", &on_follower),
        3,
        "the queued notification sent once: {:?}",
        rx.got("/webhook")
    );
    let woken = paused.proc.stderr();
    assert!(
        woken.contains("not sending: the outbox cannot be claimed")
            || woken.contains("not leading: alerts no longer"),
        "{woken}"
    );
    drop(agents);
    Ok(())
}

/// The leader's alert tap (`picket_tap::stored`): what two replicas
/// committed, read from an id on, in id order; only what a rule can use,
/// events and samples alike; nothing twice from the cursor it returns.
#[test]
fn the_alert_tap_reads_every_replicas_commits_once_from_its_cursor() -> Result<()> {
    use picket_store::kept::RecordStore;
    use picket_store::metrics::Sample;
    let pg = Postgres::start(&["fsync=off"])?;
    let (a, b) = (connect(&pg)?, connect(&pg)?);
    let tap = picket_tap::Tap::signs_of_life();
    tap.set_rules(&picket_alert::rules::parse(
        "[[rule]]\nname = \"Ssh\"\nkind = \"event\"\nmatch = { source = \"sshd\" }\nsummary = \"{{ fields.user }}\"\n\
         [[rule]]\nname = \"Cpu\"\nkind = \"threshold\"\nmetric = \"cpu_usage_percent\"\nop = \">\"\nvalue = 90\n",
    )?);
    let from = a.next_id()?;
    let sample = |t: i64| Sample {
        time_ms: t,
        points: vec![gauge("cpu_usage_percent", 95.0), gauge("load1", 1.0)],
    };
    // Replica a stores web's events and a sample, then b db's; then a
    // again: the tap reads them in that (commit) order.
    let events = |h: &str, seqs: std::ops::RangeInclusive<u64>| -> Vec<EventRecord> {
        seqs.map(|s| event(h, s, 1_000 + s as i64)).collect()
    };
    a.store(&mut [(
        "web",
        Records::of(vec![sample(1_000)], &events("web", 1..=3), &[]),
        3,
    )])?;
    b.store(&mut [("db", Records::of(vec![], &events("db", 1..=2), &[]), 2)])?;
    // A log line is of no rule's use; a sample sent again is not new.
    let lines = [line("web", 4, 2_000, "hello")];
    a.store(&mut [(
        "web",
        Records::of(vec![sample(1_000)], &events("web", 5..=5), &lines),
        5,
    )])?;
    let got = picket_tap::stored::read(&tap, &b, from)?.context("something new")?;
    let hosts: Vec<(&str, usize, usize)> = got
        .heard
        .iter()
        .map(|h| (h.host.as_str(), h.events.len(), h.samples.len()))
        .collect();
    assert_eq!(hosts, [("web", 3, 1), ("db", 2, 0), ("web", 1, 0)]);
    assert!(
        got.heard.iter().all(|h| !h.alive),
        "records are no sign of life"
    );
    // Only the fields a rule reads; only the series a rule names.
    assert_eq!(
        got.heard[0].events[0].fields,
        BTreeMap::from([("user".to_string(), "u1".to_string())])
    );
    assert_eq!(got.heard[0].samples[0].len(), 1);
    assert_eq!(got.through, a.next_id()?);
    // From its cursor: nothing, until something is committed.
    assert_eq!(picket_tap::stored::read(&tap, &a, got.through)?, None);
    b.store(&mut [("db", Records::of(vec![sample(5_000)], &[], &[]), 3)])?;
    let next = picket_tap::stored::read(&tap, &a, got.through)?.context("the new sample")?;
    assert_eq!(next.heard.len(), 1);
    assert_eq!(
        (next.heard[0].host.as_str(), next.heard[0].samples.len()),
        ("db", 1)
    );
    Ok(())
}

/// A notification queued by a leader, in the shared outbox: once that
/// leader's term is over (the leader key made again, as a new leader
/// does), its outbox claims the notification before sending, etcd refuses
/// the claim, and it sends nothing; the new leader's outbox sends it,
/// once.
#[test]
fn a_deposed_leader_sends_nothing_from_the_outbox_and_the_new_one_sends_it_once() -> Result<()> {
    use picket_alert::engine::{Alert, AlertState};
    use picket_cluster::Etcd;
    use picket_cluster::etcd::{created_at, delete_op, put_op};
    use picket_notify::outbox::Outbox;
    use picket_notify::{Message, http};
    use picket_store::{OUTBOX, Queued};

    let w = World::new()?;
    let etcd = EtcdCluster::start(&w, 1)?;
    let rx = Receiver::start()?;
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (a, fence_a) = crate::shared_state::on_etcd_fenced(da.path(), &etcd.endpoints())?;
    let (b, fence_b) = crate::shared_state::on_etcd_fenced(db.path(), &etcd.endpoints())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = {
        let _in = rt.enter();
        Etcd::connect(&etcd.endpoints())?
    };
    const KEY: &str = "/picket/test/leader";
    let elect = |value: &[u8]| -> Result<i64> {
        rt.block_on(client.commit(vec![], vec![delete_op(KEY)]))?;
        rt.block_on(client.commit(vec![], vec![put_op(KEY, value, 0)]))?
            .context("the leader key written")
    };
    let fence = |b: &picket_store::backend::etcd::EtcdBackend, term: i64| {
        b.fence(OUTBOX, Arc::new(move || Ok(created_at(KEY, term))));
    };

    // a leads, and queues a notification.
    fence(&fence_a, elect(b"a")?);
    let labels: picket_model::Labels = [
        ("alertname".to_string(), "IdsAlert".to_string()),
        ("host".to_string(), "ids-0".to_string()),
    ]
    .into();
    let msg = Message {
        status: "firing".into(),
        group_key: "hook\0alertname=IdsAlert".into(),
        group_labels: labels.clone(),
        alerts: vec![Alert {
            fingerprint: picket_alert::engine::fingerprint(&labels),
            rule: "IdsAlert".into(),
            labels,
            annotations: Default::default(),
            state: AlertState::Firing,
            active_ms: picket_clock::now_ms(),
            started_ms: Some(picket_clock::now_ms()),
            ended_ms: None,
            value: String::new(),
            last_ms: picket_clock::now_ms(),
            silenced: false,
            inhibited: false,
        }],
        created_ms: picket_clock::now_ms(),
        attempts: 0,
        test: false,
    };
    a.put_alert_state(&"state", None, &[("hook".to_string(), msg)])?;
    // b becomes leader; a's term is over.
    fence(&fence_b, elect(b"b")?);
    wait_for("b's copy of the outbox", Duration::from_secs(10), || {
        let q: Vec<Queued<Message>> = b.outbox().ok()?;
        (q.len() == 1).then_some(())
    })?;

    let rules = Arc::new(picket_alert::rules::parse(&format!(
        "[[notifier]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n[[route]]\nnotifiers = [\"hook\"]\n",
        rx.url("/webhook")
    ))?);
    let (_rules, rules_rx) = tokio::sync::watch::channel(rules);
    let run = |store: &picket_store::Store| -> Result<tokio_util::sync::CancellationToken> {
        let _in = rt.enter();
        let ob = Outbox::new(
            store.clone(),
            http::Client::new()?,
            rules_rx.clone(),
            picket_clock::now_ms,
        );
        let stop = tokio_util::sync::CancellationToken::new();
        rt.spawn(ob.run(stop.clone()));
        Ok(stop)
    };
    // The deposed one's outbox: nothing sent, nothing taken out.
    let stop_a = run(&a)?;
    std::thread::sleep(Duration::from_secs(3));
    assert!(rx.got("/webhook").is_empty(), "{:?}", rx.got("/webhook"));
    let q: Vec<Queued<Message>> = a.outbox()?;
    assert_eq!(q.len(), 1, "still queued");
    // The leader's: sent, once, and taken out.
    let stop_b = run(&b)?;
    rx.wait("/webhook", Duration::from_secs(10), |v| {
        v["status"] == "firing"
    })?;
    wait_for("the outbox empty", Duration::from_secs(10), || {
        let q: Vec<Queued<Message>> = a.outbox().ok()?;
        q.is_empty().then_some(())
    })?;
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rx.got("/webhook").len(), 1);
    stop_a.cancel();
    stop_b.cancel();
    Ok(())
}
