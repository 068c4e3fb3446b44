//! Which replica holds which host's stream (SPEC §12): each replica puts
//! `<prefix>/presence/<host>` = its node name, attached to its lease, for
//! every agent it streams with. A replica that dies takes its keys with
//! its lease; an agent that moves is written over by its new replica, and
//! the old one's late "gone" deletes nothing (it deletes only a key that
//! still names it). Every replica reads the whole map from a local copy.
//!
//! The writer works from the wanted set ([`Presence::set`], the hosts
//! streaming here now), not from events, so a lost event or a failed write
//! heals at the next sync: what is written follows what is wanted, on the
//! lease held now (a new lease is written whole).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::time::sleep;
use tokio_util::task::AbortOnDropHandle;

use crate::etcd::{Etcd, EtcdError, delete_op, put_op, value_is};
use crate::mirror::{Change, Mirror};

/// etcd's default `--max-txn-ops`.
const MAX_TXN_OPS: usize = 128;

/// After a failed write, the next try.
const RETRY: Duration = Duration::from_secs(1);

/// A change to the map: a host and the replica now holding it (`None`:
/// none does).
pub type Moved = (String, Option<String>);

pub struct Presence {
    want: watch::Sender<BTreeSet<String>>,
    held: Arc<RwLock<HashMap<String, String>>>,
    moved: broadcast::Sender<Moved>,
    _copy: Mirror,
    _writer: AbortOnDropHandle<()>,
}

impl Presence {
    /// Publishes this replica's hosts on the leases `lease` reports, and
    /// copies everyone's.
    pub fn start(
        etcd: Etcd,
        node: String,
        prefix: &str,
        lease: watch::Receiver<Option<i64>>,
    ) -> Presence {
        let dir = format!("{prefix}/presence/");
        let held: Arc<RwLock<HashMap<String, String>>> = Arc::default();
        let (moved, _) = broadcast::channel(1024);
        let copy = {
            let (held, moved) = (held.clone(), moved.clone());
            Mirror::start(etcd.clone(), dir.clone(), move |change| {
                let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                let mut map = held.write().unwrap_or_else(|p| p.into_inner());
                let tell = |host: String, node: Option<String>| {
                    let _ = moved.send((host, node));
                };
                match change {
                    Change::Whole(all) => {
                        let new: HashMap<String, String> =
                            all.iter().map(|(k, v)| (text(k), text(v))).collect();
                        for h in map.keys().filter(|h| !new.contains_key(*h)) {
                            tell(h.clone(), None);
                        }
                        for (h, n) in &new {
                            if map.get(h) != Some(n) {
                                tell(h.clone(), Some(n.clone()));
                            }
                        }
                        *map = new;
                    }
                    Change::Put(k, v) => {
                        let (h, n) = (text(&k), text(&v));
                        map.insert(h.clone(), n.clone());
                        tell(h, Some(n));
                    }
                    Change::Delete(k) => {
                        let h = text(&k);
                        map.remove(&h);
                        tell(h, None);
                    }
                }
            })
        };
        let (want, wanted) = watch::channel(BTreeSet::new());
        let writer = AbortOnDropHandle::new(tokio::spawn(write(etcd, node, dir, wanted, lease)));
        Presence {
            want,
            held,
            moved,
            _copy: copy,
            _writer: writer,
        }
    }

    /// The hosts whose streams this replica holds now.
    pub fn set(&self, hosts: BTreeSet<String>) {
        self.want.send_if_modified(|w| {
            let changed = *w != hosts;
            *w = hosts;
            changed
        });
    }

    /// Each change to the map as this replica's copy takes it.
    pub fn changes(&self) -> broadcast::Receiver<Moved> {
        self.moved.subscribe()
    }

    /// The hosts streaming with a replica other than `node`.
    pub fn held_by_others(&self, node: &str) -> Vec<String> {
        let map = self.held.read().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(_, n)| n.as_str() != node)
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// The replica holding `host`'s stream, as this replica's copy has it.
    pub fn holder(&self, host: &str) -> Option<String> {
        let map = self.held.read().unwrap_or_else(|p| p.into_inner());
        map.get(host).cloned()
    }
}

/// Keeps etcd's keys for this node equal to the wanted set, on the lease
/// held now.
async fn write(
    etcd: Etcd,
    node: String,
    dir: String,
    mut wanted: watch::Receiver<BTreeSet<String>>,
    mut lease: watch::Receiver<Option<i64>>,
) {
    // What etcd holds of ours, and on which lease.
    let mut written: BTreeSet<String> = BTreeSet::new();
    let mut on: Option<i64> = None;
    loop {
        let now = *lease.borrow_and_update();
        let want = wanted.borrow_and_update().clone();
        let mut healthy = true;
        if let Some(id) = now {
            if on != Some(id) {
                // A new lease: the old one's keys go (or went) with it.
                written.clear();
                on = Some(id);
            }
            let key = |h: &str| format!("{dir}{h}");
            let new: Vec<String> = want.difference(&written).cloned().collect();
            for part in new.chunks(MAX_TXN_OPS) {
                let ops = part
                    .iter()
                    .map(|h| put_op(key(h), node.as_bytes(), id))
                    .collect();
                match etcd.commit(Vec::new(), ops).await {
                    Ok(_) => written.extend(part.iter().cloned()),
                    Err(e) => {
                        failed(&e);
                        healthy = false;
                        break;
                    }
                }
            }
            let old: Vec<String> = written.difference(&want).cloned().collect();
            for h in old {
                // Only if it still names this replica: the host may have
                // moved to another already.
                let k = key(&h);
                match etcd
                    .commit(vec![value_is(&k, node.as_bytes())], vec![delete_op(&k)])
                    .await
                {
                    Ok(_) => {
                        written.remove(&h);
                    }
                    Err(e) => {
                        failed(&e);
                        healthy = false;
                        break;
                    }
                }
            }
        }
        if healthy {
            tokio::select! {
                r = wanted.changed() => if r.is_err() { return },
                r = lease.changed() => if r.is_err() { return },
            }
        } else {
            // A write failed (etcd away, the lease gone): try again soon,
            // the whole set if the lease changed meanwhile.
            tokio::select! {
                _ = sleep(RETRY) => {}
                r = lease.changed() => if r.is_err() { return },
            }
        }
    }
}

fn failed(e: &EtcdError) {
    tracing::debug!(error = %e, "etcd: cannot publish presence; trying again");
}
