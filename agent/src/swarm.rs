//! `picket-swarm`: many simulated agents in one process, each with its own
//! enrolled identity and its own mTLS stream, running the agent's session
//! code ([`uplink::run_host`]) against a [`Sim`] instead of a buffer and an
//! executor: inventory, heartbeats, renewal and reconnects are the real
//! agent's; records are one metric sample per interval (kept in memory
//! until acked, replayed after a reconnect); a dispatched step is answered
//! at once with a canned success. For load tests of a control plane
//! (docs/benchmarks.md), not for fleets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use picket_config::Servers;
use picket_proto::frame::{EncodedBatch, Outbound};
use picket_proto::v1::{self, step_update};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::enroll::{EnrollError, EnrollOptions, enroll};
use crate::identity::{self, Identity};
use crate::uplink::{self, Host};

/// What the swarm counts, printed as a JSON line every 10 s.
#[derive(Default)]
pub struct Counts {
    pub enrolled: AtomicUsize,
    pub connected: AtomicUsize,
    pub errors: AtomicU64,
    pub dispatches: AtomicU64,
    /// Where each dispatch's arrival is written, `name unix_ns` a line
    /// (`--dispatch-log`): fan-out benchmarks read it.
    pub dispatch_log: Option<Mutex<std::fs::File>>,
}

impl Counts {
    pub fn json(&self) -> String {
        format!(
            r#"{{"enrolled":{},"connected":{},"errors":{},"dispatches":{}}}"#,
            self.enrolled.load(Ordering::Relaxed),
            self.connected.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            self.dispatches.load(Ordering::Relaxed),
        )
    }
}

/// One simulated agent.
pub struct Sim {
    name: String,
    interval: Duration,
    counts: Arc<Counts>,
    /// Records not yet acked, by sequence number (encoded `v1::Record`s).
    unacked: Mutex<BTreeMap<u64, Vec<u8>>>,
    next_seq: AtomicU64,
    up: std::sync::atomic::AtomicBool,
    /// The current session's stream, for step results.
    sink: Mutex<Option<mpsc::Sender<Outbound>>>,
}

impl Sim {
    pub fn new(name: String, interval: Duration, counts: Arc<Counts>) -> Self {
        Sim {
            name,
            interval,
            counts,
            unacked: Mutex::default(),
            next_seq: AtomicU64::new(1),
            up: Default::default(),
            sink: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Vec<u8>>> {
        self.unacked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new metric sample, kept until acked; its batch.
    fn sample(&self) -> EncodedBatch {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let payload = v1::record::Payload::Metrics(v1::MetricSample {
            time_unix_ms: picket_clock::now_ms(),
            gauges: vec![v1::Gauge {
                name: "cpu_usage_percent".into(),
                labels: Default::default(),
                value: (seq % 100) as f64,
            }],
        });
        let mut entry = Vec::new();
        picket_proto::frame::put_record(seq, &payload, &mut entry);
        self.lock().insert(seq, entry.clone());
        let mut batch = EncodedBatch::default();
        batch.push(seq, &entry);
        batch
    }

    /// What is unacked above `acked`, as one batch.
    fn replay(&self, acked: u64) -> EncodedBatch {
        let mut batch = EncodedBatch::default();
        for (seq, entry) in self.lock().range(acked + 1..) {
            batch.push(*seq, entry);
        }
        batch
    }

    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                self.counts.connected.fetch_add(1, Ordering::Relaxed);
            } else {
                self.counts.connected.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Host for Sim {
    fn hello(&self) -> v1::Hello {
        v1::Hello {
            inventory: Some(v1::Inventory {
                hostname: self.name.clone(),
                os: "picket-swarm".into(),
                kernel: String::new(),
                cpu_count: 1,
                memory_bytes: 1 << 30,
                agent_version: env!("PICKET_VERSION").to_string(),
                labels: Default::default(),
                addresses: Vec::new(),
            }),
            next_seq: self.next_seq.load(Ordering::Relaxed),
            capabilities: Some(picket_proto::capability::ours()),
        }
    }

    fn start(
        self: &Arc<Self>,
        acked: u64,
        tx: mpsc::Sender<Outbound>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        // A control plane that stored more than this run sent (an earlier
        // run of the swarm): go on above it.
        me.next_seq.fetch_max(acked + 1, Ordering::Relaxed);
        *me.sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
        tokio::spawn(async move {
            let replay = me.replay(acked);
            if replay.count > 0 && tx.send(Outbound::Records(replay)).await.is_err() {
                return;
            }
            let mut tick = tokio::time::interval(me.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if tx.send(Outbound::Records(me.sample())).await.is_err() {
                    return;
                }
            }
        })
    }

    async fn ack(self: &Arc<Self>, seq: u64) -> Result<(), String> {
        let mut unacked = self.lock();
        let keep = unacked.split_off(&(seq + 1));
        *unacked = keep;
        Ok(())
    }

    fn dispatch(self: &Arc<Self>, d: v1::StepDispatch) {
        self.counts.dispatches.fetch_add(1, Ordering::Relaxed);
        if let Some(log) = &self.counts.dispatch_log {
            use std::io::Write;
            let ns = picket_clock::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let mut f = log.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(error) = writeln!(f, "{} {ns}", self.name) {
                tracing::warn!(%error, "cannot write the dispatch log");
            }
        }
        let Some(key) = d.key else { return };
        let tx = self.sink.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(tx) = tx else { return };
        tokio::spawn(async move {
            let started = crate::exec::update(&key, step_update::Body::Started(true));
            let result = crate::exec::update(
                &key,
                step_update::Body::Result(v1::StepResult {
                    state: v1::StepState::Succeeded as i32,
                    exit_code: Some(0),
                    duration_ms: 0,
                    output: "picket-swarm: canned result\n".into(),
                }),
            );
            if tx.send(started).await.is_ok() {
                let _ = tx.send(result).await;
            }
        });
    }

    fn cancel(&self, _key: &v1::StepKey) {}

    fn session_state(&self, failed: Option<&str>) {
        if failed.is_some() {
            self.counts.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.set_up(failed.is_none());
    }
}

/// Where simulated agent `i` (from 1) keeps its identity, and its name.
pub fn agent_dir(state_dir: &Path, i: usize) -> (String, PathBuf) {
    let name = format!("swarm-{i:05}");
    let dir = state_dir.join(&name);
    (name, dir)
}

/// Enrolls agent `name` into `dir` unless it has an identity there,
/// retrying what may pass later (the enrollment rate limit, a refused
/// connection) with backoff; a refusal (a bad or used-up token) is final.
pub async fn ensure_enrolled(
    server: &Servers,
    token: &str,
    ca_fingerprint: &str,
    (name, dir): (&str, &Path),
    shutdown: &CancellationToken,
) -> Result<(), EnrollError> {
    if identity::Paths::new(dir).cert.exists() {
        return Ok(());
    }
    let mut backoff =
        picket_model::backoff::Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    loop {
        // A try that failed half-way leaves a folder without a certificate.
        let _ = std::fs::remove_dir_all(dir);
        let o = EnrollOptions {
            server: server.clone(),
            token: token.to_string(),
            ca_fingerprint: ca_fingerprint.to_string(),
            name: Some(name.to_string()),
            labels: Default::default(),
            state_dir: dir.to_path_buf(),
        };
        match enroll(o).await {
            Ok(_) => return Ok(()),
            Err(e @ (EnrollError::Refused(_) | EnrollError::FingerprintMismatch { .. })) => {
                return Err(e);
            }
            Err(e) => {
                tracing::debug!(name, error = %e, "enrollment failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(e),
                    _ = tokio::time::sleep(backoff.next_delay(&mut rand::rng())) => {}
                }
            }
        }
    }
}

/// Holds one simulated agent's stream until shutdown or a refusal.
pub async fn run_one(
    server: &Servers,
    name: String,
    dir: &Path,
    interval: Duration,
    counts: Arc<Counts>,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let identity = Identity::load(dir).map_err(|e| format!("{name}: {e}"))?;
    let sim = Arc::new(Sim::new(name.clone(), interval, counts));
    let r = uplink::run_host(server, &name, &identity, &sim, shutdown).await;
    sim.set_up(false);
    r.map_err(|e| format!("{name}: {e}"))
}
