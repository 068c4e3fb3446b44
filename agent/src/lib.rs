//! Picket's host agent, as a library: the `picket-agent` binary and the
//! control plane's dev mode both run it.
//!
//! Layout:
//! - [`config`] — `agent.toml`.
//! - [`enroll`] — key, CSR, CA pin, token exchange.
//! - [`identity`] — certificate storage and renewal.
//! - [`inventory`] — what the host is (sysinfo); no sending.
//! - [`uplink`] — the session stream, heartbeats, reconnect with backoff.

pub mod config;
pub mod enroll;
pub mod identity;
pub mod inventory;
pub mod uplink;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Uplink(#[from] uplink::UplinkError),
}

/// Runs the agent until `shutdown` is cancelled or the control plane
/// refuses it for good (revoked).
pub async fn run(cfg: config::AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    let identity = Arc::new(identity::Identity::load(&cfg.state_dir)?);
    if !cfg.sources.is_empty() {
        tracing::warn!(
            sources = cfg.sources.len(),
            "log sources are configured but this agent version does not tail them yet"
        );
    }
    uplink::run(cfg, identity, shutdown).await?;
    Ok(())
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
