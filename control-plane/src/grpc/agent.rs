//! The agent service: the long-lived session stream and certificate renewal.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use picket_proto::v1::{
    self, agent_message::Body, agent_service_server::AgentService, control_message,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::require_agent;
use super::state::State;
use super::status::{bad_input, internal, store_error};
use picket_clock::{now_ms, to_ms};
use picket_pki::SubjectKind;
use picket_store::messages as convert;

pub struct AgentSvc {
    pub state: Arc<State>,
    /// When each agent last renewed: a renewal sooner than a quarter of
    /// the certificate's lifetime after the last is refused.
    pub renewed: std::sync::Mutex<std::collections::HashMap<String, tokio::time::Instant>>,
}

type ControlStream = Pin<Box<dyn Stream<Item = Result<v1::ControlMessage, Status>> + Send>>;

/// How long an agent has to say Hello after opening its stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

fn control(body: control_message::Body) -> v1::ControlMessage {
    v1::ControlMessage { body: Some(body) }
}

#[tonic::async_trait]
impl AgentService for AgentSvc {
    type SessionStream = ControlStream;

    async fn session(
        &self,
        req: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let name = require_agent(&req)?;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10s"))??;
        let hello = match first.and_then(|m| m.body) {
            Some(Body::Hello(h)) => h,
            _ => return Err(Status::invalid_argument("the first message must be Hello")),
        };
        let inv = hello.inventory.unwrap_or_default();
        let reported: picket_model::Labels = inv.labels.clone().into_iter().collect();
        let most = self.state.cfg.limits.reported_labels;
        if reported.len() > most {
            return Err(Status::invalid_argument(format!(
                "{} labels reported; at most {most} ([limits] reported_labels)",
                reported.len()
            )));
        }
        for (k, v) in &reported {
            picket_model::validate_label(k, v).map_err(bad_input)?;
        }
        let st = &self.state;
        let (n, inventory) = (name.clone(), convert::inventory(&inv));
        // As kept: capped, control characters written out (it is logged).
        let version = inventory.agent_version.clone();
        // The epoch before the acked number is read: a reopen after it
        // ends the session (what it stored since may be gone).
        let epoch = st.store.health().epoch();
        let feed = st.feed.clone();
        let acked = st
            .store
            .blocking(move |s| {
                let known = s.update_agent(&n, |r| {
                    r.inventory = Some(inventory.clone());
                    r.reported_labels = reported.clone();
                    r.last_seen_ms = now_ms();
                })?;
                let acked = known.map(|_| feed.acked_seq(&n)).transpose()?;
                // The agent drops what Welcome says is stored: it must be
                // durable, not only written.
                s.flush()?;
                Ok(acked)
            })
            .await
            .map_err(|e| store_status(&st.store, e))?
            .ok_or_else(|| Status::unauthenticated(format!("agent {name} is not enrolled here")))?;
        let heartbeat = st.cfg.heartbeat_interval;
        let (tx, rx) = mpsc::channel(64);
        let welcome = control(control_message::Body::Welcome(v1::Welcome {
            acked_seq: acked,
            heartbeat_interval_ms: u32::try_from(heartbeat.as_millis()).unwrap_or(u32::MAX),
            server_unix_ms: now_ms(),
        }));
        tx.send(Ok(welcome))
            .await
            .map_err(|_| Status::cancelled("agent went away"))?;
        // Registered after Welcome: whatever is sent to the agent (steps)
        // comes after it on the stream.
        let peer = crate::sessions::Peer {
            version: version.clone(),
            caps: hello.capabilities,
        };
        let (guard, cancel) = st.sessions.open_as(&name, tx.clone(), peer);
        tracing::info!(agent = %name, %version, "agent connected");

        let state = self.state.clone();
        self.state.tasks.spawn(async move {
            let silence = heartbeat * 3;
            // Hello stored the time it connected.
            let mut seen_stored = now_ms();
            // Batches are stored (and acked) by a task of their own, so the
            // next batch is decoded while the previous one is written; the
            // small queue keeps the agent's stream under backpressure.
            // (A few 2 MiB batches: what queues up is stored in one go.)
            let (to_store, queue) = mpsc::channel::<v1::RecordBatch>(4);
            let mut storer = state.tasks.spawn(store_batches(
                Storing {
                    state: state.clone(),
                    agent: name.clone(),
                    epoch,
                    tx: tx.clone(),
                },
                acked,
                queue,
            ));
            let mut storer_done = None;
            let end: Option<Status> = loop {
                tokio::select! {
                    _ = cancel.cancelled() => {
                        let revoked = state.store.agent(&name).ok().flatten()
                            .is_some_and(|r| r.revoked_ms.is_some());
                        break Some(if revoked {
                            Status::unauthenticated(format!("agent {name} is revoked"))
                        } else {
                            Status::aborted("replaced by a newer session")
                        });
                    }
                    _ = state.shutdown.cancelled() => {
                        break Some(Status::unavailable("control plane shutting down"));
                    }
                    r = &mut storer => {
                        // Only a failure ends the storer while its queue is open.
                        let status = r.unwrap_or_else(|e| Some(internal(e)));
                        storer_done = Some(None);
                        break status;
                    }
                    msg = tokio::time::timeout(silence, inbound.message()) => match msg {
                        Err(_) => {
                            tracing::warn!(agent = %name, "no heartbeat for {silence:?}; closing session");
                            break Some(Status::deadline_exceeded("no heartbeat"));
                        }
                        Ok(Ok(Some(m))) => match m.body {
                            Some(Body::Heartbeat(h)) => {
                                let now = now_ms();
                                guard.heartbeat(h.sent_unix_ms, now);
                                state.alerts.tap.seen(&name, now);
                                // Sessions answer for a connected agent's
                                // last heartbeat; the store's is for after.
                                if now - seen_stored >= SEEN_EVERY_MS {
                                    seen_stored = now;
                                    if let Err(error) = seen(&state.store, &name).await
                                        && state.store.health().writable()
                                    {
                                        tracing::error!(%error, agent = %name, "cannot record heartbeat");
                                    }
                                }
                            }
                            Some(Body::Step(update)) => {
                                state.steps.deliver(&name, update).await;
                            }
                            Some(Body::Records(batch)) => {
                                if to_store.send(batch).await.is_err() {
                                    // The storer failed; its status is taken below.
                                    break None;
                                }
                            }
                            Some(Body::Hello(_)) | None => {
                                break Some(Status::invalid_argument("unexpected message after Hello"));
                            }
                        },
                        Ok(Ok(None)) => break None,
                        Ok(Err(status)) => {
                            tracing::debug!(agent = %name, %status, "stream error");
                            break None;
                        }
                    }
                }
            };
            // Whatever was queued is stored before the session ends.
            drop(to_store);
            let stored = match storer_done {
                Some(s) => s,
                None => storer.await.unwrap_or_else(|e| Some(internal(e))),
            };
            let end = end.or(stored);
            let _ = seen(&state.store, &name).await;
            tracing::info!(agent = %name, "agent disconnected");
            if let Some(status) = end {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn renew(
        &self,
        req: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::RenewResponse>, Status> {
        let name = require_agent(&req)?;
        let st = &self.state;
        let gap = st.cfg.agent_cert_ttl / 4;
        {
            let mut renewed = self.renewed.lock().unwrap_or_else(|p| p.into_inner());
            let now = tokio::time::Instant::now();
            if renewed.get(&name).is_some_and(|t| now < *t + gap) {
                st.counters
                    .renew_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(Status::resource_exhausted(format!(
                    "agent {name} renewed less than {gap:?} ago; renew later"
                )));
            }
            renewed.insert(name.clone(), now);
        }
        let presented = req
            .extensions()
            .get::<super::auth::AgentSerial>()
            .map(|s| s.0.clone());
        let issued = st
            .ca
            .issue(
                &req.into_inner().csr_pem,
                &name,
                SubjectKind::Agent,
                st.cfg.agent_cert_ttl,
            )
            .map_err(bad_input)?;
        let not_after = to_ms(issued.not_after);
        let (n, serial) = (name.clone(), issued.serial_hex.clone());
        st.store
            .blocking(move |s| {
                s.update_agent(&n, |r| {
                    r.prev_cert_serial = presented.clone();
                    r.cert_serial = serial.clone();
                    r.cert_not_after_ms = not_after;
                })?;
                s.flush()
            })
            .await
            .map_err(store_error)?;
        tracing::info!(agent = %name, "certificate renewed");
        Ok(Response::new(v1::RenewResponse {
            cert_pem: issued.cert_pem,
            not_after_unix_ms: not_after,
        }))
    }
}

/// How often a session stores its agent's last heartbeat (and once when
/// it ends): a store write per heartbeat was most of a quiet fleet's cost.
const SEEN_EVERY_MS: i64 = 60_000;

/// Records that `agent` was heard from just now (off the runtime
/// workers, as every store write).
async fn seen(store: &picket_store::Store, agent: &str) -> Result<(), picket_store::StoreError> {
    let n = agent.to_string();
    store
        .blocking(move |s| s.update_agent(&n, |r| r.last_seen_ms = now_ms()).map(drop))
        .await
}

/// What a session refuses with when the store failed: UNAVAILABLE with
/// the reason while it is not writable (the agent keeps its records and
/// retries), else an internal error.
fn store_status(store: &picket_store::Store, e: picket_store::StoreError) -> Status {
    match store.health().why() {
        Some(why) => Status::unavailable(format!(
            "the control plane cannot store records now ({why}); the agent keeps them and retries"
        )),
        None => store_error(e),
    }
}

/// The status that ends a session whose store was reopened.
fn reopened() -> Status {
    Status::unavailable(
        "the control plane reopened its store after a write failure; reconnect to send again what was not acked",
    )
}

/// One session's storing side: whose records, and where acks go.
struct Storing {
    state: Arc<State>,
    agent: String,
    /// The store's epoch when the session began.
    epoch: u64,
    tx: mpsc::Sender<Result<v1::ControlMessage, Status>>,
}

impl Storing {
    /// Waits for the store to take writes again after `e`; `Err` with the
    /// status that ends the session (`None`: it just ends) when it cannot
    /// go on.
    async fn wait(&self, e: picket_store::StoreError) -> Result<(), Option<Status>> {
        let store = &self.state.store;
        if store.health().writable() {
            return Err(Some(internal(e)));
        }
        let gone = async {
            tokio::select! {
                _ = self.state.shutdown.cancelled() => {}
                _ = self.tx.closed() => {}
            }
        };
        match crate::recovery::wait_writable(store, self.epoch, gone).await {
            Ok(()) => Ok(()),
            Err(crate::recovery::Stop::Reopened) => Err(Some(reopened())),
            Err(crate::recovery::Stop::Gone) => Err(self
                .state
                .shutdown
                .is_cancelled()
                .then(|| Status::unavailable("control plane shutting down"))),
        }
    }
}

/// Stores `agent`'s batches in order, through the ingest thread
/// (`ingest::Ingester`, which stores many sessions' batches as one
/// write). Durability runs beside it: a flusher flushes whatever has been
/// stored and acks up to there, while the next batch is written (group
/// commit). A batch the store refuses (a full disk) is held and stored
/// again once the store is writable. Returns the status that should end
/// the session, if storing failed.
async fn store_batches(
    s: Storing,
    mut acked: u64,
    mut queue: mpsc::Receiver<v1::RecordBatch>,
) -> Option<Status> {
    let state = s.state.clone();
    let s = Arc::new(s);
    let (stored, to_flush) = watch::channel(acked);
    let mut flusher = state.tasks.spawn(flush_and_ack(s.clone(), to_flush));
    let mut end = None;
    'batches: while let Some(mut batch) = queue.recv().await {
        // Batches that queued up while the last one was written are
        // stored with this one.
        while batch.records.len() < crate::ingest::GROUP_RECORDS {
            match queue.try_recv() {
                Ok(more) => batch.records.extend(more.records),
                Err(_) => break,
            }
        }
        let batch = Arc::new(batch);
        loop {
            match state.ingester.apply(&s.agent, acked, batch.clone()).await {
                Ok(new_acked) => {
                    acked = new_acked;
                    stored.send_replace(acked);
                    break;
                }
                Err(crate::ingest::IngestError::Store(e)) => match s.wait(e).await {
                    Ok(()) => continue,
                    Err(status) => {
                        end = status;
                        break 'batches;
                    }
                },
                Err(e) => return Some(Status::invalid_argument(e.to_string())),
            }
        }
        if flusher.is_finished() {
            break;
        }
    }
    // The flusher makes the last batches durable and acks them, then ends.
    drop(stored);
    let flushed = (&mut flusher).await.unwrap_or_else(|e| Some(internal(e)));
    end.or(flushed)
}

/// Flushes the store each time more of the agent's records are stored,
/// then acks the highest sequence number stored before the flush began
/// (the records ingest counts are those). Ends when storing does, after a
/// last flush, or when the agent goes away. A flush that fails is tried
/// again once the store is writable; nothing is acked across a reopen.
async fn flush_and_ack(s: Arc<Storing>, mut stored: watch::Receiver<u64>) -> Option<Status> {
    let state = &s.state;
    let mut acked = *stored.borrow();
    loop {
        let more = stored.changed().await;
        let upto = *stored.borrow_and_update();
        if upto > acked {
            loop {
                match state.store.flush_grouped().await {
                    Ok(()) if state.store.health().epoch() == s.epoch => break,
                    Ok(()) => return Some(reopened()),
                    Err(e) => {
                        if let Err(status) = s.wait(e).await {
                            return status;
                        }
                    }
                }
            }
            state
                .counters
                .ingested
                .fetch_add(upto - acked, std::sync::atomic::Ordering::Relaxed);
            acked = upto;
            let ack = control(control_message::Body::Ack(v1::Ack { acked_seq: acked }));
            if s.tx.send(Ok(ack)).await.is_err() {
                // The agent went away; what was stored stays stored.
                return None;
            }
        }
        if more.is_err() {
            return None;
        }
    }
}
