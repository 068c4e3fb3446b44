//! The live feed of stored events and log lines, and the query that joins
//! backlog and live records with no gap and no repeat.
//!
//! Every record gets a fleet-wide ingest id when stored. Ingest allocates
//! ids, writes and publishes under one lock ([`Feed::store`]), so records
//! are published in id order and `last_id` is the highest id stored. A
//! follower subscribes first, then notes `last_id` (the snapshot): the
//! backlog is what the store holds with id ≤ snapshot, the live part what
//! is published with id > snapshot.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use picket_proto::model::Severity;
use regex::Regex;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use crate::state::State;
use crate::store::records::{EventRecord, FromWire, LogRecord, Records, Wire};
use crate::store::{Store, StoreError};

/// How many records a slow follower may fall behind before it is cut off.
const LIVE_CAPACITY: usize = 65_536;

pub struct Feed {
    events: broadcast::Sender<Arc<EventRecord>>,
    logs: broadcast::Sender<Arc<LogRecord>>,
    last_id: AtomicU64,
    /// Serialises id allocation, write and publish (see the module docs).
    order: Mutex<()>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            events: broadcast::channel(LIVE_CAPACITY).0,
            logs: broadcast::channel(LIVE_CAPACITY).0,
            last_id: AtomicU64::new(0),
            order: Mutex::new(()),
        }
    }
}

impl Feed {
    /// Gives `r`'s events and lines their ids, stores the batch with the
    /// agent's new acked number, and publishes it (decoded only when
    /// someone follows).
    pub fn store(
        &self,
        store: &Store,
        host: &str,
        mut r: Records<'_>,
        acked: u64,
    ) -> Result<(), StoreError> {
        let _order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        let ids = store.ingest_ids(r.events.len() + r.logs.len())?;
        let mut ids = ids.into_iter();
        for w in r.events.iter_mut().chain(r.logs.iter_mut()) {
            w.id = ids.next().unwrap_or_default();
        }
        store.put_records(host, &r, acked)?;
        publish(&self.events, host, &r.events);
        publish(&self.logs, host, &r.logs);
        let max = r.events.iter().chain(&r.logs).map(|w| w.id).max();
        if let Some(max) = max {
            self.last_id.fetch_max(max, Ordering::Release);
        }
        Ok(())
    }

    /// Subscribes to `live` (when following) and takes the snapshot id,
    /// under the lock that stores and publishes: every record is then
    /// either at or below the snapshot, or sent to the new receiver. (A
    /// batch stored while no one followed is not published at all.)
    fn snapshot<T>(
        &self,
        live: Option<&broadcast::Sender<Arc<T>>>,
    ) -> (Option<broadcast::Receiver<Arc<T>>>, u64) {
        let _order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        let rx = live.map(broadcast::Sender::subscribe);
        (rx, self.last_id.load(Ordering::Acquire))
    }
}

/// Sends stored records to the followers, if any.
fn publish<T: FromWire + Send + Sync + 'static>(
    to: &broadcast::Sender<Arc<T>>,
    host: &str,
    records: &[Wire<'_>],
) {
    if to.receiver_count() == 0 {
        return;
    }
    for w in records {
        match T::from_wire(host, w) {
            Ok(r) => {
                let _ = to.send(Arc::new(r));
            }
            // Ingest checked that it decodes.
            Err(error) => tracing::error!(%error, id = w.id, "cannot decode a stored record"),
        }
    }
}

/// What to show of events.
pub struct EventFilter {
    pub host: String,
    pub source: String,
    pub min_severity: Option<Severity>,
    pub since: i64,
    pub grep: Option<Regex>,
}

impl EventFilter {
    fn keep(&self, e: &EventRecord) -> bool {
        (self.host.is_empty() || e.host == self.host)
            && (self.source.is_empty() || e.source == self.source)
            && self.min_severity.is_none_or(|m| e.severity >= m)
            && e.time_ms >= self.since
            && self.grep.as_ref().is_none_or(|g| g.is_match(&e.message))
    }
}

pub struct LogFilter {
    pub host: String,
    pub source: String,
    pub since: i64,
    pub grep: Option<Regex>,
}

impl LogFilter {
    fn keep(&self, l: &LogRecord) -> bool {
        (self.host.is_empty() || l.host == self.host)
            && (self.source.is_empty() || l.source == self.source)
            && l.time_ms >= self.since
            && self.grep.as_ref().is_none_or(|g| g.is_match(&l.line))
    }
}

/// A stored record the feed carries.
pub trait Stored: Send + Sync + 'static {
    fn id(&self) -> u64;
}

impl Stored for EventRecord {
    fn id(&self) -> u64 {
        self.id
    }
}

impl Stored for LogRecord {
    fn id(&self) -> u64 {
        self.id
    }
}

/// Which records a query wants.
pub trait Filter<T>: Send + Sync + 'static {
    fn since(&self) -> i64;
    fn host(&self) -> Option<&str>;
    fn keep(&self, r: &T) -> bool;
}

impl Filter<EventRecord> for EventFilter {
    fn since(&self) -> i64 {
        self.since
    }
    fn host(&self) -> Option<&str> {
        Some(self.host.as_str()).filter(|h| !h.is_empty())
    }
    fn keep(&self, e: &EventRecord) -> bool {
        EventFilter::keep(self, e)
    }
}

impl Filter<LogRecord> for LogFilter {
    fn since(&self) -> i64 {
        self.since
    }
    fn host(&self) -> Option<&str> {
        Some(self.host.as_str()).filter(|h| !h.is_empty())
    }
    fn keep(&self, l: &LogRecord) -> bool {
        LogFilter::keep(self, l)
    }
}

type Scan<T> =
    for<'a> fn(
        &'a Store,
        i64,
        Option<&'a str>,
    ) -> Result<Box<dyn Iterator<Item = Result<T, StoreError>> + 'a>, StoreError>;

/// Streams events into `tx`: the backlog (the newest `limit` if non-zero),
/// then, with `follow`, live ones. Ends when the receiver goes away or the
/// control plane shuts down.
pub fn events(
    state: Arc<State>,
    f: EventFilter,
    limit: usize,
    follow: bool,
    tx: mpsc::Sender<Result<Arc<EventRecord>, Status>>,
) {
    let (live, snapshot) = state.feed.snapshot(follow.then_some(&state.feed.events));
    serve(
        state,
        f,
        live,
        snapshot,
        |s, since, host| s.events_since(since, host),
        limit,
        tx,
    );
}

/// Streams log lines, as [`events`] does (`tail` keeps the last N).
pub fn logs(
    state: Arc<State>,
    f: LogFilter,
    tail: usize,
    follow: bool,
    tx: mpsc::Sender<Result<Arc<LogRecord>, Status>>,
) {
    let (live, snapshot) = state.feed.snapshot(follow.then_some(&state.feed.logs));
    serve(
        state,
        f,
        live,
        snapshot,
        |s, since, host| s.logs_since(since, host),
        tail,
        tx,
    );
}

/// The backlog up to the snapshot id (read on a blocking thread), then the
/// live records above it ([`Feed::snapshot`]).
fn serve<T: Stored, F: Filter<T>>(
    state: Arc<State>,
    f: F,
    live: Option<broadcast::Receiver<Arc<T>>>,
    snapshot: u64,
    scan: Scan<T>,
    last_n: usize,
    tx: mpsc::Sender<Result<Arc<T>, Status>>,
) {
    let f = Arc::new(f);
    tokio::spawn(async move {
        let (st, f2, tx2) = (state.clone(), f.clone(), tx.clone());
        let backlog_sent = tokio::task::spawn_blocking(move || {
            let items = match scan(&st.store, f2.since(), f2.host()) {
                Ok(it) => it,
                Err(e) => {
                    let _ = tx2.blocking_send(Err(crate::grpc::status_internal(e)));
                    return false;
                }
            };
            let kept = items.filter(|r| {
                r.as_ref()
                    .map_or(true, |x| x.id() <= snapshot && f2.keep(x))
            });
            send_backlog(kept.map(|r| r.map(Arc::new)), last_n, &tx2)
        })
        .await
        .unwrap_or(false);
        if let (true, Some(live)) = (backlog_sent, live) {
            follow_live(live, snapshot, |x: &T| f.keep(x), &tx, &state).await;
        }
    });
}

/// Sends the backlog: everything as it is read, or, with `last_n`, only
/// the last N (held in a ring of N). Returns false when the receiver left.
fn send_backlog<T>(
    items: impl Iterator<Item = Result<Arc<T>, StoreError>>,
    last_n: usize,
    tx: &mpsc::Sender<Result<Arc<T>, Status>>,
) -> bool {
    let mut ring: VecDeque<Arc<T>> = VecDeque::new();
    for item in items {
        match item {
            Err(e) => {
                let _ = tx.blocking_send(Err(crate::grpc::status_internal(e)));
                return false;
            }
            Ok(x) if last_n == 0 => {
                if tx.blocking_send(Ok(x)).is_err() {
                    return false;
                }
            }
            Ok(x) => {
                if ring.len() == last_n {
                    ring.pop_front();
                }
                ring.push_back(x);
            }
        }
    }
    ring.into_iter().all(|x| tx.blocking_send(Ok(x)).is_ok())
}

async fn follow_live<T: Stored>(
    mut live: broadcast::Receiver<Arc<T>>,
    snapshot: u64,
    keep: impl Fn(&T) -> bool,
    tx: &mpsc::Sender<Result<Arc<T>, Status>>,
    state: &State,
) {
    loop {
        let next = tokio::select! {
            r = live.recv() => r,
            _ = tx.closed() => return,
            _ = state.shutdown.cancelled() => {
                let _ = tx.send(Err(Status::unavailable("control plane shutting down"))).await;
                return;
            }
        };
        match next {
            Ok(x) => {
                if x.id() > snapshot && keep(&x) && tx.send(Ok(x)).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let _ = tx
                    .send(Err(Status::resource_exhausted(format!(
                        "this follower fell {n} records behind and was cut off; run again with --since"
                    ))))
                    .await;
                return;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
