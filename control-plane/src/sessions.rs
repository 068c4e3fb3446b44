//! Live agent sessions: which agents have a stream open right now, the
//! handle to cut each one (revocation, replacement by a newer stream), the
//! way to send one a message (a step), and news of agents coming and going
//! (for the engines that wait on them).
//!
//! A std `Mutex`: it is never held across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use picket_proto::v1;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// A session's outbound queue (what the agent's stream carries).
pub type Outbound = mpsc::Sender<Result<v1::ControlMessage, tonic::Status>>;

/// An agent's stream opened or closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    Connected(String),
    Disconnected(String),
}

pub struct Sessions {
    live: Mutex<HashMap<String, Entry>>,
    next_id: AtomicU64,
    presence: broadcast::Sender<Presence>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            live: Mutex::default(),
            next_id: AtomicU64::new(0),
            presence: broadcast::channel(1024).0,
        }
    }
}

/// What the agent said of itself in `Hello`.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub version: String,
    /// None: an agent from before capabilities (protocol revision 1).
    pub caps: Option<v1::Capabilities>,
}

impl Peer {
    /// An agent of this very build.
    pub fn current() -> Peer {
        Peer {
            version: env!("PICKET_VERSION").to_string(),
            caps: Some(picket_proto::capability::ours()),
        }
    }
}

struct Entry {
    id: u64,
    cancel: CancellationToken,
    tx: Outbound,
    peer: Peer,
    /// The agent's clock minus ours, from its last heartbeats.
    clock: Clock,
    /// When its last heartbeat came (0: none yet).
    heard_ms: i64,
}

/// How many heartbeats the clock offset is taken over.
const CLOCK_SAMPLES: usize = 6;

/// An agent's clock offset, measured on its heartbeats: the time it wrote
/// in each minus when it arrived. A heartbeat held up on the way (behind
/// records, by a slow link) only lowers that, so the offset is the highest
/// of the last few.
#[derive(Default)]
struct Clock {
    samples: std::collections::VecDeque<i64>,
}

impl Clock {
    fn add(&mut self, offset_ms: i64) {
        if self.samples.len() == CLOCK_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(offset_ms);
    }

    fn offset_ms(&self) -> Option<i64> {
        self.samples.iter().copied().max()
    }
}

/// How long a message waits for room in a session's queue.
const SEND_WAIT: Duration = Duration::from_secs(5);

/// Held by a session's task; dropping it marks the agent offline, unless a
/// newer session for the same agent has taken its place.
pub struct SessionGuard {
    sessions: Arc<Sessions>,
    name: String,
    id: u64,
}

impl SessionGuard {
    /// Notes a heartbeat the agent wrote at `sent_ms` (its clock) that
    /// arrived at `now_ms` (ours).
    pub fn heartbeat(&self, sent_ms: i64, now_ms: i64) {
        if let Ok(mut live) = self.sessions.live.lock()
            && let Some(e) = live.get_mut(&self.name).filter(|e| e.id == self.id)
        {
            e.clock.add(sent_ms.saturating_sub(now_ms));
            e.heard_ms = now_ms;
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Ok(mut live) = self.sessions.live.lock()
            && live.get(&self.name).is_some_and(|e| e.id == self.id)
        {
            live.remove(&self.name);
            let _ = self
                .sessions
                .presence
                .send(Presence::Disconnected(self.name.clone()));
        }
    }
}

impl Sessions {
    /// Registers a new stream for `name`, cancelling any older one: after a
    /// network blip the newest connection is the real one.
    /// `tx` is the stream's outbound queue: what [`Sessions::send`] uses.
    pub fn open(self: &Arc<Self>, name: &str, tx: Outbound) -> (SessionGuard, CancellationToken) {
        self.open_as(name, tx, Peer::current())
    }

    /// [`Sessions::open`] for an agent that described itself as `peer`.
    pub fn open_as(
        self: &Arc<Self>,
        name: &str,
        tx: Outbound,
        peer: Peer,
    ) -> (SessionGuard, CancellationToken) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        if let Ok(mut live) = self.live.lock() {
            let entry = Entry {
                id,
                cancel: cancel.clone(),
                tx,
                peer,
                clock: Clock::default(),
                heard_ms: 0,
            };
            if let Some(old) = live.insert(name.to_string(), entry) {
                old.cancel.cancel();
            }
            let _ = self.presence.send(Presence::Connected(name.to_string()));
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

    /// News of agents connecting and disconnecting from now on.
    /// Tells whoever follows presence of a host coming or going that does
    /// not stream here (cluster mode: it streams with another replica).
    pub fn announce(&self, p: Presence) {
        let _ = self.presence.send(p);
    }

    pub fn presence(&self) -> broadcast::Receiver<Presence> {
        self.presence.subscribe()
    }

    /// Queues `msg` on the agent's stream; `false` when it has none (or its
    /// queue stayed full for [`SEND_WAIT`]).
    pub async fn send(&self, name: &str, msg: v1::ControlMessage) -> bool {
        let tx = self
            .live
            .lock()
            .ok()
            .and_then(|l| l.get(name).map(|e| e.tx.clone()));
        match tx {
            Some(tx) => matches!(
                tokio::time::timeout(SEND_WAIT, tx.send(Ok(msg))).await,
                Ok(Ok(()))
            ),
            None => false,
        }
    }

    pub fn is_online(&self, name: &str) -> bool {
        self.live.lock().is_ok_and(|l| l.contains_key(name))
    }

    /// What the agent connected now said of itself.
    pub fn peer(&self, name: &str) -> Option<Peer> {
        self.live
            .lock()
            .ok()
            .and_then(|l| l.get(name).map(|e| e.peer.clone()))
    }

    /// How far the agent's clock is ahead of ours (behind: negative), once
    /// it has sent a heartbeat on its current stream.
    pub fn clock_offset_ms(&self, name: &str) -> Option<i64> {
        self.live
            .lock()
            .ok()
            .and_then(|l| l.get(name).and_then(|e| e.clock.offset_ms()))
    }

    /// When a connected agent's last heartbeat came: fresher than the
    /// store's `last_seen_ms`, which a session writes once a minute.
    pub fn heard_ms(&self, name: &str) -> Option<i64> {
        self.live
            .lock()
            .ok()
            .and_then(|l| l.get(name).map(|e| e.heard_ms))
    }

    /// The agents streaming with this control plane now.
    pub fn online_names(&self) -> std::collections::BTreeSet<String> {
        self.live
            .lock()
            .map(|l| l.keys().cloned().collect())
            .unwrap_or_default()
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
            let _ = self.presence.send(Presence::Disconnected(name.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx() -> Outbound {
        mpsc::channel(1).0
    }

    #[test]
    fn newer_session_replaces_older_and_old_guard_does_not_evict_it() {
        let s = Arc::new(Sessions::default());
        let mut news = s.presence();
        let (g1, c1) = s.open("a", tx());
        let (g2, c2) = s.open("a", tx());
        assert!(c1.is_cancelled() && !c2.is_cancelled());
        drop(g1);
        assert!(s.is_online("a"));
        drop(g2);
        assert!(!s.is_online("a"));
        let a = || "a".to_string();
        let seen: Vec<_> = std::iter::from_fn(|| news.try_recv().ok()).collect();
        assert_eq!(
            seen,
            [
                Presence::Connected(a()),
                Presence::Connected(a()),
                Presence::Disconnected(a())
            ]
        );
    }

    #[test]
    fn the_clock_offset_is_the_least_delayed_of_the_last_heartbeats() {
        let s = Arc::new(Sessions::default());
        let (g, _c) = s.open("a", tx());
        assert_eq!(s.clock_offset_ms("a"), None, "no heartbeat yet");
        // 600 s behind; one heartbeat held up 3 s on the way.
        g.heartbeat(400_000, 1_000_000);
        g.heartbeat(402_000, 1_005_000);
        assert_eq!(s.clock_offset_ms("a"), Some(-600_000));
        for i in 0..CLOCK_SAMPLES as i64 {
            g.heartbeat(1_000_000 + i, 1_000_000 + i);
        }
        assert_eq!(s.clock_offset_ms("a"), Some(0), "old samples age out");
        drop(g);
        assert_eq!(s.clock_offset_ms("a"), None);
    }

    #[test]
    fn close_cancels() {
        let s = Arc::new(Sessions::default());
        let (_g, c) = s.open("a", tx());
        s.close("a");
        assert!(c.is_cancelled());
        assert_eq!(s.online_count(), 0);
    }
}
