//! Picket's control plane: PKI and enrollment, agent sessions, the store,
//! the admin API, HTTP metrics, and dev mode.
//!
//! The store is `picket_store`, the CA `picket_pki`, the engines
//! `picket_rollout` and `picket_alert`: this crate is their shells.
//!
//! Layout:
//! - [`alert`] — the alert engine's shell: its driver and the ingest tap
//!   (the engine and the alert file are `picket_alert`).
//! - [`identity`] — the server certificate served: reloads and renewal.
//! - [`sessions`] — which agents are connected, and how to cut them off.
//! - [`ingest`] — records from agents into the store, exactly once.
//! - [`fleet`] — newest metrics per host; rollup and retention task.
//! - [`feed`] — stored events and log lines, live; backlog-then-follow.
//! - [`audit`] — the append-only audit log.
//! - [`grpc`] — the tonic edge (auth interceptor, services).
//! - [`http`] — `/metrics`, `/healthz`, `/readyz`.
//! - [`lifecycle`] — signals and systemd notification.
//! - [`local`] — the local admin socket (snapshots for backups), and
//!   [`backup`] — `backup` and `restore` archives: both in the crate
//!   `picket-backup`, re-exported here.
//! - [`rollout`] — the rollout engine's driver (the engine is `picket_rollout`).
//! - [`run`] — `picketctl run`: one command on many hosts.
//! - [`steps`] — steps in flight to agents, and their updates back.
//! - [`server`] — wiring; [`dev`]: `picket-control dev`.

pub mod alert;
pub mod audit;
pub mod cluster;
pub use picket_backup as backup;
pub mod blocking;
pub mod counters;
pub mod dev;
pub use picket_feed as feed;
pub mod fleet;
pub mod grpc;
pub mod http;
pub mod identity;
pub mod ingest;
pub mod lifecycle;
pub use picket_backup::local;
pub mod recovery;
pub mod rollout;
pub mod run;
pub mod server;
pub mod sessions;
pub mod steps;

use std::path::Path;

use anyhow::Context;

use picket_store::{Store, UserRecord};

/// `picket-control init`: CA, server certificate, admin bundle, the store
/// with the admin user in it, and `control.toml`.
pub fn init(data_dir: &Path, sans: &[String]) -> anyhow::Result<picket_pki::InitReport> {
    let report = picket_pki::init(data_dir, sans)?;
    seed(data_dir, "")?;
    Ok(report)
}

/// The first admin, whose bundle `init` writes.
pub(crate) fn admin_user() -> UserRecord {
    UserRecord {
        name: "admin".into(),
        role: picket_model::Role::Admin,
        created_ms: picket_clock::now_ms(),
        revoked_ms: None,
        run_as: Vec::new(),
        hosts: None,
    }
}

/// The store with the admin user in it, and `control.toml` (the template,
/// then `extra`) unless one exists.
pub(crate) fn seed(data_dir: &Path, extra: &str) -> anyhow::Result<()> {
    let store = Store::open(data_dir)?;
    store.put_user(&admin_user())?;
    store.flush()?;
    let cfg_path = data_dir.join("control.toml");
    if !cfg_path.exists() {
        let abs = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        let text = picket_config::control::ControlConfig::template(&abs) + extra;
        std::fs::write(&cfg_path, text)
            .with_context(|| format!("cannot write {}", cfg_path.display()))?;
    }
    Ok(())
}
