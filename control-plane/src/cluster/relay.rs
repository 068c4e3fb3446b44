//! Steps for hosts that stream with another replica (SPEC §12): the
//! replica that decides a step (a rollout's, a `run`'s) relays it through
//! etcd ([`picket_cluster::relay`]) to the replica that presence names for
//! the host; that one dispatches it on the host's stream and relays the
//! step's `started` and result back, where they reach the run's owner as
//! if the host streamed here. Live output is carried as a rollout shows
//! it, its newest line, at most once a second per step (each message is
//! two etcd writes); the result carries the output's tail. A run's
//! updates go back one after another, in the order they came.
//!
//! A relayed step that finds its host gone (it moved again) is dropped:
//! its owner's deadline makes it unreachable, never failed, so that a
//! rollout does not count a move as a failure. A repeated dispatch is
//! harmless: the agent's ledger answers with the recorded result.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use picket_cluster::relay::Relay;
use picket_proto::v1::{self, relayed, step_update};
use prost::Message;
use tokio::sync::mpsc;

use super::Replica;
use crate::steps::{Elsewhere, StepNews, Steps};

pub struct Relayer {
    node: String,
    replica: Arc<Replica>,
    steps: Weak<Steps>,
    relay: Relay,
    /// Itself, for the tasks it spawns.
    me: Weak<Relayer>,
    /// Runs whose steps this replica carries for another, and how many of
    /// their results are still to go back.
    carried: Mutex<HashMap<String, usize>>,
}

impl Relayer {
    /// Opens this replica's inbox and sends `steps`' steps for hosts held
    /// elsewhere through it.
    pub fn start(replica: Arc<Replica>, steps: &Arc<Steps>) -> Arc<Relayer> {
        let node = replica.cluster.node().to_string();
        let r = Arc::new_cyclic(|me: &Weak<Relayer>| {
            let weak = me.clone();
            let relay = Relay::start(
                replica.cluster.etcd().clone(),
                node.clone(),
                replica.cluster.prefix(),
                replica.cluster.lease(),
                move |bytes| {
                    if let Some(r) = weak.upgrade() {
                        tokio::spawn(async move { r.receive(bytes).await });
                    }
                },
            );
            Relayer {
                node,
                replica: replica.clone(),
                steps: Arc::downgrade(steps),
                relay,
                me: me.clone(),
                carried: Mutex::default(),
            }
        });
        steps.set_elsewhere(r.clone());
        r
    }

    /// Sends `body` about `host` to replica `to`, in the background.
    fn send(&self, to: String, host: &str, body: relayed::Body) {
        let Some(me) = self.me.upgrade() else { return };
        let host = host.to_string();
        tokio::spawn(async move { me.send_now(&to, &host, body).await });
    }

    /// Sends `body` about `host` to replica `to`, once etcd has it.
    async fn send_now(&self, to: &str, host: &str, body: relayed::Body) {
        let msg = v1::Relayed {
            from: self.node.clone(),
            host: host.to_string(),
            body: Some(body),
        }
        .encode_to_vec();
        if let Err(e) = self.relay.send(to, &msg).await {
            tracing::warn!(replica = to, error = %e, "cannot relay a step message");
        }
    }

    /// The other replica holding `host`'s stream, if one does.
    fn holder(&self, host: &str) -> Option<String> {
        self.replica
            .cluster
            .presence()
            .holder(host)
            .filter(|n| *n != self.node)
    }

    async fn receive(self: Arc<Self>, bytes: Vec<u8>) {
        let Some(steps) = self.steps.upgrade() else {
            return;
        };
        let m = match v1::Relayed::decode(bytes.as_slice()) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "a relayed message that does not decode; dropped");
                return;
            }
        };
        match m.body {
            Some(relayed::Body::Dispatch(d)) => {
                let (Some(key), Some(step)) = (d.key, d.step) else {
                    return;
                };
                self.carry(&steps, &key.run, &m.from);
                if !steps.dispatch_here(&m.host, key.clone(), step).await {
                    tracing::info!(agent = %m.host, run = %key.run,
                        "a relayed step's host is not here any more; its owner will time out");
                    self.carried_one(&steps, &key.run);
                }
            }
            Some(relayed::Body::Cancel(c)) => {
                if let Some(key) = c.key {
                    steps.cancel_here(&m.host, key).await;
                }
            }
            Some(relayed::Body::Update(u)) => steps.deliver(&m.host, u).await,
            None => {}
        }
    }

    /// Routes run `run`'s updates here back to `origin` (once per run).
    fn carry(self: &Arc<Self>, steps: &Arc<Steps>, run: &str, origin: &str) {
        let mut carried = self.carried.lock().unwrap_or_else(|p| p.into_inner());
        let n = carried.entry(run.to_string()).or_insert(0);
        *n += 1;
        if *n > 1 {
            return;
        }
        let (tx, rx) = mpsc::channel::<StepNews>(64);
        steps.route(run, tx);
        let (me, origin, run) = (self.clone(), origin.to_string(), run.to_string());
        tokio::spawn(async move { me.carry_back(rx, origin, run).await });
    }

    /// Sends a run's updates back to `origin`, in order: `started` and
    /// results as they come, output as each step's newest line, at most
    /// once per [`OUTPUT_EVERY`].
    async fn carry_back(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<StepNews>,
        origin: String,
        run: String,
    ) {
        // (host, step key) → its newest line not yet sent.
        let mut lines: BTreeMap<(String, Vec<u8>), (v1::StepKey, String)> = BTreeMap::new();
        let mut every = tokio::time::interval(OUTPUT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let news = tokio::select! {
                n = rx.recv() => match n {
                    Some(n) => n,
                    None => return,
                },
                _ = every.tick() => {
                    for ((host, _), (key, line)) in std::mem::take(&mut lines) {
                        let update = v1::StepUpdate {
                            key: Some(key),
                            body: Some(step_update::Body::Output(line.into_bytes())),
                        };
                        self.send_now(&origin, &host, relayed::Body::Update(update)).await;
                    }
                    continue;
                }
            };
            let id = (news.host.clone(), news.key.encode_to_vec());
            let last = match &news.body {
                step_update::Body::Output(bytes) => {
                    if let Some(line) = newest_line(bytes) {
                        lines.insert(id, (news.key, line));
                    }
                    continue;
                }
                step_update::Body::Result(_) => {
                    // The result says the rest.
                    lines.remove(&id);
                    true
                }
                _ => false,
            };
            let update = v1::StepUpdate {
                key: Some(news.key),
                body: Some(news.body),
            };
            self.send_now(&origin, &news.host, relayed::Body::Update(update))
                .await;
            if last && let Some(steps) = self.steps.upgrade() {
                self.carried_one(&steps, &run);
            }
        }
    }

    /// One of run `run`'s carried steps is done here; the last one ends
    /// the route.
    fn carried_one(&self, steps: &Steps, run: &str) {
        let mut carried = self.carried.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = carried.get_mut(run) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                carried.remove(run);
                steps.unroute(run);
            }
        }
    }
}

/// How often a carried step's newest output line goes back.
const OUTPUT_EVERY: Duration = Duration::from_secs(1);

/// The last line of `bytes` with something on it (what a rollout shows).
fn newest_line(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    Some(format!("{line}\n"))
}

impl Elsewhere for Relayer {
    fn holds(&self, host: &str) -> bool {
        self.holder(host).is_some()
    }

    fn dispatch(&self, host: &str, key: v1::StepKey, step: v1::Step) -> bool {
        let Some(to) = self.holder(host) else {
            return false;
        };
        let d = v1::StepDispatch {
            key: Some(key),
            step: Some(step),
        };
        self.send(to, host, relayed::Body::Dispatch(d));
        true
    }

    fn cancel(&self, host: &str, key: v1::StepKey) -> bool {
        let Some(to) = self.holder(host) else {
            return false;
        };
        self.send(
            to,
            host,
            relayed::Body::Cancel(v1::StepCancel { key: Some(key) }),
        );
        true
    }
}
