//! CLI profiles: `<config dir>/<name>.toml` with `server`, `ca`, `cert`,
//! `key`. The config dir is `$PICKET_CONFIG_DIR`, else
//! `$XDG_CONFIG_HOME/picket`, else `~/.config/picket`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// One address, or a list (SPEC §12).
    pub server: Option<crate::Servers>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("no HOME and no PICKET_CONFIG_DIR: cannot find the profile folder")]
    NoHome,
    #[error("profile {path} does not exist")]
    Missing { path: PathBuf },
    #[error("cannot read profile {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("bad profile {path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("cannot write profile {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
}

pub fn config_dir() -> Result<PathBuf, ProfileError> {
    if let Some(d) = std::env::var_os("PICKET_CONFIG_DIR") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("picket"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".config").join("picket"))
        .ok_or(ProfileError::NoHome)
}

pub fn path_of(name: &str) -> Result<PathBuf, ProfileError> {
    Ok(config_dir()?.join(format!("{name}.toml")))
}

impl Profile {
    /// Loads a profile; relative paths in it are relative to its folder.
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ProfileError::Missing {
                    path: path.to_path_buf(),
                });
            }
            Err(error) => {
                return Err(ProfileError::Read {
                    path: path.to_path_buf(),
                    error,
                });
            }
        };
        let mut p: Profile = toml::from_str(&text).map_err(|e| ProfileError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string().trim().replace('\n', " "),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for f in [&mut p.ca, &mut p.cert, &mut p.key].into_iter().flatten() {
            if f.is_relative() {
                *f = base.join(&*f);
            }
        }
        Ok(p)
    }

    /// Writes the profile with a header comment; `header` says who wrote it.
    pub fn write(&self, path: &Path, header: &str) -> Result<(), ProfileError> {
        let err = |error| ProfileError::Write {
            path: path.to_path_buf(),
            error,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let body = toml::to_string(self).unwrap_or_default();
        std::fs::write(path, format!("# {header}\n{body}")).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_relative_paths_and_errors() {
        let dir = std::env::temp_dir().join(format!("picketctl-profile-{}", std::process::id()));
        let path = dir.join("p.toml");
        let p = Profile {
            server: Some(crate::Servers::parse("127.0.0.1:7443,127.0.0.2:7443").unwrap()),
            ca: Some("ca.crt".into()),
            cert: Some("/abs/admin.crt".into()),
            key: None,
        };
        p.write(&path, "test").unwrap();
        let back = Profile::load(&path).unwrap();
        assert_eq!(back.server, p.server);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(r#"server = ["127.0.0.1:7443", "127.0.0.2:7443"]"#),
            "{text}"
        );
        assert_eq!(back.ca, Some(dir.join("ca.crt")));
        assert_eq!(back.cert, Some(PathBuf::from("/abs/admin.crt")));
        std::fs::write(&path, "server = 1\n").unwrap();
        let e = Profile::load(&path).unwrap_err().to_string();
        assert!(e.contains("p.toml") && e.contains("server"), "{e}");
        assert!(matches!(
            Profile::load(&dir.join("none.toml")),
            Err(ProfileError::Missing { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
