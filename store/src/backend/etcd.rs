//! Cluster mode's shared state (SPEC §12): a [`Backend`] whose truth is
//! etcd and whose reads come from a local copy.
//!
//! - Each pair lives in etcd under `PREFIX<tree>/<key>`. A write is one
//!   etcd transaction; `update` and `transact` read their keys (one
//!   revision for all), run the caller's function, and write only if no
//!   key was written meanwhile (a compare on each key's mod revision),
//!   else read and try again: atomic across every replica, as sled's are
//!   within one process.
//! - A [`Mirror`] copies every change into `local` (the replica's own
//!   engine, same trees and keys), so reads (an interceptor's lookup, a
//!   listing) never wait on the network. A write returns once the copy
//!   holds it: a replica reads its own writes; the others see them within
//!   a watch's round trip.
//! - etcd is async and [`Backend`] is not: calls run on a runtime of the
//!   backend's own (one thread), and the caller's thread waits for them.
//!   A caller on the control plane's runtime (a blocking section, or even a
//!   worker) never waits on a task of that same runtime, so nothing can
//!   deadlock on a runtime full of waiting workers.
//! - `next_id` is the revision of a write of one counter key (plus a base
//!   a restore into a fresh etcd sets): unique and increasing across every
//!   replica.
//!
//! Limits: etcd takes at most 128 operations per transaction (its
//! `--max-txn-ops` default), so a larger `apply` (audit expiry) is split,
//! and is atomic per part only. A transaction sent again to another member
//! after the first timed out may have been applied by the first: a compare
//! then fails and the caller's function runs again on the new value.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use picket_cluster::etcd::{created_at, delete_op, modified_at, put_op};
use picket_cluster::mirror::{Change, Mirror};
use picket_cluster::{Etcd, EtcdError};

use super::{Backend, Frozen, Kv, KvIter, Op, Transactor, Updater};
use crate::StoreError;
use crate::blocking::Runner;

/// Where the shared trees live in etcd.
pub const PREFIX: &str = "/picket/state/";

/// The key whose write revisions are the ids.
const IDS: &str = "/picket/ids/next";

/// Added to those revisions (decimal; absent: 0): written by a restore
/// into a fresh etcd, whose revisions start again from 1, above every id
/// the restored state holds.
pub const ID_BASE: &str = "/picket/ids/base";

/// Written under the prefix (no tree has this name) to learn when the
/// copy has caught up.
const SYNC: &str = "_sync";

/// etcd's default `--max-txn-ops` (a fence's compare is not an op).
const MAX_TXN_OPS: usize = 128;

/// Why a fenced write was refused.
pub const DEPOSED: &str = "not the leader any more: the write was refused by etcd";

/// How long a write waits for the local copy to hold it, and start for
/// the first whole listing.
const CATCH_UP: Duration = Duration::from_secs(5);

/// Told of every change the copy applies (tree, key, new value or `None`
/// when deleted): how a revocation made through another replica cuts the
/// streams this one holds.
pub type OnChange = dyn Fn(&str, &[u8], Option<&[u8]>) + Send + Sync;

/// The condition a tree's writes are made under (the leader's term, for
/// the trees only the leader writes), or why none may be made now.
pub type Fence = dyn Fn() -> Result<Compare, StoreError> + Send + Sync;

pub struct EtcdBackend {
    /// Where etcd calls and the copy's watch run (first: shut down before
    /// the client it drives is dropped).
    runner: Runner,
    remote: Arc<Remote>,
    local: Arc<dyn Backend>,
    /// Trees whose every write carries a fence's compare.
    fences: std::sync::RwLock<std::collections::HashMap<&'static str, Arc<Fence>>>,
}

/// etcd, and the copy's progress.
struct Remote {
    etcd: Etcd,
    mirror: Mirror,
    /// [`ID_BASE`] as read at start.
    id_base: std::sync::OnceLock<u64>,
}

pub type Compare = picket_cluster::pb::etcdserverpb::Compare;
type RequestOp = picket_cluster::pb::etcdserverpb::RequestOp;
/// Values read, in the order asked (`None`: absent).
type Values = Vec<Option<Vec<u8>>>;

fn shared(e: impl std::fmt::Display) -> StoreError {
    StoreError::Shared(e.to_string())
}

/// The etcd key of `key` in `tree`.
pub fn etcd_key(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(PREFIX.len() + tree.len() + 1 + key.len());
    k.extend_from_slice(PREFIX.as_bytes());
    k.extend_from_slice(tree.as_bytes());
    k.push(b'/');
    k.extend_from_slice(key);
    k
}

/// A key under the prefix back into one of `trees` and its key.
fn split<'t>(trees: &[&'t str], k: &[u8]) -> Option<(&'t str, Vec<u8>)> {
    let slash = k.iter().position(|&b| b == b'/')?;
    let tree = trees.iter().find(|t| t.as_bytes() == &k[..slash])?;
    Some((tree, k[slash + 1..].to_vec()))
}

impl EtcdBackend {
    /// Connects (`connect` runs on the backend's runtime), then copies the
    /// shared `trees` into `local` and waits (up to 5 s) for the first
    /// whole listing. With etcd down, the copy as last seen serves reads
    /// and writes fail until etcd answers.
    pub fn start(
        connect: impl FnOnce() -> Result<Etcd, EtcdError>,
        local: Arc<dyn Backend>,
        trees: &'static [&'static str],
        on_change: Box<OnChange>,
    ) -> Result<EtcdBackend, StoreError> {
        let runner = Runner::new("etcd", 1)?;
        let remote = {
            let _in = runner.enter();
            let etcd = connect().map_err(shared)?;
            let copy = local.clone();
            let mirror = Mirror::start(etcd.clone(), PREFIX.to_string(), move |change| {
                if let Err(e) = apply(copy.as_ref(), trees, on_change.as_ref(), change) {
                    tracing::error!(error = %e, "cannot copy shared state from etcd");
                }
            });
            Arc::new(Remote {
                etcd,
                mirror,
                id_base: std::sync::OnceLock::new(),
            })
        };
        let b = EtcdBackend {
            remote,
            local,
            fences: Default::default(),
            runner,
        };
        let listed = b.wait(|r| async move { r.mirror.caught_up(1, CATCH_UP).await })?;
        if !listed {
            tracing::warn!(
                "etcd: no listing of the shared state within {CATCH_UP:?}; \
                 serving the local copy as last seen"
            );
        }
        Ok(b)
    }

    /// Waits until the local copy holds everything etcd holds now (a new
    /// leader does before it reads what the last one wrote); false if not
    /// within 5 s.
    pub fn catch_up(&self) -> Result<bool, StoreError> {
        // A write under the prefix: the watch reports it (and so the copy
        // reaches its revision) only after everything before it. etcd's
        // own revision would not do: writes outside the prefix move it,
        // and the watch says nothing of those.
        let mark = format!("{PREFIX}{SYNC}");
        self.wait(|r| async move {
            let written = r
                .etcd
                .commit(Vec::new(), vec![put_op(mark, b"", 0)])
                .await
                .map_err(shared)?
                .ok_or_else(|| shared("etcd refused the sync mark"))?;
            Ok(r.mirror.caught_up(written, CATCH_UP).await)
        })?
    }

    /// Every later write to `tree` is made only while `fence`'s compare
    /// holds (refused with [`DEPOSED`] once it does not), or refused at
    /// once while `fence` says no.
    pub fn fence(&self, tree: &'static str, fence: Arc<Fence>) {
        let mut f = self.fences.write().unwrap_or_else(|p| p.into_inner());
        f.insert(tree, fence);
    }

    /// The fences' compares for writes to `trees`.
    fn fenced<'t>(&self, trees: impl Iterator<Item = &'t str>) -> Result<Vec<Compare>, StoreError> {
        let f = self.fences.read().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for t in trees {
            if seen.insert(t)
                && let Some(fence) = f.get(t)
            {
                out.push(fence()?);
            }
        }
        Ok(out)
    }

    /// Writes `ops` under `fences` and the caller's `compare`: false when
    /// the caller's compare failed; an error when a fence did.
    fn commit_fenced(
        &self,
        fences: Vec<Compare>,
        compare: Vec<Compare>,
        ops: Vec<RequestOp>,
    ) -> Result<bool, StoreError> {
        let fenced = !fences.is_empty();
        let mut all = fences.clone();
        all.extend(compare);
        if self.commit(all, ops)? {
            return Ok(true);
        }
        // Which compare failed: the fences alone, read in one transaction.
        if fenced && !self.holds(fences)? {
            return Err(StoreError::Shared(DEPOSED.into()));
        }
        Ok(false)
    }

    /// Runs `f` on the backend's runtime and waits for it, from any
    /// thread (a runtime worker included: the task runs on another
    /// runtime's thread).
    fn wait<T, Fut>(&self, f: impl FnOnce(Arc<Remote>) -> Fut) -> Result<T, StoreError>
    where
        T: Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        self.runner.wait(f(self.remote.clone()))
    }

    /// Writes `ops` if `compare` holds, then waits for the copy to hold
    /// them; false when a compare failed.
    fn commit(&self, compare: Vec<Compare>, ops: Vec<RequestOp>) -> Result<bool, StoreError> {
        self.wait(|r| async move {
            match r.etcd.commit(compare, ops).await.map_err(shared)? {
                None => Ok(false),
                Some(revision) => {
                    if !r.mirror.caught_up(revision, CATCH_UP).await {
                        tracing::warn!(revision, "etcd: the local copy is behind a write");
                    }
                    Ok(true)
                }
            }
        })?
    }

    /// Whether `compare` holds now (a transaction that writes nothing,
    /// so there is no write for the copy to wait for).
    fn holds(&self, compare: Vec<Compare>) -> Result<bool, StoreError> {
        self.wait(|r| async move {
            let held = r.etcd.commit(compare, Vec::new()).await.map_err(shared)?;
            Ok(held.is_some())
        })?
    }

    /// The current values of `keys`, with compares that hold while none
    /// of them is written.
    fn read(&self, keys: &[(&str, &[u8])]) -> Result<(Values, Vec<Compare>), StoreError> {
        let ks: Vec<Vec<u8>> = keys.iter().map(|(t, k)| etcd_key(t, k)).collect();
        self.wait(|r| async move {
            let (kvs, _) = r.etcd.get_many(&ks).await.map_err(shared)?;
            let compares = ks
                .iter()
                .zip(&kvs)
                .map(|(k, kv)| match kv {
                    Some(kv) => modified_at(k, kv.mod_revision),
                    None => created_at(k, 0),
                })
                .collect();
            Ok((
                kvs.into_iter().map(|kv| kv.map(|kv| kv.value)).collect(),
                compares,
            ))
        })?
    }
}

fn op(o: &Op) -> RequestOp {
    let k = etcd_key(o.tree, &o.key);
    match &o.value {
        Some(v) => put_op(k, v, 0),
        None => delete_op(k),
    }
}

/// One change from the watch, into the copy.
fn apply(
    local: &dyn Backend,
    trees: &'static [&'static str],
    on_change: &OnChange,
    change: Change,
) -> Result<(), StoreError> {
    match change {
        Change::Put(k, v) => {
            if let Some((tree, key)) = split(trees, &k) {
                local.put(tree, &key, &v)?;
                on_change(tree, &key, Some(&v));
            }
        }
        Change::Delete(k) => {
            if let Some((tree, key)) = split(trees, &k) {
                local.remove(tree, &key)?;
                crate::forgotten(local, tree, &key)?;
                on_change(tree, &key, None);
            }
        }
        Change::Whole(all) => {
            let mut now: BTreeMap<(&str, Vec<u8>), Vec<u8>> = BTreeMap::new();
            for (k, v) in all {
                if let Some((tree, key)) = split(trees, &k) {
                    now.insert((tree, key), v);
                }
            }
            let mut ops = Vec::new();
            for &tree in trees {
                for kv in local.scan(tree, b"")? {
                    let (key, _) = kv?;
                    if !now.contains_key(&(tree, key.clone())) {
                        ops.push(Op {
                            tree,
                            key,
                            value: None,
                        });
                    }
                }
            }
            for ((tree, key), v) in &now {
                ops.push(Op {
                    tree,
                    key: key.clone(),
                    value: Some(v.clone()),
                });
            }
            local.apply(&ops)?;
            for o in &ops {
                if o.value.is_none() {
                    crate::forgotten(local, o.tree, &o.key)?;
                }
                on_change(o.tree, &o.key, o.value.as_deref());
            }
        }
    }
    Ok(())
}

impl Backend for EtcdBackend {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.local.get(tree, key)
    }

    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let fences = self.fenced([tree].into_iter())?;
        let ops = vec![put_op(etcd_key(tree, key), value, 0)];
        self.commit_fenced(fences, Vec::new(), ops).map(drop)
    }

    fn remove(&self, tree: &str, key: &[u8]) -> Result<(), StoreError> {
        let fences = self.fenced([tree].into_iter())?;
        let ops = vec![delete_op(etcd_key(tree, key))];
        self.commit_fenced(fences, Vec::new(), ops).map(drop)
    }

    fn update(&self, tree: &str, key: &[u8], f: &mut Updater<'_>) -> Result<(), StoreError> {
        loop {
            let (mut vals, compares) = self.read(&[(tree, key)])?;
            let old = vals.pop().flatten();
            let new = f(old.as_deref());
            if new == old {
                return Ok(());
            }
            let o = match &new {
                Some(v) => put_op(etcd_key(tree, key), v, 0),
                None => delete_op(etcd_key(tree, key)),
            };
            let fences = self.fenced([tree].into_iter())?;
            if self.commit_fenced(fences, compares, vec![o])? {
                return Ok(());
            }
        }
    }

    fn transact(&self, keys: &[(&str, &[u8])], f: &mut Transactor<'_>) -> Result<(), StoreError> {
        loop {
            let (vals, compares) = self.read(keys)?;
            let Some(ops) = f(&vals) else {
                return Ok(());
            };
            let fences = self.fenced(ops.iter().map(|o| o.tree))?;
            let ops: Vec<_> = ops.iter().map(op).collect();
            if self.commit_fenced(fences, compares, ops)? {
                return Ok(());
            }
        }
    }

    fn scan<'a>(&'a self, tree: &str, prefix: &[u8]) -> Result<KvIter<'a>, StoreError> {
        self.local.scan(tree, prefix)
    }

    fn scan_from<'a>(&'a self, tree: &str, start: &[u8]) -> Result<KvIter<'a>, StoreError> {
        self.local.scan_from(tree, start)
    }

    fn scan_back<'a>(&'a self, tree: &str, end: Option<&[u8]>) -> Result<KvIter<'a>, StoreError> {
        self.local.scan_back(tree, end)
    }

    fn last_n(&self, tree: &str, n: usize) -> Result<Vec<Kv>, StoreError> {
        self.local.last_n(tree, n)
    }

    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        for part in ops.chunks(MAX_TXN_OPS) {
            let fences = self.fenced(part.iter().map(|o| o.tree))?;
            let part: Vec<_> = part.iter().map(op).collect();
            self.commit_fenced(fences, Vec::new(), part)?;
        }
        Ok(())
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        let (base, revision) = self.wait(|r| async move {
            let base = match r.id_base.get() {
                Some(b) => *b,
                None => {
                    let (kv, _) = r.etcd.get(ID_BASE).await.map_err(shared)?;
                    let text = kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                    let base = match text {
                        None => 0,
                        Some(t) => t
                            .trim()
                            .parse::<u64>()
                            .map_err(|_| shared(format!("{ID_BASE} holds {t:?}, not a number")))?,
                    };
                    *r.id_base.get_or_init(|| base)
                }
            };
            let revision = r
                .etcd
                .commit(Vec::new(), vec![put_op(IDS, b"", 0)])
                .await
                .map_err(shared)?
                .ok_or_else(|| shared("etcd refused the id counter's write"))?;
            Ok::<_, StoreError>((base, revision))
        })??;
        let revision =
            u64::try_from(revision).map_err(|_| shared(format!("etcd revision {revision}")))?;
        Ok(base.saturating_add(revision))
    }

    fn flush(&self) -> Result<(), StoreError> {
        // A committed transaction is on a quorum's disks already.
        Ok(())
    }

    fn frozen(&self, f: &mut Frozen<'_>) -> Result<(), StoreError> {
        self.local.frozen(f)
    }
}
