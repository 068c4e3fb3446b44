//! Picket's configuration files, read and checked whole: the control
//! plane's `control.toml` ([`control`]), the agent's `agent.toml`
//! ([`agent`]) and `picketctl`'s profiles ([`profile`], which dev mode
//! writes too). Unknown keys are errors naming the file.
//!
//! Both daemons' files are read by one loader ([`read`], [`from_toml`]),
//! so they fail alike: the file, then what is wrong in it.
//! Reading the file is the only I/O here; nothing connects or listens.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub mod agent;
pub mod check;
pub mod control;
pub mod profile;
pub mod servers;

pub use servers::Servers;

/// A config file that cannot be read, or says something wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("bad config {path}: {detail}")]
    Parse { path: PathBuf, detail: String },
}

impl ConfigError {
    /// A problem found in `path` after it parsed.
    pub fn bad(path: &Path, detail: impl Into<String>) -> ConfigError {
        ConfigError::Parse {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }
}

/// The text of a config file.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })
}

/// `text` (the file `path`) as `T`; TOML's message on one line.
pub fn from_toml<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text)
        .map_err(|e| ConfigError::bad(path, e.to_string().trim().replace('\n', " ")))
}
