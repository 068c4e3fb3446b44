//! Rollouts as their driver persists them: one value per rollout id, the
//! engine's whole state (`rollout::state::Persisted`, as JSON). The store
//! does not look inside; the driver writes it before it acts on it. A
//! shared tree: in cluster mode in etcd, written by the leader's driver
//! only (fenced), read by every replica.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Store, StoreError, decode, encode};

pub const ROLLOUTS: &str = "rollouts";

impl Store {
    /// A new id for a rollout or run: `prefix-N`, never reused (in cluster
    /// mode, by any replica: the shared state's ids, since a step of one
    /// replica's run may be carried by another).
    pub fn new_run_id(&self, prefix: &str) -> Result<String, StoreError> {
        Ok(format!("{prefix}-{}", self.state.next_id()?))
    }

    /// Not durable until [`Store::flush`].
    pub fn put_rollout<T: Serialize>(&self, id: &str, value: &T) -> Result<(), StoreError> {
        self.state.put(ROLLOUTS, id.as_bytes(), &encode(value))
    }

    /// One rollout, if the store holds it.
    pub fn rollout<T: DeserializeOwned>(&self, id: &str) -> Result<Option<T>, StoreError> {
        self.state
            .get(ROLLOUTS, id.as_bytes())?
            .map(|v| decode(ROLLOUTS, &v))
            .transpose()
    }

    pub fn rollouts<T: DeserializeOwned>(&self) -> Result<Vec<T>, StoreError> {
        self.state
            .scan(ROLLOUTS, b"")?
            .map(|r| r.and_then(|(_, v)| decode(ROLLOUTS, &v)))
            .collect()
    }
}
