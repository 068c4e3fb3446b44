//! The records database's schema, versioned: [`MIGRATIONS`] in order,
//! applied at start under an advisory lock, so replicas starting together
//! apply each once. The version reached is a row of `picket_schema`; a
//! replica that finds a version newer than it knows refuses to start
//! ([`PgError::Newer`]) rather than write rows an upgraded replica would
//! misread. A migration is never edited once released: a change is a new
//! one at the end.

use tokio_postgres::Client;

use crate::PgError;

/// The advisory lock migrations run under (any number; "picket" in ASCII).
const LOCK: i64 = 0x7069_636b_6574;

/// Each version's statements; version `n` is `MIGRATIONS[n - 1]`.
pub const MIGRATIONS: &[&str] = &[
    // 1: blocks of records, acked numbers, the id counter, the retention
    // watermarks.
    "CREATE TABLE picket_blocks (
        kind        smallint NOT NULL,
        host        text     NOT NULL,
        earliest    bigint   NOT NULL,
        latest      bigint   NOT NULL,
        first_id    bigint   NOT NULL,
        max_id      bigint   NOT NULL,
        received_ms bigint   NOT NULL,
        count       integer  NOT NULL,
        packed      bytea    NOT NULL,
        PRIMARY KEY (kind, max_id)
    );
    CREATE INDEX picket_blocks_time ON picket_blocks (kind, earliest, first_id);
    CREATE INDEX picket_blocks_host ON picket_blocks (kind, host, earliest, first_id);
    CREATE INDEX picket_blocks_latest ON picket_blocks (kind, latest, first_id);
    CREATE INDEX picket_blocks_host_latest ON picket_blocks (kind, host, latest, first_id);
    CREATE INDEX picket_blocks_host_id ON picket_blocks (kind, host, max_id);
    CREATE INDEX picket_blocks_received ON picket_blocks (kind, received_ms);
    CREATE TABLE picket_acked (host text PRIMARY KEY, seq bigint NOT NULL);
    CREATE TABLE picket_ids (
        one  boolean PRIMARY KEY DEFAULT true CHECK (one),
        next bigint  NOT NULL
    );
    INSERT INTO picket_ids (next) VALUES (1);
    CREATE TABLE picket_expired (kind smallint PRIMARY KEY, through bigint NOT NULL);",
    // 2: metrics: raw samples (a host's gauges at one time, JSON as the
    // embedded store keeps them), one-minute rollups, how far each host is
    // rolled up.
    "CREATE TABLE picket_samples (
        host    text   NOT NULL,
        time_ms bigint NOT NULL,
        points  bytea  NOT NULL,
        PRIMARY KEY (host, time_ms)
    );
    CREATE TABLE picket_rollups (
        host    text   NOT NULL,
        minute  bigint NOT NULL,
        series  bytea  NOT NULL,
        PRIMARY KEY (host, minute)
    );
    CREATE TABLE picket_rolled (host text PRIMARY KEY, until bigint NOT NULL);",
    // 3: samples numbered from the ids' counter, in commit order, for the
    // leader's alert tap (`picket_tap::stored`); those stored before have
    // none and are not fed.
    "ALTER TABLE picket_samples ADD COLUMN id bigint;
    CREATE INDEX picket_samples_id ON picket_samples (id) WHERE id IS NOT NULL;",
];

/// The version this build writes and reads.
pub fn known() -> i32 {
    MIGRATIONS.len() as i32
}

/// Applies the migrations the database lacks, in one transaction under
/// [`LOCK`]; refuses a database newer than [`known`]. Returns the version
/// it found.
pub async fn migrate(client: &mut Client) -> Result<i32, PgError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS picket_schema (version integer NOT NULL)")
        .await?;
    let found = tx
        .query_opt("SELECT version FROM picket_schema", &[])
        .await?
        .map_or(0, |r| r.get::<_, i32>(0));
    if found > known() {
        return Err(PgError::Newer {
            found,
            known: known(),
        });
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tracing::info!(
            version = i + 1,
            "records database: applying schema migration"
        );
        tx.batch_execute(m).await?;
    }
    if found == 0 {
        tx.execute("INSERT INTO picket_schema VALUES ($1)", &[&known()])
            .await?;
    } else if found < known() {
        tx.execute("UPDATE picket_schema SET version = $1", &[&known()])
            .await?;
    }
    tx.commit().await?;
    Ok(found)
}
