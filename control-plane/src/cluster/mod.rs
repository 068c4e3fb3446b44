//! Making cluster replicas (SPEC §12): `init --cluster-etcd` creates the
//! CA and writes it into etcd (a second `init` against the same etcd is
//! refused), `join` makes another replica from it, with a server
//! certificate of its own. Both write `[cluster]` into control.toml.

use std::path::Path;

use std::sync::Arc;

use anyhow::{Context, bail};
use picket_cluster::Etcd;
use picket_cluster::etcd::{created_at, put_op};
use picket_config::control::ClusterConfig;
use picket_store::backend::etcd::{EtcdBackend, ID_BASE};
use picket_store::{SHARED_TREES, Store};

pub mod relay;

/// etcd as `[cluster]` says: its members, over TLS with its files when
/// `etcd_ca` is set.
pub fn connect(c: &ClusterConfig) -> anyhow::Result<Etcd> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let tls = match &c.etcd_ca {
        None => None,
        Some(ca) => Some(picket_cluster::EtcdTls {
            ca_pem: read(ca)?,
            identity: match (&c.etcd_cert, &c.etcd_key) {
                (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                _ => None,
            },
        }),
    };
    Ok(Etcd::connect_with(&c.etcd, tls.as_ref())?)
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

/// `store` with its shared trees (agents, tokens, users, audit) in etcd
/// ([`picket_store::backend::etcd`]): what one replica writes, every
/// replica reads within a round trip. `on_change` sees each change as
/// this replica's copy takes it.
pub fn share(
    store: Store,
    c: &ClusterConfig,
    on_change: impl Fn(&str, &[u8], Option<&[u8]>) + Send + Sync + 'static,
) -> anyhow::Result<Store> {
    let etcd = || connect(c).map_err(|e| picket_cluster::EtcdError::Refused(format!("{e:#}")));
    Ok(store.with_shared(|engine| {
        EtcdBackend::start(etcd, engine, SHARED_TREES, Box::new(on_change))
            .map(|b| Arc::new(b) as Arc<dyn picket_store::backend::Backend>)
    })?)
}

/// `init --cluster-etcd`: the first admin, in etcd (the same key and
/// value [`Store::put_user`] writes through the shared backend).
async fn add_admin(etcd: &Etcd) -> anyhow::Result<()> {
    let key = picket_store::backend::etcd::key("users", crate::admin_user().name.as_bytes());
    let value = serde_json::to_vec(&crate::admin_user())?;
    etcd.commit(vec![created_at(&key, 0)], vec![put_op(&key, &value, 0)])
        .await?;
    Ok(())
}

/// `[cluster]` as `init` and `join` write it into control.toml.
fn section(c: &ClusterConfig) -> String {
    let etcd: Vec<String> = c.etcd.iter().map(|e| format!("{e:?}")).collect();
    let mut s = format!(
        "\n# Cluster mode (docs/cluster.md): this replica, and the etcd it\n\
         # shares state and leadership through.\n[cluster]\nnode = {:?}\n\
         advertise = {:?}\netcd = [{}]\n",
        c.node,
        c.advertise,
        etcd.join(", ")
    );
    for (k, v) in [
        ("etcd_ca", &c.etcd_ca),
        ("etcd_cert", &c.etcd_cert),
        ("etcd_key", &c.etcd_key),
    ] {
        if let Some(p) = v {
            s.push_str(&format!("{k} = {:?}\n", p.display().to_string()));
        }
    }
    s
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
    crate::seed(data_dir, &section(r))?;
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
    crate::seed(data_dir, &section(r))?;
    Ok(fingerprint)
}

/// What `restore` did with etcd.
pub enum Restored {
    /// etcd holds this cluster's CA already: the replica takes the shared
    /// state from it as it is (its restored copy is replaced at start).
    Joined,
    /// etcd held no Picket state: the CA, the shared trees and an id base
    /// were written into it from the backup.
    Seeded { pairs: usize },
}

/// `restore` of a replica: into a fresh etcd, writes the CA and the
/// backup's copy of the shared state (agents, tokens, users, audit), with
/// ids going on above the restored ones; into an etcd that holds the same
/// cluster, writes nothing; another cluster's etcd is refused.
pub async fn restore(data_dir: &Path, c: &ClusterConfig) -> anyhow::Result<Restored> {
    let etcd = connect(c)?;
    let read = |f: &str| {
        std::fs::read_to_string(data_dir.join(f))
            .with_context(|| format!("cannot read {}", data_dir.join(f).display()))
    };
    let (cert, key) = (read("ca.crt")?, read("ca.key")?);
    if let Some((theirs, _)) = picket_cluster::ca::fetch(&etcd).await? {
        if theirs.trim() != cert.trim() {
            bail!(
                "etcd at {} holds another cluster's CA; restore into a fresh etcd, or into \
                 the cluster this backup was taken from",
                c.etcd.join(",")
            );
        }
        return Ok(Restored::Joined);
    }
    let store = Store::open(data_dir)?;
    let pairs = store.shared_pairs()?;
    drop(store);
    // Audit ids are the old etcd's revisions (plus its base): the new one
    // goes on above them.
    let base = pairs
        .iter()
        .filter(|(tree, _)| *tree == "audit")
        .filter_map(|(_, (k, _))| k.as_slice().try_into().ok().map(u64::from_be_bytes))
        .max()
        .map_or(0, |m| m.saturating_add(1));
    if !picket_cluster::ca::publish(&etcd, &cert, &key).await? {
        bail!("another restore or init wrote a Picket CA into etcd meanwhile");
    }
    let mut ops = vec![put_op(ID_BASE, base.to_string().as_bytes(), 0)];
    ops.extend(
        pairs
            .iter()
            .map(|(tree, (k, v))| put_op(picket_store::backend::etcd::key(tree, k), v, 0)),
    );
    // etcd takes at most 128 operations a transaction.
    let mut rest = ops;
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(128));
        etcd.commit(Vec::new(), rest).await?;
        rest = tail;
    }
    Ok(Restored::Seeded { pairs: pairs.len() })
}

/// control.toml's `[cluster] etcd` set to `endpoints` (`restore
/// --cluster-etcd`: the backup names the old cluster's members).
pub fn repoint_etcd(config: &Path, endpoints: &[String]) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("cannot read {}", config.display()))?;
    let list: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    let mut out = String::with_capacity(text.len());
    let mut in_cluster = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            in_cluster = t.starts_with("[cluster]");
        }
        if in_cluster && t.split('=').next().map(str::trim) == Some("etcd") {
            out.push_str(&format!("etcd = [{}]\n", list.join(", ")));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(config, out).with_context(|| format!("cannot write {}", config.display()))?;
    let cfg = picket_config::control::ControlConfig::load(config)?;
    if cfg.cluster.as_ref().map(|c| &c.etcd) != Some(&endpoints.to_vec()) {
        bail!(
            "cannot set [cluster] etcd in {}: edit it by hand",
            config.display()
        );
    }
    Ok(())
}
