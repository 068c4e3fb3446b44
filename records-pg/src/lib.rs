//! Cluster mode's records in PostgreSQL (SPEC §12): events and log lines
//! stored through any replica, read through any replica.
//!
//! The rows are the embedded store's blocks ([`picket_store::records`]):
//! one row per block of one host's records (at most a second and 2,048
//! records), its entries LZ4-packed as in a segment file, indexed by kind,
//! host, earliest and latest record time, highest id and receive time. A
//! line is never a row: ingest writes a few rows per batch, and a read
//! decodes only the blocks it needs, with `--grep`'s literals checked on
//! the unpacked bytes before anything is decoded, as the embedded store
//! does. The merges that order blocks into records are the store's own
//! ([`picket_store::records::forward`], [`newest_first`]).
//!
//! Guarantees, the embedded store's:
//! - **Exactly once per (host, sequence number).** A batch's transaction
//!   locks its hosts' acked numbers, leaves out every record at or below
//!   them, stores the rest and moves the numbers, in one commit; the agent
//!   is acked only after it ([`PgRecords::put_many`]). Two replicas that
//!   both hold a batch (an agent that moved in a cut) store it once.
//! - **Ids in commit order.** Ingest ids come from one counter row, taken
//!   in the storing transaction and held to its commit, so a reader that
//!   has seen id `n` has seen every record committed before it: a
//!   follower's "everything above my cursor" misses nothing committed by
//!   any replica (the price: commits are serialised across replicas, a
//!   few round trips each; a batch holds a whole ingest group).
//! - **Retention by receive time**, with a watermark of the highest id
//!   deleted per kind ([`PgRecords::expired_through`]).
//!
//! The schema is versioned ([`schema`]); the client is async and the
//! store's interfaces are not, so calls run on a runtime of the crate's
//! own ([`Runner`]) and any thread may wait on them.
//!
//! [`newest_first`]: picket_store::records::newest_first

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use picket_store::StoreError;
use picket_store::blocking::{Runner, Started};

mod follow;
mod ingest;
mod kept;
mod login;
mod metrics;
mod read;
pub mod schema;
mod tls;

pub use ingest::{Batch, CHANNEL};

/// Where the records database is, and how to log in (`[cluster]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `postgresql://user@host:port/db` (libpq's URL or key=value form).
    pub url: String,
    /// A file holding the password (its first line), if the URL has none.
    pub password_file: Option<std::path::PathBuf>,
    /// libpq's password file, read when neither has the password
    /// (`PGPASSFILE`, else `~/.pgpass`: [`login`]).
    pub pgpass: Option<std::path::PathBuf>,
    /// CA certificates (PEM) the server's certificate may be signed by,
    /// beside the system's, with `sslmode=require` (`PGSSLROOTCERT`:
    /// [`tls`]).
    pub root_cert: Option<std::path::PathBuf>,
    /// Connections kept open at most.
    pub pool: usize,
}

impl Settings {
    pub fn new(url: impl Into<String>) -> Self {
        Settings {
            url: url.into(),
            password_file: None,
            pgpass: login::default_pgpass(),
            root_cert: std::env::var_os("PGSSLROOTCERT").map(Into::into),
            pool: 8,
        }
    }
}

/// Why the records database cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("records database: {0}")]
    Config(String),
    /// The server refused a call (its own message).
    #[error("records database: {0}")]
    Db(String),
    /// The server did not answer, or the connection to it broke.
    #[error("records database unreachable: {0}")]
    Unreachable(String),
    #[error(
        "records database: its schema is version {found}, newer than this picket-control knows \
         ({known}): upgrade picket-control before it uses this database"
    )]
    Newer { found: i32, known: i32 },
}

/// What went wrong, the server's words first: tokio-postgres says only
/// "db error" for an error the server reported.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Whether `e` says the server is away (not answering, the connection
/// broken), as opposed to refusing: a server error, a wrong password, a
/// certificate not trusted.
fn away(e: &tokio_postgres::Error) -> bool {
    use std::io::ErrorKind as K;
    if e.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                K::ConnectionRefused
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::TimedOut
                    | K::NotConnected
                    | K::BrokenPipe
                    | K::UnexpectedEof
                    | K::HostUnreachable
                    | K::NetworkUnreachable
                    | K::AddrNotAvailable
            );
        }
        source = s.source();
    }
    false
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        match away(&e) {
            true => PgError::Unreachable(describe(&e)),
            false => PgError::Db(describe(&e)),
        }
    }
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::PoolError as P;
        match e {
            P::Backend(e) => match PgError::from(e) {
                PgError::Unreachable(why) => PgError::Unreachable(format!("cannot connect: {why}")),
                refused => refused,
            },
            P::Timeout(_) => PgError::Unreachable("timed out waiting for a connection".into()),
            other => PgError::Db(other.to_string()),
        }
    }
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> Self {
        StoreError::Database(e.to_string())
    }
}

/// The records in PostgreSQL.
pub struct PgRecords {
    /// Where queries run (first: shut down before the pool it drives).
    runner: Runner,
    pool: Arc<Pool>,
    /// How to connect (the listening connection is not pooled).
    config: tokio_postgres::Config,
    /// TLS, when the URL asks for it ([`tls`]).
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// Why the last call failed for want of the server (none: it
    /// answered).
    down: Arc<std::sync::Mutex<Option<String>>>,
    /// The schema version found, once the schema is up to date: at
    /// connect, or at the first call that reaches the server after a
    /// start without it.
    schema: Arc<tokio::sync::OnceCell<i32>>,
}

impl PgRecords {
    /// Connects, brings the schema up to date ([`schema::migrate`]) and
    /// checks that it is not newer than this build knows. A server that
    /// does not answer is not an error here: every call is refused
    /// (`records database unreachable`) until one reaches it, and that one
    /// migrates first, so a replica can start while the database is away.
    pub fn connect(settings: &Settings) -> Result<PgRecords, StoreError> {
        let mut config: tokio_postgres::Config = settings.url.parse().map_err(|e| {
            PgError::Config(format!("{:?} is not a database URL: {e}", settings.url))
        })?;
        login::password(&mut config, settings)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(5));
        }
        let tls = tls::connector(&mut config, settings.root_cert.as_deref())?;
        let runner = Runner::new("postgres", 2)?;
        let pool = {
            let _in = runner.enter();
            let manager_config = ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            };
            let manager = match &tls {
                Some(tls) => Manager::from_config(config.clone(), tls.clone(), manager_config),
                None => Manager::from_config(config.clone(), tokio_postgres::NoTls, manager_config),
            };
            Pool::builder(manager)
                .max_size(settings.pool.max(1))
                .build()
                .map_err(|e| PgError::Config(e.to_string()))?
        };
        let db = PgRecords {
            runner,
            pool: Arc::new(pool),
            config,
            tls,
            down: Arc::default(),
            schema: Arc::default(),
        };
        match db.with(|_| async { Ok(()) }) {
            Err(StoreError::Database(why)) if db.unreachable().is_some() => {
                tracing::warn!(%why, "records database: not answering at start; records wait for it");
            }
            other => other?,
        }
        Ok(db)
    }

    /// Runs `f` with a pooled connection on the crate's runtime, and waits.
    fn with<T, F>(
        &self,
        f: impl FnOnce(deadpool_postgres::Object) -> F + Send + 'static,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, PgError>> + Send + 'static,
    {
        let started = self.start(f)?;
        self.finish(started)
    }

    /// Starts `f` with a pooled connection on the crate's runtime; its
    /// answer is taken with [`PgRecords::finish`].
    fn start<T, F>(
        &self,
        f: impl FnOnce(deadpool_postgres::Object) -> F + Send + 'static,
    ) -> Result<Started<Result<T, PgError>>, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, PgError>> + Send + 'static,
    {
        let (pool, migrated) = (self.pool.clone(), self.schema.clone());
        self.runner.start(async move {
            let mut client = pool.get().await?;
            migrated
                .get_or_try_init(|| schema::migrate(&mut client))
                .await?;
            f(client).await
        })
    }

    /// Waits for what [`PgRecords::start`] started, noting whether the
    /// server answered.
    fn finish<T>(&self, started: Started<Result<T, PgError>>) -> Result<T, StoreError> {
        let out = started.wait()?;
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        *down = match &out {
            Err(e @ PgError::Unreachable(_)) => Some(e.to_string()),
            _ => None,
        };
        Ok(out?)
    }

    /// Why the database did not answer the last call (none: it did).
    pub fn unreachable(&self) -> Option<String> {
        self.down.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The highest sequence number stored for `host` (0: none).
    pub fn acked_seq(&self, host: &str) -> Result<u64, StoreError> {
        let host = host.to_string();
        self.with(|c| async move {
            let row = c
                .query_opt("SELECT seq FROM picket_acked WHERE host = $1", &[&host])
                .await?;
            Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
        })
    }

    /// The highest ingest id handed out (0: none).
    pub fn last_id(&self) -> Result<u64, StoreError> {
        self.with(|c| async move {
            let row = c.query_one("SELECT next FROM picket_ids", &[]).await?;
            Ok((row.get::<_, i64>(0) as u64).saturating_sub(1))
        })
    }

    /// Forgets `host`'s acked number (a forgotten agent that enrolls again
    /// counts from 1).
    pub fn forget(&self, host: &str) -> Result<(), StoreError> {
        let host = host.to_string();
        self.with(|c| async move {
            c.execute("DELETE FROM picket_acked WHERE host = $1", &[&host])
                .await?;
            Ok(())
        })
    }
}
