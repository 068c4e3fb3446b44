//! Steps in flight between the engines (rollouts, `picketctl run`) and the
//! agents: dispatches and cancels go out on the agents' session streams
//! ([`Sessions::send`]), or in cluster mode to the replica holding the
//! host's stream ([`Elsewhere`]); each update that comes back is routed to
//! whoever owns its run id. It keeps no state of its own beyond the routes.
//!
//! A result is handed on with backpressure (the agent's stream waits);
//! live output is dropped when its owner is slow (results carry the tail).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use picket_proto::capability;
use picket_proto::v1::{self, control_message, step_update};
use tokio::sync::mpsc;

use crate::sessions::Sessions;

/// An update from `host` about one of its steps.
#[derive(Debug)]
pub struct StepNews {
    pub host: String,
    pub key: v1::StepKey,
    pub body: step_update::Body,
}

/// Where a step goes when its host streams with another replica (cluster
/// mode: [`crate::cluster::relay`]). Each returns false when no replica
/// holds the host.
pub trait Elsewhere: Send + Sync {
    /// Whether another replica holds `host`'s stream.
    fn holds(&self, host: &str) -> bool;
    fn dispatch(&self, host: &str, key: v1::StepKey, step: v1::Step) -> bool;
    fn cancel(&self, host: &str, key: v1::StepKey) -> bool;
}

pub struct Steps {
    sessions: Arc<Sessions>,
    elsewhere: std::sync::OnceLock<Arc<dyn Elsewhere>>,
    routes: Mutex<HashMap<String, mpsc::Sender<StepNews>>>,
    /// Results whose output was cut to `output_bytes`.
    pub output_cut: std::sync::atomic::AtomicU64,
    /// The most of a step's output kept (the newest; `[limits]
    /// step_output_bytes`): an agent keeps 64 KiB, so only a hostile agent
    /// sends more.
    output_bytes: usize,
}

/// An agent's own bound on a step's output.
pub const OUTPUT_BYTES: usize = 64 * 1024;

/// `output`'s newest `most` bytes, cut at a character boundary.
fn newest(output: &mut String, most: usize) -> bool {
    if output.len() <= most {
        return false;
    }
    let mut at = output.len() - most;
    while !output.is_char_boundary(at) {
        at += 1;
    }
    output.drain(..at);
    true
}

impl Steps {
    pub fn new(sessions: Arc<Sessions>) -> Self {
        Steps {
            sessions,
            elsewhere: std::sync::OnceLock::new(),
            routes: Mutex::default(),
            output_cut: Default::default(),
            output_bytes: OUTPUT_BYTES,
        }
    }

    /// Keeps at most `bytes` of a step's output.
    pub fn with_output_limit(mut self, bytes: usize) -> Self {
        self.output_bytes = bytes;
        self
    }

    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// Updates for steps of run `run` go to `tx` from now on.
    pub fn route(&self, run: &str, tx: mpsc::Sender<StepNews>) {
        if let Ok(mut r) = self.routes.lock() {
            r.insert(run.to_string(), tx);
        }
    }

    /// Where updates of run `run` go, if it is live.
    fn owner(&self, run: &str) -> Option<mpsc::Sender<StepNews>> {
        self.routes.lock().ok().and_then(|r| r.get(run).cloned())
    }

    pub fn unroute(&self, run: &str) {
        if let Ok(mut r) = self.routes.lock() {
            r.remove(run);
        }
    }

    /// Steps for hosts that stream with another replica go there (set
    /// once, in cluster mode).
    pub fn set_elsewhere(&self, e: Arc<dyn Elsewhere>) {
        let _ = self.elsewhere.set(e);
    }

    /// Whether a step for `host` can be sent now: it streams here, or with
    /// another replica.
    pub fn reachable(&self, host: &str) -> bool {
        self.sessions.is_online(host) || self.elsewhere.get().is_some_and(|e| e.holds(host))
    }

    /// Sends the step to `host`, on its session here or through the
    /// replica holding it; `false` when nobody holds it now.
    pub async fn dispatch(&self, host: &str, key: v1::StepKey, step: v1::Step) -> bool {
        if self.sessions.is_online(host) {
            return self.dispatch_here(host, key, step).await;
        }
        self.elsewhere
            .get()
            .is_some_and(|e| e.dispatch(host, key, step))
    }

    /// Sends the step to `host`'s session here; `false` when it has none.
    /// A step its agent cannot run (an older agent) is not sent: its
    /// owner gets a failed result at once, saying why.
    pub async fn dispatch_here(&self, host: &str, key: v1::StepKey, step: v1::Step) -> bool {
        let Some(peer) = self.sessions.peer(host) else {
            return false;
        };
        if let Some(why) = capability::refusal(&peer.version, peer.caps.as_ref(), &step) {
            tracing::warn!(agent = %host, run = %key.run, "{why}");
            let result = step_update::Body::Result(v1::StepResult {
                state: v1::StepState::Failed as i32,
                exit_code: None,
                duration_ms: 0,
                output: format!("[picket] {why}\n"),
            });
            // Handed over by a task: the owner may be the caller itself.
            if let Some(tx) = self.owner(&key.run) {
                let news = StepNews {
                    host: host.to_string(),
                    key,
                    body: result,
                };
                tokio::spawn(async move { tx.send(news).await });
            }
            return true;
        }
        let body = control_message::Body::Dispatch(v1::StepDispatch {
            key: Some(key),
            step: Some(step),
        });
        let msg = v1::ControlMessage { body: Some(body) };
        self.sessions.send(host, msg).await
    }

    pub async fn cancel(&self, host: &str, key: v1::StepKey) -> bool {
        if self.sessions.is_online(host) {
            return self.cancel_here(host, key).await;
        }
        self.elsewhere.get().is_some_and(|e| e.cancel(host, key))
    }

    pub async fn cancel_here(&self, host: &str, key: v1::StepKey) -> bool {
        let body = control_message::Body::Cancel(v1::StepCancel { key: Some(key) });
        let msg = v1::ControlMessage { body: Some(body) };
        self.sessions.send(host, msg).await
    }

    /// An update from `host`'s stream, to its run's owner.
    pub async fn deliver(&self, host: &str, update: v1::StepUpdate) {
        let (Some(key), Some(mut body)) = (update.key, update.body) else {
            tracing::debug!(agent = %host, "a step update without key or body; ignored");
            return;
        };
        let Some(tx) = self.owner(&key.run) else {
            tracing::debug!(agent = %host, run = %key.run, "a step update for no live run; ignored");
            return;
        };
        if let step_update::Body::Result(r) = &mut body
            && newest(&mut r.output, self.output_bytes)
        {
            self.output_cut
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let news = StepNews {
            host: host.to_string(),
            key,
            body,
        };
        match news.body {
            step_update::Body::Output(_) => {
                let _ = tx.try_send(news);
            }
            _ => {
                let _ = tx.send(news).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_cut_to_its_newest_64_kib_at_a_character() {
        let mut small = "ok\n".to_string();
        assert!(!newest(&mut small, OUTPUT_BYTES));
        let mut big = format!("é{}", "x".repeat(16 << 20));
        assert!(newest(&mut big, OUTPUT_BYTES));
        assert_eq!(big.len(), OUTPUT_BYTES);
        let mut edge = format!("{}é", "x".repeat(OUTPUT_BYTES - 1));
        assert!(newest(&mut edge, OUTPUT_BYTES));
        assert!(edge.len() <= OUTPUT_BYTES && edge.ends_with('é'));
    }
}
