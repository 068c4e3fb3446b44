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

use picket_store::records::{EventRecord, Kind, LogRecord, Read, Records, Wire};
use picket_store::{Store, StoreError};

mod backlog;
mod filter;
use backlog::read;
pub use filter::{EventFilter, Filter, Grep, LogFilter, Stored};

/// How many bytes of records may wait for one follower, by default, before
/// it catches up from the store instead (about 30,000 Suricata lines).
pub const FOLLOWER_BYTES: usize = 16 * 1024 * 1024;

/// A handle over the store's events and log lines that publishes what it
/// stores: ingest stores through it, queries read through it.
pub struct Feed {
    store: Store,
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
        let mut followers = self.lock();
        followers.retain(|f| !f.tx.is_closed());
        if followers.is_empty() {
            return;
        }
        for w in records {
            let r = match T::from_wire(host, w) {
                Ok(r) => Arc::new(r),
                // Ingest checked that it decodes.
                Err(error) => {
                    tracing::error!(%error, id = w.id, "cannot decode a stored record");
                    continue;
                }
            };
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
        store: Store,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Result<Self, StoreError> {
        let above_all = store.next_id()?;
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
    pub fn store(&self, host: &str, mut r: Records<'_>, acked: u64) -> Result<(), StoreError> {
        let store = &self.store;
        let _order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        let ids = store.ingest_ids(r.events.len() + r.logs.len())?;
        let mut ids = ids.into_iter();
        for w in r.events.iter_mut().chain(r.logs.iter_mut()) {
            w.id = ids.next().unwrap_or_default();
        }
        store.put_records(host, &r, acked)?;
        self.events.publish(host, &r.events);
        self.logs.publish(host, &r.logs);
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
    fn snapshot<T: Stored>(&self, live: Option<&Live<T>>) -> (Option<LiveRx<T>>, u64) {
        // Ingest holds `order` across a block's write and fsync.
        crate::blocking::in_place(|| {
            let _order = self.order.lock().unwrap_or_else(|p| p.into_inner());
            let rx = live.map(Live::subscribe);
            (rx, self.last_id.load(Ordering::Acquire))
        })
    }
}

/// A store read of one kind of record.
type Scan<T> =
    for<'a> fn(
        &'a Store,
        Read<'a>,
    ) -> Result<Box<dyn Iterator<Item = Result<T, StoreError>> + 'a>, StoreError>;

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
            let _following = live.is_some().then(|| Gauge::up(&feed.stats.followers));
            // The backlog: ids at or below the snapshot (and, when catching
            // up, above what was already sent).
            let read_range = |above: u64, upto: u64, last_n: usize| {
                let (store, f2, tx2) = (feed.store.clone(), f.clone(), tx.clone());
                let sent = feed.stats.sent.clone();
                tokio::task::spawn_blocking(move || {
                    read(&store, source, &*f2, (above, upto), last_n, &tx2, &sent)
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

/// The cursor of the record with ingest id `id`: what `after` takes to
/// resume exactly after it. Opaque to clients (`i` and the id today).
pub fn cursor(id: u64) -> String {
    format!("i{id}")
}

/// The ingest id a cursor stands for ("" is the start).
pub fn after(cursor: &str) -> Result<u64, String> {
    if cursor.is_empty() {
        return Ok(0);
    }
    cursor
        .strip_prefix('i')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("{cursor:?} is not a cursor (a JSON line's \"cursor\")"))
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
mod tests {
    use super::*;
    use picket_store::records::FromWire;

    pub(super) fn line(id: u64, text: &str) -> LogRecord {
        LogRecord {
            id,
            host: "h".into(),
            source: "raw".into(),
            path: "/p".into(),
            seq: id,
            time_ms: 60_000,
            line: text.into(),
            truncated: false,
            invalid_utf8: false,
        }
    }

    #[tokio::test]
    async fn a_follower_past_its_byte_budget_gets_what_was_sent_then_lagged() {
        let live = Live::<LogRecord> {
            followers: Mutex::new(Vec::new()),
            budget: 4_096,
        };
        let mut slow = live.subscribe();
        let big = "x".repeat(1_000);
        let wires: Vec<_> = (1..=10).map(|i| line(i, &big).to_wire()).collect();
        live.publish("h", &wires);
        assert!(live.lock().is_empty(), "cut off past its budget");
        let mut got = 0;
        let end = loop {
            match slow.recv().await {
                Ok(_) => got += 1,
                Err(e) => break e,
            }
        };
        assert!((2..10).contains(&got), "{got} records before the cut");
        assert_eq!(end, Ended::Lagged);
        // A follower that keeps up is never cut.
        let mut quick = live.subscribe();
        for w in &wires {
            live.publish("h", std::slice::from_ref(w));
            assert_eq!(quick.recv().await.unwrap().line, big);
        }
        assert_eq!(live.lock().len(), 1);
        assert_eq!(quick.queue.bytes.load(Ordering::Relaxed), 0);
    }

    /// A feed over a real store in `dir`, queues of `budget` bytes.
    fn feed(dir: &std::path::Path, budget: usize) -> Arc<Feed> {
        let store = Store::open(dir).unwrap();
        let feed = Feed::new(store, CancellationToken::new(), TaskTracker::new()).unwrap();
        Arc::new(feed.with_follower_budget(budget))
    }

    fn all_logs() -> LogFilter {
        LogFilter {
            scope: None,
            host: String::new(),
            source: String::new(),
            since: 0,
            grep: None,
        }
    }

    /// Stores `n` lines of 500 bytes in batches of 10; their ids.
    fn store_lines(feed: &Feed, n: u64, seq0: u64) {
        for b in 0..n / 10 {
            let lines: Vec<LogRecord> = (0..10)
                .map(|i| line(seq0 + b * 10 + i, &"y".repeat(500)))
                .collect();
            let acked = lines.last().map(|l| l.seq).unwrap_or(0);
            let r = Records::of(vec![], &[], &lines);
            feed.store("h", r, acked).unwrap();
        }
    }

    async fn drain(rx: &mut mpsc::Receiver<Item<LogRecord>>, n: usize) -> Vec<u64> {
        let mut seqs = Vec::new();
        while seqs.len() < n {
            match rx.recv().await {
                Some(Ok(l)) => seqs.push(l.seq),
                other => panic!("after {} lines: {other:?}", seqs.len()),
            }
        }
        seqs
    }

    /// Every record a non-following query sends, by seq.
    async fn ask(feed: &Arc<Feed>, f: LogFilter, tail: usize) -> Vec<u64> {
        let (tx, mut rx) = mpsc::channel(16);
        feed.logs(f, tail, false, 0, tx);
        let mut seqs = Vec::new();
        while let Some(item) = rx.recv().await {
            seqs.push(item.unwrap().seq);
        }
        seqs
    }

    /// `--tail N` (read newest first, then sent forward): the last N
    /// lines kept, oldest first, with a grep and a since; all of them
    /// when fewer are kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_tail_is_the_last_n_kept_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let feed = feed(dir.path(), FOLLOWER_BYTES);
        // 3,000 lines over 30 s, several blocks a second, out of order
        // within each batch; every 7th is RARE.
        for b in 0..300u64 {
            let lines: Vec<LogRecord> = (0..10)
                .map(|i| {
                    let seq = b * 10 + i + 1;
                    let text = if seq % 7 == 0 {
                        "a RARE line"
                    } else {
                        "a line"
                    };
                    LogRecord {
                        time_ms: 1_000 + (seq as i64) * 10 - (i as i64 % 3) * 15,
                        ..line(seq, text)
                    }
                })
                .collect();
            let acked = lines.last().map(|l| l.seq).unwrap_or(0);
            feed.store("h", Records::of(vec![], &[], &lines), acked)
                .unwrap();
        }
        let mut by_time: Vec<(i64, u64, bool)> = (1..=3_000u64)
            .map(|seq| {
                let i = (seq - 1) % 10;
                (
                    1_000 + seq as i64 * 10 - (i as i64 % 3) * 15,
                    seq,
                    seq % 7 == 0,
                )
            })
            .collect();
        by_time.sort();
        let last = |n: usize, rare: bool, since: i64| -> Vec<u64> {
            let kept: Vec<u64> = by_time
                .iter()
                .filter(|(t, _, r)| (!rare || *r) && *t >= since)
                .map(|(_, s, _)| *s)
                .collect();
            kept[kept.len().saturating_sub(n)..].to_vec()
        };
        assert_eq!(ask(&feed, all_logs(), 5).await, last(5, false, 0));
        assert_eq!(ask(&feed, all_logs(), 2_500).await, last(2_500, false, 0));
        let rare = || LogFilter {
            grep: Some(Grep::new("RARE").unwrap()),
            ..all_logs()
        };
        assert_eq!(ask(&feed, rare(), 10).await, last(10, true, 0));
        let since = LogFilter {
            since: 30_000,
            ..rare()
        };
        let n = last(10_000, true, 30_000).len();
        assert!(n > 0 && n < 429);
        assert_eq!(ask(&feed, since, 10_000).await, last(10_000, true, 30_000));
        assert_eq!(ask(&feed, all_logs(), 0).await.len(), 3_000);
    }

    /// A follower that stops reading while 200 lines (100 KB, 25 times its
    /// queue) are stored falls behind, reads them by id from the store
    /// and goes on live: every line once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lagging_follower_reads_what_it_missed_by_id_then_goes_on_live() {
        let dir = tempfile::tempdir().unwrap();
        let feed = feed(dir.path(), 4_096);
        let (tx, mut rx) = mpsc::channel(1);
        feed.logs(all_logs(), 0, true, 0, tx);
        store_lines(&feed, 200, 1);
        let mut seqs = drain(&mut rx, 200).await;
        assert!(feed.stats.catch_ups.load(Ordering::Relaxed) >= 1);
        store_lines(&feed, 10, 201);
        seqs.extend(drain(&mut rx, 10).await);
        assert_eq!(seqs, (1..=210).collect::<Vec<_>>());
    }

    /// When retention deleted what a follower had not been sent, it is
    /// ended with where to resume, not given a silent gap; so is a query
    /// resumed from a cursor older than what is kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_behind_retention_is_ended_with_its_resume_point() {
        let dir = tempfile::tempdir().unwrap();
        let feed = feed(dir.path(), 4_096);
        let (tx, mut rx) = mpsc::channel(1);
        feed.logs(all_logs(), 0, true, 0, tx);
        store_lines(&feed, 200, 1);
        feed.store.expire_records(i64::MAX, i64::MAX).unwrap();
        let through = feed.store.expired_through(Kind::Logs).unwrap();
        let mut got = Vec::new();
        let end = loop {
            match rx.recv().await {
                Some(Ok(l)) => got.push(l.id),
                Some(Err(e)) => break e,
                None => panic!("ended without a reason"),
            }
        };
        let End::Expired {
            sent,
            through: resume,
        } = end
        else {
            panic!("{end}");
        };
        assert!(got.len() < 200, "it fell behind");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
        assert!(
            got.iter().all(|id| *id <= resume),
            "resuming repeats nothing"
        );
        assert!(resume >= through && sent <= resume);
        let msg = End::Expired {
            sent,
            through: resume,
        }
        .to_string();
        assert!(
            msg.contains(&format!("--after {}", cursor(resume))),
            "{msg}"
        );

        let (tx, mut rx) = mpsc::channel(4);
        feed.logs(all_logs(), 0, false, 5, tx);
        assert!(matches!(
            rx.recv().await,
            Some(Err(End::Expired { sent: 5, .. }))
        ));
        // From the watermark on, nothing is missing.
        let (tx, mut rx) = mpsc::channel(4);
        feed.logs(all_logs(), 0, false, through, tx);
        assert!(rx.recv().await.is_none());
    }
}
