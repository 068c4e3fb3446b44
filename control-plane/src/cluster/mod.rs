//! Making cluster replicas (SPEC §12): `init --cluster-etcd` creates the
//! CA and writes it into etcd (a second `init` against the same etcd is
//! refused), `join` makes another replica from it, with a server
//! certificate of its own. Both write `[cluster]` into control.toml.

use std::path::Path;

use anyhow::{Context, bail};
use picket_cluster::Etcd;

pub mod users;

/// etcd as `[cluster]` says: its members, over TLS with its files when
/// `etcd_ca` is set.
pub fn connect(c: &picket_config::control::ClusterConfig) -> anyhow::Result<Etcd> {
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

/// What `[cluster]` a new replica gets.
pub struct Replica {
    pub etcd: Vec<String>,
    pub node: String,
    pub advertise: String,
    /// TLS to etcd: CA, and client certificate and key (absolute paths).
    pub etcd_ca: Option<std::path::PathBuf>,
    pub etcd_cert: Option<std::path::PathBuf>,
    pub etcd_key: Option<std::path::PathBuf>,
}

impl Replica {
    fn config(&self) -> picket_config::control::ClusterConfig {
        picket_config::control::ClusterConfig {
            node: self.node.clone(),
            advertise: self.advertise.clone(),
            etcd: self.etcd.clone(),
            etcd_ca: self.etcd_ca.clone(),
            etcd_cert: self.etcd_cert.clone(),
            etcd_key: self.etcd_key.clone(),
            postgres: None,
            password_file: None,
        }
    }

    fn section(&self) -> String {
        let list = |v: &[String]| {
            let v: Vec<String> = v.iter().map(|e| format!("{e:?}")).collect();
            v.join(", ")
        };
        let mut s = format!(
            "\n# Cluster mode (docs/cluster.md): this replica, and the etcd it\n\
             # shares state and leadership through.\n[cluster]\nnode = {:?}\n\
             advertise = {:?}\netcd = [{}]\n",
            self.node,
            self.advertise,
            list(&self.etcd)
        );
        for (k, v) in [
            ("etcd_ca", &self.etcd_ca),
            ("etcd_cert", &self.etcd_cert),
            ("etcd_key", &self.etcd_key),
        ] {
            if let Some(p) = v {
                s.push_str(&format!("{k} = {:?}\n", p.display().to_string()));
            }
        }
        s
    }

    fn etcd(&self) -> anyhow::Result<Etcd> {
        connect(&self.config())
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
