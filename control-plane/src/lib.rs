//! Picket's control plane: PKI and enrollment, agent sessions, the store,
//! the admin API, HTTP metrics, and dev mode.
//!
//! Layout:
//! - [`config`] — `control.toml`.
//! - [`alert`] — the alert file (rules, inhibition, notifiers, routes).
//! - [`pki`] — the CA, certificate issuing, bootstrap tokens. No gRPC.
//! - [`identity`] — the server certificate served: reloads and renewal.
//! - [`store`] — the only module that touches sled (behind [`store::Backend`]).
//! - [`sessions`] — which agents are connected, and how to cut them off.
//! - [`ingest`] — records from agents into the store, exactly once.
//! - [`fleet`] — newest metrics per host; rollup and retention task.
//! - [`feed`] — stored events and log lines, live; backlog-then-follow.
//! - [`audit`] — the append-only audit log.
//! - [`grpc`] — the tonic edge (auth interceptor, services).
//! - [`http`] — `/metrics`, `/healthz`, `/readyz`.
//! - [`lifecycle`] — signals and systemd notification.
//! - [`local`] — the local admin socket (snapshots for backups).
//! - [`backup`] — `backup` and `restore` archives.
//! - [`rollout`] — the rollout engine (pure), its view and its driver.
//! - [`run`] — `picketctl run`: one command on many hosts.
//! - [`steps`] — steps in flight to agents, and their updates back.
//! - [`server`] — wiring; [`dev`]: `picket-control dev`.

pub mod alert;
pub mod audit;
pub mod backup;
pub mod clock;
pub mod config;
pub mod dev;
pub mod feed;
pub mod fleet;
pub mod grpc;
pub mod http;
pub mod identity;
pub mod ingest;
pub mod lifecycle;
pub mod local;
pub mod notify;
pub mod pki;
pub mod rollout;
pub mod run;
pub mod server;
pub mod sessions;
pub mod state;
pub mod steps;
pub mod store;

use std::path::Path;

use anyhow::Context;

use crate::store::{Store, UserRecord};

/// `picket-control init`: CA, server certificate, admin bundle, the store
/// with the admin user in it, and `control.toml`.
pub fn init(data_dir: &Path, sans: &[String]) -> anyhow::Result<pki::InitReport> {
    let report = pki::init(data_dir, sans)?;
    let store = Store::open(data_dir)?;
    store.put_user(&UserRecord {
        name: "admin".into(),
        role: picket_proto::model::Role::Admin,
        created_ms: clock::now_ms(),
        revoked_ms: None,
    })?;
    store.flush()?;
    let cfg_path = data_dir.join("control.toml");
    if !cfg_path.exists() {
        let abs = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        std::fs::write(&cfg_path, config::ControlConfig::template(&abs))
            .with_context(|| format!("cannot write {}", cfg_path.display()))?;
    }
    Ok(report)
}
