//! The agent's one stream to the control plane: connect, say Hello with the
//! inventory, heartbeat, renew the certificate when due, and reconnect with
//! exponential backoff and full jitter when anything breaks.
//!
//! The session is written against [`Host`], what is behind the stream: the
//! real agent ([`Agent`]: its buffer and executor) or a simulated one
//! (`picket-swarm`, [`crate::swarm`]), so that a swarm exercises the
//! agent's own session code.

use std::sync::Arc;
use std::time::Duration;

use picket_model::backoff::Backoff;
use picket_proto::frame::Outbound;
use picket_proto::v1::{self, agent_message::Body, control_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tonic::Code;

use crate::buffer::{Buffer, BufferError};
use crate::exec::Executor;
use crate::identity::Identity;
use picket_config::Servers;
use picket_config::agent::AgentConfig;

/// Records per batch on the wire, and the bytes that end a batch early:
/// big batches amortise the control plane's fsync per batch; the byte cap
/// keeps a batch of long lines well under gRPC's 4 MiB message limit.
const BATCH: usize = 8192;
const BATCH_BYTES: usize = 2 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The control plane does not accept this agent (revoked, unknown):
    /// retrying cannot help.
    #[error("the control plane refused this agent: {0}")]
    Refused(String),
}

/// Why one session ended.
enum End {
    /// Ask to reconnect at once (certificate renewed, session replaced).
    Reconnect,
    /// Shut down.
    Shutdown,
    /// Something broke; back off and retry.
    Failed(String),
}

/// What is behind an agent's stream.
pub trait Host: Send + Sync + 'static {
    /// Its Hello: inventory, next sequence number, capabilities.
    fn hello(&self) -> v1::Hello;
    /// The session is up, the control plane having stored everything up
    /// to `acked`: start sending records above it into `tx` (the task
    /// ends, or is aborted, with the session), and send step results there.
    fn start(
        self: &Arc<Self>,
        acked: u64,
        tx: mpsc::Sender<Outbound>,
    ) -> tokio::task::JoinHandle<()>;
    /// The control plane stored everything up to `seq`.
    fn ack(self: &Arc<Self>, seq: u64) -> impl Future<Output = Result<(), String>> + Send;
    fn dispatch(self: &Arc<Self>, d: v1::StepDispatch);
    fn cancel(&self, key: &v1::StepKey);
    /// A session ended (`Some`: why it failed) or began (`None`).
    fn session_state(&self, _failed: Option<&str>) {}
}

/// The agent itself: its buffer, its executor, its configured labels.
pub struct Agent {
    pub labels: picket_model::Labels,
    pub buffer: Arc<Buffer>,
    pub executor: Arc<Executor>,
}

impl Host for Agent {
    fn hello(&self) -> v1::Hello {
        v1::Hello {
            inventory: Some(crate::inventory::collect(&self.labels)),
            next_seq: self.buffer.next_seq(),
            capabilities: Some(picket_proto::capability::ours()),
        }
    }

    fn start(
        self: &Arc<Self>,
        acked: u64,
        tx: mpsc::Sender<Outbound>,
    ) -> tokio::task::JoinHandle<()> {
        // Replays what the control plane has not stored, then follows new
        // records. Ends when the stream does (the session's `tx` drops).
        self.executor.attach(tx.clone());
        tokio::spawn(send_records(self.buffer.clone(), acked, tx))
    }

    fn ack(self: &Arc<Self>, seq: u64) -> impl Future<Output = Result<(), String>> + Send {
        ack(self.buffer.clone(), seq)
    }

    fn dispatch(self: &Arc<Self>, d: v1::StepDispatch) {
        self.executor.dispatch(d);
    }

    fn cancel(&self, key: &v1::StepKey) {
        self.executor.cancel(key);
    }
}

/// Runs the real agent's stream until shutdown or a refusal.
pub async fn run(
    cfg: AgentConfig,
    identity: Arc<Identity>,
    buffer: Arc<Buffer>,
    executor: Arc<Executor>,
    shutdown: CancellationToken,
) -> Result<(), UplinkError> {
    let agent = Arc::new(Agent {
        labels: cfg.labels.clone(),
        buffer,
        executor,
    });
    run_host(&cfg.server, &cfg.name, &identity, &agent, &shutdown).await
}

/// Holds `host`'s stream to one of `servers` as `name`: sessions one after
/// another, until shutdown or a refusal; after a failure, another server
/// ([`Retry`]). A session the server ends itself (`Aborted`) goes back to
/// the same one at once.
pub async fn run_host<H: Host>(
    servers: &Servers,
    name: &str,
    identity: &Identity,
    host: &Arc<H>,
    shutdown: &CancellationToken,
) -> Result<(), UplinkError> {
    let mut retry = Retry::new(servers.len(), &mut rand::rng());
    loop {
        let server = servers.as_slice()[retry.at].as_str();
        let who = Who {
            server,
            name,
            identity,
        };
        let end = session(&who, host, shutdown, &mut retry).await;
        if let Ok(End::Failed(why)) = &end {
            host.session_state(Some(why));
        }
        match end? {
            End::Shutdown => return Ok(()),
            End::Reconnect => continue,
            End::Failed(why) => {
                let delay = retry.failed(&mut rand::rng());
                let next = servers.as_slice()[retry.at].as_str();
                tracing::warn!(server, error = %why, retry_in = ?delay, next, "control plane unreachable");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Which server to dial, and how long to wait first. The first is drawn
/// at random; after a failure, one not tried since the last session began,
/// at random, so that a dead replica's agents spread over the others, each
/// after a short jittered wait. Once every server has failed, the wait is
/// the backoff's (exponential, full jitter), growing with each such round.
struct Retry {
    n: usize,
    at: usize,
    untried: Vec<usize>,
    backoff: Backoff,
}

/// The wait before trying the next server of a round: [0, this].
const NEXT_SERVER_JITTER: Duration = Duration::from_millis(500);

impl Retry {
    fn new(n: usize, rng: &mut impl rand::Rng) -> Retry {
        let n = n.max(1);
        let mut r = Retry {
            n,
            at: rng.random_range(0..n),
            untried: Vec::new(),
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
        };
        r.untried = r.others();
        r
    }

    fn others(&self) -> Vec<usize> {
        (0..self.n).filter(|&i| i != self.at).collect()
    }

    /// A session began (Welcome came): the next failure starts a round.
    fn connected(&mut self) {
        self.backoff.reset();
        self.untried = self.others();
    }

    /// The server at `at` failed: moves `at` on; the wait before dialling.
    fn failed(&mut self, rng: &mut impl rand::Rng) -> Duration {
        if !self.untried.is_empty() {
            let i = rng.random_range(0..self.untried.len());
            self.at = self.untried.swap_remove(i);
            return NEXT_SERVER_JITTER.mul_f64(rng.random::<f64>());
        }
        // A whole round failed: the backoff's wait, then another round,
        // from another server.
        let delay = self.backoff.next_delay(rng);
        let others = self.others();
        if !others.is_empty() {
            self.at = others[rng.random_range(0..others.len())];
        }
        self.untried = self.others();
        delay
    }
}

fn msg(body: Body) -> Outbound {
    Outbound::Message(v1::AgentMessage { body: Some(body) })
}

/// Opens `AgentService.Session`, as the generated client does, but with a
/// codec that sends [`Outbound`]: records go out as the buffer stored them.
async fn open_session(
    channel: tonic::transport::Channel,
    outbound: mpsc::Receiver<Outbound>,
) -> Result<tonic::Streaming<v1::ControlMessage>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("control plane not ready: {e}")))?;
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/picket.v1.AgentService/Session");
    let codec = tonic_prost::ProstCodec::<Outbound, v1::ControlMessage>::default();
    let request = tonic::Request::new(ReceiverStream::new(outbound));
    Ok(grpc.streaming(request, path, codec).await?.into_inner())
}

fn refused_or_failed(s: tonic::Status) -> Result<End, UplinkError> {
    match s.code() {
        Code::Unauthenticated | Code::PermissionDenied => {
            Err(UplinkError::Refused(s.message().to_string()))
        }
        Code::Aborted => Ok(End::Reconnect),
        _ => Ok(End::Failed(format!("{}: {}", s.code(), s.message()))),
    }
}

/// Where a stream goes, and as whom.
struct Who<'a> {
    server: &'a str,
    name: &'a str,
    identity: &'a Identity,
}

async fn session<H: Host>(
    who: &Who<'_>,
    host: &Arc<H>,
    shutdown: &CancellationToken,
    retry: &mut Retry,
) -> Result<End, UplinkError> {
    let Who {
        server,
        name,
        identity,
    } = *who;
    let channel = match picket_tls::client::connect(server, identity.client_config()).await {
        Ok(c) => c,
        Err(e) => return Ok(End::Failed(e.to_string())),
    };
    let (tx, rx) = mpsc::channel::<Outbound>(64);
    let hello = msg(Body::Hello(host.hello()));
    let hello_sent_ms = picket_clock::now_ms();
    if tx.send(hello).await.is_err() {
        return Ok(End::Failed("stream closed before Hello".into()));
    }
    let mut inbound = match open_session(channel.clone(), rx).await {
        Ok(s) => s,
        Err(s) => return refused_or_failed(s),
    };
    let (heartbeat, acked, server_ms) = match inbound.message().await {
        Ok(Some(v1::ControlMessage {
            body: Some(control_message::Body::Welcome(w)),
        })) => (
            Duration::from_millis(u64::from(w.heartbeat_interval_ms.max(100))),
            w.acked_seq,
            w.server_unix_ms,
        ),
        Ok(_) => {
            return Ok(End::Failed(
                "the control plane did not answer Welcome".into(),
            ));
        }
        Err(s) => return refused_or_failed(s),
    };
    retry.connected();
    tracing::info!(server, name, acked, "connected");
    host.session_state(None);
    if let Err(e) = host.ack(acked).await {
        return Ok(End::Failed(e));
    }
    let _stop_sender = AbortOnDropHandle::new(host.start(acked, tx.clone()));

    let mut tick = tokio::time::interval(heartbeat);
    tick.tick().await;
    // Renewal is timed by the control plane's clock, which issued the
    // certificate: a clock behind would renew after it expired.
    let server_now = server_clock(server_ms, hello_sent_ms);
    let renew_in = identity
        .renew_at()
        .duration_since(server_now)
        .unwrap_or(Duration::ZERO);
    let renew = tokio::time::sleep(renew_in);
    tokio::pin!(renew);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(End::Shutdown),
            _ = tick.tick() => {
                let now = picket_clock::now_ms();
                if tx.send(msg(Body::Heartbeat(v1::Heartbeat { sent_unix_ms: now }))).await.is_err() {
                    return Ok(End::Failed("stream closed".into()));
                }
            }
            _ = &mut renew => {
                return match identity.renew(channel.clone(), name).await {
                    Ok(()) => {
                        tracing::info!(not_after = ?identity.not_after(), "certificate renewed");
                        Ok(End::Reconnect)
                    }
                    Err(e) => Ok(End::Failed(format!("certificate renewal failed: {e}"))),
                };
            }
            m = inbound.message() => match m {
                Ok(Some(v1::ControlMessage { body: Some(control_message::Body::Ack(a)) })) => {
                    if let Err(e) = host.ack(a.acked_seq).await {
                        return Ok(End::Failed(e));
                    }
                }
                Ok(Some(v1::ControlMessage { body: Some(control_message::Body::Dispatch(d)) })) => {
                    host.dispatch(d);
                }
                Ok(Some(v1::ControlMessage { body: Some(control_message::Body::Cancel(c)) })) => {
                    if let Some(key) = &c.key {
                        host.cancel(key);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => return Ok(End::Failed("the control plane closed the stream".into())),
                Err(s) => return refused_or_failed(s),
            }
        }
    }
}

/// Clocks further apart than this are worth a warning.
const CLOCK_WARN_MS: i64 = 2_000;

/// The control plane's time now, from the time it wrote in Welcome (0:
/// a control plane that does not send it; ours is taken), the Hello that
/// asked for it having been sent at `sent_ms` by our clock.
fn server_clock(server_ms: i64, sent_ms: i64) -> std::time::SystemTime {
    let now = picket_clock::now_ms();
    if server_ms <= 0 {
        return picket_clock::now();
    }
    if let Some(off) = clock_gap(server_ms, sent_ms, now) {
        tracing::warn!(
            offset_ms = off,
            "this host's clock is at least {:.1}s {} the control plane's; fix NTP here (certificates are renewed by the control plane's clock)",
            off.abs() as f64 / 1000.0,
            if off < 0 { "behind" } else { "ahead of" }
        );
    }
    picket_clock::from_ms(server_ms)
}

/// Our clock minus the control plane's, when it is surely more than
/// [`CLOCK_WARN_MS`] either way: Welcome was written at `server_ms` some
/// time between our `sent_ms` and `now_ms`, so a busy control plane (a
/// slow Welcome) does not look like a clock ahead.
fn clock_gap(server_ms: i64, sent_ms: i64, now_ms: i64) -> Option<i64> {
    // Their clock read `server_ms` while ours read something in
    // [sent_ms, now_ms]: our offset lies in [sent_ms - server_ms, now_ms - server_ms].
    let (low, high) = (sent_ms.min(now_ms) - server_ms, now_ms - server_ms);
    if low > CLOCK_WARN_MS {
        Some(low)
    } else if high < -CLOCK_WARN_MS {
        Some(high)
    } else {
        None
    }
}

/// Trims the buffer up to `seq`, off the runtime (it may delete segment
/// files and write sled).
async fn ack(b: Arc<Buffer>, seq: u64) -> Result<(), String> {
    match tokio::task::spawn_blocking(move || b.ack(seq)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Reads of a damaged chunk, a second apart, before it is discarded.
const DAMAGED_TRIES: u32 = 3;

/// Sends buffered records above `cursor` in batches, in order, then waits
/// for more. Sending is at-least-once; the control plane ignores repeats.
async fn send_records(buffer: Arc<Buffer>, mut cursor: u64, tx: mpsc::Sender<Outbound>) {
    // A chunk that read as damaged, and how many times in a row.
    let mut damaged = (0, 0);
    loop {
        // Off the runtime: reading takes the buffer's state lock and its
        // segment files.
        let b = buffer.clone();
        let read = tokio::task::spawn_blocking(move || b.after(cursor, BATCH, BATCH_BYTES)).await;
        let Ok(read) = read else { return };
        let batch = match read {
            Ok(r) => r,
            Err(BufferError::Corrupt { seq, detail }) => {
                // Read it again a few times (a fault of the moment), then
                // let it go, counted, rather than stall every record after it.
                damaged = if damaged.0 == seq {
                    (seq, damaged.1 + 1)
                } else {
                    (seq, 1)
                };
                if damaged.1 >= DAMAGED_TRIES {
                    let b = buffer.clone();
                    let gone = tokio::task::spawn_blocking(move || b.discard(seq, &detail)).await;
                    if let Ok(Err(error)) = gone {
                        tracing::error!(%error, "cannot discard a damaged chunk");
                    }
                    continue;
                }
                tracing::error!(seq, %detail, "a buffered chunk reads as damaged; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(error) => {
                tracing::error!(%error, "cannot read the buffer");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if batch.count == 0 {
            // Wake on new records (a push that raced leaves a permit behind; the
            // timeout is a belt over those braces).
            let _ = tokio::time::timeout(Duration::from_secs(30), buffer.wait_added()).await;
            continue;
        }
        // Every record `after` gives is on disk already (see
        // `Buffer::durable_seq`).
        let last = batch.last_seq;
        if tx.send(Outbound::Records(batch)).await.is_err() {
            return;
        }
        cursor = last;
    }
}

#[cfg(test)]
mod tests {
    use super::{NEXT_SERVER_JITTER, Retry, clock_gap};
    use rand::SeedableRng;
    use std::time::Duration;

    #[test]
    fn after_a_failure_each_other_server_then_the_backoff() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // One server: the backoff's wait every time, growing.
        let mut one = Retry::new(1, &mut rng);
        assert_eq!(one.at, 0);
        let mut ceilings: Vec<Duration> = Vec::new();
        for _ in 0..4 {
            ceilings.push(one.backoff.ceiling());
            one.failed(&mut rng);
            assert_eq!(one.at, 0);
        }
        assert!(ceilings.windows(2).all(|w| w[0] < w[1]), "{ceilings:?}");
        // Three: the two others each once, quickly, then a backoff wait.
        let mut three = Retry::new(3, &mut rng);
        let first = three.at;
        let mut seen = vec![first];
        for _ in 0..2 {
            assert!(three.failed(&mut rng) <= NEXT_SERVER_JITTER);
            assert!(!seen.contains(&three.at));
            seen.push(three.at);
        }
        assert_eq!(three.backoff.attempts(), 0);
        let last = three.at;
        three.failed(&mut rng);
        assert_eq!(three.backoff.attempts(), 1);
        assert_ne!(three.at, last);
        // A session resets the round and the backoff.
        three.connected();
        assert_eq!((three.untried.len(), three.backoff.attempts()), (2, 0));
        // Agents whose server died spread over the others.
        let mut went = [0u32; 3];
        for _ in 0..3_000 {
            let mut r = Retry::new(3, &mut rng);
            r.at = 1;
            r.untried = r.others();
            r.failed(&mut rng);
            went[r.at] += 1;
        }
        assert_eq!(went[1], 0);
        assert!(went[0] > 1_300 && went[2] > 1_300, "{went:?}");
    }

    #[test]
    fn a_slow_welcome_is_not_a_clock_ahead_but_a_clock_off_is() {
        // Welcome written 3 s before it arrived, within the round trip.
        assert_eq!(clock_gap(10_000, 9_900, 13_000), None);
        // Clocks agree; a quick answer.
        assert_eq!(clock_gap(10_000, 9_990, 10_010), None);
        // Ours 10 min behind: whatever the delay.
        assert_eq!(clock_gap(610_000, 9_990, 10_010), Some(-599_990));
        // Ours 2 h ahead, a quick answer.
        assert_eq!(clock_gap(10_000, 7_210_000, 7_210_020), Some(7_200_000));
        // Ahead by 5 s, but the answer took 4 s: not sure, no warning.
        assert_eq!(clock_gap(10_000, 11_000, 15_000), None);
    }
}
