//! Cluster mode's shared state (SPEC §12): several `picket-control`
//! replicas, one etcd cluster.
//!
//! - [`ca`]: the cluster's CA, kept in etcd for `init` and `join`.
//! - [`etcd`]: a small client for etcd's v3 API (KV, Lease, Watch),
//!   generated from etcd's own protobuf files with protox.
//! - [`leader`]: leadership on an etcd lease, and the fence every write of
//!   the leader's engines goes through.
//! - [`membership`]: one replica's campaign and presence, and what it
//!   reports of the cluster.
//! - [`mirror`]: a replica's local copy of the keys under a prefix, kept
//!   by etcd's watch: how a change through one replica reaches them all.
//! - [`presence`]: which replica holds which host's stream, under each
//!   replica's lease.
//! - [`relay`]: messages between replicas, each in the receiver's etcd
//!   inbox on the sender's lease, taken once.
//!
//! This crate reads and writes etcd only; it knows nothing of agents,
//! rollouts or alerts (the control plane maps those onto keys).

pub mod ca;
pub mod etcd;
pub mod leader;
pub mod membership;
pub mod mirror;
pub mod presence;
pub mod relay;

pub use etcd::{Etcd, EtcdError, EtcdTls};
pub use leader::{Leadership, Options, Role, Term};
pub use membership::{Cluster, Replica};

/// etcd's v3 API, generated (proto/README.md).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod authpb {
        tonic::include_proto!("authpb");
    }
}
