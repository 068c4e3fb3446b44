//! `picketctl`, the Picket admin CLI, as a library (the binary is a thin
//! `main`). Profiles are `picket_config::profile`'s, which dev mode uses
//! too. Nothing depends on this crate.
//!
//! Layout: [`args`] (clap), [`settings`] (flag > env > profile),
//! [`client`] (mTLS channel, status → one line), [`cmd`] (one module per
//! subcommand), [`output`] (tables and JSON lines).

pub mod args;
pub mod client;
pub mod cmd;
pub mod output;
pub mod settings;

/// A failure of the user's input or configuration: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct BadConfig(pub anyhow::Error);

/// The command failed and has said why on stdout/stderr already: exit 1
/// with nothing more printed (`run` with a failed host, `watch` of a
/// rollout that did not succeed).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Failed(pub String);
