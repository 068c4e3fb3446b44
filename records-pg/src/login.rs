//! The password, as libpq finds it (SPEC §12: "password from PGPASSFILE
//! or password_file"): the URL's own; else `password_file`'s first line;
//! else the first matching line of the password file (`PGPASSFILE`, by
//! default `~/.pgpass`): `host:port:database:user:password`, `*` matching
//! anything, `\:` and `\\` escaped, `#` lines comments. As libpq does, a
//! password file that its group or others can read is ignored, with a
//! warning.

use std::path::{Path, PathBuf};

use tokio_postgres::config::Host;

use crate::{PgError, Settings};

/// Where the password file is: `PGPASSFILE`, else `~/.pgpass`.
pub(crate) fn default_pgpass() -> Option<PathBuf> {
    std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass")))
}

/// Sets `config`'s password from `settings` when the URL has none.
pub(crate) fn password(
    config: &mut tokio_postgres::Config,
    settings: &Settings,
) -> Result<(), PgError> {
    if config.get_password().is_some() {
        return Ok(());
    }
    if let Some(file) = &settings.password_file {
        let text = std::fs::read_to_string(file).map_err(|e| {
            PgError::Config(format!("cannot read password_file {}: {e}", file.display()))
        })?;
        config.password(text.lines().next().unwrap_or_default());
        return Ok(());
    }
    let Some(file) = &settings.pgpass else {
        return Ok(());
    };
    let Ok(meta) = std::fs::metadata(file) else {
        return Ok(());
    };
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            file = %file.display(),
            "the password file can be read by its group or others: ignored (chmod 0600 it)"
        );
        return Ok(());
    }
    let text = std::fs::read_to_string(file).map_err(|e| {
        PgError::Config(format!(
            "cannot read the password file {}: {e}",
            file.display()
        ))
    })?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        _ => "localhost".to_string(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let user = config.get_user().unwrap_or_default().to_string();
    let db = config.get_dbname().unwrap_or(&user).to_string();
    if let Some(p) = lookup(&text, [&host, &port, &db, &user]) {
        config.password(p);
    }
    Ok(())
}

/// The password of the first line whose four fields match `want`.
fn lookup(text: &str, want: [&str; 4]) -> Option<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(fields)
        .find(|f| f.len() == 5 && f.iter().zip(want).all(|(f, w)| f == "*" || f == w))
        .and_then(|mut f| f.pop())
}

/// A line's `:`-separated fields, `\` escaping the next character.
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(n), Some(last)) = (chars.next(), out.last_mut()) {
                    last.push(n);
                }
            }
            // The password is the rest of the line, colons and all.
            ':' if out.len() < 5 => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_match_as_libpq_reads_them() {
        let text = "# comment\n\
                    db1:5432:picket:picket:first\n\
                    *:*:picket:picket:wild\\:card\n\
                    other:*:*:*:x:y\n";
        let want = |h: &str| lookup(text, [h, "5432", "picket", "picket"]);
        assert_eq!(want("db1").as_deref(), Some("first"));
        assert_eq!(want("db2").as_deref(), Some("wild:card"));
        assert_eq!(
            lookup(text, ["other", "1", "d", "u"]).as_deref(),
            Some("x:y")
        );
        assert_eq!(lookup(text, ["db2", "5432", "picket", "admin"]), None);
        assert_eq!(lookup("a:b\n", ["a", "b", "c", "d"]), None);
    }
}
