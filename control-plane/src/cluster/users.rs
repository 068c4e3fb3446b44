//! Users in cluster mode: etcd holds them (`/picket/users/<name>`, JSON),
//! each replica keeps a copy in its store through a [`Mirror`], so the
//! interceptor's lookup stays local, and a user added or revoked through
//! one replica is known (or refused, its open streams cut) on every
//! replica within a round trip. `user add` and `user revoke` write etcd
//! first, with the same rules as the store (a revoked name never comes
//! back), then wait for their own replica's copy.

use std::time::Duration;

use picket_cluster::etcd::{created_at, modified_at, put_op};
use picket_cluster::mirror::{Change, Mirror};
use picket_cluster::{Etcd, EtcdError};
use picket_store::{Store, UserRecord};

use super::Replica;

pub const PREFIX: &str = "/picket/users/";

/// How long a write waits for its own replica's copy.
const CATCH_UP: Duration = Duration::from_secs(5);

/// Copies etcd's users into `store`, telling `revoked` (which cuts their
/// streams) of each user seen revoked.
pub fn mirror(etcd: Etcd, store: Store, revoked: impl Fn(&str) + Send + Sync + 'static) -> Mirror {
    Mirror::start(etcd, PREFIX.to_string(), move |change| {
        let users = match change {
            Change::Whole(all) => all.into_iter().map(|(_, v)| v).collect(),
            Change::Put(_, v) => vec![v],
            // Users are revoked, never deleted.
            Change::Delete(_) => Vec::new(),
        };
        for v in users {
            let u: UserRecord = match serde_json::from_slice(&v) {
                Ok(u) => u,
                Err(e) => {
                    tracing::error!(error = %e, "etcd: a user record that does not decode; skipped");
                    continue;
                }
            };
            if let Err(e) = crate::blocking::in_place(|| store.put_user(&u)) {
                tracing::error!(user = u.name, error = %e, "cannot copy a user from etcd");
            }
            if u.revoked_ms.is_some() {
                revoked(&u.name);
            }
        }
    })
}

fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// Writes `u` if the read of it (at `read`, 0: absent) still stands;
/// the revision written, or `None` when another write came first.
async fn write(etcd: &Etcd, u: &UserRecord, read: i64) -> Result<Option<i64>, EtcdError> {
    let k = key(&u.name);
    let cond = if read == 0 {
        created_at(&k, 0)
    } else {
        modified_at(&k, read)
    };
    let value = serde_json::to_vec(u).unwrap_or_default();
    let r = etcd
        .txn(vec![cond], vec![put_op(&k, &value, 0)], Vec::new())
        .await?;
    Ok(r.succeeded.then(|| r.header.map_or(0, |h| h.revision)))
}

/// The user as etcd holds it, and the revision it was last written at.
async fn read(etcd: &Etcd, name: &str) -> Result<Option<(UserRecord, i64)>, EtcdError> {
    let (kv, _) = etcd.get(&key(name)).await?;
    Ok(kv.and_then(|kv| {
        serde_json::from_slice(&kv.value)
            .ok()
            .map(|u| (u, kv.mod_revision))
    }))
}

/// `user add` in cluster mode: as [`Store::add_user`] (a revoked name is
/// refused: its record returned).
pub async fn add(r: &Replica, u: &UserRecord) -> Result<Result<(), UserRecord>, EtcdError> {
    let (etcd, mirror) = (r.cluster.etcd(), &r.users);
    loop {
        let at = match read(etcd, &u.name).await? {
            Some((old, _)) if old.revoked_ms.is_some() => return Ok(Err(old)),
            Some((_, at)) => at,
            None => 0,
        };
        if let Some(rev) = write(etcd, u, at).await? {
            mirror.caught_up(rev, CATCH_UP).await;
            return Ok(Ok(()));
        }
    }
}

/// `user revoke` in cluster mode: as [`Store::revoke_user`].
pub async fn revoke(r: &Replica, name: &str, now_ms: i64) -> Result<Option<UserRecord>, EtcdError> {
    let (etcd, mirror) = (r.cluster.etcd(), &r.users);
    loop {
        let Some((mut u, at)) = read(etcd, name).await? else {
            return Ok(None);
        };
        u.revoked_ms.get_or_insert(now_ms);
        if let Some(rev) = write(etcd, &u, at).await? {
            mirror.caught_up(rev, CATCH_UP).await;
            return Ok(Some(u));
        }
    }
}

/// `init --cluster-etcd`: the first admin, in etcd.
pub async fn add_admin(etcd: &Etcd) -> Result<(), EtcdError> {
    write(etcd, &crate::admin_user(), 0).await.map(|_| ())
}
