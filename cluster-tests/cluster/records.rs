//! Records in PostgreSQL (#23, SPEC §12) against a real server
//! (Debian `postgresql`, started by each test on a port of its own):
//! stored once per host sequence number whichever replica stores them,
//! ids in commit order, the same answers as the embedded store, the
//! schema's versions, retention, and a server that goes away and comes
//! back.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use picket_model::Severity;
use picket_records_pg::{Batch, PgRecords, Settings};
use picket_store::records::{EventRecord, Kind, LogRecord, Needles, Read, Records, Start};
use picket_store::{Store, StoreError};
use picket_tests::postgres::Postgres;

pub(crate) fn connect(pg: &Postgres) -> Result<PgRecords, StoreError> {
    let mut s = Settings::new(pg.url());
    s.password_file = Some(pg.password_file.clone());
    PgRecords::connect(&s)
}

pub(crate) fn line(host: &str, seq: u64, t: i64, text: &str) -> LogRecord {
    LogRecord {
        id: 0,
        host: host.into(),
        source: "raw".into(),
        path: "/var/log/syslog".into(),
        seq,
        time_ms: t,
        line: text.into(),
        truncated: false,
        invalid_utf8: false,
    }
}

pub(crate) fn event(host: &str, seq: u64, t: i64) -> EventRecord {
    EventRecord {
        id: 0,
        host: host.into(),
        source: "sshd".into(),
        path: "/var/log/auth.log".into(),
        seq,
        time_ms: t,
        received_ms: t,
        severity: Severity::Low,
        kind: "auth_failure".into(),
        message: format!("failure {seq} on {host}"),
        fields: BTreeMap::from([("user".to_string(), format!("u{}", seq % 7))]),
    }
}

/// A series with no labels at `value`.
pub(crate) fn gauge(name: &str, value: f64) -> picket_store::metrics::Point {
    picket_store::metrics::Point {
        name: name.into(),
        labels: BTreeMap::new(),
        value,
    }
}

/// What a record is, apart from the id its store gave it.
fn log_key(r: &LogRecord) -> (String, u64, i64, String) {
    (r.host.clone(), r.seq, r.time_ms, r.line.clone())
}

fn logs(pg: &PgRecords, r: Read<'_>) -> Vec<LogRecord> {
    pg.logs(r)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .unwrap_or_else(|e| panic!("reading logs: {e}"))
}

fn put_logs(pg: &PgRecords, host: &str, lines: &[LogRecord]) -> Result<(Vec<u64>, u64)> {
    let acked = lines.iter().map(|l| l.seq).max().unwrap_or(0);
    let mut b = [Batch {
        host,
        records: Records::of(vec![], &[], lines),
        acked,
    }];
    pg.put_many(&mut b)?;
    let ids = b[0].records.logs.iter().map(|w| w.id).collect();
    Ok((ids, b[0].acked))
}

#[test]
fn each_host_sequence_is_stored_once_whichever_replica_stores_it() -> Result<()> {
    let pg = Postgres::start(&["fsync=off"])?;
    let (a, b) = (Arc::new(connect(&pg)?), Arc::new(connect(&pg)?));
    let batch: Vec<LogRecord> = (1..=200)
        .map(|s| line("vm-prod", s, 1_000 + s as i64, &format!("line {s}")))
        .collect();
    // The same batch through both replicas at once (an agent that moved
    // in a cut sends again what the first may have stored).
    let threads: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|r| {
            let batch = batch.clone();
            std::thread::spawn(move || put_logs(&r, "vm-prod", &batch))
        })
        .collect();
    let mut stored = 0;
    for t in threads {
        let (ids, acked) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a writer panicked"))??;
        assert_eq!(acked, 200);
        stored += ids.len();
    }
    assert_eq!(stored, 200, "one of the two stored it, the other nothing");
    // Overlapping: 150..=250 stores only 201..=250.
    let more: Vec<LogRecord> = (150..=250)
        .map(|s| line("vm-prod", s, 1_000 + s as i64, &format!("line {s}")))
        .collect();
    let (ids, acked) = put_logs(&b, "vm-prod", &more)?;
    assert_eq!((ids.len(), acked), (50, 250));
    // An acked number above the last record's (ingest rejected some)
    // holds; a lower one never moves it back.
    let (_, acked) = put_logs(&a, "vm-prod", &[line("vm-prod", 251, 2_000, "x")])?;
    assert_eq!(acked, 251);
    assert_eq!(a.acked_seq("vm-prod")?, 251);
    let (ids, acked) = put_logs(&a, "vm-prod", &[line("vm-prod", 3, 2_000, "old")])?;
    assert_eq!((ids.len(), acked), (0, 251));
    // Both replicas read every line once, in time order.
    for r in [&a, &b] {
        let all = logs(r, Read::new(Start::Since(0), None));
        let seqs: Vec<u64> = all.iter().map(|l| l.seq).collect();
        assert_eq!(seqs, (1..=251).collect::<Vec<_>>());
    }
    // Forgetting the host lets it count from 1 again.
    a.forget("vm-prod")?;
    assert_eq!(b.acked_seq("vm-prod")?, 0);
    Ok(())
}

#[test]
fn ids_are_in_commit_order_across_replicas() -> Result<()> {
    let pg = Postgres::start(&["fsync=off"])?;
    let replicas: Vec<Arc<PgRecords>> = (0..3)
        .map(|_| connect(&pg).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let writers: Vec<_> = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let r = r.clone();
            std::thread::spawn(move || -> Result<()> {
                let host = format!("vm-{i}");
                for n in 0..60u64 {
                    let batch: Vec<LogRecord> = (1..=10)
                        .map(|k| line(&host, n * 10 + k, (n * 10 + k) as i64, "x"))
                        .collect();
                    put_logs(&r, &host, &batch)?;
                }
                Ok(())
            })
        })
        .collect();
    // A reader that has seen id L has seen every record with a lower id:
    // what a follower on any replica relies on.
    let reader = &replicas[0];
    let mut checks = 0;
    while writers.iter().any(|w| !w.is_finished()) || checks == 0 {
        let last = reader.last_id()?;
        let mut ids: Vec<u64> = logs(reader, Read::new(Start::After(0), None))
            .into_iter()
            .map(|l| l.id)
            .filter(|id| *id <= last)
            .collect();
        ids.sort_unstable();
        assert_eq!(
            ids,
            (1..=last).collect::<Vec<_>>(),
            "a gap below the last id {last}"
        );
        checks += 1;
    }
    for w in writers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a writer panicked"))??;
    }
    assert_eq!(reader.last_id()?, 3 * 600);
    assert!(checks > 1, "the reader looked while the writers wrote");
    Ok(())
}

/// The same batches into the embedded store and PostgreSQL.
fn fill(store: &Store, pg: &PgRecords) -> Result<()> {
    // Three hosts, overlapping times, blocks of every size: more than a
    // page of blocks (64) and more than a block's records (2,048).
    for round in 0..90u64 {
        for (h, host) in ["vm-prod", "vm-staging", "vm-monitor"].iter().enumerate() {
            let n = if round == 40 {
                2_500
            } else {
                3 + (round * 7 + h as u64) % 40
            };
            let base = round * 3_000 + 1;
            let t0 = 1_700_000_000_000 + round as i64 * 700 + h as i64 * 130;
            let lines: Vec<LogRecord> = (0..n)
                .map(|k| {
                    let text = if k % 97 == 5 {
                        format!("needle {host} {k}")
                    } else {
                        format!("hay {k}")
                    };
                    line(host, base + k, t0 + (k as i64 * 37) % 2_300, &text)
                })
                .collect();
            let events: Vec<EventRecord> = (0..n / 3)
                .map(|k| event(host, base + k, t0 + k as i64 * 11))
                .collect();
            let acked = base + n;
            let mut r = Records::of(vec![], &events, &lines);
            let ids = store.ingest_ids(r.events.len() + r.logs.len())?;
            for (w, id) in r.events.iter_mut().chain(r.logs.iter_mut()).zip(ids) {
                w.id = id;
            }
            store.put_records(host, &r, acked)?;
            pg.put_many(&mut [Batch {
                host,
                records: Records::of(vec![], &events, &lines),
                acked,
            }])?;
        }
    }
    Ok(())
}

#[test]
fn reads_answer_as_the_embedded_store_does() -> Result<()> {
    let pg = Postgres::start(&["fsync=off"])?;
    let db = connect(&pg)?;
    let dir = tempfile::tempdir()?;
    let store = Store::open_with_floor(dir.path(), 0.0)?;
    fill(&store, &db)?;
    let needles = Needles::of("needle");
    let since = 1_700_000_000_000 + 30 * 700 + 50;
    let reads = [
        Read::new(Start::Since(0), None),
        Read::new(Start::Since(since), None),
        Read::new(Start::Since(since), Some("vm-staging")),
        Read::new(Start::Newest, None),
        Read::new(Start::Newest, Some("vm-monitor")),
        Read {
            start: Start::Since(since),
            host: None,
            needles: needles.as_ref(),
        },
    ];
    for r in reads {
        let embedded: Vec<_> = store
            .logs(r)?
            .collect::<Result<Vec<_>, _>>()?
            .iter()
            .map(log_key)
            .collect();
        let theirs: Vec<_> = logs(&db, r).iter().map(log_key).collect();
        assert!(
            embedded.len() > 100,
            "{:?}: too few to tell ({})",
            r.start,
            embedded.len()
        );
        assert_eq!(theirs.len(), embedded.len(), "{:?} {:?}", r.start, r.host);
        assert!(
            theirs == embedded,
            "{:?} {:?}: another order or content",
            r.start,
            r.host
        );
        let ev_embedded: Vec<_> = store
            .events(r)?
            .map(|e| e.map(|e| (e.host, e.seq, e.time_ms, e.message, e.fields)))
            .collect::<Result<_, _>>()?;
        let ev_theirs: Vec<_> = db
            .events(r)?
            .map(|e| e.map(|e| (e.host, e.seq, e.time_ms, e.message, e.fields)))
            .collect::<Result<_, _>>()?;
        assert!(ev_theirs == ev_embedded, "events {:?}: differ", r.start);
    }
    // By id: everything above an id, in the order stored.
    let all = logs(&db, Read::new(Start::After(0), None));
    let total = all.len();
    let mid = all[total / 2].id;
    let after = logs(&db, Read::new(Start::After(mid), None));
    let mut want: Vec<u64> = all.iter().map(|l| l.id).filter(|id| *id > mid).collect();
    let mut got: Vec<u64> = after.iter().map(|l| l.id).collect();
    assert_eq!(got.len(), want.len());
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, want);
    let grep = logs(
        &db,
        Read {
            start: Start::Since(0),
            host: Some("vm-prod"),
            needles: needles.as_ref(),
        },
    );
    assert!(!grep.is_empty() && grep.iter().all(|l| l.line.contains("needle vm-prod")));
    Ok(())
}

#[test]
fn retention_deletes_by_receive_time_and_says_how_far() -> Result<()> {
    let pg = Postgres::start(&["fsync=off"])?;
    let db = connect(&pg)?;
    let store = |seq: u64, received: i64| -> Result<u64> {
        let mut r = Records::of(vec![], &[], &[line("h", seq, 5, "x")]);
        r.logs[0].received_ms = received;
        let mut b = [Batch {
            host: "h",
            records: r,
            acked: seq,
        }];
        db.put_many(&mut b)?;
        Ok(b[0].records.logs[0].id)
    };
    let old = store(1, 1_000)?;
    let new = store(2, 9_000)?;
    assert_eq!(db.expired_through(Kind::Logs)?, 0);
    assert_eq!(db.expire(Kind::Logs, 5_000)?, 1);
    assert_eq!(db.expired_through(Kind::Logs)?, old);
    let left: Vec<u64> = logs(&db, Read::new(Start::Since(0), None))
        .iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(left, [new]);
    assert_eq!(db.expire(Kind::Logs, 5_000)?, 0);
    assert_eq!(
        db.expired_through(Kind::Logs)?,
        old,
        "the watermark never goes back"
    );
    Ok(())
}

#[test]
fn the_schema_is_migrated_once_and_a_newer_one_refused() -> Result<()> {
    let pg = Postgres::start(&["fsync=off"])?;
    // Replicas starting together: each migration once, all of them up.
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let (url, pw) = (pg.url(), pg.password_file.clone());
            std::thread::spawn(move || {
                let mut s = Settings::new(url);
                s.password_file = Some(pw);
                PgRecords::connect(&s).map(drop)
            })
        })
        .collect();
    for s in starts {
        s.join()
            .map_err(|_| anyhow::anyhow!("a start panicked"))??;
    }
    let known = picket_records_pg::schema::known();
    assert_eq!(
        pg.psql("SELECT version FROM picket_schema")?,
        known.to_string()
    );
    assert_eq!(pg.psql("SELECT count(*) FROM picket_schema")?, "1");
    pg.psql(&format!("UPDATE picket_schema SET version = {}", known + 1))?;
    let Err(e) = connect(&pg) else {
        anyhow::bail!("a schema newer than this build was accepted");
    };
    let e = e.to_string();
    assert!(e.contains("newer than this picket-control knows"), "{e}");
    // The password from libpq's password file (SPEC §12: PGPASSFILE),
    // which must be private to be read.
    let pgpass = pg.password_file.with_file_name("pgpass");
    std::fs::write(
        &pgpass,
        format!(
            "# picket\n127.0.0.1:{}:postgres:picket:{}\n",
            pg.port,
            picket_tests::postgres::PASSWORD
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600))?;
    pg.psql(&format!("UPDATE picket_schema SET version = {known}"))?;
    let mut s = Settings::new(pg.url());
    s.pgpass = Some(pgpass.clone());
    PgRecords::connect(&s)?;
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644))?;
    let Err(e) = PgRecords::connect(&s) else {
        anyhow::bail!("a password file others can read was used");
    };
    assert!(e.to_string().contains("password"), "{e}");
    // A wrong password is a clear error, not a hang.
    let mut s = Settings::new(pg.url());
    s.pgpass = None;
    let wrong = pg.password_file.with_file_name("wrong");
    std::fs::write(&wrong, "nope\n")?;
    s.password_file = Some(wrong);
    let Err(e) = PgRecords::connect(&s) else {
        anyhow::bail!("a wrong password was accepted");
    };
    assert!(e.to_string().contains("password"), "{e}");
    Ok(())
}

#[test]
fn a_server_that_goes_away_refuses_batches_until_it_is_back() -> Result<()> {
    let mut pg = Postgres::start(&[])?;
    let db = connect(&pg)?;
    put_logs(&db, "vm-prod", &[line("vm-prod", 1, 10, "before")])?;
    pg.stop()?;
    let e = put_logs(&db, "vm-prod", &[line("vm-prod", 2, 20, "while down")])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("records database unreachable"),
        "a refused batch says why: {e:?}"
    );
    assert!(
        db.unreachable().is_some(),
        "the store knows the server is away"
    );
    pg.resume()?;
    // The agent kept the batch and sends it again: stored once.
    let (ids, acked) = put_logs(&db, "vm-prod", &[line("vm-prod", 2, 20, "while down")])?;
    assert_eq!((ids.len(), acked), (1, 2));
    assert_eq!(db.unreachable(), None);
    let texts: Vec<String> = logs(&db, Read::new(Start::Since(0), None))
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert_eq!(texts, ["before", "while down"]);
    Ok(())
}

#[test]
fn metrics_are_kept_and_rolled_up_as_the_embedded_store_does() -> Result<()> {
    use picket_store::kept::RecordStore;
    use picket_store::metrics::{Point, Sample};
    let pg = Postgres::start(&["fsync=off"])?;
    let (a, b) = (Arc::new(connect(&pg)?), Arc::new(connect(&pg)?));
    let dir = tempfile::tempdir()?;
    let store = Store::open_with_floor(dir.path(), 0.0)?;
    let sample = |t: i64| Sample {
        time_ms: t,
        points: vec![
            gauge("cpu_usage_percent", (t % 97) as f64),
            Point {
                name: "disk_used_bytes".into(),
                labels: BTreeMap::from([("mount".to_string(), "/".to_string())]),
                value: t as f64,
            },
        ],
    };
    // Five minutes of a sample every 10 s, in batches of six; the first
    // batch sent twice (an agent that moved), through the other replica.
    let batches: Vec<Vec<Sample>> = (0..5)
        .map(|m| (0..6).map(|k| sample(m * 60_000 + k * 10_000)).collect())
        .collect();
    for (n, samples) in batches.iter().enumerate() {
        let r = |s: &Vec<Sample>| Records::of(s.clone(), &[], &[]);
        store.put_records("h", &r(samples), n as u64 + 1)?;
        a.store(&mut [("h", r(samples), n as u64 + 1)])?;
    }
    b.store(&mut [("h", Records::of(batches[0].clone(), &[], &[]), 1)])?;
    assert_eq!(
        a.samples("h", 0, i64::MAX)?,
        store.samples("h", 0, i64::MAX)?
    );
    assert_eq!(b.latest_sample("h")?, store.latest_sample("h")?);
    // Both replicas roll up at once: the minutes once, as the store does.
    let rolls: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|r| std::thread::spawn(move || r.roll_up("h", 4 * 60_000 + 5)))
        .collect();
    let mut minutes = 0;
    for r in rolls {
        minutes += r
            .join()
            .map_err(|_| anyhow::anyhow!("a roll-up panicked"))??;
    }
    assert_eq!(minutes, store.roll_up("h", 4 * 60_000 + 5)?);
    assert_eq!(minutes, 4);
    assert_eq!(
        a.rollups("h", 0, i64::MAX)?,
        store.rollups("h", 0, i64::MAX)?
    );
    assert_eq!(
        b.expire_metrics("h", 2 * 60_000, 60_000)?,
        store.expire_metrics("h", 2 * 60_000, 60_000)?
    );
    assert_eq!(
        a.samples("h", 0, i64::MAX)?,
        store.samples("h", 0, i64::MAX)?
    );
    assert_eq!(
        a.rollups("h", 0, i64::MAX)?,
        store.rollups("h", 0, i64::MAX)?
    );
    Ok(())
}

#[test]
fn tls_to_the_database_checks_its_certificate() -> Result<()> {
    let pg = Postgres::start_tls(&["fsync=off"])?;
    let ca = pg.ca_file.clone().context("the server's CA")?;
    let settings = |url: String, root: Option<std::path::PathBuf>| {
        let mut s = Settings::new(url);
        s.password_file = Some(pg.password_file.clone());
        s.pgpass = None;
        s.root_cert = root;
        s
    };
    let tls_url = format!("{}?sslmode=require", pg.url());
    // The server takes TLS only: plain TCP (the default) is refused by it.
    let Err(e) = PgRecords::connect(&settings(pg.url(), Some(ca.clone()))) else {
        anyhow::bail!("a plain connection was taken by a TLS-only server");
    };
    assert!(e.to_string().contains("pg_hba.conf"), "{e}");
    // With sslmode=require and its CA trusted: records go through.
    let db = PgRecords::connect(&settings(tls_url.clone(), Some(ca)))?;
    put_logs(&db, "vm-prod", &[line("vm-prod", 1, 10, "over TLS")])?;
    let texts: Vec<String> = logs(&db, Read::new(Start::Since(0), None))
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert_eq!(texts, ["over TLS"]);
    // A server whose certificate nothing trusted signed is refused.
    let Err(e) = PgRecords::connect(&settings(tls_url, None)) else {
        anyhow::bail!("a certificate of an unknown issuer was accepted");
    };
    assert!(e.to_string().contains("certificate"), "{e}");
    Ok(())
}

#[test]
fn a_replica_starts_while_the_database_is_away_and_migrates_when_it_is_back() -> Result<()> {
    let mut pg = Postgres::start(&["fsync=off"])?;
    pg.stop()?;
    let db = connect(&pg)?;
    assert!(db.unreachable().is_some(), "it knows the server is away");
    let e = put_logs(&db, "h", &[line("h", 1, 5, "early")])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("records database unreachable"), "{e:?}");
    pg.resume()?;
    let (ids, acked) = put_logs(&db, "h", &[line("h", 1, 5, "early")])?;
    assert_eq!((ids.len(), acked), (1, 1));
    let known = picket_records_pg::schema::known();
    assert_eq!(
        pg.psql("SELECT version FROM picket_schema")?,
        known.to_string()
    );
    Ok(())
}
