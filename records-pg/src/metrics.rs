//! Host metrics in the records database: raw samples as each batch's
//! transaction stores them ([`crate::ingest`]), one-minute rollups made
//! by whichever replica gets to a host first (the host's `picket_rolled`
//! row, locked, says how far it is rolled), retention by time.

use picket_store::StoreError;
use picket_store::kept::Minutes;
use picket_store::metrics::{MINUTE_MS, Point, Rollup, Sample, decode_values, encode_values, roll};

use crate::PgRecords;

/// A host's raw samples with `$2 <= time < $3`, oldest first.
const SAMPLES_IN_RANGE: &str = "SELECT time_ms, points FROM picket_samples \
     WHERE host = $1 AND time_ms >= $2 AND time_ms < $3 ORDER BY time_ms";

impl PgRecords {
    /// Raw samples of `host` with `from <= time < to`, oldest first.
    pub fn samples(&self, host: &str, from: i64, to: i64) -> Result<Vec<Sample>, StoreError> {
        let host = host.to_string();
        let rows = self.with(move |c| async move {
            Ok(c.query(SAMPLES_IN_RANGE, &[&host, &from, &to]).await?)
        })?;
        rows.iter().map(|r| sample(r.get(0), r.get(1))).collect()
    }

    /// The samples numbered in `(after, upto]`, in id order (see
    /// [`RecordStore::samples_committed`]).
    ///
    /// [`RecordStore::samples_committed`]: picket_store::kept::RecordStore::samples_committed
    pub fn samples_committed(
        &self,
        after: u64,
        upto: u64,
    ) -> Result<Vec<(u64, String, Sample)>, StoreError> {
        let (after, upto) = (after as i64, upto as i64);
        let rows = self.with(move |c| async move {
            Ok(c.query(
                "SELECT id, host, time_ms, points FROM picket_samples \
                 WHERE id > $1 AND id <= $2 ORDER BY id",
                &[&after, &upto],
            )
            .await?)
        })?;
        rows.iter()
            .map(|r| {
                let s = sample(r.get(2), r.get(3))?;
                Ok((r.get::<_, i64>(0) as u64, r.get(1), s))
            })
            .collect()
    }

    /// The newest raw sample of `host`.
    pub fn latest_sample(&self, host: &str) -> Result<Option<Sample>, StoreError> {
        let host = host.to_string();
        let row = self.with(move |c| async move {
            Ok(c.query_opt(
                "SELECT time_ms, points FROM picket_samples WHERE host = $1 \
                 ORDER BY time_ms DESC LIMIT 1",
                &[&host],
            )
            .await?)
        })?;
        row.map(|r| sample(r.get(0), r.get(1))).transpose()
    }

    /// One-minute rollups of `host` with `from <= minute < to`.
    pub fn rollups(&self, host: &str, from: i64, to: i64) -> Result<Minutes, StoreError> {
        let host = host.to_string();
        let rows = self.with(move |c| async move {
            Ok(c.query(
                "SELECT minute, series FROM picket_rollups \
                 WHERE host = $1 AND minute >= $2 AND minute < $3 ORDER BY minute",
                &[&host, &from, &to],
            )
            .await?)
        })?;
        rows.iter()
            .map(|r| {
                let series: Vec<Rollup> = decode_values("picket_rollups", r.get(1))?;
                Ok((r.get(0), series))
            })
            .collect()
    }

    /// Rolls `host`'s whole minutes before `until` not rolled up yet, in
    /// one transaction holding the host's `picket_rolled` row (replicas
    /// rolling at once take turns; the second finds nothing to do).
    /// Returns the minutes written.
    pub fn roll_up(&self, host: &str, until: i64) -> Result<usize, StoreError> {
        let until = until - until.rem_euclid(MINUTE_MS);
        let host = host.to_string();
        self.with(move |mut c| async move {
            let tx = c.transaction().await?;
            tx.execute(
                "INSERT INTO picket_rolled (host, until) VALUES ($1, 0) ON CONFLICT DO NOTHING",
                &[&host],
            )
            .await?;
            let done: i64 = tx
                .query_one(
                    "SELECT until FROM picket_rolled WHERE host = $1 FOR UPDATE",
                    &[&host],
                )
                .await?
                .get(0);
            if done >= until {
                return Ok(0);
            }
            let rows = tx.query(SAMPLES_IN_RANGE, &[&host, &done, &until]).await?;
            let samples: Vec<Sample> = rows
                .iter()
                .map(|r| sample(r.get(0), r.get(1)))
                .collect::<Result<_, _>>()
                .map_err(|e| crate::PgError::Db(e.to_string()))?;
            let minutes = roll(samples);
            let n = minutes.len();
            let (times, series): (Vec<i64>, Vec<Vec<u8>>) = minutes
                .into_iter()
                .map(|(m, s)| (m, encode_values(&s)))
                .unzip();
            tx.execute(
                "INSERT INTO picket_rollups (host, minute, series) \
                 SELECT $1, * FROM unnest($2::bigint[], $3::bytea[]) ON CONFLICT DO NOTHING",
                &[&host, &times, &series],
            )
            .await?;
            tx.execute(
                "UPDATE picket_rolled SET until = $2 WHERE host = $1",
                &[&host, &until],
            )
            .await?;
            tx.commit().await?;
            Ok(n)
        })
    }

    /// Deletes `host`'s raw samples before `raw_before` and rollups before
    /// `rollup_before`; returns how many went.
    pub fn expire_metrics(
        &self,
        host: &str,
        raw_before: i64,
        rollup_before: i64,
    ) -> Result<usize, StoreError> {
        let host = host.to_string();
        self.with(move |c| async move {
            let raw = c
                .execute(
                    "DELETE FROM picket_samples WHERE host = $1 AND time_ms < $2",
                    &[&host, &raw_before],
                )
                .await?;
            let rolled = c
                .execute(
                    "DELETE FROM picket_rollups WHERE host = $1 AND minute < $2",
                    &[&host, &rollup_before],
                )
                .await?;
            Ok((raw + rolled) as usize)
        })
    }
}

fn sample(time_ms: i64, points: &[u8]) -> Result<Sample, StoreError> {
    let points: Vec<Point> = decode_values("picket_samples", points)?;
    Ok(Sample { time_ms, points })
}
