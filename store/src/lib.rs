//! The control plane's store: typed records over a [`Backend`].
//!
//! The only module that knows how records are laid out on disk. Records are
//! JSON with serde defaults for added fields; a change that old records
//! cannot be read as bumps the tree name (`agents` → `agents.v2`).

mod alerts;
pub mod backend;
pub mod blocking;
pub mod faults;
mod group;
pub mod health;
pub mod metrics;
pub mod records;
mod rollouts;
pub mod snapshot;
pub use alerts::Queued;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use picket_model::{Labels, Role};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub use backend::Backend;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open store at {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error("store: {0}")]
    Engine(#[from] sled::Error),
    #[error("store: corrupt record in {tree}: {detail}")]
    Corrupt { tree: &'static str, detail: String },
    #[error("store: the blocking task failed: {0}")]
    Task(String),
    /// A write to the disk failed (outside the engine: a segment file).
    #[error("store: write failed: {0}")]
    Write(String),
    /// Records are refused: free space is under the floor.
    #[error("store: {0}")]
    Full(String),
    /// Records are refused until a probe write goes through again.
    #[error("store: not writable ({0})")]
    Unwritable(health::Unwritable),
    #[error("store: being reopened after a write failure")]
    Reopening,
    /// The shared state (cluster mode's etcd) cannot be read or written.
    #[error("store: cluster state: {0}")]
    Shared(String),
}

const AGENTS: &str = "agents";
const TOKENS: &str = "tokens";
const USERS: &str = "users";
const AUDIT: &str = "audit";

/// The trees that are one cluster's, not one replica's: in cluster mode
/// they live in etcd ([`backend::etcd`]), the rest (records, metrics,
/// alerts for now) in the replica's own engine.
pub const SHARED_TREES: &[&str] = &[AGENTS, TOKENS, USERS, AUDIT, rollouts::ROLLOUTS];

/// What a replica's own engine must do when a shared pair went (seen in
/// etcd's watch): an agent forgotten through another replica leaves no
/// acked number here either (see [`Store::forget_agent`]).
pub(crate) fn forgotten(engine: &dyn Backend, tree: &str, key: &[u8]) -> Result<(), StoreError> {
    if tree == AGENTS {
        let host = String::from_utf8_lossy(key);
        engine.apply(&[metrics::forget_acked_op(&host)])?;
    }
    Ok(())
}
/// The store's own bookkeeping.
const META: &str = "meta";
/// Written (and flushed) to learn whether writes go through again.
const PROBE: &[u8] = b"health.probe";

/// What the control plane knows about one enrolled agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentRecord {
    pub name: String,
    /// The host's labels (SPEC §4): fixed at enrollment (the token's, then
    /// the enrolling command's), changed since only by an admin (`agents
    /// label`). The agent cannot change them.
    pub pinned_labels: Labels,
    /// Labels the agent reported on its last connect (its config): shown,
    /// never matched by a selector.
    #[serde(default)]
    pub reported_labels: Labels,
    pub enrolled_ms: i64,
    /// The newest certificate issued to it (hex serial).
    pub cert_serial: String,
    /// The certificate it renewed with, still accepted until it renews
    /// again (a renewal whose answer never reached its disk).
    #[serde(default)]
    pub prev_cert_serial: Option<String>,
    pub cert_not_after_ms: i64,
    #[serde(default)]
    pub revoked_ms: Option<i64>,
    #[serde(default)]
    pub inventory: Option<Inventory>,
    #[serde(default)]
    pub last_seen_ms: i64,
}

impl AgentRecord {
    /// The labels selectors match, alert routes use and `/metrics` exports:
    /// the assigned ones only. What the host reports is not among them, so
    /// a compromised host cannot move itself into another group.
    pub fn labels(&self) -> Labels {
        self.pinned_labels.clone()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Inventory {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub cpu_count: u32,
    pub memory_bytes: u64,
    pub agent_version: String,
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenRecord {
    pub id: String,
    pub expires_ms: i64,
    pub uses_left: u32,
    pub labels: Labels,
    pub created_by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserRecord {
    pub name: String,
    pub role: Role,
    pub created_ms: i64,
    /// Set once by `user revoke`: every call is refused from then on, and
    /// the name cannot be added again.
    #[serde(default)]
    pub revoked_ms: Option<i64>,
    /// Host users whose steps this user may run (`user add --run-as`).
    #[serde(default)]
    pub run_as: Vec<String>,
    /// The hosts this user may see and reach (`user add --hosts`, a
    /// selector); none: every host.
    #[serde(default)]
    pub hosts: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    pub time_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
}

/// Why a token could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("unknown token")]
    Unknown,
    #[error("token expired")]
    Expired,
    #[error("token already used")]
    UsedUp,
}

/// Why a token cannot be used now, if it cannot.
fn usable(t: TokenRecord, now_ms: i64) -> Result<TokenRecord, TokenRefusal> {
    if t.expires_ms <= now_ms {
        Err(TokenRefusal::Expired)
    } else if t.uses_left == 0 {
        Err(TokenRefusal::UsedUp)
    } else {
        Ok(t)
    }
}

/// What `forget_agent` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forget {
    Forgotten,
    NotFound,
    /// Still allowed in: it must be revoked first.
    NotRevoked,
}

/// Why an enrollment was not recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollRefusal {
    Token(TokenRefusal),
    NameTaken,
}

#[derive(Clone)]
pub struct Store {
    pub(crate) kv: Arc<dyn Backend>,
    /// Where [`SHARED_TREES`] are read and written: `kv` itself, or in
    /// cluster mode etcd ([`Store::with_shared`]).
    state: Arc<dyn Backend>,
    /// Where blocks of events and log lines keep their bytes; without it
    /// (a bare backend) blocks are held inline.
    segments: Option<Arc<records::Segments>>,
    health: Arc<health::Health>,
    /// Flushes shared by concurrent callers ([`Store::flush_grouped`]).
    group: Arc<group::Group>,
}

pub(crate) fn decode<T: DeserializeOwned>(
    tree: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        tree,
        detail: e.to_string(),
    })
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs to JSON cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

impl Store {
    /// Opens (or creates) the sled store under `data_dir/store`, with the
    /// default free-space floor ([`health::DEFAULT_FLOOR_PERCENT`]).
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Store::open_with_floor(data_dir, health::DEFAULT_FLOOR_PERCENT)
    }

    /// Opens (or creates) the store, refusing records while less than
    /// `floor_percent` of the data folder's file system is free (0: no
    /// floor, as in tests, which must not depend on how full the disk
    /// they share is).
    pub fn open_with_floor(data_dir: &Path, floor_percent: f64) -> Result<Self, StoreError> {
        let health = Arc::new(health::Health::new(Some(data_dir)));
        health.set_floor(floor_percent);
        let kv: Arc<dyn Backend> = Arc::new(backend::guarded::Guarded {
            inner: Arc::new(backend::Sled::open(&data_dir.join("store"))?),
            policy: health::Watch(health.clone()),
        });
        let segments = records::open_segments(&data_dir.join("blocks"), kv.as_ref())?;
        let store = Store {
            state: kv.clone(),
            kv,
            segments: Some(Arc::new(segments)),
            health,
            group: Arc::default(),
        };
        store.index_received(picket_clock::now_ms())?;
        store.start_by_id_index()?;
        store.index_latest()?;
        Ok(store)
    }

    /// The same store with [`SHARED_TREES`] in `make(engine)` (cluster
    /// mode: etcd, copied into this store's own engine, which `make` is
    /// given).
    pub fn with_shared<E>(
        mut self,
        make: impl FnOnce(Arc<dyn Backend>) -> Result<Arc<dyn Backend>, E>,
    ) -> Result<Store, E> {
        self.state = make(self.kv.clone())?;
        Ok(self)
    }

    /// Every pair of the shared trees as this store holds them (its own,
    /// or its copy of etcd's): what a restore writes into a fresh etcd.
    pub fn shared_pairs(&self) -> Result<Vec<(&'static str, backend::Kv)>, StoreError> {
        let mut out = Vec::new();
        for &tree in SHARED_TREES {
            for kv in self.state.scan(tree, b"")? {
                out.push((tree, kv?));
            }
        }
        Ok(out)
    }

    /// A unique id above every id handed out so far (across restarts).
    pub fn next_id(&self) -> Result<u64, StoreError> {
        self.kv.next_id()
    }

    /// A store on `kv` alone, blocks inline.
    pub fn with_backend(kv: Arc<dyn Backend>) -> Self {
        Store {
            state: kv.clone(),
            kv,
            segments: None,
            health: Arc::new(health::Health::new(None)),
            group: Arc::default(),
        }
    }

    /// Whether writes go through now, and why not.
    pub fn health(&self) -> &health::Health {
        &self.health
    }

    /// Tries to make the store writable again after a failure: checks the
    /// free-space floor, reopens the engine if it refuses writes since
    /// (sled does after an I/O error), then writes and flushes a probe.
    /// Ok when writes go through again. Records stored but not flushed
    /// before a reopen may be gone: [`health::Health::epoch`] moves on.
    pub fn recover(&self) -> Result<(), StoreError> {
        self.health.room_again()?;
        if self.kv.poisoned() {
            // Moved on first: a flush that ends after the reopen sees it,
            // so nothing stored before is acked as durable.
            self.health.reopened();
            self.kv.reopen()?;
        }
        self.kv
            .put(META, PROBE, &picket_clock::now_ms().to_be_bytes())?;
        self.kv.flush()?;
        self.health.healthy();
        Ok(())
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.kv.flush()
    }

    /// Runs `f` on tokio's blocking pool and waits for it.
    ///
    /// The rule for async code: a store call that writes or flushes goes
    /// through here (or runs inside a task that is already on the blocking
    /// pool, as ingest and queries do), so that an fsync never stalls a
    /// runtime worker and every task queued behind it. The audit log's
    /// single inserts are the one exception (sled buffers them; nothing
    /// waits for the disk).
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let s = self.clone();
        tokio::task::spawn_blocking(move || f(&s))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    fn get<T: DeserializeOwned>(
        &self,
        tree: &'static str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        self.state
            .get(tree, key.as_bytes())?
            .map(|b| decode(tree, &b))
            .transpose()
    }

    /// Applies `f` to the record under `key` atomically; returns the new
    /// record, or None if there is none.
    fn update<T: DeserializeOwned + Serialize>(
        &self,
        tree: &'static str,
        key: &str,
        mut f: impl FnMut(&mut T),
    ) -> Result<Option<T>, StoreError> {
        let mut result: Result<Option<T>, StoreError> = Ok(None);
        self.state.update(tree, key.as_bytes(), &mut |old| {
            let old = old?;
            match decode::<T>(tree, old) {
                Ok(mut rec) => {
                    f(&mut rec);
                    let bytes = encode(&rec);
                    result = Ok(Some(rec));
                    Some(bytes)
                }
                Err(e) => {
                    result = Err(e);
                    Some(old.to_vec())
                }
            }
        })?;
        result
    }

    fn all<T: DeserializeOwned>(&self, tree: &'static str) -> Result<Vec<T>, StoreError> {
        self.state
            .scan(tree, b"")?
            .map(|r| r.and_then(|(_, v)| decode(tree, &v)))
            .collect()
    }

    // -- agents

    pub fn agent(&self, name: &str) -> Result<Option<AgentRecord>, StoreError> {
        self.get(AGENTS, name)
    }

    pub fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.all(AGENTS)
    }

    pub fn put_agent(&self, a: &AgentRecord) -> Result<(), StoreError> {
        self.state.put(AGENTS, a.name.as_bytes(), &encode(a))
    }

    /// Inserts a new agent unless the name is taken; returns false if taken.
    pub fn insert_agent(&self, a: &AgentRecord) -> Result<bool, StoreError> {
        let mut inserted = false;
        let new = encode(a);
        self.state.update(AGENTS, a.name.as_bytes(), &mut |old| {
            inserted = old.is_none();
            Some(old.map(<[u8]>::to_vec).unwrap_or_else(|| new.clone()))
        })?;
        Ok(inserted)
    }

    /// Applies `f` to an agent's record atomically; returns the new record,
    /// or None if there is no such agent.
    pub fn update_agent(
        &self,
        name: &str,
        f: impl FnMut(&mut AgentRecord),
    ) -> Result<Option<AgentRecord>, StoreError> {
        self.update(AGENTS, name, f)
    }

    /// Deletes a revoked agent's record and its acked sequence number, so
    /// that the name can enroll again (and counts its records from 1).
    /// Its stored records stay. The acked number goes first (it is this
    /// replica's, the record may be the cluster's): a crash between the
    /// two leaves a revoked agent to forget again, never a new agent whose
    /// first records would count as already stored. In cluster mode the
    /// other replicas forget their acked numbers when they see the record
    /// go ([`forgotten`]).
    pub fn forget_agent(&self, name: &str) -> Result<Forget, StoreError> {
        match self.agent(name)? {
            None => return Ok(Forget::NotFound),
            Some(rec) if rec.revoked_ms.is_none() => return Ok(Forget::NotRevoked),
            Some(_) => {}
        }
        self.kv.apply(&[metrics::forget_acked_op(name)])?;
        let mut outcome = Ok(Forget::NotFound);
        let keys: [(&str, &[u8]); 1] = [(AGENTS, name.as_bytes())];
        self.state.transact(&keys, &mut |vals| {
            let Some(bytes) = vals.first().cloned().flatten() else {
                outcome = Ok(Forget::NotFound);
                return None;
            };
            match decode::<AgentRecord>(AGENTS, &bytes) {
                Ok(rec) if rec.revoked_ms.is_none() => {
                    outcome = Ok(Forget::NotRevoked);
                    None
                }
                Ok(_) => {
                    outcome = Ok(Forget::Forgotten);
                    Some(vec![backend::Op {
                        tree: AGENTS,
                        key: name.as_bytes().to_vec(),
                        value: None,
                    }])
                }
                Err(e) => {
                    outcome = Err(e);
                    None
                }
            }
        })?;
        outcome
    }

    // -- tokens

    pub fn put_token(&self, hash: &str, t: &TokenRecord) -> Result<(), StoreError> {
        self.state.put(TOKENS, hash.as_bytes(), &encode(t))
    }

    /// Whether the token with this hash could be used now, without taking
    /// a use of it.
    pub fn check_token(
        &self,
        hash: &str,
        now_ms: i64,
    ) -> Result<Result<TokenRecord, TokenRefusal>, StoreError> {
        match self.state.get(TOKENS, hash.as_bytes())? {
            None => Ok(Err(TokenRefusal::Unknown)),
            Some(b) => Ok(usable(decode(TOKENS, &b)?, now_ms)),
        }
    }

    /// Takes one use of the token and records the new agent, in one atomic
    /// step: a token is never spent on an enrollment that is not recorded,
    /// and two agents cannot both take one name or one single-use token.
    pub fn enroll_agent(
        &self,
        hash: &str,
        now_ms: i64,
        agent: &AgentRecord,
    ) -> Result<Result<TokenRecord, EnrollRefusal>, StoreError> {
        let mut outcome = Ok(Err(EnrollRefusal::Token(TokenRefusal::Unknown)));
        let keys: [(&str, &[u8]); 2] = [(TOKENS, hash.as_bytes()), (AGENTS, agent.name.as_bytes())];
        self.state.transact(&keys, &mut |vals| {
            let refused = |why| Ok(Err(EnrollRefusal::Token(why)));
            if vals.get(1).is_some_and(Option::is_some) {
                outcome = Ok(Err(EnrollRefusal::NameTaken));
                return None;
            }
            let Some(bytes) = vals.first().cloned().flatten() else {
                outcome = refused(TokenRefusal::Unknown);
                return None;
            };
            let mut token = match decode::<TokenRecord>(TOKENS, &bytes).map(|t| usable(t, now_ms)) {
                Ok(Ok(t)) => t,
                Ok(Err(why)) => {
                    outcome = refused(why);
                    return None;
                }
                Err(e) => {
                    outcome = Err(e);
                    return None;
                }
            };
            token.uses_left -= 1;
            let ops = vec![
                backend::Op {
                    tree: TOKENS,
                    key: hash.as_bytes().to_vec(),
                    value: Some(encode(&token)),
                },
                backend::Op {
                    tree: AGENTS,
                    key: agent.name.as_bytes().to_vec(),
                    value: Some(encode(agent)),
                },
            ];
            outcome = Ok(Ok(token));
            Some(ops)
        })?;
        outcome
    }

    // -- users

    pub fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        self.get(USERS, name)
    }

    pub fn put_user(&self, u: &UserRecord) -> Result<(), StoreError> {
        self.state.put(USERS, u.name.as_bytes(), &encode(u))
    }

    pub fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.all(USERS)
    }

    /// Adds a user or changes an existing one's role (a new certificate);
    /// a revoked name is never let back in: returns the revoked record.
    pub fn add_user(&self, u: &UserRecord) -> Result<Result<(), UserRecord>, StoreError> {
        let mut outcome = Ok(Ok(()));
        let new = encode(u);
        self.state
            .update(USERS, u.name.as_bytes(), &mut |old| match old
                .map(|b| decode::<UserRecord>(USERS, b))
            {
                Some(Ok(rec)) if rec.revoked_ms.is_some() => {
                    outcome = Ok(Err(rec));
                    old.map(<[u8]>::to_vec)
                }
                Some(Err(e)) => {
                    outcome = Err(e);
                    old.map(<[u8]>::to_vec)
                }
                _ => {
                    outcome = Ok(Ok(()));
                    Some(new.clone())
                }
            })?;
        outcome
    }

    /// Marks a user revoked (once: a second revoke keeps the first time);
    /// None if there is no such user.
    pub fn revoke_user(&self, name: &str, now_ms: i64) -> Result<Option<UserRecord>, StoreError> {
        self.update(USERS, name, |u: &mut UserRecord| {
            u.revoked_ms.get_or_insert(now_ms);
        })
    }

    // -- audit (append-only: there is no update or delete)

    pub fn append_audit(&self, r: &AuditRecord) -> Result<(), StoreError> {
        let id = self.state.next_id()?;
        self.state.put(AUDIT, &id.to_be_bytes(), &encode(r))
    }

    /// The newest `n` audit records, oldest first.
    pub fn audit_tail(&self, n: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.state
            .last_n(AUDIT, n)?
            .into_iter()
            .map(|(_, v)| decode(AUDIT, &v))
            .collect()
    }

    /// Deletes audit records older than `before_ms` (keyed by an id that
    /// grows with time, so the old ones come first); returns how many.
    pub fn expire_audit(&self, before_ms: i64) -> Result<usize, StoreError> {
        let mut old = Vec::new();
        for kv in self.state.scan(AUDIT, &[])? {
            let (k, v) = kv?;
            let r: AuditRecord = decode(AUDIT, &v)?;
            if r.time_ms >= before_ms {
                break;
            }
            old.push(k);
            if old.len() >= 10_000 {
                break;
            }
        }
        let ops: Vec<backend::Op> = old
            .iter()
            .map(|k| backend::Op {
                tree: AUDIT,
                key: k.clone(),
                value: None,
            })
            .collect();
        self.state.apply(&ops)?;
        Ok(ops.len())
    }
}

#[cfg(test)]
mod tests;
