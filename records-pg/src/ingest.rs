//! Storing batches: one transaction per call, whatever the number of
//! hosts in it, so that an ingest group costs a few round trips.
//!
//! In the transaction, in this order (every transaction takes its locks
//! in the same order, so two replicas storing at once cannot deadlock):
//! 1. the hosts' `picket_acked` rows, created at 0 if new, locked in host
//!    order: no other replica stores for them until this commits;
//! 2. every record at or below its host's acked number is left out
//!    (stored before, through this replica or another);
//! 3. ids for the rest from `picket_ids` (the row stays locked until the
//!    commit, so ids are in commit order across replicas);
//! 4. the blocks, one insert for all; the acked numbers; a notification
//!    on `picket_records` carrying the highest id, sent at commit;
//! 5. the metrics samples (keyed by host and time: one sent again is
//!    the same row), numbered from the same ids after the records, so
//!    the alert tap reads them in commit order too.

use std::borrow::Cow;

use picket_store::StoreError;
use picket_store::metrics::encode_values;
use picket_store::records::{Block, Records, Wire, blocks};

use crate::{PgError, PgRecords};

/// The notification channel each commit of records is announced on (its
/// payload: the highest id committed).
pub const CHANNEL: &str = "picket_records";

/// What `kind` holds in `picket_blocks`.
pub(crate) const EVENTS: i16 = 0;
pub(crate) const LOGS: i16 = 1;

/// One host's batch: its records, and the sequence number the agent is
/// acked once it is stored (which may be above the last record's, when
/// ingest rejected some: their numbers are acked too).
pub struct Batch<'h, 'r> {
    pub host: &'h str,
    pub records: Records<'r>,
    pub acked: u64,
}

/// A batch as the transaction takes it (owned: it runs on the crate's
/// runtime).
struct Owned {
    host: String,
    /// The samples: time, points as stored.
    samples: Vec<(i64, Vec<u8>)>,
    events: Vec<Wire<'static>>,
    logs: Vec<Wire<'static>>,
    acked: u64,
}

fn owned(w: &Wire<'_>) -> Wire<'static> {
    Wire {
        id: w.id,
        seq: w.seq,
        time_ms: w.time_ms,
        received_ms: w.received_ms,
        payload: Cow::Owned(w.payload.to_vec()),
    }
}

/// The rows of one insert, column by column.
#[derive(Default)]
struct Rows {
    kind: Vec<i16>,
    host: Vec<String>,
    earliest: Vec<i64>,
    latest: Vec<i64>,
    first_id: Vec<i64>,
    max_id: Vec<i64>,
    received: Vec<i64>,
    count: Vec<i32>,
    packed: Vec<Vec<u8>>,
}

impl Rows {
    fn push(&mut self, kind: i16, host: &str, b: Block) {
        self.kind.push(kind);
        self.host.push(host.to_string());
        self.earliest.push(b.earliest);
        self.latest.push(b.latest);
        self.first_id.push(b.first_id as i64);
        self.max_id.push(b.max_id as i64);
        self.received.push(b.received);
        self.count.push(b.count as i32);
        self.packed.push(picket_segment::pack::pack(&b.bytes));
    }
}

impl PgRecords {
    /// Stores `batches` in one transaction (see the module docs), and
    /// leaves in each only what was stored, with its ids: a record already
    /// stored (at or below its host's acked number) is taken out. Each
    /// batch's `acked` becomes the number now stored for its host (never
    /// lower than it was). Returns once PostgreSQL has committed.
    pub fn put_many(&self, batches: &mut [Batch<'_, '_>]) -> Result<(), StoreError> {
        let owned: Vec<Owned> = batches
            .iter()
            .map(|b| Owned {
                host: b.host.to_string(),
                samples: b
                    .records
                    .samples
                    .iter()
                    .map(|s| (s.time_ms, encode_values(&s.points)))
                    .collect(),
                events: b.records.events.iter().map(owned).collect(),
                logs: b.records.logs.iter().map(owned).collect(),
                acked: b.acked,
            })
            .collect();
        let stored = self.with(|mut c| async move {
            let tx = c.transaction().await?;
            let stored = store(&tx, owned).await?;
            tx.commit().await?;
            Ok(stored)
        })?;
        for (b, s) in batches.iter_mut().zip(stored) {
            b.records.events = s.events;
            b.records.logs = s.logs;
            b.acked = s.acked;
        }
        Ok(())
    }
}

/// Steps 1–4 of the module docs, in `tx`.
async fn store(
    tx: &tokio_postgres::Transaction<'_>,
    mut batches: Vec<Owned>,
) -> Result<Vec<Owned>, PgError> {
    let mut hosts: Vec<&str> = batches.iter().map(|b| b.host.as_str()).collect();
    hosts.sort_unstable();
    hosts.dedup();
    tx.execute(
        "INSERT INTO picket_acked (host, seq) SELECT h, 0 FROM unnest($1::text[]) AS h \
         ORDER BY h ON CONFLICT DO NOTHING",
        &[&hosts],
    )
    .await?;
    let rows = tx
        .query(
            "SELECT host, seq FROM picket_acked WHERE host = ANY($1) ORDER BY host FOR UPDATE",
            &[&hosts],
        )
        .await?;
    let mut acked: std::collections::HashMap<String, u64> = rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
        .collect();
    let mut n = 0usize;
    for b in &mut batches {
        let before = acked.get(&b.host).copied().unwrap_or(0);
        b.events.retain(|w| w.seq > before);
        b.logs.retain(|w| w.seq > before);
        n += b.events.len() + b.logs.len() + b.samples.len();
        b.acked = b.acked.max(before);
        acked.insert(b.host.clone(), b.acked);
    }
    let mut next = 0u64;
    if n > 0 {
        let row = tx
            .query_one(
                "UPDATE picket_ids SET next = next + $1 RETURNING next - $1",
                &[&(n as i64)],
            )
            .await?;
        next = row.get::<_, i64>(0) as u64;
        let mut rows = Rows::default();
        for b in &mut batches {
            for w in b.events.iter_mut().chain(b.logs.iter_mut()) {
                w.id = next;
                next += 1;
            }
            for block in blocks(&b.events) {
                rows.push(EVENTS, &b.host, block);
            }
            for block in blocks(&b.logs) {
                rows.push(LOGS, &b.host, block);
            }
        }
        tx.execute(
            "INSERT INTO picket_blocks \
             (kind, host, earliest, latest, first_id, max_id, received_ms, count, packed) \
             SELECT * FROM unnest($1::smallint[], $2::text[], $3::bigint[], $4::bigint[], \
             $5::bigint[], $6::bigint[], $7::bigint[], $8::integer[], $9::bytea[])",
            &[
                &rows.kind,
                &rows.host,
                &rows.earliest,
                &rows.latest,
                &rows.first_id,
                &rows.max_id,
                &rows.received,
                &rows.count,
                &rows.packed,
            ],
        )
        .await?;
    }
    // Samples are keyed by time: one sent again is the same row (and
    // keeps its first id).
    let (mut hosts, mut times, mut points, mut ids) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for b in &mut batches {
        for (t, p) in std::mem::take(&mut b.samples) {
            hosts.push(b.host.clone());
            times.push(t);
            points.push(p);
            ids.push(next as i64);
            next += 1;
        }
    }
    if !hosts.is_empty() {
        tx.execute(
            "INSERT INTO picket_samples (host, time_ms, points, id) \
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[], $4::bigint[]) \
             ON CONFLICT DO NOTHING",
            &[&hosts, &times, &points, &ids],
        )
        .await?;
    }
    if n > 0 {
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL, &(next - 1).to_string()],
        )
        .await?;
    }
    let (hosts, seqs): (Vec<String>, Vec<i64>) =
        acked.into_iter().map(|(h, s)| (h, s as i64)).unzip();
    tx.execute(
        "UPDATE picket_acked a SET seq = n.seq \
         FROM unnest($1::text[], $2::bigint[]) AS n(host, seq) \
         WHERE a.host = n.host AND a.seq < n.seq",
        &[&hosts, &seqs],
    )
    .await?;
    Ok(batches)
}
