//! The alert engine's state and the notification outbox.
//!
//! The engine's whole state is one value (`alert::engine::Persisted`, as
//! JSON). The outbox holds notifications not yet accepted by their
//! receiver, keyed by notifier and an increasing id, so each notifier's
//! queue is a prefix scan in the order they were made. A state change and
//! the notifications it decided are written in one atomic step: a restart
//! finds both or neither, so it neither forgets nor repeats a
//! notification. In cluster mode both trees are shared (etcd), and the
//! leader's writes to them are fenced on its term.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::backend::Op;
use super::{Store, StoreError, decode, encode};

pub const ALERTS: &str = "alerts";
pub const OUTBOX: &str = "outbox";
const STATE: &[u8] = b"engine";
/// How far the engine was fed from the records database (cluster mode:
/// `picket_tap::stored`), written with the state it led to.
const TAPPED: &[u8] = b"tapped";

/// A notification waiting in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued<T> {
    pub notifier: String,
    pub id: u64,
    pub job: T,
}

fn outbox_key(notifier: &str, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(notifier.len() + 9);
    k.extend_from_slice(notifier.as_bytes());
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn split_key(k: &[u8]) -> Option<(String, u64)> {
    let at = k.iter().position(|b| *b == 0)?;
    let name = std::str::from_utf8(&k[..at]).ok()?;
    let id: [u8; 8] = k.get(at + 1..)?.try_into().ok()?;
    Some((name.to_string(), u64::from_be_bytes(id)))
}

/// One outbox entry, from its key and value.
fn queued<T: DeserializeOwned>(k: &[u8], v: &[u8]) -> Result<Queued<T>, StoreError> {
    let (notifier, id) = split_key(k).ok_or_else(|| StoreError::Corrupt {
        tree: OUTBOX,
        detail: format!("bad key {}", hex::encode(k)),
    })?;
    Ok(Queued {
        notifier,
        id,
        job: decode(OUTBOX, v)?,
    })
}

impl Store {
    pub fn alert_state<T: DeserializeOwned>(&self) -> Result<Option<T>, StoreError> {
        self.state
            .get(ALERTS, STATE)?
            .map(|v| decode(ALERTS, &v))
            .transpose()
    }

    /// How far the engine was fed from the records database, as last
    /// written with its state.
    pub fn alert_tapped(&self) -> Result<Option<u64>, StoreError> {
        self.state
            .get(ALERTS, TAPPED)?
            .map(|v| decode(ALERTS, &v))
            .transpose()
    }

    /// Writes the engine's state (and how far it was fed from the records
    /// database, if it is) and enqueues `jobs` (notifier, job), all or
    /// nothing; returns the queued entries. Not durable until
    /// [`Store::flush`].
    pub fn put_alert_state<S: Serialize, T: Serialize + Clone>(
        &self,
        state: &S,
        tapped: Option<u64>,
        jobs: &[(String, T)],
    ) -> Result<Vec<Queued<T>>, StoreError> {
        let mut ops = vec![Op {
            tree: ALERTS,
            key: STATE.to_vec(),
            value: Some(encode(state)),
        }];
        if let Some(t) = tapped {
            ops.push(Op {
                tree: ALERTS,
                key: TAPPED.to_vec(),
                value: Some(encode(&t)),
            });
        }
        let mut queued = Vec::with_capacity(jobs.len());
        for (notifier, job) in jobs {
            let id = self.state.next_id()?;
            ops.push(Op {
                tree: OUTBOX,
                key: outbox_key(notifier, id),
                value: Some(encode(job)),
            });
            queued.push(Queued {
                notifier: notifier.clone(),
                id,
                job: job.clone(),
            });
        }
        self.state.apply(&ops)?;
        Ok(queued)
    }

    /// Every waiting notification, by notifier then age.
    pub fn outbox<T: DeserializeOwned>(&self) -> Result<Vec<Queued<T>>, StoreError> {
        self.state
            .scan(OUTBOX, b"")?
            .map(|kv| kv.and_then(|(k, v)| queued(&k, &v)))
            .collect()
    }

    /// The oldest waiting notification of `notifier`.
    pub fn outbox_head<T: DeserializeOwned>(
        &self,
        notifier: &str,
    ) -> Result<Option<Queued<T>>, StoreError> {
        let mut prefix = notifier.as_bytes().to_vec();
        prefix.push(0);
        self.state
            .scan(OUTBOX, &prefix)?
            .next()
            .map(|kv| kv.and_then(|(k, v)| queued(&k, &v)))
            .transpose()
    }

    /// Notifiers with notifications waiting, and how many.
    pub fn outbox_depths(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        let mut out = std::collections::BTreeMap::new();
        for kv in self.state.scan(OUTBOX, b"")? {
            let (k, _) = kv?;
            if let Some((notifier, _)) = split_key(&k) {
                *out.entry(notifier).or_insert(0) += 1;
            }
        }
        Ok(out)
    }

    /// Replaces a waiting notification (its attempts so far).
    pub fn put_queued<T: Serialize>(&self, q: &Queued<T>) -> Result<(), StoreError> {
        self.state
            .put(OUTBOX, &outbox_key(&q.notifier, q.id), &encode(&q.job))
    }

    /// The receiver took it (or refused it for good).
    pub fn remove_queued(&self, notifier: &str, id: u64) -> Result<(), StoreError> {
        self.state.remove(OUTBOX, &outbox_key(notifier, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_jobs_are_written_together_and_queued_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_floor(dir.path(), 0.0).unwrap();
        assert_eq!(store.alert_state::<String>().unwrap(), None);
        let jobs = vec![
            ("ops".to_string(), "a".to_string()),
            ("am".to_string(), "b".to_string()),
            ("ops".to_string(), "c".to_string()),
        ];
        let queued = store.put_alert_state(&"s1", Some(7), &jobs).unwrap();
        assert_eq!(queued.len(), 3);
        store.flush().unwrap();
        drop(store);
        let store = Store::open_with_floor(dir.path(), 0.0).unwrap();
        assert_eq!(
            store.alert_state::<String>().unwrap().as_deref(),
            Some("s1")
        );
        assert_eq!(store.alert_tapped().unwrap(), Some(7));
        let all: Vec<Queued<String>> = store.outbox().unwrap();
        let order: Vec<(&str, &str)> = all
            .iter()
            .map(|q| (q.notifier.as_str(), q.job.as_str()))
            .collect();
        assert_eq!(order, [("am", "b"), ("ops", "a"), ("ops", "c")]);
        store.remove_queued("ops", all[1].id).unwrap();
        let left: Vec<Queued<String>> = store.outbox().unwrap();
        assert_eq!(left.len(), 2);
        assert_eq!(left[1].job, "c");
    }
}
