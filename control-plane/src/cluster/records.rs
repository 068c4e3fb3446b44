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
use tokio_util::sync::CancellationToken;

/// How often the feed looks for commits it was not told of.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Where records are kept, and the database when it is one.
type Opened = (Arc<dyn RecordStore>, Option<Arc<PgRecords>>);

/// The records' store as `[cluster]` says, and the database when there
/// is one (connected, its schema brought up to date).
pub fn open(cluster: Option<&ClusterConfig>, store: &Store) -> anyhow::Result<Opened> {
    let Some((c, url)) = cluster.and_then(|c| Some((c, c.postgres.as_ref()?))) else {
        return Ok((Arc::new(store.clone()), None));
    };
    let settings = Settings {
        password_file: c.password_file.clone(),
        ..Settings::new(url)
    };
    let db = picket_store::blocking::in_place(|| PgRecords::connect(&settings))
        .with_context(|| format!("opening the records database {url}"))?;
    let db = Arc::new(db);
    Ok((db.clone(), Some(db)))
}

/// Publishes to this replica's followers what any replica committed, on
/// each commit the database announces (and every [`LOOK_EVERY`]), until
/// `shutdown`.
pub async fn follow(db: Arc<PgRecords>, feed: Arc<crate::feed::Feed>, shutdown: CancellationToken) {
    let wake = db.follow(LOOK_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notified() => {}
        }
        let f = feed.clone();
        match tokio::task::spawn_blocking(move || f.committed()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "records database: reading new commits"),
            Err(error) => tracing::error!(%error, "records database: the follower's read failed"),
        }
    }
}
