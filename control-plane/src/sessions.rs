//! Live agent sessions: which agents have a stream open right now, and the
//! handle to cut each one (revocation, replacement by a newer stream).
//!
//! A std `Mutex`: it is never held across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Entry>>,
    next_id: AtomicU64,
}

struct Entry {
    id: u64,
    cancel: CancellationToken,
}

/// Held by a session's task; dropping it marks the agent offline, unless a
/// newer session for the same agent has taken its place.
pub struct SessionGuard {
    sessions: Arc<Sessions>,
    name: String,
    id: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Ok(mut live) = self.sessions.live.lock()
            && live.get(&self.name).is_some_and(|e| e.id == self.id)
        {
            live.remove(&self.name);
        }
    }
}

impl Sessions {
    /// Registers a new stream for `name`, cancelling any older one: after a
    /// network blip the newest connection is the real one.
    pub fn open(self: &Arc<Self>, name: &str) -> (SessionGuard, CancellationToken) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        if let Ok(mut live) = self.live.lock()
            && let Some(old) = live.insert(
                name.to_string(),
                Entry {
                    id,
                    cancel: cancel.clone(),
                },
            )
        {
            old.cancel.cancel();
        }
        (
            SessionGuard {
                sessions: self.clone(),
                name: name.to_string(),
                id,
            },
            cancel,
        )
    }

    pub fn is_online(&self, name: &str) -> bool {
        self.live.lock().is_ok_and(|l| l.contains_key(name))
    }

    pub fn online_count(&self) -> usize {
        self.live.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// Cuts the agent's stream, if it has one.
    pub fn close(&self, name: &str) {
        if let Ok(mut live) = self.live.lock()
            && let Some(e) = live.remove(name)
        {
            e.cancel.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_session_replaces_older_and_old_guard_does_not_evict_it() {
        let s = Arc::new(Sessions::default());
        let (g1, c1) = s.open("a");
        let (g2, c2) = s.open("a");
        assert!(c1.is_cancelled() && !c2.is_cancelled());
        drop(g1);
        assert!(s.is_online("a"));
        drop(g2);
        assert!(!s.is_online("a"));
    }

    #[test]
    fn close_cancels() {
        let s = Arc::new(Sessions::default());
        let (_g, c) = s.open("a");
        s.close("a");
        assert!(c.is_cancelled());
        assert_eq!(s.online_count(), 0);
    }
}
