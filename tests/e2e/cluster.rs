//! Cluster mode's leadership (SPEC §12, picket-cluster) against a real
//! three-member etcd (Debian `etcd-server`, started here): one leader
//! among the replicas, a new one when it dies, fencing of a deposed
//! leader's writes, and what losing etcd members does.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use picket_cluster::etcd::put_op;
use picket_cluster::{Etcd, EtcdError, Leadership, Options, Role, Term};
use picket_tests::World;
use picket_tests::etcd::EtcdCluster;

fn options() -> Options {
    Options {
        ttl: Duration::from_secs(5),
        renew_every: Duration::from_secs(1),
        prefix: "/picket".into(),
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
