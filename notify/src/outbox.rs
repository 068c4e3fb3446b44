//! The outbox: notifications wait in the store until their receiver takes
//! them. One worker per notifier sends its queue in order, oldest first;
//! a receiver that fails is retried with exponential backoff and jitter
//! (1 s doubling to 5 min) while the others carry on. An answer that will
//! not change (an HTTP 4xx) drops the notification, counted as failed.
//!
//! Delivery: the driver stores a notification (with the state that
//! decided it) and flushes before it wakes the workers; a worker deletes
//! it, and flushes, once the receiver accepted it. A restart sends what
//! was left; only a crash between a receiver's answer and that flush
//! sends one again (PagerDuty and Alertmanager dedup those by key).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use picket_model::backoff::Backoff;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Message, Outcome, http};
use picket_alert::rules::Rules;
use picket_store::{Queued, Store};

/// What one notifier has done since the control plane started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifierStats {
    /// Waiting in the outbox now.
    pub queued: u64,
    pub sent: u64,
    /// Failed attempts (each retry counts) and refusals.
    pub failed: u64,
    pub last_error: String,
}

/// Every notifier's figures, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats(pub BTreeMap<String, NotifierStats>);

impl Stats {
    pub fn of(&self, notifier: &str) -> NotifierStats {
        self.0.get(notifier).cloned().unwrap_or_default()
    }
}

#[derive(Clone)]
pub struct Outbox {
    store: Store,
    client: http::Client,
    rules: watch::Receiver<Arc<Rules>>,
    stats: Arc<Mutex<BTreeMap<String, NotifierStats>>>,
    wake: Arc<watch::Sender<u64>>,
    now: fn() -> i64,
}

const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The wait after `attempts` failures: doubling, capped, at least half
/// the ceiling, jittered so that many notifications to one receiver do
/// not retry in step.
pub fn backoff(attempts: u32) -> Duration {
    Backoff::new(BACKOFF_FIRST, BACKOFF_MAX)
        .with_floor(0.5)
        .delay_after(attempts.saturating_sub(1), &mut rand::rng())
}

impl Outbox {
    pub fn new(
        store: Store,
        client: http::Client,
        rules: watch::Receiver<Arc<Rules>>,
        now: fn() -> i64,
    ) -> Self {
        Outbox {
            store,
            client,
            rules,
            stats: Default::default(),
            wake: Arc::new(watch::channel(0).0),
            now,
        }
    }

    /// The notifiers of the alert file in force.
    pub fn notifiers(&self) -> Vec<String> {
        self.rules
            .borrow()
            .notifiers
            .iter()
            .map(|n| n.name.clone())
            .collect()
    }

    /// New notifications are stored and durable: send them.
    pub fn wake(&self) {
        self.wake.send_modify(|n| *n += 1);
    }

    /// Counts since start, and queue depths read from the store (call it
    /// off the runtime's workers).
    /// Counts since start, without queue depths.
    pub fn stats(&self) -> Stats {
        Stats(self.stats.lock().map(|s| s.clone()).unwrap_or_default())
    }

    pub fn stats_blocking(&self) -> Stats {
        let mut all = self.stats.lock().map(|s| s.clone()).unwrap_or_default();
        match self.store.outbox_depths() {
            Ok(depths) => {
                for (name, n) in depths {
                    all.entry(name).or_default().queued = n;
                }
            }
            Err(error) => tracing::error!(%error, "cannot read the notification outbox"),
        }
        Stats(all)
    }

    pub async fn stats_now(&self) -> Stats {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.stats_blocking())
            .await
            .unwrap_or_default()
    }

    fn count(&self, notifier: &str, outcome: &Outcome) {
        let Ok(mut all) = self.stats.lock() else {
            return;
        };
        let s = all.entry(notifier.to_string()).or_default();
        match outcome {
            Outcome::Sent => s.sent += 1,
            Outcome::Refused(e) | Outcome::Failed(e) => {
                s.failed += 1;
                s.last_error = e.clone();
            }
        }
    }

    /// `name`'s configuration in the alert file in force.
    fn notifier(&self, name: &str) -> Option<picket_alert::rules::Notifier> {
        self.rules
            .borrow()
            .notifiers
            .iter()
            .find(|n| n.name == name)
            .cloned()
    }

    /// Sends `msg` to `notifier` now, outside the queue (`alerts test`,
    /// Alertmanager's minutely re-posts); counted as any send.
    pub async fn send_now(&self, notifier: &str, msg: &Message) -> Outcome {
        let Some(n) = self.notifier(notifier) else {
            return Outcome::Refused(format!("no notifier named {notifier:?}"));
        };
        let o = super::send(&self.client, &n, msg, (self.now)()).await;
        self.count(notifier, &o);
        o
    }

    /// Runs a worker for every notifier with a queue or a configuration,
    /// until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut workers: BTreeMap<String, tokio::task::JoinHandle<()>> = BTreeMap::new();
        let mut wake = self.wake.subscribe();
        let mut rules = self.rules.clone();
        loop {
            let mut names: Vec<String> = rules
                .borrow()
                .notifiers
                .iter()
                .map(|n| n.name.clone())
                .collect();
            let store = self.store.clone();
            match store.blocking(|s| s.outbox_depths()).await {
                Ok(d) => names.extend(d.into_keys()),
                Err(error) => tracing::error!(%error, "cannot read the notification outbox"),
            }
            workers.retain(|_, h| !h.is_finished());
            for name in names {
                if let std::collections::btree_map::Entry::Vacant(e) = workers.entry(name) {
                    let name = e.key().clone();
                    e.insert(tokio::spawn(self.clone().worker(name, shutdown.clone())));
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = wake.changed() => if r.is_err() { break },
                r = rules.changed() => if r.is_err() { break },
            }
        }
        for (_, w) in workers {
            let _ = w.await;
        }
    }

    /// Sends `notifier`'s queue, oldest first. Ends when shut down, or
    /// when the notifier is gone from the rules and its queue is empty.
    async fn worker(self, notifier: String, shutdown: CancellationToken) {
        let mut wake = self.wake.subscribe();
        loop {
            wake.borrow_and_update();
            let (store, name) = (self.store.clone(), notifier.clone());
            let head = store
                .blocking(move |s| s.outbox_head::<Message>(&name))
                .await;
            let head = match head {
                Ok(head) => head,
                Err(error) => {
                    tracing::error!(%error, %notifier, "cannot read the notification outbox");
                    None
                }
            };
            let configured = self.notifier(&notifier);
            let Some(mut q) = head else {
                if configured.is_none() {
                    return;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = wake.changed() => if r.is_err() { return },
                }
                continue;
            };
            // Cluster mode: only while this replica still leads (the
            // write is fenced on its term), so a deposed one sends nothing.
            if self.store.state_is_shared() {
                let (store, q2) = (self.store.clone(), q.clone());
                if let Err(error) = store.blocking(move |s| s.put_queued(&q2)).await {
                    tracing::warn!(%error, %notifier, "not sending: the outbox cannot be claimed");
                    return;
                }
            }
            let outcome = match &configured {
                None => Outcome::Refused(format!(
                    "notifier {notifier:?} is no longer in the alert file; notification dropped"
                )),
                Some(n) => tokio::select! {
                    _ = shutdown.cancelled() => return,
                    o = super::send(&self.client, n, &q.job, (self.now)()) => o,
                },
            };
            self.count(&notifier, &outcome);
            match outcome {
                Outcome::Sent => {
                    if !self.settle(&q).await {
                        return;
                    }
                }
                Outcome::Refused(error) => {
                    tracing::warn!(%notifier, %error, "notification refused; not retried");
                    if !self.settle(&q).await {
                        return;
                    }
                }
                Outcome::Failed(error) => {
                    q.job.attempts = q.job.attempts.saturating_add(1);
                    let wait = backoff(q.job.attempts);
                    tracing::warn!(%notifier, %error, attempts = q.job.attempts, retry_in = ?wait, "notification failed");
                    let (store, q2) = (self.store.clone(), q.clone());
                    if let Err(error) = store.blocking(move |s| s.put_queued(&q2)).await {
                        tracing::error!(%error, "cannot record a notification's attempt");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Deletes a notification that is done with, durably. `false` when
    /// the store fails (the worker stops rather than send it again).
    async fn settle(&self, q: &Queued<Message>) -> bool {
        let (store, name, id) = (self.store.clone(), q.notifier.clone(), q.id);
        let r = store
            .blocking(move |s| {
                s.remove_queued(&name, id)?;
                s.flush()
            })
            .await;
        if let Err(error) = r {
            tracing::error!(%error, "cannot remove a sent notification from the outbox");
            return false;
        }
        true
    }
}
