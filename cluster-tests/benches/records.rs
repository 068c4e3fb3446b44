//! Records through PostgreSQL beside the embedded store, in one run
//! (#23, docs/benchmarks.md "Records in PostgreSQL"):
//!
//!     cargo bench -p picket-cluster-tests --bench records [-- LINES]
//!
//! Ingest: LINES syslog-like lines (default 1,000,000) of 100 hosts, in
//! groups as the ingest thread stores them (20 hosts × 200 lines, 4,000
//! records a call), each group durable before the next (the embedded
//! store flushed, PostgreSQL committed with its default `fsync` and
//! `synchronous_commit`). Then `logs --grep` over all of them: a rare
//! word (1 line in 10,000) and a common one (1 in 10), both stores.
//! PostgreSQL is Debian's, started here on a loopback port of its own.

use std::time::Instant;

use anyhow::Result;
use picket_records_pg::{PgRecords, Settings};
use picket_store::Store;
use picket_store::kept::RecordStore;
use picket_store::records::{LogRecord, Needles, Read, Records, Start};
use picket_tests::postgres::Postgres;

const HOSTS: usize = 100;
const PER_BATCH: usize = 200;
const HOSTS_PER_GROUP: usize = 20;

fn text(n: usize) -> String {
    match n % 10_000 {
        7 => format!(
            "kernel: [{n}.123] app[{}]: segfault at 0 ip 00007f sp 00007ffd error 4",
            n % 977
        ),
        _ if n % 10 == 3 => format!(
            "sshd[{}]: Failed password for invalid user admin from 10.0.{}.{} port {} ssh2",
            1000 + n % 5000,
            n % 256,
            n % 199,
            30_000 + n % 30_000
        ),
        _ => format!(
            "CRON[{}]: (root) CMD (   cd / && run-parts --report /etc/cron.hourly) job={}",
            2000 + n % 9000,
            n
        ),
    }
}

/// The groups of batches to store: each a list of (host, lines, acked).
fn groups(lines: usize) -> Vec<Vec<(String, Vec<LogRecord>, u64)>> {
    let t0 = 1_764_800_000_000i64;
    let mut seq = vec![0u64; HOSTS];
    let (mut out, mut n, mut host) = (Vec::new(), 0usize, 0usize);
    while n < lines {
        let mut group = Vec::new();
        for _ in 0..HOSTS_PER_GROUP {
            let h = host % HOSTS;
            host += 1;
            let batch: Vec<LogRecord> = (0..PER_BATCH)
                .map(|k| {
                    seq[h] += 1;
                    let i = n + k;
                    LogRecord {
                        id: 0,
                        host: format!("vm-{h:03}"),
                        source: "raw".into(),
                        path: "/var/log/syslog".into(),
                        seq: seq[h],
                        time_ms: t0 + (i / 4) as i64,
                        line: text(i),
                        truncated: false,
                        invalid_utf8: false,
                    }
                })
                .collect();
            n += PER_BATCH;
            group.push((format!("vm-{h:03}"), batch, seq[h]));
        }
        out.push(group);
    }
    out
}

/// Stores every group durably; returns lines per second.
fn ingest(store: &dyn RecordStore, groups: &[Vec<(String, Vec<LogRecord>, u64)>]) -> Result<f64> {
    let total: usize = groups.iter().flatten().map(|(_, b, _)| b.len()).sum();
    let started = Instant::now();
    for g in groups {
        let mut batches: Vec<(&str, Records<'_>, u64)> = g
            .iter()
            .map(|(h, b, a)| (h.as_str(), Records::of(vec![], &[], b), *a))
            .collect();
        store.store(&mut batches)?;
        store.flush()?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// `logs --grep PATTERN` over everything: matches, and seconds.
fn grep(store: &dyn RecordStore, pattern: &str) -> Result<(usize, f64)> {
    let started = Instant::now();
    let needles = Needles::of(pattern);
    let re = regex::Regex::new(pattern)?;
    let read = Read {
        start: Start::Since(0),
        host: None,
        needles: needles.as_ref(),
    };
    let mut n = 0;
    for l in store.logs(read)? {
        if re.is_match(&l?.line) {
            n += 1;
        }
    }
    Ok((n, started.elapsed().as_secs_f64()))
}

fn main() -> Result<()> {
    let lines: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let groups = groups(lines);
    let dir = tempfile::tempdir()?;
    let embedded = Store::open_with_floor(dir.path(), 0.0)?;
    let pg = Postgres::start(&[])?;
    let mut settings = Settings::new(pg.url());
    settings.password_file = Some(pg.password_file.clone());
    let replicated = PgRecords::connect(&settings)?;
    println!(
        "{lines} lines, {HOSTS} hosts, {} records a store call",
        HOSTS_PER_GROUP * PER_BATCH
    );
    let sled = ingest(&embedded, &groups)?;
    let postgres = ingest(&replicated, &groups)?;
    println!(
        "| ingest, lines/s | {sled:.0} | {postgres:.0} | {:.0} % |",
        100.0 * postgres / sled
    );
    for pattern in ["segfault", "Failed password"] {
        let (a, ta) = grep(&embedded, pattern)?;
        let (b, tb) = grep(&replicated, pattern)?;
        anyhow::ensure!(a == b, "{pattern}: {a} matches embedded, {b} in PostgreSQL");
        println!(
            "| `logs --grep '{pattern}'` ({a} matches), s | {ta:.2} | {tb:.2} | {:.0} % |",
            100.0 * ta / tb
        );
    }
    let size = pg.psql("SELECT pg_total_relation_size('picket_blocks')")?;
    let size: f64 = size.parse().unwrap_or(0.0);
    println!(
        "PostgreSQL picket_blocks: {:.1} MiB ({:.0} bytes a line)",
        size / 1048576.0,
        size / lines as f64
    );
    Ok(())
}
