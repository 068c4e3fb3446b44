//! A replica's local copy of the keys under one etcd prefix: the whole
//! listing first, then every change as etcd's watch reports it, so that a
//! write made through any replica reaches every replica's copy within a
//! round trip. etcd stays the truth; the copy serves reads (an
//! interceptor's lookup never waits on the network). When the watch
//! breaks (a member lost, a compaction), the copy is listed again whole.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{sleep, timeout};
use tokio_util::task::AbortOnDropHandle;

use crate::etcd::{Etcd, prefix_end};
use crate::pb::mvccpb::event::EventType;

/// What the copy is told.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Everything under the prefix now (key without the prefix, value),
    /// in key order: at start, and after a broken watch.
    Whole(Vec<(Vec<u8>, Vec<u8>)>),
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// Dropped, the copy stops following.
pub struct Mirror {
    applied: watch::Receiver<i64>,
    _task: AbortOnDropHandle<()>,
}

impl Mirror {
    /// Mirrors `prefix` into `apply`, in the background.
    pub fn start(
        etcd: Etcd,
        prefix: String,
        apply: impl Fn(Change) + Send + Sync + 'static,
    ) -> Mirror {
        let (tx, applied) = watch::channel(0);
        let task = AbortOnDropHandle::new(tokio::spawn(run(etcd, prefix, apply, tx)));
        Mirror {
            applied,
            _task: task,
        }
    }

    /// Waits until the copy holds etcd's state as of `revision` (a write's
    /// revision: read your writes); false if not within `limit`.
    pub async fn caught_up(&self, revision: i64, limit: Duration) -> bool {
        let mut rx = self.applied.clone();
        timeout(limit, rx.wait_for(|&r| r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

async fn run(
    etcd: Etcd,
    prefix: String,
    apply: impl Fn(Change) + Send + Sync + 'static,
    applied: watch::Sender<i64>,
) {
    let strip = |k: &[u8]| k.strip_prefix(prefix.as_bytes()).unwrap_or(k).to_vec();
    loop {
        let (all, revision) = match etcd.list_at(&prefix).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(prefix, error = %e, "etcd: cannot list; trying again");
                sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        apply(Change::Whole(
            all.into_iter().map(|(k, v)| (strip(&k), v)).collect(),
        ));
        applied.send_replace(revision);
        follow(&etcd, &prefix, revision + 1, &apply, &applied, &strip).await;
        sleep(Duration::from_millis(100)).await;
    }
}

/// Applies changes from `revision` on until the watch breaks.
async fn follow(
    etcd: &Etcd,
    prefix: &str,
    revision: i64,
    apply: &impl Fn(Change),
    applied: &watch::Sender<i64>,
    strip: &impl Fn(&[u8]) -> Vec<u8>,
) {
    let p = prefix.as_bytes();
    let Some(mut watching) = etcd.watch_from(p, prefix_end(p), revision).await else {
        return;
    };
    while let Some(w) = watching.next().await {
        if w.canceled || w.compact_revision != 0 {
            return;
        }
        for e in w.events {
            let Some(kv) = e.kv else { continue };
            let key = strip(&kv.key);
            if e.r#type == EventType::Delete as i32 {
                apply(Change::Delete(key));
            } else {
                apply(Change::Put(key, kv.value));
            }
        }
        if let Some(h) = w.header {
            applied.send_if_modified(|r| {
                let moved = h.revision > *r;
                *r = (*r).max(h.revision);
                moved
            });
        }
    }
}
