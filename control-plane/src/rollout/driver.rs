//! The rollout driver: the async shell around the pure engines. One task
//! owns every rollout's [`Engine`]; the rest of the control plane talks to
//! it through a [`Handle`] (a closed command enum over a channel).
//!
//! It feeds each engine what happens (commands, step results, agents
//! coming and going, time) and carries out what the engine decides, in
//! order, with one rule: **persist before acting**. Every state change is
//! written to the store and flushed before any dispatch that follows it,
//! so a restart never forgets a step it sent. On start it restores every
//! rollout and dispatches again the steps without a recorded result; the
//! agents' ledgers answer those with the result they recorded, so no step
//! runs twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use picket_model::rollout::RawSpec;
use picket_proto::v1::{self, step_update};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::sessions::Presence;
use crate::steps::{StepNews, Steps};
use picket_driver::{self as driver, Held, Mailbox};
use picket_rollout::engine::{Engine, Input, Output, Refused};
use picket_rollout::state::{HostState, Persisted, Phase, StepRef, StepResult};
use picket_rollout::view::View;
use picket_store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("no rollout with id {0}")]
    NotFound(String),
    #[error(transparent)]
    Spec(#[from] picket_model::rollout::SpecError),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("the rollout store: {0}")]
    Store(#[from] StoreError),
    #[error("the rollout driver has stopped")]
    Gone,
    /// Cluster mode: this replica does not lead, so it drives no rollout.
    #[error("{0}")]
    NotLeader(String),
}

/// An operator's command on a rollout.
pub use picket_model::rollout::RolloutAction as Action;

fn input(a: Action) -> Input {
    match a {
        Action::Pause => Input::Pause,
        Action::Resume => Input::Resume,
        Action::Approve => Input::Approve,
        Action::Abort => Input::Abort,
        Action::Rollback => Input::Rollback,
    }
}

/// The newest rollout that touched a host.
#[derive(Debug, Clone, PartialEq)]
pub struct LastRollout {
    pub id: String,
    pub name: String,
    pub state: &'static str,
    pub host_state: &'static str,
}

enum Command {
    Create(Box<RawSpec>, oneshot::Sender<Result<String, DriverError>>),
    Act(String, Action, oneshot::Sender<Result<View, DriverError>>),
    Get(String, oneshot::Sender<Result<View, DriverError>>),
    List(oneshot::Sender<Vec<View>>),
    Watch(
        String,
        oneshot::Sender<Result<watch::Receiver<Arc<View>>, DriverError>>,
    ),
    LastFor(String, oneshot::Sender<Option<LastRollout>>),
}

/// How the rest of the control plane reaches the driver.
#[derive(Clone)]
pub struct Handle {
    mailbox: Mailbox<Command>,
}

impl Handle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, DriverError> {
        self.mailbox.ask(make).await.map_err(|_| DriverError::Gone)
    }

    /// Validates, plans over the fleet, persists and starts a rollout;
    /// returns its id.
    pub async fn create(&self, spec: RawSpec) -> Result<String, DriverError> {
        self.ask(|r| Command::Create(Box::new(spec), r)).await?
    }

    pub async fn act(&self, id: String, action: Action) -> Result<View, DriverError> {
        self.ask(|r| Command::Act(id, action, r)).await?
    }

    pub async fn get(&self, id: String) -> Result<View, DriverError> {
        self.ask(|r| Command::Get(id, r)).await?
    }

    /// Every rollout, newest first, without step output.
    pub async fn list(&self) -> Result<Vec<View>, DriverError> {
        self.ask(Command::List).await
    }

    /// The rollout now and at each change (without step output).
    pub async fn watch(&self, id: String) -> Result<watch::Receiver<Arc<View>>, DriverError> {
        self.ask(|r| Command::Watch(id, r)).await?
    }

    pub async fn last_for(&self, host: String) -> Result<Option<LastRollout>, DriverError> {
        self.ask(|r| Command::LastFor(host, r)).await
    }
}

/// The newest rollout among `all` that started on `host`.
pub fn last_for<'a>(all: impl Iterator<Item = &'a Persisted>, host: &str) -> Option<LastRollout> {
    all.filter_map(|p| {
        let h = p.hosts.iter().find(|h| h.name == host)?;
        h.started_order?;
        Some((p.created_ms, p, h))
    })
    .max_by_key(|(t, p, _)| (*t, p.id.clone()))
    .map(|(_, p, h)| LastRollout {
        id: p.id.clone(),
        name: p.spec.name.clone().unwrap_or_default(),
        state: p.state.as_str(),
        host_state: h.state.as_str(),
    })
}

/// `list`'s order: newest first.
pub fn newest_first(all: &mut [View]) {
    all.sort_by(|a, b| {
        b.p.created_ms
            .cmp(&a.p.created_ms)
            .then(b.p.id.cmp(&a.p.id))
    });
}

/// Stores the event a finished rollout becomes: (id, rollout, kind).
pub type FinishedSink = Box<dyn Fn(&str, &Persisted, &'static str) + Send + Sync>;

/// What the driver needs from the rest of the control plane.
pub struct Parts {
    pub store: Store,
    pub steps: Arc<Steps>,
    /// Stores the event a finished rollout becomes.
    pub events: FinishedSink,
    pub now: fn() -> i64,
}

struct Live {
    engine: Engine,
    /// Each running host's last output line (not persisted).
    lines: BTreeMap<String, String>,
    watch: watch::Sender<Arc<View>>,
}

impl Live {
    fn view(&self, with_output: bool) -> View {
        View::of(
            self.engine.persisted(),
            self.engine.spec(),
            &self.lines,
            with_output,
        )
    }
}

struct Driver {
    parts: Parts,
    news: mpsc::Sender<StepNews>,
    rollouts: BTreeMap<String, Live>,
    /// Outputs decided but not carried out because their persist failed:
    /// carried out, in order, after the next persist that succeeds (tried
    /// again after `held.retry_in()`, and with every new input).
    held: Held<(String, Vec<Output>)>,
}

/// The wire's key for a rollout's step.
pub fn key(id: &str, at: StepRef) -> v1::StepKey {
    v1::StepKey {
        run: id.to_string(),
        phase: at.phase.as_str().to_string(),
        index: u32::try_from(at.index).unwrap_or(u32::MAX),
        attempt: at.attempt,
    }
}

fn step_ref(k: &v1::StepKey) -> Option<StepRef> {
    Some(StepRef {
        phase: Phase::parse(&k.phase)?,
        index: k.index as usize,
        attempt: k.attempt,
    })
}

fn result(r: v1::StepResult) -> StepResult {
    StepResult {
        state: picket_proto::convert::step_state(r.state),
        exit_code: r.exit_code,
        duration_ms: r.duration_ms,
        output: r.output,
    }
}

/// Starts the driver: restores every persisted rollout, resumes the
/// unfinished ones, and serves the handle until `shutdown`.
pub async fn start(
    parts: Parts,
    shutdown: CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> Result<Handle, DriverError> {
    let presence = parts.steps.sessions().presence();
    let (news, news_rx) = mpsc::channel(4096);
    let saved: Vec<Persisted> = {
        let store = parts.store.clone();
        store.blocking(|s| s.rollouts()).await?
    };
    let mut d = Driver {
        parts,
        news,
        rollouts: BTreeMap::new(),
        held: Held::default(),
    };
    let mut pending = Vec::new();
    for p in saved {
        let id = p.id.clone();
        match Engine::restore(p) {
            Ok(engine) => {
                let resumed = engine.resume();
                d.insert(engine);
                pending.push((id, resumed));
            }
            Err(error) => tracing::error!(rollout = %id, %error, "cannot restore a rollout"),
        }
    }
    if !pending.is_empty() {
        tracing::info!(rollouts = d.rollouts.len(), "rollouts restored");
    }
    d.settle(pending).await;
    let (mailbox, rx) = Mailbox::new(64);
    tasks.spawn(d.run(rx, news_rx, presence, shutdown));
    Ok(Handle { mailbox })
}

impl Driver {
    fn insert(&mut self, engine: Engine) {
        let id = engine.id().to_string();
        self.parts.steps.route(&id, self.news.clone());
        let view = Arc::new(View::of(
            engine.persisted(),
            engine.spec(),
            &BTreeMap::new(),
            false,
        ));
        let live = Live {
            engine,
            lines: BTreeMap::new(),
            watch: watch::channel(view).0,
        };
        self.rollouts.insert(id, live);
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut news: mpsc::Receiver<StepNews>,
        mut presence: broadcast::Receiver<Presence>,
        shutdown: CancellationToken,
    ) {
        loop {
            let now = (self.parts.now)();
            let next = self
                .rollouts
                .values()
                .filter_map(|l| l.engine.next_deadline())
                .min();
            let sleep = tokio::time::sleep(driver::until(next, now));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                c = commands.recv() => match c {
                    Some(c) => self.command(c).await,
                    None => return,
                },
                n = news.recv() => {
                    let Some(n) = n else { return };
                    let mut batch = vec![n];
                    while batch.len() < 512 {
                        match news.try_recv() {
                            Ok(n) => batch.push(n),
                            Err(_) => break,
                        }
                    }
                    let pending = batch.into_iter().filter_map(|n| self.news(n)).collect();
                    self.settle(pending).await;
                }
                p = presence.recv() => {
                    let pending = match p {
                        Ok(Presence::Connected(h)) => self.tell_all(&h, Input::HostConnected),
                        Ok(Presence::Disconnected(h)) => self.tell_all(&h, Input::HostDisconnected),
                        Err(broadcast::error::RecvError::Lagged(_)) => self.resync(),
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    self.settle(pending).await;
                }
                _ = sleep, if next.is_some() => {
                    let pending = self.tick();
                    self.settle(pending).await;
                }
                _ = tokio::time::sleep(self.held.retry_in()), if self.held.is_waiting() => {
                    self.settle(Vec::new()).await;
                }
            }
        }
    }

    fn feed(&mut self, id: &str, input: Input) -> Result<Vec<Output>, DriverError> {
        let now = (self.parts.now)();
        let live = self
            .rollouts
            .get_mut(id)
            .ok_or_else(|| DriverError::NotFound(id.to_string()))?;
        Ok(live.engine.handle(input, now)?)
    }

    /// An agent came or went: every rollout with that host hears of it.
    fn tell_all(&mut self, host: &str, input: fn(String) -> Input) -> Vec<(String, Vec<Output>)> {
        let ids: Vec<String> = self
            .rollouts
            .iter()
            .filter(|(_, l)| {
                !l.engine.state().is_finished() && l.engine.hosts().iter().any(|h| h.name == host)
            })
            .map(|(id, _)| id.clone())
            .collect();
        ids.into_iter()
            .filter_map(|id| {
                let out = self.feed(&id, input(host.to_string())).ok()?;
                Some((id, out))
            })
            .collect()
    }

    /// Presence news was lost: tell every engine who is there now.
    fn resync(&mut self) -> Vec<(String, Vec<Output>)> {
        let steps = self.parts.steps.clone();
        let mut hosts: Vec<String> = self
            .rollouts
            .values()
            .flat_map(|l| l.engine.hosts().iter().map(|h| h.name.clone()))
            .collect();
        hosts.sort();
        hosts.dedup();
        let mut pending = Vec::new();
        for h in hosts {
            let input: fn(String) -> Input = if steps.reachable(&h) {
                Input::HostConnected
            } else {
                Input::HostDisconnected
            };
            pending.extend(self.tell_all(&h, input));
        }
        pending
    }

    fn tick(&mut self) -> Vec<(String, Vec<Output>)> {
        let now = (self.parts.now)();
        let due: Vec<String> = self
            .rollouts
            .iter()
            .filter(|(_, l)| l.engine.next_deadline().is_some_and(|d| d <= now))
            .map(|(id, _)| id.clone())
            .collect();
        due.into_iter()
            .filter_map(|id| Some((id.clone(), self.feed(&id, Input::Tick).ok()?)))
            .collect()
    }

    fn news(&mut self, n: StepNews) -> Option<(String, Vec<Output>)> {
        let id = n.key.run.clone();
        match n.body {
            step_update::Body::Output(bytes) => {
                let live = self.rollouts.get_mut(&id)?;
                let text = String::from_utf8_lossy(&bytes);
                if let Some(line) = text.lines().rev().find(|l| !l.trim().is_empty()) {
                    let line: String = line.chars().take(200).collect();
                    live.lines.insert(n.host, line);
                    if live.watch.receiver_count() > 0 {
                        live.watch.send_replace(Arc::new(live.view(false)));
                    }
                }
                None
            }
            step_update::Body::Started(_) => None,
            step_update::Body::Result(r) => {
                let step = step_ref(&n.key)?;
                let input = Input::StepFinished {
                    host: n.host,
                    step,
                    result: result(r),
                };
                Some((id.clone(), self.feed(&id, input).ok()?))
            }
        }
    }

    async fn command(&mut self, c: Command) {
        match c {
            Command::Create(spec, reply) => {
                let r = self.create(*spec).await;
                let _ = reply.send(r);
            }
            Command::Act(id, action, reply) => {
                let r = match self.feed(&id, input(action)) {
                    Ok(out) => {
                        self.settle(vec![(id.clone(), out)]).await;
                        self.rollouts
                            .get(&id)
                            .map(|l| l.view(false))
                            .ok_or(DriverError::NotFound(id))
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(r);
            }
            Command::Get(id, reply) => {
                let r = self
                    .rollouts
                    .get(&id)
                    .map(|l| l.view(true))
                    .ok_or(DriverError::NotFound(id));
                let _ = reply.send(r);
            }
            Command::List(reply) => {
                let mut all: Vec<View> = self.rollouts.values().map(|l| l.view(false)).collect();
                newest_first(&mut all);
                let _ = reply.send(all);
            }
            Command::Watch(id, reply) => {
                let r = self
                    .rollouts
                    .get(&id)
                    .map(|l| {
                        l.watch.send_replace(Arc::new(l.view(false)));
                        l.watch.subscribe()
                    })
                    .ok_or(DriverError::NotFound(id));
                let _ = reply.send(r);
            }
            Command::LastFor(host, reply) => {
                let all = self.rollouts.values().map(|l| l.engine.persisted());
                let _ = reply.send(last_for(all, &host));
            }
        }
    }

    async fn create(&mut self, raw: RawSpec) -> Result<String, DriverError> {
        let spec = raw.check()?;
        let store = self.parts.store.clone();
        let (agents, id) = store
            .blocking(|s| Ok((s.agents()?, s.new_run_id("rollout")?)))
            .await?;
        let fleet: Vec<(String, picket_model::Labels)> = agents
            .iter()
            .filter(|a| a.revoked_ms.is_none())
            .map(|a| (a.name.clone(), a.labels()))
            .collect();
        let plan = spec.plan(fleet.iter().map(|(n, l)| (n.as_str(), l)))?;
        let mut engine = Engine::create(id.clone(), raw, plan, (self.parts.now)())?;
        let out = engine.handle(Input::Start, (self.parts.now)())?;
        self.insert(engine);
        // The first persist is this rollout's creation: if it fails, the
        // rollout does not exist.
        let p = self.rollouts.get(&id).map(|l| l.engine.persisted().clone());
        if let Some(p) = p {
            let i = id.clone();
            if let Err(e) = store
                .blocking(move |s| {
                    s.put_rollout(&i, &p)?;
                    s.flush()
                })
                .await
            {
                self.rollouts.remove(&id);
                self.parts.steps.unroute(&id);
                return Err(e.into());
            }
        }
        self.settle(vec![(id.clone(), out)]).await;
        Ok(id)
    }

    /// Carries out the engines' outputs: one persist (and one flush) for
    /// every rollout that changed, then their dispatches, cancels and
    /// events, in order. A dispatch to an agent that is not connected is
    /// the engine's news (`HostDisconnected`), and so on until quiet.
    async fn settle(&mut self, new: Vec<(String, Vec<Output>)>) {
        let mut new = new;
        loop {
            // Everything held and new, in the order decided: stored
            // (every rollout among them with a `Persist`, one write and
            // flush), then carried out, or held for the next try.
            let (rollouts, store) = (&self.rollouts, self.parts.store.clone());
            let write = |all: &[(String, Vec<Output>)]| {
                // Each rollout once: a batch of 512 step results of one
                // rollout wrote (and cloned) its whole state 512 times, which
                // at 10,000 hosts took the control plane to 10 GiB.
                let ids: std::collections::BTreeSet<&String> = all
                    .iter()
                    .filter(|(_, out)| out.contains(&Output::Persist))
                    .map(|(id, _)| id)
                    .collect();
                let dirty: Vec<(String, Persisted)> = ids
                    .into_iter()
                    .filter_map(|id| {
                        Some((id.clone(), rollouts.get(id)?.engine.persisted().clone()))
                    })
                    .collect();
                async move {
                    if dirty.is_empty() {
                        return Ok(());
                    }
                    store
                        .blocking(move |s| {
                            for (id, p) in &dirty {
                                s.put_rollout(id, p)?;
                            }
                            s.flush()
                        })
                        .await
                }
            };
            let driver::Persisted::Act(pending) = self.held.persist(new, "rollouts", write).await
            else {
                return;
            };
            if pending.is_empty() {
                return;
            }
            let mut next = Vec::new();
            for (id, out) in pending {
                for o in out {
                    match o {
                        Output::Persist => {}
                        Output::Dispatch { host, at, step } => {
                            let sent = self
                                .parts
                                .steps
                                .dispatch(&host, key(&id, at), v1::Step::from(&step))
                                .await;
                            if !sent && let Ok(more) = self.feed(&id, Input::HostDisconnected(host))
                            {
                                next.push((id.clone(), more));
                            }
                        }
                        Output::Cancel { host, at } => {
                            self.parts.steps.cancel(&host, key(&id, at)).await;
                        }
                        Output::Finished { kind } => {
                            if let Some(l) = self.rollouts.get(&id) {
                                let p = l.engine.persisted();
                                tracing::info!(rollout = %id, %kind, "rollout finished");
                                (self.parts.events)(&id, p, kind);
                            }
                        }
                    }
                }
                if let Some(l) = self.rollouts.get_mut(&id) {
                    // Finished hosts' last lines go with their step.
                    let running: Vec<String> = l
                        .engine
                        .hosts()
                        .iter()
                        .filter(|h| h.state == HostState::Running || h.current.is_some())
                        .map(|h| h.name.clone())
                        .collect();
                    l.lines.retain(|h, _| running.contains(h));
                    l.watch.send_replace(Arc::new(l.view(false)));
                }
            }
            new = next;
        }
    }
}

#[cfg(test)]
mod tests;
