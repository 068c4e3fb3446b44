//! The shared trees' rules (agents, tokens, users, audit) hold alike on
//! the embedded sled store and on etcd, and on etcd across two replicas'
//! stores writing at once: one use of a single-use token, one agent per
//! name, no lost update, a revoked user never let back, an agent
//! forgotten everywhere, audit ids that never collide.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use picket_cluster::Etcd;
use picket_store::backend::Backend;
use picket_store::backend::etcd::EtcdBackend;
use picket_store::records::Records;
use picket_store::{
    AgentRecord, AuditRecord, EnrollRefusal, Forget, SHARED_TREES, Store, TokenRecord,
    TokenRefusal, UserRecord,
};
use picket_tests::etcd::EtcdCluster;
use picket_tests::*;

/// How long one replica may take to see another's write.
const SEEN: Duration = Duration::from_secs(5);

fn agent(name: &str) -> AgentRecord {
    AgentRecord {
        name: name.into(),
        pinned_labels: Default::default(),
        reported_labels: Default::default(),
        enrolled_ms: 1,
        cert_serial: "01".into(),
        prev_cert_serial: None,
        cert_not_after_ms: 2,
        revoked_ms: None,
        inventory: None,
        last_seen_ms: 0,
    }
}

fn token(uses: u32) -> TokenRecord {
    TokenRecord {
        id: "t".into(),
        expires_ms: i64::MAX,
        uses_left: uses,
        labels: Default::default(),
        created_by: "admin".into(),
    }
}

fn user(name: &str) -> UserRecord {
    UserRecord {
        name: name.into(),
        role: picket_model::Role::Operator,
        created_ms: 1,
        revoked_ms: None,
        run_as: Vec::new(),
        hosts: None,
    }
}

/// The rules, with `a` and `b` two views of one shared state (the same
/// sled store twice, or two replicas' stores on one etcd).
fn rules(a: &Store, b: &Store) -> Result<()> {
    // A single-use token, spent by two enrollments at once: one wins.
    a.put_token("single", &token(1))?;
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.enroll_agent("single", 10, &agent("x1")));
        let tb = s.spawn(|| b.enroll_agent("single", 10, &agent("x2")));
        (ta.join(), tb.join())
    });
    let (ra, rb) = (
        ra.map_err(|_| anyhow::anyhow!("panic"))??,
        rb.map_err(|_| anyhow::anyhow!("panic"))??,
    );
    ensure!(
        ra.is_ok() != rb.is_ok(),
        "one of two enrollments on a single-use token: {ra:?} {rb:?}"
    );
    let lost = if ra.is_ok() { rb } else { ra };
    ensure!(
        matches!(lost, Err(EnrollRefusal::Token(TokenRefusal::UsedUp))),
        "{lost:?}"
    );
    let won = wait_for("both replicas see the one agent", SEEN, || {
        let (la, lb) = (a.agents().ok()?, b.agents().ok()?);
        (la.len() == 1 && la == lb).then_some(la)
    })?;
    ensure!(matches!(
        b.check_token("single", 11)?,
        Err(TokenRefusal::UsedUp)
    ));

    // One agent per name, whichever replica enrolls it.
    a.put_token("many", &token(5))?;
    ensure!(b.enroll_agent("many", 10, &agent("y"))?.is_ok());
    ensure!(matches!(
        a.enroll_agent("many", 10, &agent("y"))?,
        Err(EnrollRefusal::NameTaken)
    ));
    ensure!(!a.insert_agent(&agent("y"))?, "y is taken");
    wait_for("the token's uses seen from a", SEEN, || {
        a.check_token("many", 11)
            .ok()?
            .ok()
            .filter(|t| t.uses_left == 4)
    })?;

    // No lost update: 2 × 40 increments from both sides at once.
    std::thread::scope(|s| {
        for st in [a, b] {
            s.spawn(move || {
                for _ in 0..40 {
                    st.update_agent("y", |r| r.last_seen_ms += 1)?;
                }
                Ok::<_, picket_store::StoreError>(())
            });
        }
    });
    wait_for("80 increments on both", SEEN, || {
        let (ya, yb) = (a.agent("y").ok()??, b.agent("y").ok()??);
        (ya.last_seen_ms == 80 && yb.last_seen_ms == 80).then_some(())
    })?;

    // A revoked user is never let back in, through either replica.
    ensure!(a.add_user(&user("ops"))?.is_ok());
    ensure!(b.revoke_user("ops", 50)?.is_some());
    let back = a.add_user(&user("ops"))?;
    ensure!(
        back.as_ref().is_err_and(|r| r.revoked_ms == Some(50)),
        "{back:?}"
    );

    // An agent forgotten through one replica leaves no acked number on
    // the other (its next records count from 1).
    let x = &won[0].name;
    b.put_records(x, &Records::of(Vec::new(), &[], &[]), 7)?;
    ensure!(b.acked_seq(x)? == 7);
    ensure!(matches!(a.forget_agent(x)?, Forget::NotRevoked));
    a.update_agent(x, |r| r.revoked_ms = Some(60))?;
    ensure!(matches!(a.forget_agent(x)?, Forget::Forgotten));
    wait_for("the other replica forgets it too", SEEN, || {
        (b.agent(x).ok()?.is_none() && b.acked_seq(x).ok()? == 0).then_some(())
    })?;

    // Audit records from both, none lost to an id taken twice.
    std::thread::scope(|s| {
        for (i, st) in [a, b].into_iter().enumerate() {
            s.spawn(move || {
                for n in 0..15 {
                    st.append_audit(&AuditRecord {
                        time_ms: 100 + n,
                        actor: format!("replica-{i}"),
                        action: "test".into(),
                        target: n.to_string(),
                        outcome: "ok".into(),
                    })?;
                }
                Ok::<_, picket_store::StoreError>(())
            });
        }
    });
    wait_for("30 audit records on both", SEEN, || {
        (a.audit_tail(100).ok()?.len() == 30 && b.audit_tail(100).ok()?.len() == 30).then_some(())
    })?;
    Ok(())
}

#[test]
fn the_shared_rules_hold_on_sled() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = Store::open_with_floor(dir.path(), 0.0)?;
    rules(&s, &s.clone())
}

/// A replica's store in `dir` with its shared trees on `etcd`.
fn on_etcd(dir: &std::path::Path, endpoints: &[String]) -> Result<Store> {
    Ok(on_etcd_fenced(dir, endpoints)?.0)
}

/// [`on_etcd`], and its backend (whose writes can be fenced).
pub(crate) fn on_etcd_fenced(
    dir: &std::path::Path,
    endpoints: &[String],
) -> Result<(Store, Arc<EtcdBackend>)> {
    let local = Store::open_with_floor(dir, 0.0)?;
    let endpoints = endpoints.to_vec();
    let mut backend = None;
    let store = local
        .with_shared(|engine| {
            let b = Arc::new(EtcdBackend::start(
                move || Etcd::connect(&endpoints),
                engine,
                SHARED_TREES,
                Box::new(|_: &str, _: &[u8], _: Option<&[u8]>| {}),
            )?);
            backend = Some(b.clone());
            Ok::<_, picket_store::StoreError>(b as Arc<dyn Backend>)
        })
        .context("the shared trees on etcd")?;
    Ok((store, backend.context("the backend")?))
}

#[test]
fn the_shared_rules_hold_on_etcd_across_two_replicas() -> Result<()> {
    let w = World::new()?;
    let mut etcd = EtcdCluster::start(&w, 3)?;
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = on_etcd(da.path(), &etcd.endpoints())?;
    let b = on_etcd(db.path(), &etcd.endpoints())?;
    rules(&a, &b)?;

    // A third replica, started later, copies the whole state at start;
    // one started while etcd is down serves its copy as last seen.
    let dc = tempfile::tempdir()?;
    let c = on_etcd(dc.path(), &etcd.endpoints())?;
    ensure!(c.agents()? == a.agents()?);
    ensure!(c.audit_tail(100)?.len() == 30);
    drop(c);
    for m in 0..3 {
        etcd.kill(m);
    }
    let c = on_etcd(dc.path(), &etcd.endpoints())?;
    ensure!(c.agents()? == a.agents()?, "the copy as last seen");
    let e = c.put_token("late", &token(1)).unwrap_err();
    ensure!(e.to_string().contains("etcd unavailable"), "{e}");
    Ok(())
}

/// Latencies of `n` runs of `f`, sorted (µs).
fn timed(n: usize, mut f: impl FnMut(usize) -> Result<()>) -> Result<Vec<u128>> {
    let mut us = Vec::with_capacity(n);
    for i in 0..n {
        let t = std::time::Instant::now();
        f(i)?;
        us.push(t.elapsed().as_micros());
    }
    us.sort_unstable();
    Ok(us)
}

fn figures(what: &str, us: &[u128]) {
    let at = |q: f64| us[((us.len() - 1) as f64 * q) as usize];
    eprintln!(
        "{what}: n={} p50={}µs p99={}µs",
        us.len(),
        at(0.5),
        at(0.99)
    );
}

/// What the shared state costs a replica, etcd beside sled: printed for
/// docs/benchmarks.md (no figure is asserted: the machine is shared);
/// what is asserted is that every call went through.
#[test]
fn what_the_shared_state_costs() -> Result<()> {
    let w = World::new()?;
    let etcd = EtcdCluster::start(&w, 3)?;
    let (ds, da, db) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    let sled = Store::open_with_floor(ds.path(), 0.0)?;
    let a = on_etcd(da.path(), &etcd.endpoints())?;
    let b = on_etcd(db.path(), &etcd.endpoints())?;
    for (name, st) in [("sled", &sled), ("etcd", &a)] {
        st.put_token("bench", &token(1000))?;
        let enroll = timed(200, |i| {
            st.enroll_agent("bench", 10, &agent(&format!("h{i}")))?
                .map(drop)
                .map_err(|e| anyhow::anyhow!("{e:?}"))
        })?;
        figures(
            &format!("{name} enroll (token use + agent record)"),
            &enroll,
        );
        let seen = timed(500, |i| {
            st.update_agent(&format!("h{}", i % 200), |r| r.last_seen_ms += 1)?
                .context("an agent")
                .map(drop)
        })?;
        figures(
            &format!("{name} update_agent (heartbeat's last_seen)"),
            &seen,
        );
        let read = timed(2000, |i| {
            st.agent(&format!("h{}", i % 200))?
                .context("an agent")
                .map(drop)
        })?;
        figures(&format!("{name} agent read"), &read);
    }
    // How long another replica takes to see a write.
    let lag = timed(100, |i| {
        a.update_agent("h0", |r| r.last_seen_ms = 10_000 + i as i64)?;
        // Polled every millisecond (wait_for's pace would be the figure).
        let start = std::time::Instant::now();
        while b.agent("h0")?.context("h0")?.last_seen_ms != 10_000 + i as i64 {
            ensure!(start.elapsed() < SEEN, "b never saw write {i}");
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    })?;
    figures(
        "etcd write on one replica → seen by another (incl. the write)",
        &lag,
    );
    Ok(())
}
