//! Making cluster replicas (SPEC §12): `init --cluster-etcd` creates the
//! CA and writes it into etcd (a second `init` against the same etcd is
//! refused), `join` makes another replica from it, with a server
//! certificate of its own. Both write `[cluster]` into control.toml.

use std::path::Path;

use std::sync::Arc;

use anyhow::{Context, bail};
use picket_cluster::etcd::{created_at, put_op};
use picket_cluster::{Etcd, Role};
use picket_config::control::ClusterConfig;
use picket_store::backend::etcd::EtcdBackend;
use picket_store::{SHARED_TREES, Store};

pub mod lead;
pub mod records;
pub mod relay;

/// etcd as `[cluster]` says: its members, over TLS with its files when
/// `etcd_ca` is set.
pub fn connect(c: &ClusterConfig) -> Result<Etcd, picket_cluster::EtcdError> {
    Etcd::connect_files(
        &c.etcd,
        c.etcd_ca.as_deref(),
        c.etcd_cert.as_deref(),
        c.etcd_key.as_deref(),
    )
}

/// A replica's part in the cluster, while it runs: its campaign and
/// presence.
pub struct Replica {
    pub cluster: picket_cluster::Cluster,
}

/// Publishes which hosts stream with this replica (etcd's presence map,
/// under its lease) as sessions open and close, until `shutdown`. Works
/// from the whole set each time, so a lagging event stream loses nothing.
pub async fn publish_presence(
    sessions: Arc<crate::sessions::Sessions>,
    replica: Arc<Replica>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut news = sessions.presence();
    loop {
        replica.cluster.presence().set(sessions.online_names());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = news.recv() => {
                if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return;
                }
            }
        }
    }
}

/// Tells this replica's sessions' followers (the rollout driver, runs) of
/// hosts coming and going on other replicas, so that a step waiting for a
/// host that streams elsewhere is dispatched when it is back; until
/// `shutdown`.
pub async fn follow_presence(
    sessions: Arc<crate::sessions::Sessions>,
    replica: Arc<Replica>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use crate::sessions::Presence;
    let mut changes = replica.cluster.presence().changes();
    loop {
        let (host, node) = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = changes.recv() => match c {
                Ok(c) => c,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        };
        // This replica's own streams are announced by its sessions.
        if sessions.is_online(&host) {
            continue;
        }
        match node {
            Some(n) if n != replica.cluster.node() => sessions.announce(Presence::Connected(host)),
            Some(_) => {}
            None => sessions.announce(Presence::Disconnected(host)),
        }
    }
}

/// Tells this replica's alert engine, every `every`, that each host
/// streaming with another replica is alive (presence holds it there), so
/// that `host_silent` fires only for a host no replica hears from; until
/// `shutdown`.
pub async fn vouch_for_others(
    replica: Arc<Replica>,
    tap: Arc<picket_tap::Tap>,
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let now = picket_clock::now_ms();
        for host in replica
            .cluster
            .presence()
            .held_by_others(replica.cluster.node())
        {
            tap.seen(&host, now);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

impl Replica {
    /// Whether another replica holds `host`'s stream (this one's own
    /// sessions answer for it here).
    pub fn elsewhere(&self, host: &str) -> bool {
        self.cluster
            .presence()
            .holder(host)
            .is_some_and(|n| n != self.cluster.node())
    }
}

/// Why a follower refuses what the leader alone does: `what` (e.g.
/// "rollouts are driven by the leader") and where to send `commands`.
pub fn led_elsewhere(
    role: Option<&tokio::sync::watch::Receiver<Role>>,
    what: &str,
    commands: &str,
) -> String {
    let leader = role.and_then(|r| match &*r.borrow() {
        Role::Follower { leader } => leader.clone(),
        Role::Leader(_) => None,
    });
    match leader {
        Some(l) => format!("{what}, {l}; send {commands} through it (picketctl status names it)"),
        None => "no replica leads now (etcd unreachable, or an election under way); \
                 try again in a few seconds"
            .to_string(),
    }
}

/// `store` with its shared trees (agents, tokens, users, audit, rollouts)
/// in etcd ([`picket_store::backend::etcd`]): what one replica writes,
/// every replica reads within a round trip. `on_change` sees each change
/// as this replica's copy takes it. The backend is returned too, for its
/// fences (the leader's writes).
pub fn share(
    store: Store,
    c: &ClusterConfig,
    on_change: impl Fn(&str, &[u8], Option<&[u8]>) + Send + Sync + 'static,
) -> anyhow::Result<(Store, Arc<EtcdBackend>)> {
    let mut shared = None;
    let store = store.with_shared(|engine| {
        let b = Arc::new(EtcdBackend::start(
            || connect(c),
            engine,
            SHARED_TREES,
            Box::new(on_change),
        )?);
        shared = Some(b.clone());
        Ok::<_, picket_store::StoreError>(b as Arc<dyn picket_store::backend::Backend>)
    })?;
    let shared = shared.context("the shared backend")?;
    Ok((store, shared))
}

/// `init --cluster-etcd`: the first admin, in etcd (the same key and
/// value [`Store::put_user`] writes through the shared backend).
async fn add_admin(etcd: &Etcd) -> anyhow::Result<()> {
    let key = picket_store::backend::etcd::etcd_key(
        picket_store::USERS,
        crate::admin_user().name.as_bytes(),
    );
    let value = serde_json::to_vec(&crate::admin_user())?;
    etcd.commit(vec![created_at(&key, 0)], vec![put_op(&key, &value, 0)])
        .await?;
    Ok(())
}

/// `init --cluster-etcd`: [`crate::init`], then the CA into etcd.
pub async fn init(
    data_dir: &Path,
    sans: &[String],
    r: &ClusterConfig,
) -> anyhow::Result<picket_pki::InitReport> {
    let etcd = connect(r)?;
    if picket_cluster::ca::fetch(&etcd).await?.is_some() {
        bail!(
            "etcd at {} already holds a Picket CA: make this replica with \
             `picket-control join` instead",
            r.etcd.join(",")
        );
    }
    let report = picket_pki::init(data_dir, sans)?;
    let read = |f: &str| {
        std::fs::read_to_string(data_dir.join(f))
            .with_context(|| format!("cannot read {}", data_dir.join(f).display()))
    };
    if !picket_cluster::ca::publish(&etcd, &read("ca.crt")?, &read("ca.key")?).await? {
        bail!(
            "another init wrote a Picket CA into etcd meanwhile; remove {} and \
             `picket-control join` instead",
            data_dir.display()
        );
    }
    add_admin(&etcd).await?;
    crate::seed(data_dir, &r.toml())?;
    Ok(report)
}

/// `join`: the CA from etcd, a server certificate for this replica, the
/// admin user (the cluster's admin bundle is the one `init` wrote), and
/// control.toml. Returns the CA's fingerprint.
pub async fn join(data_dir: &Path, sans: &[String], r: &ClusterConfig) -> anyhow::Result<String> {
    let etcd = connect(r)?;
    let Some((cert, key)) = picket_cluster::ca::fetch(&etcd).await? else {
        bail!(
            "etcd at {} holds no Picket CA: run `picket-control init --cluster-etcd` first",
            r.etcd.join(",")
        );
    };
    let fingerprint = picket_pki::join(data_dir, &cert, &key, sans)?;
    crate::seed(data_dir, &r.toml())?;
    Ok(fingerprint)
}
