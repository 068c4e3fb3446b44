//! A real PostgreSQL server for a test: Debian's `postgresql` (15),
//! initialised in a folder of the test's own, listening on a loopback port
//! of its own (no Unix socket), with password login. PostgreSQL refuses
//! to run as root: as root, the folder is the `postgres` user's and the
//! server runs as that user. The server can be stopped and started again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{Proc, free_port, wait_for};

/// The database user and its password.
pub const USER: &str = "picket";
pub const PASSWORD: &str = "picket-test-password";

pub struct Postgres {
    /// The server's folder (under a temporary folder of its own, which
    /// the `postgres` user can enter).
    dir: tempfile::TempDir,
    data: PathBuf,
    pub port: u16,
    /// A file holding [`PASSWORD`], for `password_file`.
    pub password_file: PathBuf,
    proc: Option<Proc>,
    /// Extra `-c name=value` settings.
    settings: Vec<String>,
    /// With [`Postgres::start_tls`]: the CA that signed the server's
    /// certificate (PEM).
    pub ca_file: Option<PathBuf>,
    /// The network namespace it runs in, if any, and its address.
    netns: Option<String>,
    host: String,
}

/// Where Debian installs the server's programs (the newest version).
fn bin_dir() -> Result<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|p| p.join("postgres").exists());
    versions.sort();
    versions.pop().context(
        "PostgreSQL's server is not installed (Debian package postgresql; scripts/test installs it)",
    )
}

/// Where the server's folder goes: the temporary folder, if the
/// `postgres` user can reach into it (every folder above it searchable by
/// others), else /tmp.
fn base_dir() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let t = std::env::temp_dir();
    let reachable = t
        .ancestors()
        .all(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    if reachable { t } else { PathBuf::from("/tmp") }
}

fn as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `argv` in network namespace `netns` if given (`ip netns exec` execs
/// it).
fn in_netns(netns: Option<&str>, argv: Vec<std::ffi::OsString>) -> Command {
    let mut all: Vec<std::ffi::OsString> = match netns {
        Some(ns) => ["ip", "netns", "exec", ns].map(Into::into).to_vec(),
        None => Vec::new(),
    };
    all.extend(argv);
    let mut c = Command::new(&all[0]);
    c.args(&all[1..]);
    c
}

/// `program`, as the `postgres` user when we are root (setpriv execs it,
/// so the process we hold, and signal, is the program itself), in network
/// namespace `netns` if given.
fn command(program: &Path, dir: &Path, netns: Option<&str>) -> Command {
    let mut argv: Vec<std::ffi::OsString> = Vec::new();
    if as_root() {
        argv.extend(
            [
                "setpriv",
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ]
            .map(Into::into),
        );
    }
    argv.push(program.into());
    let mut c = in_netns(netns, argv);
    c.current_dir(dir);
    c
}

impl Postgres {
    /// Initialises and starts a server; `settings` are extra `name=value`
    /// server settings (`fsync=off` for a test that does not measure).
    pub fn start(settings: &[&str]) -> Result<Postgres> {
        Postgres::start_with(settings, false, None)
    }

    /// A server that takes TLS connections only (`hostssl` in
    /// pg_hba.conf), its certificate (for 127.0.0.1) signed by a CA made
    /// here: [`Postgres::ca_file`].
    pub fn start_tls(settings: &[&str]) -> Result<Postgres> {
        Postgres::start_with(settings, true, None)
    }

    fn start_with(settings: &[&str], tls: bool, netns: Option<(&str, &str)>) -> Result<Postgres> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("picket-pg")
            .tempdir_in(base_dir())?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let data = dir.path().join("data");
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, format!("{PASSWORD}\n"))?;
        std::fs::create_dir(&data)?;
        if as_root() {
            let pg = nix::unistd::User::from_name("postgres")?
                .context("no postgres user (Debian package postgresql makes it)")?;
            for p in [&data, &password_file] {
                nix::unistd::chown(p.as_path(), Some(pg.uid), Some(pg.gid))?;
            }
        }
        let out = command(&bin.join("initdb"), dir.path(), None)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                USER,
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", password_file.display()))
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut settings: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
        let mut ca_file = None;
        if tls {
            let (ca, cert, key) = (
                dir.path().join("ca.crt"),
                data.join("server.crt"),
                data.join("server.key"),
            );
            server_certificate(&ca, &cert, &key)?;
            if as_root() {
                let pg = nix::unistd::User::from_name("postgres")?
                    .context("no postgres user (Debian package postgresql makes it)")?;
                for p in [&cert, &key] {
                    nix::unistd::chown(p.as_path(), Some(pg.uid), Some(pg.gid))?;
                }
            }
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
            std::fs::write(
                data.join("pg_hba.conf"),
                "hostssl all all 127.0.0.1/32 scram-sha-256\n",
            )?;
            settings.extend([
                "ssl=on".to_string(),
                format!("ssl_cert_file={}", cert.display()),
                format!("ssl_key_file={}", key.display()),
            ]);
            ca_file = Some(ca);
        }
        if netns.is_some() {
            let mut hba = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("pg_hba.conf"))?;
            use std::io::Write;
            writeln!(hba, "host all all 10.0.0.0/8 scram-sha-256")?;
        }
        let mut pg = Postgres {
            netns: netns.map(|(ns, _)| ns.to_string()),
            host: netns.map_or("127.0.0.1", |(_, ip)| ip).to_string(),
            dir,
            data,
            port: if netns.is_some() { 5432 } else { free_port()? },
            password_file,
            proc: None,
            settings,
            ca_file,
        };
        pg.resume()?;
        Ok(pg)
    }

    /// The URL Picket connects to (the password comes from the file).
    pub fn url(&self) -> String {
        format!("postgresql://{USER}@{}:{}/postgres", self.host, self.port)
    }

    /// `program` where the server is (its namespace, if any).
    fn exec(&self, program: &Path) -> Command {
        in_netns(self.netns.as_deref(), vec![program.into()])
    }

    /// A server in network namespace `ns` (the namespace fleet's
    /// vm-security, say), listening on `ip` port 5432, taking logins from
    /// the fleet's addresses.
    pub fn start_in_namespace(ns: &str, ip: &str, settings: &[&str]) -> Result<Postgres> {
        let pg = Postgres::start_with(settings, false, Some((ns, ip)))?;
        pg.psql("SELECT 1")?;
        Ok(pg)
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn resume(&mut self) -> Result<()> {
        let bin = bin_dir()?;
        let netns = self.netns.as_deref();
        let mut cmd = command(&bin.join("postgres"), self.dir.path(), netns);
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string()])
            .args(["-c", &format!("listen_addresses={}", self.host)])
            .args(["-c", "unix_socket_directories="]);
        for s in &self.settings {
            cmd.args(["-c", s]);
        }
        self.proc = Some(Proc::spawn(cmd)?);
        let port = self.port.to_string();
        wait_for(
            "PostgreSQL accepting connections",
            Duration::from_secs(30),
            || {
                let ready = self
                    .exec(&bin.join("pg_isready"))
                    .args(["-h", &self.host, "-p", &port, "-q"])
                    .status()
                    .ok()?;
                ready.success().then_some(())
            },
        )
        .with_context(|| self.stderr())
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.signal(nix::sys::signal::Signal::SIGINT);
            p.wait_exit(Duration::from_secs(30))?;
        }
        Ok(())
    }

    /// What the server printed.
    pub fn stderr(&self) -> String {
        self.proc.as_ref().map(Proc::stderr).unwrap_or_default()
    }

    /// Runs `sql` with psql (tests that look at the tables themselves).
    pub fn psql(&self, sql: &str) -> Result<String> {
        let out = self
            .exec(Path::new("psql"))
            .args(["-h", &self.host, "-p", &self.port.to_string(), "-U", USER])
            .args(["-d", "postgres", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// A CA (written to `ca`) and a certificate for 127.0.0.1 it signed.
fn server_certificate(ca: &Path, cert: &Path, key: &Path) -> Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "postgres test CA");
    let ca_cert = params.self_signed(&ca_key)?;
    let issuer = Issuer::new(params, ca_key);
    let server_key = KeyPair::generate()?;
    let mut p = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    p.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let server = p.signed_by(&server_key, &issuer)?;
    std::fs::write(ca, ca_cert.pem())?;
    std::fs::write(cert, server.pem())?;
    std::fs::write(key, server_key.serialize_pem())?;
    Ok(())
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            // SIGQUIT: immediate shutdown; the folder goes with the test.
            p.signal(nix::sys::signal::Signal::SIGQUIT);
            let _ = p.wait_exit(Duration::from_secs(10));
        }
    }
}
