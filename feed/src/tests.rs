use super::*;
use picket_store::Store;
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
    let store = Store::open_with_floor(dir, 0.0).unwrap();
    let feed = Feed::new(
        Arc::new(store),
        CancellationToken::new(),
        TaskTracker::new(),
    )
    .unwrap();
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
    feed.store.expire(i64::MAX, i64::MAX).unwrap();
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
