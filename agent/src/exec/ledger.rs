//! The step ledger: one entry per step key, in the agent's sled store,
//! written durably before a step's process starts and again with its
//! result. It is what makes a step run at most once on this host: a
//! repeated dispatch (after a reconnect or a control plane restart) is
//! answered from here.

use picket_proto::v1;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("step ledger: {0}")]
    Sled(#[from] sled::Error),
    #[error("step ledger entry {key:?} is damaged: {detail}")]
    Damaged { key: String, detail: String },
}

/// A step's key as the ledger stores it: run id, phase, index, attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(pub String);

impl Key {
    pub fn of(k: &v1::StepKey) -> Key {
        Key(format!(
            "{}\u{0}{}\u{0}{:010}\u{0}{:010}",
            k.run, k.phase, k.index, k.attempt
        ))
    }
}

/// What the ledger knows of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Entry {
    /// Its process was about to start at this time (Unix ms).
    Started { at_ms: i64 },
    /// It ended (or was refused) with this result.
    Done { at_ms: i64, result: Outcome },
}

/// A step's result, as stored (the wire's `StepResult`, with serde).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// `v1::StepState` as its number.
    pub state: i32,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub output: String,
}

impl Outcome {
    pub fn failed(why: impl Into<String>) -> Outcome {
        Outcome {
            state: v1::StepState::Failed as i32,
            exit_code: None,
            duration_ms: 0,
            output: why.into(),
        }
    }

    pub fn to_wire(&self) -> v1::StepResult {
        v1::StepResult {
            state: self.state,
            exit_code: self.exit_code,
            duration_ms: self.duration_ms,
            output: self.output.clone(),
        }
    }
}

/// What a step that was running when the agent stopped is reported as.
pub const INTERRUPTED: &str = "agent restarted during the step; it was not run again";

/// Entries whose result is older than this are dropped at start: a
/// control plane asks again for a step only while its rollout runs.
const KEEP_MS: i64 = 30 * 24 * 3600 * 1000;

pub struct Ledger {
    db: sled::Db,
    tree: sled::Tree,
}

impl Ledger {
    /// Opens the ledger in `db`. Every step left `Started` (the agent died
    /// while it ran) becomes failed with [`INTERRUPTED`]; old results go.
    pub fn open(db: sled::Db, now_ms: i64) -> Result<Ledger, LedgerError> {
        let tree = db.open_tree("steps")?;
        let ledger = Ledger { db, tree };
        let mut changed = false;
        for kv in ledger.tree.iter() {
            let (k, v) = kv?;
            let key = Key(String::from_utf8_lossy(&k).into_owned());
            match ledger.decode(&key, &v) {
                Ok(Entry::Started { at_ms }) => {
                    let mut result = Outcome::failed(INTERRUPTED);
                    result.duration_ms = u64::try_from(now_ms - at_ms).unwrap_or(0);
                    ledger
                        .tree
                        .insert(k, encode(&Entry::Done { at_ms, result })?)?;
                    tracing::warn!(step = %key.0.replace('\0', "/"), "{INTERRUPTED}");
                    changed = true;
                }
                Ok(Entry::Done { at_ms, .. }) if now_ms - at_ms > KEEP_MS => {
                    ledger.tree.remove(k)?;
                    changed = true;
                }
                Ok(Entry::Done { .. }) => {}
                Err(error) => {
                    // Unreadable: treat as interrupted rather than run it again.
                    tracing::error!(%error, "step ledger entry unreadable");
                    let done = Entry::Done {
                        at_ms: now_ms,
                        result: Outcome::failed(INTERRUPTED),
                    };
                    ledger.tree.insert(k, encode(&done)?)?;
                    changed = true;
                }
            }
        }
        if changed {
            ledger.db.flush()?;
        }
        Ok(ledger)
    }

    fn decode(&self, key: &Key, v: &[u8]) -> Result<Entry, LedgerError> {
        serde_json::from_slice(v).map_err(|e| LedgerError::Damaged {
            key: key.0.clone(),
            detail: e.to_string(),
        })
    }

    pub fn get(&self, key: &Key) -> Result<Option<Entry>, LedgerError> {
        match self.tree.get(key.0.as_bytes())? {
            Some(v) => self.decode(key, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Writes `entry` and makes it durable (an fsync: call off the async
    /// threads).
    pub fn put(&self, key: &Key, entry: &Entry) -> Result<(), LedgerError> {
        self.tree.insert(key.0.as_bytes(), encode(entry)?)?;
        self.db.flush()?;
        Ok(())
    }
}

fn encode(e: &Entry) -> Result<Vec<u8>, LedgerError> {
    serde_json::to_vec(e).map_err(|err| LedgerError::Damaged {
        key: String::new(),
        detail: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(run: &str) -> Key {
        Key::of(&v1::StepKey {
            run: run.into(),
            phase: "deploy".into(),
            index: 0,
            attempt: 1,
        })
    }

    #[test]
    fn a_step_running_at_a_crash_reads_as_interrupted_and_old_results_go() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let l = Ledger::open(db.clone(), 1_000).unwrap();
        l.put(&key("a"), &Entry::Started { at_ms: 1_000 }).unwrap();
        let done = Entry::Done {
            at_ms: 1_000,
            result: Outcome::failed("x"),
        };
        l.put(&key("old"), &done).unwrap();
        drop(l);
        let l = Ledger::open(db, 5_000 + KEEP_MS).unwrap();
        match l.get(&key("a")).unwrap() {
            Some(Entry::Done { result, .. }) => {
                assert_eq!(result.output, INTERRUPTED);
                assert_eq!(result.state, v1::StepState::Failed as i32);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(l.get(&key("old")).unwrap(), None);
    }
}
