//! Backup and restore in cluster mode (docs/cluster.md): a replica's
//! archive restored into a fresh etcd writes the cluster's state into it
//! (the CA, the shared trees, an id base); into the etcd of the same
//! cluster, nothing; another cluster's etcd is refused.

use std::path::Path;

use anyhow::{Context, bail};
use picket_cluster::Etcd;
use picket_cluster::etcd::put_op;
use picket_config::control::ClusterConfig;
use picket_store::Store;
use picket_store::backend::etcd::ID_BASE;

/// `restore` of a replica: into a fresh etcd, writes the CA and the
/// backup's copy of the shared state (agents, tokens, users, audit), with
/// ids going on above the restored ones; into an etcd that holds the same
/// cluster, writes nothing (the replica takes the state from there: its
/// copy is replaced at start); another cluster's etcd is refused. Says
/// what it did.
pub async fn restore(data_dir: &Path, c: &ClusterConfig) -> anyhow::Result<String> {
    let etcd = Etcd::connect_files(
        &c.etcd,
        c.etcd_ca.as_deref(),
        c.etcd_cert.as_deref(),
        c.etcd_key.as_deref(),
    )?;
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
        return Ok(format!(
            "etcd at {} holds this cluster: the replica takes its state from there",
            c.etcd.join(",")
        ));
    }
    let store = Store::open(data_dir)?;
    let pairs = store.shared_pairs()?;
    drop(store);
    // Audit ids are the old etcd's revisions (plus its base): the new one
    // goes on above them.
    let base = pairs
        .iter()
        .filter(|(tree, _)| *tree == picket_store::AUDIT)
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
            .map(|(tree, (k, v))| put_op(picket_store::backend::etcd::etcd_key(tree, k), v, 0)),
    );
    // etcd takes at most 128 operations a transaction.
    let mut rest = ops;
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(128));
        etcd.commit(Vec::new(), rest).await?;
        rest = tail;
    }
    Ok(format!(
        "Wrote the CA and {} shared entries (agents, tokens, users, audit, rollouts) \
         into the fresh etcd at {}",
        pairs.len(),
        c.etcd.join(",")
    ))
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
