//! Where a replica keeps events, log lines and metrics: in cluster mode with
//! `postgres` set, the records database every replica writes and reads
//! (SPEC §12), its commits followed so that `-f` on any replica sees what
//! reached any other; else this replica's own store.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use picket_config::control::ClusterConfig;
use picket_records_pg::{PgRecords, Settings};
use picket_store::Store;
use picket_store::kept::RecordStore;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often the feed looks for commits it was not told of.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The records database `[cluster]` names, if any (its schema brought up
/// to date now, or at the first call that reaches it: PgRecords::connect).
pub fn open(cluster: Option<&ClusterConfig>) -> anyhow::Result<Option<Arc<PgRecords>>> {
    let Some((c, url)) = cluster.and_then(|c| Some((c, c.postgres.as_ref()?))) else {
        return Ok(None);
    };
    let settings = Settings {
        password_file: c.password_file.clone(),
        ..Settings::new(url)
    };
    let db = picket_store::blocking::in_place(|| PgRecords::connect(&settings))
        .with_context(|| format!("opening the records database {url}"))?;
    Ok(Some(Arc::new(db)))
}

/// Where this replica keeps records: the database, else its own store.
pub fn kept(db: Option<&Arc<PgRecords>>, store: &Store) -> Arc<dyn RecordStore> {
    match db {
        Some(db) => db.clone(),
        None => Arc::new(store.clone()),
    }
}

/// Publishes to this replica's followers what any replica committed, on
/// each commit the database announces (and every [`LOOK_EVERY`]), and
/// wakes `also` (the leader's alert tap) each time: one listening
/// connection for both. Until `shutdown`.
pub async fn follow(
    db: Arc<PgRecords>,
    feed: Arc<crate::feed::Feed>,
    also: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let wake = db.follow(LOOK_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notified() => {}
        }
        also.notify_one();
        let f = feed.clone();
        match tokio::task::spawn_blocking(move || f.committed()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "records database: reading new commits"),
            Err(error) => tracing::error!(%error, "records database: the follower's read failed"),
        }
    }
}
