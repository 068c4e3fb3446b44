//! Cluster mode end to end (SPEC §12, docs/cluster.md): real etcd
//! members (Debian `etcd-server`, started by each test on ports of its
//! own), real `picket-control` replicas and agents over loopback, and for
//! `netns` and `provisioning` the namespace fleet (as root). The harness
//! is picket-tests'. Run one area with
//! `cargo test -p picket-cluster-tests --test cluster rollout::`.

mod alerts;
mod etcd_tls;
mod leadership;
mod netns;
mod provisioning;
mod records;
mod replicas;
mod restore;
mod rollout;
mod routing;
mod shared_records;
mod shared_state;
