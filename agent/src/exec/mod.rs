//! Deploy steps on this host (SPEC §9): the control plane dispatches a
//! step over the session stream; the executor checks it, records it in
//! the [`ledger`] durably, runs it ([`process`] for `exec`/`shell`,
//! [`probe`] for `http`/`tcp`), records the result and sends it back.
//!
//! A step key is run at most once: a repeat of a running step waits for
//! that run; a repeat of a finished one gets the recorded result. Results
//! go out on whichever session is open when they are ready; one lost with
//! a broken stream is asked for again (a repeat) after the reconnect.

pub mod ledger;
pub mod probe;
pub mod process;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use picket_model::rollout::{Action, RawStep, Step};
use picket_proto::frame::Outbound;
use picket_proto::v1::{self, agent_message::Body, step_update};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use ledger::{Entry, Key, Ledger, Outcome};
use picket_config::agent::ExecConfig;

/// Who runs a step that names no user on an agent that is root.
const NOBODY: &str = "nobody";

/// Live output is sent in chunks of at most this many bytes.
const CHUNK: usize = 16 * 1024;

pub struct Executor {
    cfg: ExecConfig,
    host: String,
    ledger: Arc<Ledger>,
    /// Steps running now, by key, with what cancels each.
    running: Mutex<HashMap<Key, CancellationToken>>,
    /// The open session's outbound queue, if one is open.
    sink: Mutex<Option<mpsc::Sender<Outbound>>>,
    /// Every step's task: shutdown waits for them (their results are
    /// recorded before the agent exits).
    tasks: tokio_util::task::TaskTracker,
    shutdown: CancellationToken,
}

/// A step update for the stream.
pub fn update(key: &v1::StepKey, body: step_update::Body) -> Outbound {
    Outbound::Message(v1::AgentMessage {
        body: Some(Body::Step(v1::StepUpdate {
            key: Some(key.clone()),
            body: Some(body),
        })),
    })
}

impl Executor {
    pub fn new(cfg: ExecConfig, host: String, ledger: Ledger, shutdown: CancellationToken) -> Self {
        Executor {
            cfg,
            host,
            ledger: Arc::new(ledger),
            running: Mutex::default(),
            sink: Mutex::default(),
            tasks: tokio_util::task::TaskTracker::new(),
            shutdown,
        }
    }

    /// Results and output go to this session from now on.
    pub fn attach(&self, tx: mpsc::Sender<Outbound>) {
        if let Ok(mut s) = self.sink.lock() {
            *s = Some(tx);
        }
    }

    fn sink(&self) -> Option<mpsc::Sender<Outbound>> {
        self.sink.lock().ok().and_then(|s| s.clone())
    }

    /// Sends what must arrive (started, result), waiting for room.
    async fn send(&self, msg: Outbound) {
        if let Some(tx) = self.sink() {
            let _ = tx.send(msg).await;
        }
    }

    /// Sends live output if there is room now; dropped otherwise (the
    /// result carries the tail), so a slow stream never stalls a step.
    fn send_live(&self, key: &v1::StepKey, bytes: &[u8]) {
        if let Some(tx) = self.sink() {
            for chunk in bytes.chunks(CHUNK) {
                let _ = tx.try_send(update(key, step_update::Body::Output(chunk.to_vec())));
            }
        }
    }

    pub fn cancel(&self, key: &v1::StepKey) {
        if let Ok(r) = self.running.lock()
            && let Some(c) = r.get(&Key::of(key))
        {
            c.cancel();
        }
    }

    /// Handles a dispatch in a task of its own.
    pub fn dispatch(self: &Arc<Self>, d: v1::StepDispatch) {
        let (Some(key), Some(step)) = (d.key, d.step) else {
            tracing::warn!("a step dispatch without key or step; ignored");
            return;
        };
        let me = self.clone();
        self.tasks.spawn(async move { me.handle(key, step).await });
    }

    /// Waits for running steps (after `shutdown`: they are being stopped).
    pub async fn drain(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    async fn ledger<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Ledger) -> Result<T, ledger::LedgerError> + Send + 'static,
    ) -> Result<T, String> {
        let l = self.ledger.clone();
        match tokio::task::spawn_blocking(move || f(&l)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn handle(self: Arc<Self>, wire: v1::StepKey, step: v1::Step) {
        let key = Key::of(&wire);
        let cancel = self.shutdown.child_token();
        {
            let Ok(mut running) = self.running.lock() else {
                return;
            };
            if running.contains_key(&key) {
                // A repeat while it runs: its result is sent when it ends.
                return;
            }
            running.insert(key.clone(), cancel.clone());
        }
        let result = self.settle(&wire, &key, step, cancel).await;
        if let Ok(mut running) = self.running.lock() {
            running.remove(&key);
        }
        if let Some(result) = result {
            self.send(update(&wire, step_update::Body::Result(result.to_wire())))
                .await;
        }
    }

    /// The step's result: recorded already, or refused, or run now.
    /// `None` when the ledger cannot be written (nothing was run; the
    /// control plane will ask again).
    async fn settle(
        &self,
        wire: &v1::StepKey,
        key: &Key,
        step: v1::Step,
        cancel: CancellationToken,
    ) -> Option<Outcome> {
        let k = key.clone();
        match self.ledger(move |l| l.get(&k)).await {
            Ok(Some(Entry::Done { result, .. })) => return Some(result),
            Ok(Some(Entry::Started { .. })) => {
                // Started and not running here: only an agent that died
                // mid-step leaves this, and `Ledger::open` settles it.
                return Some(Outcome::failed(ledger::INTERRUPTED));
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!(%error, "cannot read the step ledger; step not run");
                return None;
            }
        }
        let now = picket_clock::now_ms();
        let outcome = match self.refusal(&step) {
            Err(why) => Outcome::failed(why),
            Ok(step) => {
                let k = key.clone();
                if let Err(error) = self
                    .ledger(move |l| l.put(&k, &Entry::Started { at_ms: now }))
                    .await
                {
                    tracing::error!(%error, "cannot record the step; not run");
                    return None;
                }
                self.send(update(wire, step_update::Body::Started(true)))
                    .await;
                tracing::info!(run = %wire.run, phase = %wire.phase, index = wire.index, "step started");
                let mut o = self.run(wire, &step, cancel).await;
                if self.shutdown.is_cancelled() {
                    o.output
                        .push_str("[picket] the agent stopped during the step\n");
                }
                o
            }
        };
        let (k, o) = (key.clone(), outcome.clone());
        if let Err(error) = self
            .ledger(move |l| {
                l.put(
                    &k,
                    &Entry::Done {
                        at_ms: now,
                        result: o,
                    },
                )
            })
            .await
        {
            tracing::error!(%error, "cannot record a step's result");
        }
        Some(outcome)
    }

    /// The step checked, or why this host will not run it.
    fn refusal(&self, step: &v1::Step) -> Result<Step, String> {
        // (`[exec] default_user` needs no listing: it is the host's own
        // choice, not the caller's.)
        if !self.cfg.enabled {
            return Err(format!(
                "host {} refuses steps: [exec] enabled = false in its agent.toml",
                self.host
            ));
        }
        let step = RawStep::from(step.clone())
            .check_one()
            .map_err(|e| format!("bad step: {e}"))?;
        if let Action::Exec { run, .. } | Action::Shell { run, .. } = &step.action
            && let Some(user) = &run.user
            && !self.cfg.users.contains(user)
        {
            return Err(format!(
                "user {user:?} is not allowed on host {}: add it to [exec] users in agent.toml",
                self.host
            ));
        }
        Ok(step)
    }

    async fn run(&self, wire: &v1::StepKey, step: &Step, cancel: CancellationToken) -> Outcome {
        let live = |b: &[u8]| self.send_live(wire, b);
        match &step.action {
            Action::Exec { argv, run } => {
                process::run(self.spawn(wire, step, argv.clone(), run), cancel, live).await
            }
            Action::Shell { script, run } => {
                let argv = vec!["/bin/sh".into(), "-c".into(), script.clone()];
                process::run(self.spawn(wire, step, argv, run), cancel, live).await
            }
            Action::Http {
                url,
                expect_status,
                probe,
            } => {
                let t = probe::Target::Http {
                    url,
                    expect_status: *expect_status,
                };
                probe::run(t, *probe, step.timeout, cancel, live).await
            }
            Action::Tcp { addr, probe } => {
                probe::run(
                    probe::Target::Tcp { addr },
                    *probe,
                    step.timeout,
                    cancel,
                    live,
                )
                .await
            }
        }
    }

    fn spawn(
        &self,
        wire: &v1::StepKey,
        step: &Step,
        argv: Vec<String>,
        run: &picket_model::rollout::Run,
    ) -> process::Spawn {
        let mut env = run.env.clone();
        env.insert("PICKET_HOST".into(), self.host.clone());
        env.insert("PICKET_ROLLOUT".into(), wire.run.clone());
        env.insert("PICKET_STEP".into(), step.label(wire.index as usize));
        process::Spawn {
            argv,
            env,
            cwd: run.cwd.clone(),
            user: self.step_user(run.user.as_deref()),
            timeout: step.timeout,
        }
    }

    /// Who runs a step (SPEC §4): the user it names (already checked
    /// against `[exec] users`), else `[exec] default_user`, else `nobody`
    /// when the agent is root (root is never implied), else the agent's
    /// own user (`None`).
    fn step_user(&self, named: Option<&str>) -> Option<String> {
        named
            .map(str::to_string)
            .or_else(|| self.cfg.default_user.clone())
            .or_else(|| nix::unistd::geteuid().is_root().then(|| NOBODY.to_string()))
    }
}
