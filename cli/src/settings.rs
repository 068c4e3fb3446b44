//! Resolved settings: each of server, ca, cert, key from the flag, else the
//! `PICKET_*` variable (clap handles those two), else the profile.

use std::path::PathBuf;

use anyhow::anyhow;

use crate::BadConfig;
use crate::args::Cli;
use picket_config::profile::{self, Profile, ProfileError};

#[derive(Clone)]
pub struct Settings {
    pub server: picket_config::Servers,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Settings {
    pub fn resolve(cli: &Cli) -> Result<Settings, BadConfig> {
        let explicit = cli.profile.is_some();
        let name = cli.profile.clone().unwrap_or_else(|| "default".into());
        let path = profile::path_of(&name).map_err(|e| BadConfig(e.into()))?;
        let prof = match Profile::load(&path) {
            Ok(p) => p,
            // The default profile is optional when flags say everything.
            Err(ProfileError::Missing { .. }) if !explicit => Profile::default(),
            Err(e) => return Err(BadConfig(e.into())),
        };
        let missing = |what: &str, flag: &str, var: &str| {
            BadConfig(anyhow!(
                "no {what}: pass {flag}, set {var}, or put `{what}` in profile {} \
                 (`picket-control dev` writes one)",
                path.display()
            ))
        };
        Ok(Settings {
            server: cli
                .server
                .clone()
                .or(prof.server)
                .ok_or_else(|| missing("server", "--server", "PICKET_SERVER"))?,
            ca: cli
                .ca
                .clone()
                .or(prof.ca)
                .ok_or_else(|| missing("ca", "--ca", "PICKET_CA"))?,
            cert: cli
                .cert
                .clone()
                .or(prof.cert)
                .ok_or_else(|| missing("cert", "--cert", "PICKET_CERT"))?,
            key: cli
                .key
                .clone()
                .or(prof.key)
                .ok_or_else(|| missing("key", "--key", "PICKET_KEY"))?,
        })
    }
}
