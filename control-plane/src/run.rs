//! `picketctl run`: one command on every matching host (SPEC §9), at most
//! `max_parallel` at a time, each host's result handed on as it finishes.
//! No state survives a restart (a run lives as long as its caller); the
//! agents' ledgers still make a repeated dispatch (after a reconnect) get
//! the recorded result rather than a second run.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use picket_model::Selector;
use picket_proto::v1::{self, step_update};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use crate::sessions::Presence;
use crate::steps::Steps;

pub struct RunSpec {
    pub selector: Selector,
    /// 0: all at once.
    pub max_parallel: usize,
    pub timeout: Duration,
    pub argv: Vec<String>,
    /// The host user to run as (`run --user`), already granted.
    pub user: Option<String>,
}

/// One host's result (`state` as SPEC §9 spells it).
#[derive(Debug, Clone, PartialEq)]
pub struct HostResult {
    pub host: String,
    pub state: &'static str,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub output: String,
}

/// Beyond its timeout, how long a host may take to answer before it is
/// `unreachable` (it left, or the answer was lost).
const GRACE: Duration = Duration::from_secs(30);

fn unreachable(host: String, why: &str) -> HostResult {
    HostResult {
        host,
        state: "unreachable",
        exit_code: None,
        duration_ms: 0,
        output: why.to_string(),
    }
}

/// Runs `spec` on `hosts` (already selected) as run `id`; results arrive
/// on the returned channel, which closes when every host has one.
pub fn start(
    steps: Arc<Steps>,
    id: String,
    hosts: Vec<String>,
    spec: RunSpec,
    tasks: &tokio_util::task::TaskTracker,
) -> mpsc::Receiver<HostResult> {
    let (tx, rx) = mpsc::channel(64);
    let presence = steps.sessions().presence();
    tasks.spawn(drive(steps, id, hosts, spec, presence, tx));
    rx
}

async fn drive(
    steps: Arc<Steps>,
    id: String,
    hosts: Vec<String>,
    spec: RunSpec,
    mut presence: broadcast::Receiver<Presence>,
    out: mpsc::Sender<HostResult>,
) {
    let (news_tx, mut news) = mpsc::channel(256);
    steps.route(&id, news_tx);
    let key = v1::StepKey {
        run: id.clone(),
        phase: "run".into(),
        index: 0,
        attempt: 1,
    };
    let step = v1::Step {
        exec: spec.argv.clone(),
        user: spec.user.clone(),
        timeout: Some(format!("{}ms", spec.timeout.as_millis())),
        ..Default::default()
    };
    let parallel = if spec.max_parallel == 0 {
        hosts.len()
    } else {
        spec.max_parallel
    };
    let mut queue: VecDeque<String> = hosts.into();
    // Host → when it is given up on.
    let mut flying: BTreeMap<String, Instant> = BTreeMap::new();
    let give_up = || Instant::now() + spec.timeout + GRACE;
    loop {
        while flying.len() < parallel
            && let Some(h) = queue.pop_front()
        {
            if steps.dispatch(&h, key.clone(), step.clone()).await {
                flying.insert(h, give_up());
            } else if out
                .send(unreachable(h, "the host's agent is not connected"))
                .await
                .is_err()
            {
                break;
            }
        }
        if flying.is_empty() {
            break;
        }
        let next = flying.values().min().copied().unwrap_or_else(give_up);
        tokio::select! {
            n = news.recv() => {
                let Some(n) = n else { break };
                if let step_update::Body::Result(r) = n.body
                    && flying.remove(&n.host).is_some()
                {
                    let state = picket_proto::convert::step_state(r.state).as_str();
                    let res = HostResult {
                        host: n.host,
                        state,
                        exit_code: r.exit_code,
                        duration_ms: r.duration_ms,
                        output: r.output,
                    };
                    if out.send(res).await.is_err() {
                        break;
                    }
                }
            }
            p = presence.recv() => {
                // Back after a blip: ask again (the ledger answers with the
                // result, or the run goes on and answers when done).
                if let Ok(Presence::Connected(h)) = p
                    && flying.contains_key(&h)
                {
                    steps.dispatch(&h, key.clone(), step.clone()).await;
                }
            }
            _ = tokio::time::sleep_until(next) => {
                let now = Instant::now();
                let late: Vec<String> = flying.iter().filter(|(_, t)| **t <= now).map(|(h, _)| h.clone()).collect();
                for h in late {
                    flying.remove(&h);
                    steps.cancel(&h, key.clone()).await;
                    let r = unreachable(h, "no result from the host's agent within the timeout");
                    if out.send(r).await.is_err() {
                        break;
                    }
                }
            }
            _ = out.closed() => break,
        }
    }
    // The caller went away: what still runs is stopped.
    for h in flying.keys() {
        steps.cancel(h, key.clone()).await;
    }
    steps.unroute(&id);
}
