//! The alert driver: the async shell around the pure [`Engine`]. One task
//! owns the engine; ingest reaches it through the [`Tap`], everyone else
//! through a [`Handle`] (a closed command enum over a channel).
//!
//! It feeds the engine what ingest heard, heartbeats, commands and time,
//! and carries out what it decides with one rule: **persist before
//! notifying**. The engine's state and the notifications it decided are
//! written together, atomically, and flushed before the outbox's workers
//! are woken; a restart restores both. State changes that decide nothing
//! (an `event_count` window moving) are written within a second (10 s
//! when the state is in etcd: [`lazy_every`]).
//!
//! The alert file is read at start (a bad file stops the start), on
//! SIGHUP and on `alerts reload` (a bad file is refused and the rules in
//! force stay).
//!
//! What outlives one driver is its [`Kit`] (`alert::kit`): the tap
//! ingest holds, the outbox, the rules in force. Alone, one driver runs for the process; in
//! cluster mode one runs on the leader for each of its terms
//! (`cluster::lead`), fed from the records database by id when there is
//! one (`picket_tap::stored`, its cursor written with the state).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use picket_model::Labels;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use picket_alert::engine::{Alert, AlertState, Engine, Input, Output, Persisted, Silence, route};
use picket_alert::rules::{self, NotifierKind, Rules};
use picket_driver::{self as driver, Held, Mailbox};
use picket_notify::outbox::Outbox;
use picket_notify::{Message, alertmanager};
use picket_store::Store;
use picket_tap::stored::Replayed;
use picket_tap::{Heard, Tap};

use super::kit::read_rules;
pub use super::kit::{AlertError, Kit, Loaded, Parts, Tapped, load};

enum Command {
    List(oneshot::Sender<Vec<Alert>>),
    Loaded(oneshot::Sender<Loaded>),
    Reload(oneshot::Sender<Result<Loaded, AlertError>>),
    Silence(Silence, oneshot::Sender<Silence>),
    Silences(oneshot::Sender<Vec<Silence>>),
    Expire(String, oneshot::Sender<Result<Silence, AlertError>>),
    Forget(String, oneshot::Sender<()>),
}

/// How the rest of the control plane reaches the driver.
#[derive(Clone)]
pub struct Handle {
    mailbox: Mailbox<Command>,
    pub tap: Arc<Tap>,
    pub outbox: Outbox,
    firing: Arc<AtomicU32>,
}

impl Handle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, AlertError> {
        self.mailbox.ask(make).await.map_err(|_| AlertError::Gone)
    }

    /// Every alert: pending, firing, and resolved ones not yet notified.
    pub async fn list(&self) -> Result<Vec<Alert>, AlertError> {
        self.ask(Command::List).await
    }

    pub async fn loaded(&self) -> Result<Loaded, AlertError> {
        self.ask(Command::Loaded).await
    }

    pub async fn reload(&self) -> Result<Loaded, AlertError> {
        self.ask(Command::Reload).await?
    }

    /// Adds a silence (durably, before it answers).
    pub async fn silence(&self, s: Silence) -> Result<Silence, AlertError> {
        self.ask(|r| Command::Silence(s, r)).await
    }

    pub async fn silences(&self) -> Result<Vec<Silence>, AlertError> {
        self.ask(Command::Silences).await
    }

    pub async fn expire(&self, id: String) -> Result<Silence, AlertError> {
        self.ask(|r| Command::Expire(id, r)).await?
    }

    /// Forgets a host that is revoked or forgotten: its alerts resolve
    /// (durably, before it answers). A driver that is gone is not an
    /// error here: the next start forgets revoked hosts anyway.
    pub async fn forget(&self, host: String) {
        let _ = self.ask(|r| Command::Forget(host, r)).await;
    }

    /// Alerts firing now (as of the last change).
    pub fn firing(&self) -> u32 {
        self.firing.load(Ordering::Relaxed)
    }
}

/// Reads the rules (a bad file stops the start) and starts a driver for
/// the process (one control plane alone).
pub async fn start(
    parts: Parts,
    shutdown: CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> Result<Handle, AlertError> {
    Kit::new(parts).await?.start(shutdown, tasks).await
}

impl Kit {
    /// Restores the engine from the store and starts a driver and the
    /// outbox's workers, until `shutdown`.
    pub async fn start(
        &self,
        shutdown: CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Result<Handle, AlertError> {
        let kit = self.clone();
        let store = kit.store.clone();
        let rules = Rules::clone(&kit.loaded().rules);
        let saved: Option<Persisted> = store.blocking(|s| s.alert_state()).await?;
        let tapped = match &kit.records {
            Some(t) => Some(tapped_from(&store, t).await?),
            None => None,
        };
        let heard = kit.tap.attach();
        let now = (kit.now)();
        let mut engine = match saved {
            Some(p) => Engine::restore(p, rules),
            None => Engine::new(rules),
        };
        // A restart is not silence: every host gets its full `after` again,
        // counted from now; but a host already down stays down until it is
        // heard from.
        let agents = store.blocking(|s| s.agents()).await?;
        let mut labels = HashMap::new();
        let down: std::collections::HashSet<String> =
            engine
                .alerts()
                .filter(|a| a.state == AlertState::Firing)
                .filter(|a| {
                    engine.rules().rules.iter().any(|r| {
                        r.name == a.rule && matches!(r.kind, rules::Kind::HostSilent { .. })
                    })
                })
                .filter_map(|a| a.labels.get("host").cloned())
                .collect();
        for a in agents.iter().filter(|a| a.revoked_ms.is_none()) {
            labels.insert(a.name.clone(), a.labels());
            if down.contains(&a.name) {
                continue;
            }
            engine.handle(
                Input::Seen {
                    host: a.name.clone(),
                    host_labels: a.labels(),
                },
                now,
            );
        }
        let (mailbox, cmds) = Mailbox::new(64);
        let firing = Arc::new(AtomicU32::new(0));
        let (replayed_tx, replayed) = mpsc::channel(4);
        if let (Some(t), Some(from)) = (&kit.records, tapped) {
            tasks.spawn(picket_tap::stored::follow(
                kit.tap.clone(),
                t.records.clone(),
                from,
                t.wake.clone(),
                replayed_tx,
                shutdown.clone(),
            ));
        }
        let driver = Driver {
            store,
            engine,
            kit: kit.clone(),
            labels,
            firing: firing.clone(),
            dirty: false,
            written: tokio::time::Instant::now(),
            held: Held::default(),
            store_writable: true,
            tapped,
        };
        tasks.spawn(kit.outbox.clone().run(shutdown.clone()));
        tasks.spawn(driver.run(heard, replayed, cmds, shutdown));
        Ok(Handle {
            mailbox,
            tap: kit.tap.clone(),
            outbox: kit.outbox.clone(),
            firing,
        })
    }
}

/// Where the tap reads on from: as stored with the state, or (never fed
/// from the database before) from what it holds now.
async fn tapped_from(store: &Store, t: &Tapped) -> Result<u64, AlertError> {
    if let Some(at) = store.blocking(|s| s.alert_tapped()).await? {
        return Ok(at);
    }
    let records = t.records.clone();
    tokio::task::spawn_blocking(move || records.next_id())
        .await
        .map_err(|_| AlertError::Gone)?
        .map_err(AlertError::Store)
}

struct Driver {
    store: Store,
    engine: Engine,
    kit: Kit,
    /// Each host's labels, read from the store (refreshed each minute).
    labels: HashMap<String, Labels>,
    firing: Arc<AtomicU32>,
    /// State changed but nothing was decided: written within
    /// [`lazy_every`] (and a write that failed, retried each second until
    /// it succeeds).
    dirty: bool,
    /// When the state was last written.
    written: tokio::time::Instant,
    /// Notifications decided but not yet stored: sent with the next
    /// write, never dropped, and never handed to the outbox before it.
    held: Held<(String, Message)>,
    /// What the engine was last told of the store.
    store_writable: bool,
    /// How far the engine was fed from the records database (cluster
    /// mode with one), written with its state.
    tapped: Option<u64>,
}

/// Messages from ingest handled before one write.
const BATCH: usize = 256;
/// How often a write that failed is tried again, and the store's health
/// looked at.
const LAZY_WRITE: Duration = Duration::from_secs(1);

/// How soon a change that decided nothing (a host seen, an `event_count`
/// window moving, the tap's cursor) is written: within a second to the
/// embedded store; to etcd, where the whole state is one value and each
/// write a revision kept until compaction, within 10 s. Nothing is lost
/// by waiting: a new leader sees every host again from its start, and
/// reads the records again from the cursor written with the state it
/// restores.
fn lazy_every(store: &Store) -> Duration {
    if store.state_is_shared() {
        Duration::from_secs(10)
    } else {
        LAZY_WRITE
    }
}

impl Driver {
    async fn run(
        mut self,
        mut heard: mpsc::Receiver<Heard>,
        mut replayed: mpsc::Receiver<Replayed>,
        mut cmds: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) {
        let mut hup = crate::lifecycle::hangups();
        let mut minute = tokio::time::interval(Duration::from_millis(
            u64::try_from(alertmanager::RESEND_MS).unwrap_or(60_000),
        ));
        minute.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lazy = tokio::time::interval(LAZY_WRITE);
        // Outputs of the start (hosts seen again, due ticks).
        let start = self.engine.handle(Input::Tick, (self.kit.now)());
        self.commit(start).await;
        loop {
            let wait = driver::until(self.engine.next_deadline(), (self.kit.now)());
            let mut outs = Vec::new();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(h) = heard.recv() => {
                    self.heard(h, &mut outs);
                    for _ in 1..BATCH {
                        match heard.try_recv() {
                            Ok(h) => self.heard(h, &mut outs),
                            Err(_) => break,
                        }
                    }
                }
                Some(r) = replayed.recv() => {
                    for h in r.heard {
                        self.heard(h, &mut outs);
                    }
                    self.tapped = Some(r.through);
                    self.dirty = true;
                }
                Some(c) = cmds.recv() => {
                    self.command(c).await;
                    continue;
                }
                _ = tokio::time::sleep(wait) => {
                    outs = self.engine.handle(Input::Tick, (self.kit.now)());
                }
                Some(()) = crate::lifecycle::hangup(&mut hup) => {
                    match self.reload().await {
                        Ok(l) => tracing::info!(rules = l.rules.rules.len(), "SIGHUP: alert file reloaded"),
                        Err(error) => tracing::error!(%error, "SIGHUP: alert file refused; the rules in force stay"),
                    }
                    continue;
                }
                _ = minute.tick() => {
                    self.every_minute().await;
                    continue;
                }
                _ = lazy.tick() => {
                    self.watch_store().await;
                    let due = self.written.elapsed() >= lazy_every(&self.store);
                    if self.held.is_waiting() || (self.dirty && due) {
                        self.write(Vec::new()).await;
                    }
                    continue;
                }
            }
            self.commit(outs).await;
        }
        if self.dirty || self.held.is_waiting() {
            self.write(Vec::new()).await;
        }
    }

    fn host_labels(&mut self, host: &str) -> Labels {
        if let Some(l) = self.labels.get(host) {
            return l.clone();
        }
        // A host not yet known (just enrolled), or the control plane's own.
        let l = match self.store.agent(host) {
            Ok(Some(a)) => a.labels(),
            _ => Labels::new(),
        };
        self.labels.insert(host.to_string(), l.clone());
        l
    }

    fn heard(&mut self, h: Heard, outs: &mut Vec<Output>) {
        let now = (self.kit.now)();
        let host_labels = self.host_labels(&h.host);
        if h.samples.is_empty() && h.events.is_empty() {
            if !h.alive {
                return;
            }
            outs.extend(self.engine.handle(
                Input::Seen {
                    host: h.host,
                    host_labels,
                },
                now,
            ));
            return;
        }
        for points in h.samples {
            outs.extend(self.engine.handle(
                Input::Sample {
                    host: h.host.clone(),
                    host_labels: host_labels.clone(),
                    points,
                },
                now,
            ));
        }
        if !h.events.is_empty() {
            outs.extend(self.engine.handle(
                Input::Events {
                    host: h.host,
                    host_labels,
                    events: h.events,
                    alive: h.alive,
                },
                now,
            ));
        }
    }

    async fn command(&mut self, c: Command) {
        let now = (self.kit.now)();
        match c {
            Command::List(r) => {
                let _ = r.send(self.engine.alerts().cloned().collect());
            }
            Command::Loaded(r) => {
                let _ = r.send(self.kit.loaded());
            }
            Command::Reload(r) => {
                let result = self.reload().await;
                let _ = r.send(result);
            }
            Command::Silence(s, r) => {
                let outs = self.engine.handle(Input::Silence(s.clone()), now);
                self.commit_now(outs).await;
                let _ = r.send(s);
            }
            Command::Silences(r) => {
                let _ = r.send(self.engine.silences().to_vec());
            }
            Command::Expire(id, r) => {
                let Some(s) = self.engine.silences().iter().find(|s| s.id == id).cloned() else {
                    let _ = r.send(Err(AlertError::NoSilence(id)));
                    return;
                };
                let outs = self.engine.handle(Input::Expire(id), now);
                self.commit_now(outs).await;
                let _ = r.send(Ok(Silence { ends_ms: now, ..s }));
            }
            Command::Forget(host, r) => {
                self.labels.remove(&host);
                let outs = self.engine.handle(Input::Forget(host), now);
                self.commit_now(outs).await;
                let _ = r.send(());
            }
        }
    }

    async fn reload(&mut self) -> Result<Loaded, AlertError> {
        let file = self.kit.loaded().file.ok_or(AlertError::NoFile)?;
        let rules = read_rules(Some(file.clone())).await?;
        let outs = self
            .engine
            .handle(Input::Reload(rules.clone()), (self.kit.now)());
        let loaded = self.kit.put_rules(Some(file), rules);
        self.commit_now(outs).await;
        Ok(loaded)
    }

    /// Alertmanager's re-posts of what fires; revoked hosts forgotten;
    /// host labels read again.
    async fn every_minute(&mut self) {
        let now = (self.kit.now)();
        let rules = self.kit.loaded().rules;
        for n in &rules.notifiers {
            if !matches!(n.kind, NotifierKind::Alertmanager { .. }) {
                continue;
            }
            let alerts: Vec<Alert> = self
                .engine
                .alerts()
                .filter(|a| a.state == AlertState::Firing && !a.silenced && !a.inhibited)
                .filter(|a| route(&rules, &a.labels).contains(&n.name))
                .cloned()
                .collect();
            if alerts.is_empty() {
                continue;
            }
            let msg = Message::refresh(&n.name, alerts, now);
            let (outbox, name) = (self.kit.outbox.clone(), n.name.clone());
            tokio::spawn(async move {
                let o = outbox.send_now(&name, &msg).await;
                if let picket_notify::Outcome::Failed(e) | picket_notify::Outcome::Refused(e) = o {
                    tracing::warn!(notifier = %name, error = %e, "re-posting firing alerts failed");
                }
            });
        }
        let store = self.store.clone();
        let Ok(agents) = store.blocking(|s| s.agents()).await else {
            return;
        };
        let mut outs = Vec::new();
        for a in &agents {
            if a.revoked_ms.is_some() {
                outs.extend(self.engine.handle(Input::Forget(a.name.clone()), now));
            }
        }
        self.labels = agents
            .iter()
            .filter(|a| a.revoked_ms.is_none())
            .map(|a| (a.name.clone(), a.labels()))
            .collect();
        self.commit(outs).await;
    }

    /// Tells the engine when the store starts or stops refusing records.
    async fn watch_store(&mut self) {
        let health = self.store.health();
        let writable = health.writable();
        if writable == self.store_writable {
            return;
        }
        self.store_writable = writable;
        let why = health.why().map(|w| w.to_string()).unwrap_or_default();
        let input = Input::Store {
            host: self.kit.name.clone(),
            writable,
            why,
        };
        let outs = self.engine.handle(input, (self.kit.now)());
        self.commit(outs).await;
    }

    /// Carries out what the engine decided: writes at once when it
    /// decided something (a transition, a notification), else within a
    /// second.
    async fn commit(&mut self, outs: Vec<Output>) {
        let mut decided = false;
        let mut jobs = Vec::new();
        let now = (self.kit.now)();
        for o in outs {
            match o {
                Output::Persist => self.dirty = true,
                Output::Transition {
                    fingerprint,
                    rule,
                    state,
                } => {
                    decided = true;
                    tracing::info!(%fingerprint, %rule, state = state.as_str(), "alert");
                }
                Output::Notify(n) => {
                    decided = true;
                    let msg = Message::of(&n, now);
                    if picket_notify::unqueued::is_for(&self.kit.loaded().rules, &n) {
                        picket_notify::unqueued::send(
                            self.kit.outbox.clone(),
                            n.notifier.clone(),
                            msg,
                        );
                    } else {
                        jobs.push((n.notifier.clone(), msg));
                    }
                }
            }
        }
        if decided {
            self.write(jobs).await;
        }
        let firing = self
            .engine
            .alerts()
            .filter(|a| a.state == AlertState::Firing)
            .count();
        self.firing
            .store(u32::try_from(firing).unwrap_or(u32::MAX), Ordering::Relaxed);
    }

    /// As `commit`, and durable before it returns (an operator's change
    /// is answered only once it is stored).
    async fn commit_now(&mut self, outs: Vec<Output>) {
        self.commit(outs).await;
        if self.dirty {
            self.write(Vec::new()).await;
        }
    }

    /// Stores the engine's state with every notification decided and not
    /// yet stored, in one atomic write, flushed; only then may the outbox
    /// send them. A failed write keeps them all for the next attempt.
    async fn write(&mut self, jobs: Vec<(String, Message)>) {
        let state = self.engine.persisted().clone();
        let tapped = self.tapped;
        let store = self.store.clone();
        let write = |all: &[(String, Message)]| {
            let queued = all.to_vec();
            async move {
                store
                    .blocking(move |s| {
                        s.put_alert_state(&state, tapped, &queued)?;
                        s.flush()
                    })
                    .await
            }
        };
        match self.held.persist(jobs, "alert state", write).await {
            driver::Persisted::Act(stored) => {
                self.dirty = false;
                self.written = tokio::time::Instant::now();
                if !stored.is_empty() {
                    self.kit.outbox.wake();
                }
            }
            // Retried each second (the lazy write), with what is held.
            driver::Persisted::Held => self.dirty = true,
        }
    }
}

#[cfg(test)]
mod tests;
