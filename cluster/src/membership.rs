//! One replica's place in the cluster: its campaign ([`Leadership`]), its
//! presence and its hosts' under its lease ([`Presence`]), and what
//! `status`, `/metrics` and `/readyz` report of the whole (SPEC §12).

use crate::etcd::{Etcd, EtcdError};

use crate::leader::{Leadership, Options, Role};
use crate::presence::Presence;

/// A replica as it publishes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub node: String,
    pub advertise: String,
}

pub struct Cluster {
    etcd: Etcd,
    leadership: Leadership,
    presence: Presence,
    node: String,
    prefix: String,
}

impl Cluster {
    /// Joins the cluster on `endpoints` as `node`, reachable at
    /// `advertise`: campaigns and publishes itself in the background.
    pub fn start(etcd: Etcd, node: &str, advertise: &str) -> Cluster {
        let opts = Options {
            advertise: advertise.to_string(),
            ..Options::default()
        };
        let prefix = opts.prefix.clone();
        let leadership = Leadership::campaign(etcd.clone(), node.to_string(), opts);
        let presence = Presence::start(etcd.clone(), node.to_string(), &prefix, leadership.lease());
        Cluster {
            etcd,
            leadership,
            presence,
            node: node.to_string(),
            prefix,
        }
    }

    pub fn role(&self) -> Role {
        self.leadership.role()
    }

    /// The role as it changes.
    pub fn roles(&self) -> tokio::sync::watch::Receiver<Role> {
        self.leadership.roles()
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role(), Role::Leader(_))
    }

    /// Whether etcd answered this replica's last call.
    pub fn etcd_up(&self) -> bool {
        self.etcd.is_up()
    }

    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// The lease this replica holds now, as it changes.
    pub fn lease(&self) -> tokio::sync::watch::Receiver<Option<i64>> {
        self.leadership.lease()
    }

    /// The key prefix of this cluster's state.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// This replica's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Which replica holds which host's stream; this one's to publish.
    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    /// The replicas whose leases live, by name.
    pub async fn replicas(&self) -> Result<Vec<Replica>, EtcdError> {
        let dir = format!("{}/replicas/", self.prefix);
        Ok(self
            .etcd
            .list(&dir)
            .await?
            .into_iter()
            .map(|(k, v)| Replica {
                node: k.strip_prefix(&dir).unwrap_or(&k).to_string(),
                advertise: String::from_utf8_lossy(&v).into_owned(),
            })
            .collect())
    }

    /// The leader's name and since when it leads (Unix ms, as it wrote
    /// it), if one does.
    pub async fn leader(&self) -> Result<Option<(String, i64)>, EtcdError> {
        let (kv, _) = self.etcd.get(&format!("{}/leader", self.prefix)).await?;
        Ok(kv.map(|kv| crate::leader::parse_value(&kv.value)))
    }

    /// Leaves: gives up leadership and presence at once (the campaign
    /// stops; the replica is shutting down).
    pub async fn resign(&self) {
        self.leadership.resign().await;
    }
}
