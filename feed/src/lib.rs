//! The live feed of stored events and log lines, and the query that joins
//! backlog and live records with no gap and no repeat.
//!
//! Every record gets a fleet-wide ingest id when stored. Ingest allocates
//! ids, writes and publishes under one lock ([`Feed::store`]), so records
//! are published in id order and `last_id` is the highest id stored. A
//! follower subscribes first, then notes `last_id` (the snapshot): the
//! backlog is what the store holds with id ≤ snapshot, the live part what
//! is published with id > snapshot.
//!
//! Memory is bounded against any viewer: a `--limit`/`--tail N` backlog is
//! never held (it is found newest first, then sent forward: [`backlog`]),
//! and each follower's live queue is bounded by bytes
//! ([`FOLLOWER_BYTES`] unless `[limits] follower_queue_bytes` says
//! otherwise); one that falls further behind is not cut off: it reads
//! what it missed from the store, where every record is, then goes on
//! live (`Feed::serve`).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use picket_store::StoreError;
use picket_store::kept::{HostBatch, RecordIter, RecordStore};
use picket_store::records::{EventRecord, Kind, LogRecord, Read, Records, Start, Wire};
pub use picket_store::records::{after, cursor};

mod backlog;
use backlog::read;
pub use picket_store::records::filter::{EventFilter, Filter, Grep, LogFilter, Stored};

/// How many bytes of records may wait for one follower, by default, before
/// it catches up from the store instead (about 30,000 Suricata lines).
pub const FOLLOWER_BYTES: usize = 16 * 1024 * 1024;

/// A handle over the store's events and log lines that publishes what it
/// stores: ingest stores through it, queries read through it.
pub struct Feed {
    store: Arc<dyn RecordStore>,
    events: Live<EventRecord>,
    logs: Live<LogRecord>,
    last_id: AtomicU64,
    /// Serialises id allocation, write and publish (see the module docs).
    order: Mutex<()>,
    /// Followers stop on it.
    shutdown: CancellationToken,
    /// Query tasks are awaited at shutdown.
    tasks: TaskTracker,
    pub stats: Stats,
}

/// The followers of one kind of record, each with its own queue.
struct Live<T> {
    followers: Mutex<Vec<Follower<T>>>,
    budget: usize,
}

impl<T> Default for Live<T> {
    fn default() -> Self {
        Live {
            followers: Mutex::new(Vec::new()),
            budget: FOLLOWER_BYTES,
        }
    }
}

struct Follower<T> {
    tx: mpsc::UnboundedSender<Arc<T>>,
    queue: Arc<Queue>,
}

/// What waits for one follower, in bytes; shared by both ends.
#[derive(Default)]
struct Queue {
    bytes: AtomicUsize,
    /// Set when the follower was cut off for falling behind.
    lagged: AtomicBool,
}

/// A follower's end of its live queue.
pub struct LiveRx<T> {
    rx: mpsc::UnboundedReceiver<Arc<T>>,
    queue: Arc<Queue>,
}

/// Why a stream from the feed ended early: the last item a follower gets.
/// The gRPC edge turns it into a status (`grpc::admin`); the feed knows
/// nothing of gRPC.
#[derive(Debug, thiserror::Error)]
pub enum End {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("control plane shutting down")]
    ShuttingDown,
    /// Records this reader had not been sent were deleted by retention.
    #[error(
        "fell behind the retention window: records after cursor {} were deleted before they \
         were sent; what is still stored follows cursor {} (run again with --after {})",
        cursor(*sent), cursor(*through), cursor(*through)
    )]
    Expired { sent: u64, through: u64 },
}

/// What a stream from the feed carries.
pub type Item<T> = Result<Arc<T>, End>;

/// Why a follower's live queue ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// More than [`FOLLOWER_BYTES`] waited for it.
    Lagged,
    Closed,
}

impl<T: Stored> LiveRx<T> {
    async fn recv(&mut self) -> Result<Arc<T>, Ended> {
        match self.rx.recv().await {
            Some(x) => {
                self.queue.bytes.fetch_sub(x.size(), Ordering::Relaxed);
                Ok(x)
            }
            None if self.queue.lagged.load(Ordering::Acquire) => Err(Ended::Lagged),
            None => Err(Ended::Closed),
        }
    }
}

impl<T: Stored> Live<T> {
    fn subscribe(&self) -> LiveRx<T> {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Arc::new(Queue::default());
        self.lock().push(Follower {
            tx,
            queue: queue.clone(),
        });
        LiveRx { rx, queue }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Follower<T>>> {
        self.followers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends stored records to the followers, if any (decoded only then).
    /// A follower with more than its budget waiting is dropped: it reads
    /// what it was sent, then learns that it fell behind.
    fn publish(&self, host: &str, records: &[Wire<'_>]) {
        let mut followers = self.open();
        if followers.is_empty() {
            return;
        }
        let decoded = records.iter().filter_map(|w| match T::from_wire(host, w) {
            Ok(r) => Some(Arc::new(r)),
            // Ingest checked that it decodes.
            Err(error) => {
                tracing::error!(%error, id = w.id, "cannot decode a stored record");
                None
            }
        });
        self.send_to(&mut followers, decoded);
    }

    /// The followers, those who left forgotten.
    fn open(&self) -> std::sync::MutexGuard<'_, Vec<Follower<T>>> {
        let mut followers = self.lock();
        followers.retain(|f| !f.tx.is_closed());
        followers
    }

    /// Whether anyone follows.
    fn followed(&self) -> bool {
        !self.open().is_empty()
    }

    /// Sends decoded records to the followers, as [`Live::publish`].
    fn send(&self, records: impl Iterator<Item = Arc<T>>) {
        self.send_to(&mut self.lock(), records);
    }

    fn send_to(&self, followers: &mut Vec<Follower<T>>, records: impl Iterator<Item = Arc<T>>) {
        for r in records {
            let size = r.size();
            followers.retain(|f| {
                let queued = f.queue.bytes.fetch_add(size, Ordering::Relaxed) + size;
                if queued > self.budget {
                    f.queue.lagged.store(true, Ordering::Release);
                    return false;
                }
                f.tx.send(r.clone()).is_ok()
            });
        }
    }
}

impl Feed {
    /// A feed over `store`. Every record stored before now is in the
    /// backlog of the first query: the snapshot id starts above every id
    /// the store has handed out (not at 0, which would hide a restarted
    /// control plane's records until an agent sent a new one).
    pub fn new(
        store: Arc<dyn RecordStore>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Result<Self, StoreError> {
        // A shared store that does not answer yet: the last id is learnt
        // at its first answer (`Feed::committed`, `Feed::snapshot`).
        let above_all = match store.next_id() {
            Ok(n) => n,
            Err(error) if store.shared() => {
                tracing::warn!(%error, "records: no last id yet; follows wait for the store");
                UNKNOWN
            }
            Err(e) => return Err(e),
        };
        Ok(Feed {
            store,
            events: Live::default(),
            logs: Live::default(),
            last_id: AtomicU64::new(above_all),
            order: Mutex::new(()),
            shutdown,
            tasks,
            stats: Stats::default(),
        })
    }

    /// Each follower's live queue holds at most `bytes` (`[limits]
    /// follower_queue_bytes`); past that it catches up from the store.
    pub fn with_follower_budget(mut self, bytes: usize) -> Self {
        self.events.budget = bytes;
        self.logs.budget = bytes;
        self
    }

    /// Gives `r`'s events and lines their ids, stores the batch with the
    /// agent's new acked number, and publishes it (decoded only when
    /// someone follows).
    pub fn store(&self, host: &str, r: Records<'_>, acked: u64) -> Result<(), StoreError> {
        self.store_many(&mut [(host, r, acked)])
    }

    /// Flushes the store (see `ingest::worker`: the group just stored is
    /// made durable before its sessions ask, so their grouped flushes
    /// find little left to write).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.store.flush()
    }

    /// [`Feed::store`] of several hosts' batches, in one store write.
    /// A shared store's records are published when its commits are
    /// followed ([`Feed::committed`]), this replica's with the others'.
    pub fn store_many(&self, batches: &mut [HostBatch<'_, '_>]) -> Result<(), StoreError> {
        if self.store.shared() {
            return self.store.store(batches);
        }
        let _order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        self.store.store(batches)?;
        for (host, r, _) in batches.iter() {
            self.events.publish(host, &r.events);
            self.logs.publish(host, &r.logs);
            let max = r.events.iter().chain(&r.logs).map(|w| w.id).max();
            if let Some(max) = max {
                self.last_id.fetch_max(max, Ordering::Release);
            }
        }
        Ok(())
    }

    /// Where the records are kept.
    pub fn records(&self) -> &Arc<dyn RecordStore> {
        &self.store
    }

    /// The highest sequence number stored for `host`.
    pub fn acked_seq(&self, host: &str) -> Result<u64, StoreError> {
        self.store.acked_seq(host)
    }

    /// Publishes what a shared store committed above the last id
    /// published (through any replica), in id order: called whenever the
    /// store says something was committed, and now and then. Ids are in
    /// commit order there, so every id up to the store's `next_id` is
    /// committed, and those above the last id are all that is new (read
    /// only for the kinds someone follows). Run on a blocking thread.
    pub fn committed(&self) -> Result<(), StoreError> {
        let _order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        let last = self.last_id.load(Ordering::Acquire);
        let top = self.store.next_id()?;
        if last == UNKNOWN {
            // The first answer: nobody could follow before it.
            self.last_id.store(top, Ordering::Release);
            return Ok(());
        }
        if top <= last {
            return Ok(());
        }
        let read = Read::new(Start::After(last), None);
        if self.events.followed() {
            self.events
                .send(newer(self.store.events(read)?, top)?.into_iter());
        }
        if self.logs.followed() {
            self.logs
                .send(newer(self.store.logs(read)?, top)?.into_iter());
        }
        self.last_id.store(top, Ordering::Release);
        Ok(())
    }

    /// Subscribes to `live` (when following) and takes the snapshot id,
    /// under the lock that stores and publishes: every record is then
    /// either at or below the snapshot, or sent to the new receiver. (A
    /// batch stored while no one followed is not published at all.)
    fn snapshot<T: Stored>(&self, live: Option<&Live<T>>) -> (Option<LiveRx<T>>, u64) {
        // Ingest holds `order` across a block's write and fsync.
        picket_store::blocking::in_place(|| {
            let _order = self.order.lock().unwrap_or_else(|p| p.into_inner());
            if self.last_id.load(Ordering::Acquire) == UNKNOWN
                && let Ok(n) = self.store.next_id()
            {
                self.last_id.store(n, Ordering::Release);
            }
            let rx = live.map(Live::subscribe);
            (rx, self.last_id.load(Ordering::Acquire))
        })
    }
}

/// The last id of a shared store that has not answered since the start.
const UNKNOWN: u64 = u64::MAX;

/// The records `read` gives up to id `top`, in id order.
fn newer<T: Stored>(read: RecordIter<'_, T>, top: u64) -> Result<Vec<Arc<T>>, StoreError> {
    let mut out = Vec::new();
    for r in read {
        let r = r?;
        if r.id() <= top {
            out.push(Arc::new(r));
        }
    }
    out.sort_unstable_by_key(|r| r.id());
    Ok(out)
}

/// A store read of one kind of record.
type Scan<T> = for<'a> fn(&'a dyn RecordStore, Read<'a>) -> Result<RecordIter<'a, T>, StoreError>;

/// Where a kind of record is read: its store scans, and its live followers.
struct Source<T> {
    kind: Kind,
    read: Scan<T>,
    live: fn(&Feed) -> &Live<T>,
}

// Fn pointers all: copied whatever `T` is (a derive would ask `T: Copy`).
impl<T> Clone for Source<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Source<T> {}

impl Feed {
    /// Streams events into `tx`: the backlog (the newest `limit` if
    /// non-zero), then, with `follow`, live ones. Ends when the receiver
    /// goes away or the control plane shuts down.
    pub fn events(
        self: &Arc<Self>,
        f: EventFilter,
        limit: usize,
        follow: bool,
        after: u64,
        tx: mpsc::Sender<Item<EventRecord>>,
    ) {
        let (live, snapshot) = self.snapshot(follow.then_some(&self.events));
        self.serve(
            f,
            live,
            (after, snapshot),
            Source {
                kind: Kind::Events,
                read: |s, r| s.events(r),
                live: |f| &f.events,
            },
            limit,
            tx,
        );
    }

    /// Streams log lines, as [`Feed::events`] does (`tail` keeps the last N).
    pub fn logs(
        self: &Arc<Self>,
        f: LogFilter,
        tail: usize,
        follow: bool,
        after: u64,
        tx: mpsc::Sender<Item<LogRecord>>,
    ) {
        let (live, snapshot) = self.snapshot(follow.then_some(&self.logs));
        self.serve(
            f,
            live,
            (after, snapshot),
            Source {
                kind: Kind::Logs,
                read: |s, r| s.logs(r),
                live: |f| &f.logs,
            },
            tail,
            tx,
        );
    }

    /// The backlog up to the snapshot id (read on a blocking thread), then
    /// the live records above it ([`Feed::snapshot`]). A follower whose
    /// live queue overflows is not cut off: it reads the records it missed
    /// from the store (everything above the last one its queue held, up to
    /// a new snapshot taken as it subscribes again), then goes on live
    /// above that snapshot: the same stitch as the start, no gap and no
    /// repeat, and no more memory than one queue's budget.
    ///
    /// What is read from an id on (a cursor, or the last record a lagging
    /// queue held) is read by id, not scanned from `--since`; if
    /// retention deleted records above that id, the stream ends with
    /// [`End::Expired`], which names where to resume.
    fn serve<T: Stored, F: Filter<T>>(
        self: &Arc<Self>,
        f: F,
        live: Option<LiveRx<T>>,
        (after, snapshot): (u64, u64),
        source: Source<T>,
        last_n: usize,
        tx: mpsc::Sender<Item<T>>,
    ) {
        let f = Arc::new(f);
        let feed = self.clone();
        self.tasks.spawn(async move {
            if snapshot == UNKNOWN {
                let why = "records database unreachable: not reached since the start".to_string();
                let _ = tx.send(Err(End::Store(StoreError::Database(why)))).await;
                return;
            }
            let _following = live.is_some().then(|| Gauge::up(&feed.stats.followers));
            // The backlog: ids at or below the snapshot (and, when catching
            // up, above what was already sent).
            let read_range = |above: u64, upto: u64, last_n: usize| {
                let (store, f2, tx2) = (feed.store.clone(), f.clone(), tx.clone());
                let sent = feed.stats.sent.clone();
                tokio::task::spawn_blocking(move || {
                    read(&*store, source, &*f2, (above, upto), last_n, &tx2, &sent)
                })
            };
            let backlog_sent = read_range(after, snapshot, last_n).await.unwrap_or(false);
            let (Some(mut live), true) = (live, backlog_sent) else {
                return;
            };
            // A cursor newer than the snapshot: live records up to it were
            // sent before.
            let mut snapshot = snapshot.max(after);
            loop {
                let keep = |x: &T| f.keep(x);
                match follow_live(live, snapshot, keep, &tx, &feed.shutdown, &feed.stats.sent).await
                {
                    Followed::Ended => return,
                    Followed::Behind { seen } => {
                        let _catching_up = Gauge::up(&feed.stats.catching_up);
                        feed.stats.catch_ups.fetch_add(1, Ordering::Relaxed);
                        let (rx, now) = feed.snapshot(Some((source.live)(&feed)));
                        let Some(rx) = rx else { return };
                        if !read_range(seen, now, 0).await.unwrap_or(false) {
                            return;
                        }
                        (live, snapshot) = (rx, now);
                    }
                }
            }
        });
    }
}

/// The feed's own counters, on `/metrics`.
#[derive(Default)]
pub struct Stats {
    /// `-f` streams open now.
    pub followers: Arc<AtomicI64>,
    /// Of them, reading what they missed from the store now.
    pub catching_up: Arc<AtomicI64>,
    /// Times a follower fell behind its live queue and caught up from the store.
    pub catch_ups: Arc<AtomicU64>,
    /// Records sent to queries and followers.
    pub sent: Arc<AtomicU64>,
}

/// One up on a gauge while held.
struct Gauge(Arc<AtomicI64>);

impl Gauge {
    fn up(g: &Arc<AtomicI64>) -> Gauge {
        g.fetch_add(1, Ordering::Relaxed);
        Gauge(g.clone())
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How following the live queue ended.
enum Followed {
    /// The receiver left, the control plane is stopping, or the feed closed.
    Ended,
    /// The queue overflowed: every record above `seen` (the last id it
    /// held) is to be read from the store.
    Behind { seen: u64 },
}

async fn follow_live<T: Stored>(
    mut live: LiveRx<T>,
    snapshot: u64,
    keep: impl Fn(&T) -> bool,
    tx: &mpsc::Sender<Item<T>>,
    shutdown: &CancellationToken,
    sent: &AtomicU64,
) -> Followed {
    let mut seen = snapshot;
    loop {
        let next = tokio::select! {
            r = live.recv() => r,
            _ = tx.closed() => return Followed::Ended,
            _ = shutdown.cancelled() => {
                let _ = tx.send(Err(End::ShuttingDown)).await;
                return Followed::Ended;
            }
        };
        match next {
            Ok(x) => {
                if x.id() > snapshot {
                    seen = seen.max(x.id());
                    if keep(&x) {
                        if tx.send(Ok(x)).await.is_err() {
                            return Followed::Ended;
                        }
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(Ended::Lagged) => return Followed::Behind { seen },
            Err(Ended::Closed) => return Followed::Ended,
        }
    }
}

#[cfg(test)]
mod tests;
