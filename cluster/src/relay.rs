//! Messages between replicas through etcd (SPEC §12: "a step goes to
//! whichever replica holds the host's stream"): each replica has an inbox,
//! `<prefix>/relay/<node>/`; a message is one key put there on the
//! sender's lease (a sender that dies takes what it had not delivered:
//! nobody waits for it any more). The receiver takes each key with a
//! transaction that deletes it only if it is still there, so each message
//! is handled once, then hands its bytes on. Listed whole at start and
//! after a broken watch, so nothing put meanwhile is missed.
//!
//! It carries bytes; what they mean (steps, their results) is the control
//! plane's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

use crate::etcd::{Etcd, EtcdError, delete_op, put_op, value_is};
use crate::mirror::{Change, Mirror};

pub struct Relay {
    etcd: Etcd,
    prefix: String,
    node: String,
    lease: watch::Receiver<Option<i64>>,
    sent: AtomicU64,
    _inbox: Mirror,
}

impl Relay {
    /// Takes every message put in `node`'s inbox, in the background, and
    /// hands each to `deliver` once.
    pub fn start(
        etcd: Etcd,
        node: String,
        prefix: &str,
        lease: watch::Receiver<Option<i64>>,
        deliver: impl Fn(Vec<u8>) + Send + Sync + 'static,
    ) -> Relay {
        let inbox = format!("{prefix}/relay/{node}/");
        let deliver = Arc::new(deliver);
        let taker = {
            let (etcd, inbox) = (etcd.clone(), inbox.clone());
            move |change: Change| {
                let pending = match change {
                    Change::Whole(all) => all,
                    Change::Put(k, v) => vec![(k, v)],
                    Change::Delete(_) => Vec::new(),
                };
                for (k, v) in pending {
                    let mut key = inbox.as_bytes().to_vec();
                    key.extend_from_slice(&k);
                    let (etcd, deliver) = (etcd.clone(), deliver.clone());
                    tokio::spawn(async move {
                        match etcd
                            .commit(vec![value_is(&key, &v)], vec![delete_op(&key)])
                            .await
                        {
                            Ok(Some(_)) => deliver(v),
                            // Taken already (listed twice after a broken
                            // watch).
                            Ok(None) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "etcd: cannot take a relayed message");
                            }
                        }
                    });
                }
            }
        };
        let inbox_copy = Mirror::start(etcd.clone(), inbox, taker);
        Relay {
            etcd,
            prefix: prefix.to_string(),
            node,
            lease,
            sent: AtomicU64::new(0),
            _inbox: inbox_copy,
        }
    }

    /// Puts `message` in `to`'s inbox, on this replica's lease.
    pub async fn send(&self, to: &str, message: &[u8]) -> Result<(), EtcdError> {
        let lease = (*self.lease.borrow()).unwrap_or(0);
        let n = self.sent.fetch_add(1, Ordering::Relaxed);
        // Unique across this replica's lives: the lease is new each life.
        let key = format!("{}/relay/{to}/{}-{lease:x}-{n}", self.prefix, self.node);
        self.etcd
            .commit(Vec::new(), vec![put_op(key, message, lease)])
            .await
            .map(drop)
    }
}
