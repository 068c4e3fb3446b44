//! The stored part of a query: what the store holds up to the snapshot
//! id, read on a blocking thread and sent in order.
//!
//! `--tail N` / `--limit N` over a time range read newest first
//! ([`Start::Newest`]) until the Nth record kept, then send forward from
//! it: the cost is the last N records' blocks, not everything stored.
//! Nothing is held meanwhile but the position of the Nth. Read from an id
//! on (a cursor), the last N are found by counting instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use picket_store::StoreError;
use picket_store::kept::RecordStore;
use picket_store::records::{Read, Start, Timed};

use super::{End, Filter, Item, Source, Stored};

/// Sends the stored records with ids in `(above, upto]` that `f` keeps
/// (the last `last_n` of them, if non-zero); false when the stream ended.
/// Above an id (`above > 0`) they are read by id, and retention is
/// checked before and after: a reader must learn that records it had not
/// been sent were deleted ([`End::Expired`]), and where to resume so that
/// it gets nothing twice.
pub(super) fn read<T: Stored, F: Filter<T>>(
    store: &dyn RecordStore,
    source: Source<T>,
    f: &F,
    (above, upto): (u64, u64),
    last_n: usize,
    tx: &mpsc::Sender<Item<T>>,
    sent: &AtomicU64,
) -> bool {
    let end = |e: End| {
        let _ = tx.blocking_send(Err(e));
        false
    };
    let by_id = above > 0;
    let before = if by_id {
        match store.expired_through(source.kind) {
            Ok(through) if through > above => {
                return end(End::Expired {
                    sent: above,
                    through,
                });
            }
            Ok(through) => through,
            Err(e) => return end(End::Store(e)),
        }
    } else {
        0
    };
    let scan = |start: Start| {
        let r = Read {
            start,
            host: f.host(),
            needles: f.needles(),
        };
        let items = (source.read)(store, r)?;
        Ok(items.filter(move |r| {
            r.as_ref()
                .map_or(true, |x| x.id() > above && x.id() <= upto && f.keep(x))
        }))
    };
    let sent_all = if by_id {
        send_backlog(|| scan(Start::After(above)), last_n, tx, sent)
    } else if last_n > 0 {
        send_last(scan, f.since(), last_n, tx, sent)
    } else {
        send_backlog(|| scan(Start::Since(f.since())), 0, tx, sent)
    };
    let Some(last_sent) = sent_all else {
        return false;
    };
    if by_id {
        // Retention ran during the read: blocks it took before the read
        // got to them are a gap. Resume past everything sent, so that
        // nothing comes twice.
        match store.expired_through(source.kind) {
            Ok(through) if through > before && through > above => {
                return end(End::Expired {
                    sent: above,
                    through: through.max(last_sent),
                });
            }
            Ok(_) => {}
            Err(e) => return end(End::Store(e)),
        }
    }
    true
}

/// Sends the last `last_n` records `scan` keeps from `since` on: the
/// `(time, id)` of the Nth newest, read newest first, then everything from
/// it on, oldest first. Returns as [`send_backlog`].
fn send_last<T: Timed, I>(
    scan: impl Fn(Start) -> Result<I, StoreError>,
    since: i64,
    last_n: usize,
    tx: &mpsc::Sender<Item<T>>,
    sent: &AtomicU64,
) -> Option<u64>
where
    I: Iterator<Item = Result<T, StoreError>>,
{
    let fail = |e| failed(tx, e);
    let newest = match scan(Start::Newest) {
        Ok(it) => it,
        Err(e) => return fail(e),
    };
    let mut first = None;
    // Newest first, so the first record before `since` ends the range.
    let in_range = newest.take_while(|r| r.as_ref().map_or(true, |x| x.time_ms() >= since));
    for item in in_range.take(last_n) {
        match item {
            Ok(x) => first = Some((x.time_ms(), x.id())),
            Err(e) => return fail(e),
        }
    }
    let Some(first) = first else {
        return Some(0);
    };
    let items = match scan(Start::Since(first.0.max(since))) {
        Ok(it) => it,
        Err(e) => return fail(e),
    };
    let from_first = items.filter(|r| r.as_ref().map_or(true, |x| (x.time_ms(), x.id()) >= first));
    send_all(from_first, tx, sent)
}

/// Ends the stream with a store error.
fn failed<T>(tx: &mpsc::Sender<Item<T>>, e: StoreError) -> Option<u64> {
    let _ = tx.blocking_send(Err(End::Store(e)));
    None
}

/// Sends every record of `items`; as [`send_backlog`] returns.
fn send_all<T: Timed>(
    items: impl Iterator<Item = Result<T, StoreError>>,
    tx: &mpsc::Sender<Item<T>>,
    sent: &AtomicU64,
) -> Option<u64> {
    let mut last = 0;
    for item in items {
        match item {
            Err(e) => return failed(tx, e),
            Ok(x) => {
                let id = x.id();
                if tx.blocking_send(Ok(Arc::new(x))).is_err() {
                    return None;
                }
                last = last.max(id);
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Some(last)
}

/// Sends the backlog: everything as it is read, or, with `last_n`, only
/// the last N. Those are found by reading twice (a count, then a skip of
/// all but N), so that no N records are ever held. Returns the highest id
/// sent (0: none), or None when the receiver left or the store failed.
fn send_backlog<T: Timed, I>(
    read: impl Fn() -> Result<I, StoreError>,
    last_n: usize,
    tx: &mpsc::Sender<Item<T>>,
    sent: &AtomicU64,
) -> Option<u64>
where
    I: Iterator<Item = Result<T, StoreError>>,
{
    let fail = |e| failed(tx, e);
    let mut skip = 0;
    if last_n > 0 {
        let items = match read() {
            Ok(it) => it,
            Err(e) => return fail(e),
        };
        let mut n = 0usize;
        for item in items {
            if let Err(e) = item {
                return fail(e);
            }
            n += 1;
        }
        skip = n.saturating_sub(last_n);
    }
    match read() {
        Ok(items) => send_all(items.skip(skip), tx, sent),
        Err(e) => fail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::line;
    use picket_store::records::LogRecord;

    #[test]
    fn the_last_n_are_sent_without_holding_them() {
        let (tx, mut rx) = mpsc::channel(64);
        let all: Vec<LogRecord> = (1..=10).map(|i| line(i, "l")).collect();
        let reads = std::cell::Cell::new(0);
        let read = || {
            reads.set(reads.get() + 1);
            Ok::<_, StoreError>(all.clone().into_iter().map(Ok))
        };
        assert_eq!(send_backlog(read, 3, &tx, &AtomicU64::new(0)), Some(10));
        assert_eq!(reads.get(), 2);
        let mut ids = Vec::new();
        while let Ok(Ok(x)) = rx.try_recv() {
            ids.push(x.id);
        }
        assert_eq!(ids, [8, 9, 10]);
        assert!(send_backlog(read, 0, &tx, &AtomicU64::new(0)).is_some());
        assert_eq!(reads.get(), 3, "no count without a limit");
        assert!(send_backlog(read, 50, &tx, &AtomicU64::new(0)).is_some());
        let n = std::iter::from_fn(|| rx.try_recv().ok()).count();
        assert_eq!(n, 20);
    }
}
