//! Making cluster replicas (SPEC §12): `init --cluster-etcd` creates the
//! CA and writes it into etcd (a second `init` against the same etcd is
//! refused), `join` makes another replica from it, with a server
//! certificate of its own. Both write `[cluster]` into control.toml.

use std::path::Path;

use anyhow::{Context, bail};
use picket_cluster::Etcd;

pub mod users;

/// What `[cluster]` a new replica gets.
pub struct Replica {
    pub etcd: Vec<String>,
    pub node: String,
    pub advertise: String,
}

impl Replica {
    fn section(&self) -> String {
        let etcd: Vec<String> = self.etcd.iter().map(|e| format!("{e:?}")).collect();
        format!(
            "\n# Cluster mode (docs/cluster.md): this replica, and the etcd it\n\
             # shares state and leadership through.\n[cluster]\nnode = {:?}\n\
             advertise = {:?}\netcd = [{}]\n",
            self.node,
            self.advertise,
            etcd.join(", ")
        )
    }

    fn etcd(&self) -> anyhow::Result<Etcd> {
        Ok(Etcd::connect(&self.etcd)?)
    }
}

/// `init --cluster-etcd`: [`crate::init`], then the CA into etcd.
pub async fn init(
    data_dir: &Path,
    sans: &[String],
    r: &Replica,
) -> anyhow::Result<picket_pki::InitReport> {
    let etcd = r.etcd()?;
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
    users::add_admin(&etcd).await?;
    crate::seed(data_dir, &r.section())?;
    Ok(report)
}

/// `join`: the CA from etcd, a server certificate for this replica, the
/// admin user (the cluster's admin bundle is the one `init` wrote), and
/// control.toml. Returns the CA's fingerprint.
pub async fn join(data_dir: &Path, sans: &[String], r: &Replica) -> anyhow::Result<String> {
    let etcd = r.etcd()?;
    let Some((cert, key)) = picket_cluster::ca::fetch(&etcd).await? else {
        bail!(
            "etcd at {} holds no Picket CA: run `picket-control init --cluster-etcd` first",
            r.etcd.join(",")
        );
    };
    let fingerprint = picket_pki::join(data_dir, &cert, &key, sans)?;
    crate::seed(data_dir, &r.section())?;
    Ok(fingerprint)
}
