//! Group commit: every session that stored a batch must have it durable
//! before it acks, and one fsync makes everything written before it
//! durable. So callers of [`Store::flush_grouped`] share flushes: one
//! runs at a time; a caller whose writes came before a running flush
//! began waits for that one, else for the next, which one of the waiters
//! starts as soon as the running one ends. No caller waits on a timer:
//! a lone flush starts at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::watch;

use crate::{Store, StoreError};

pub(crate) struct Group {
    /// Tickets handed out: one per call.
    requested: AtomicU64,
    /// Whether a flush is running.
    leading: AtomicBool,
    /// The highest ticket a finished flush covered, and its error if any.
    done: watch::Sender<(u64, Option<String>)>,
    /// Flushes run.
    flushes: AtomicU64,
}

impl Default for Group {
    fn default() -> Self {
        Group {
            requested: AtomicU64::new(0),
            leading: AtomicBool::new(false),
            done: watch::channel((0, None)).0,
            flushes: AtomicU64::new(0),
        }
    }
}

/// The running flush: ends the lead (then wakes the waiters) however the
/// leader's future ends, dropped mid-flush included.
struct Lead<'a> {
    group: &'a Group,
    finished: Option<(u64, Option<String>)>,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        // Released before the waiters wake, so that one of those still
        // uncovered can lead the next flush.
        self.group.leading.store(false, Ordering::SeqCst);
        let finished = self.finished.take();
        self.group.done.send_modify(|d| {
            if let Some(f) = finished {
                *d = f;
            }
        });
    }
}

impl Store {
    /// Flushes [`Store::flush_grouped`] has run.
    pub fn grouped_flushes(&self) -> u64 {
        self.group.flushes.load(Ordering::Relaxed)
    }

    /// Makes every write this caller made before the call durable, in a
    /// flush shared with other callers (see the module docs).
    pub async fn flush_grouped(&self) -> Result<(), StoreError> {
        let g = &self.group;
        let ticket = g.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rx = g.done.subscribe();
        loop {
            {
                let (covered, error) = &*rx.borrow_and_update();
                if *covered >= ticket {
                    return match error {
                        None => Ok(()),
                        Some(e) => Err(StoreError::Write(e.clone())),
                    };
                }
            }
            if g.leading
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                let mut lead = Lead {
                    group: g,
                    finished: None,
                };
                // Every ticket handed out by now was written before this.
                let upto = g.requested.load(Ordering::SeqCst);
                let r = self.blocking(|s| s.flush()).await;
                g.flushes.fetch_add(1, Ordering::Relaxed);
                lead.finished = Some((upto, r.err().map(|e| e.to_string())));
                drop(lead);
                continue;
            }
            // A flush is running: it wakes us when it ends.
            if rx.changed().await.is_err() {
                return Err(StoreError::Task("group commit ended".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many concurrent callers: each returns, after a flush that began
    /// after its call, and far fewer flushes run than calls.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_flushes_and_each_is_covered() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_with_floor(dir.path(), 0.0).unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..400u32 {
            let s = s.clone();
            tasks.spawn(async move {
                let k = format!("k{i}");
                s.kv.put(crate::META, k.as_bytes(), b"v").unwrap();
                s.flush_grouped().await.unwrap();
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        assert_eq!(
            s.group.done.borrow().0,
            400,
            "the last flush covers every ticket"
        );
        let shared = s.grouped_flushes();
        assert!(shared < 200, "{shared} flushes for 400 callers");
        // A lone caller after all that still gets a flush of its own.
        s.flush_grouped().await.unwrap();
        assert_eq!(s.group.done.borrow().0, 401);
        assert_eq!(s.grouped_flushes(), shared + 1);
    }
}
