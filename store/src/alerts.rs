//! The alert engine's state and the notification outbox.
//!
//! The engine's whole state is one value (`alert::engine::Persisted`, as
//! JSON). The outbox holds notifications not yet accepted by their
//! receiver, keyed by notifier and an increasing id, so each notifier's
//! queue is a prefix scan in the order they were made. A state change and
//! the notifications it decided are written in one atomic step: a restart
//! finds both or neither, so it neither forgets nor repeats a
//! notification.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::backend::Op;
use super::{Store, StoreError, decode, encode};

const ALERTS: &str = "alerts";
const OUTBOX: &str = "outbox";
const STATE: &[u8] = b"engine";

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
        self.kv
            .get(ALERTS, STATE)?
            .map(|v| decode(ALERTS, &v))
            .transpose()
    }

    /// Writes the engine's state and enqueues `jobs` (notifier, job), all
    /// or nothing; returns the queued entries. Not durable until
    /// [`Store::flush`].
    pub fn put_alert_state<S: Serialize, T: Serialize + Clone>(
        &self,
        state: &S,
        jobs: &[(String, T)],
    ) -> Result<Vec<Queued<T>>, StoreError> {
        let mut ops = vec![Op {
            tree: ALERTS,
            key: STATE.to_vec(),
            value: Some(encode(state)),
        }];
        let mut queued = Vec::with_capacity(jobs.len());
        for (notifier, job) in jobs {
            let id = self.kv.next_id()?;
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
        self.kv.apply(&ops)?;
        Ok(queued)
    }

    /// Every waiting notification, by notifier then age.
    pub fn outbox<T: DeserializeOwned>(&self) -> Result<Vec<Queued<T>>, StoreError> {
        self.kv
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
        self.kv
            .scan(OUTBOX, &prefix)?
            .next()
            .map(|kv| kv.and_then(|(k, v)| queued(&k, &v)))
            .transpose()
    }

    /// Notifiers with notifications waiting, and how many.
    pub fn outbox_depths(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        let mut out = std::collections::BTreeMap::new();
        for kv in self.kv.scan(OUTBOX, b"")? {
            let (k, _) = kv?;
            if let Some((notifier, _)) = split_key(&k) {
                *out.entry(notifier).or_insert(0) += 1;
            }
        }
        Ok(out)
    }

    /// Replaces a waiting notification (its attempts so far).
    pub fn put_queued<T: Serialize>(&self, q: &Queued<T>) -> Result<(), StoreError> {
        self.kv
            .put(OUTBOX, &outbox_key(&q.notifier, q.id), &encode(&q.job))
    }

    /// The receiver took it (or refused it for good).
    pub fn remove_queued(&self, notifier: &str, id: u64) -> Result<(), StoreError> {
        self.kv.remove(OUTBOX, &outbox_key(notifier, id))
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
        let queued = store.put_alert_state(&"s1", &jobs).unwrap();
        assert_eq!(queued.len(), 3);
        store.flush().unwrap();
        drop(store);
        let store = Store::open_with_floor(dir.path(), 0.0).unwrap();
        assert_eq!(
            store.alert_state::<String>().unwrap().as_deref(),
            Some("s1")
        );
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
