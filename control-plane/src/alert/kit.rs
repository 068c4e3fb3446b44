//! What outlives one alert driver: the tap ingest holds, the outbox, the
//! rules in force (`Kit`); and the driver's errors and parts. Alone, one
//! driver runs for the process; in cluster mode one runs on the leader
//! for each of its terms (`cluster::lead`), each started from the kit.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use picket_alert::engine::Persisted;
use picket_alert::rules::{self, Rules, RulesError};
use picket_notify::http;
use picket_notify::outbox::Outbox;
use picket_store::kept::RecordStore;
use picket_store::{Store, StoreError};
use picket_tap::Tap;
use tokio::sync::{Notify, watch};

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("control.toml names no alert file (`alerts = \"alerts.toml\"`)")]
    NoFile,
    // `error`, not `source`: the text says it already, and a source would
    // print it twice in an error chain.
    #[error("cannot read the alert file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("alert file {path}: {error}")]
    Rules { path: PathBuf, error: RulesError },
    #[error("no silence with id {0}")]
    NoSilence(String),
    #[error("the alert store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Client(#[from] http::ClientError),
    #[error("the alert driver has stopped")]
    Gone,
    /// Cluster mode: alerts are the leader's.
    #[error("{0}")]
    NotLeader(String),
}

/// The rules in force, and where from.
#[derive(Clone)]
pub struct Loaded {
    pub file: Option<PathBuf>,
    pub rules: Arc<Rules>,
    pub loaded_ms: i64,
}

/// What the driver needs from the rest of the control plane.
pub struct Parts {
    pub store: Store,
    /// `alerts` of control.toml, resolved; `None`: no rules.
    pub file: Option<PathBuf>,
    pub now: fn() -> i64,
    /// The control plane's own host name: the host of `store_unwritable`
    /// alerts.
    pub name: String,
    /// Cluster mode with a records database: the driver reads every
    /// replica's records there, and ingest hands on signs of life only.
    pub records: Option<Tapped>,
}

/// The records database a leader's driver is fed from, and what wakes it
/// on a commit.
#[derive(Clone)]
pub struct Tapped {
    pub records: Arc<dyn RecordStore>,
    pub wake: Arc<Notify>,
}

/// What outlives one driver: the tap, the outbox, the rules in force.
#[derive(Clone)]
pub struct Kit {
    pub tap: Arc<Tap>,
    pub outbox: Outbox,
    rules_tx: Arc<watch::Sender<Arc<Rules>>>,
    loaded: Arc<Mutex<Loaded>>,
    pub(super) store: Store,
    pub(super) now: fn() -> i64,
    pub(super) name: String,
    pub(super) records: Option<Tapped>,
}

/// Reads and checks the alert file (no file: no rules).
pub fn load(file: Option<&PathBuf>) -> Result<Rules, AlertError> {
    let Some(path) = file else {
        return rules::parse("").map_err(|error| AlertError::Rules {
            path: PathBuf::new(),
            error,
        });
    };
    let text = std::fs::read_to_string(path).map_err(|error| AlertError::Read {
        path: path.clone(),
        error,
    })?;
    rules::parse(&text).map_err(|error| AlertError::Rules {
        path: path.clone(),
        error,
    })
}

pub(super) async fn read_rules(file: Option<PathBuf>) -> Result<Rules, AlertError> {
    let rules = tokio::task::spawn_blocking(move || load(file.as_ref()))
        .await
        .map_err(|_| AlertError::Gone)??;
    for w in &rules.warnings {
        tracing::warn!(warning = %w, "alert file");
    }
    Ok(rules)
}

impl Kit {
    /// Reads the rules (a bad file is an error) and makes the tap and the
    /// outbox; no driver yet.
    pub async fn new(parts: Parts) -> Result<Kit, AlertError> {
        let rules = read_rules(parts.file.clone()).await?;
        let tap = match parts.records {
            Some(_) => Tap::signs_of_life(),
            None => Tap::detached(),
        };
        tap.set_rules(&rules);
        let shared = Arc::new(rules);
        let (rules_tx, rules_rx) = watch::channel(shared.clone());
        let outbox = Outbox::new(
            parts.store.clone(),
            http::Client::new()?,
            rules_rx,
            parts.now,
        );
        Ok(Kit {
            tap,
            outbox,
            rules_tx: Arc::new(rules_tx),
            loaded: Arc::new(Mutex::new(Loaded {
                file: parts.file,
                rules: shared,
                loaded_ms: (parts.now)(),
            })),
            store: parts.store,
            now: parts.now,
            name: parts.name,
            records: parts.records,
        })
    }

    /// The rules in force, and where from.
    pub fn loaded(&self) -> Loaded {
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts `rules` in force (the tap's, the outbox's, the next driver's).
    pub(super) fn put_rules(&self, file: Option<PathBuf>, rules: Rules) -> Loaded {
        self.tap.set_rules(&rules);
        let shared = Arc::new(rules);
        self.rules_tx.send_replace(shared.clone());
        let l = Loaded {
            file,
            rules: shared,
            loaded_ms: (self.now)(),
        };
        *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = l.clone();
        l
    }

    /// Reads the alert file again (a replica about to lead takes it as it
    /// is now); a bad file is logged and the rules in force stay.
    pub async fn refresh(&self) {
        let Some(file) = self.loaded().file else {
            return;
        };
        match read_rules(Some(file.clone())).await {
            Ok(rules) => {
                self.put_rules(Some(file), rules);
            }
            Err(error) => tracing::error!(%error, "alert file refused; the rules in force stay"),
        }
    }

    /// The state as stored: what a replica that does not lead reads.
    pub fn stored(&self) -> Result<Option<Persisted>, AlertError> {
        Ok(self.store.alert_state()?)
    }
}
