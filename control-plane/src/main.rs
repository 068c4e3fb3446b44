//! `picket-control`: the control plane daemon (`run`), its PKI (`init`) and
//! dev mode (`dev`). Exit codes: 0 ok, 1 runtime failure, 2 bad usage or
//! bad configuration; one line on stderr.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use picket_config::control::{ClusterConfig, ControlConfig};
use picket_control::server::{self, Listeners};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "picket-control", version = env!("PICKET_VERSION"), about = "Picket control plane")]
struct Cli {
    #[command(flatten)]
    log: picket_log::LogArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Cluster mode's flags of `init` and `join`.
#[derive(clap::Args)]
struct ClusterArgs {
    /// An etcd member, http://HOST:PORT (repeat once per member): the
    /// cluster's CA goes there, and control.toml gets [cluster].
    #[arg(long = "cluster-etcd", value_name = "URL")]
    etcd: Vec<String>,
    /// This replica's name in the cluster (default: the host name).
    #[arg(long)]
    node: Option<String>,
    /// How agents and peers reach this replica, HOST:PORT (default: the
    /// first --san, else localhost, on port 7443).
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// TLS to etcd (https:// members): the CA of etcd's certificates.
    #[arg(long, value_name = "FILE")]
    etcd_ca: Option<PathBuf>,
    /// A client certificate and key for etcd (`--client-cert-auth`).
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
}

impl ClusterArgs {
    fn replica(self, sans: &[String]) -> Option<ClusterConfig> {
        if self.etcd.is_empty() {
            return None;
        }
        let host = sans.first().map_or("localhost", String::as_str);
        let abs = |p: Option<PathBuf>| p.map(|p| std::path::absolute(&p).unwrap_or(p));
        Some(ClusterConfig {
            etcd_ca: abs(self.etcd_ca),
            etcd_cert: abs(self.etcd_cert),
            etcd_key: abs(self.etcd_key),
            etcd: self.etcd,
            node: self
                .node
                .unwrap_or_else(picket_config::control::default_name),
            advertise: self.advertise.unwrap_or_else(|| format!("{host}:7443")),
            postgres: None,
            password_file: None,
        })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the CA, server certificate, first admin bundle and control.toml.
    Init {
        /// Folder for keys, certificates, config and store.
        #[arg(long)]
        data_dir: PathBuf,
        /// Extra name or IP address agents will dial (repeatable).
        #[arg(long = "san", value_name = "NAME_OR_IP")]
        sans: Vec<String>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Make another replica of a cluster from the CA in etcd (SPEC §12):
    /// its own server certificate, and control.toml with [cluster].
    Join {
        /// Folder for keys, certificates, config and store.
        #[arg(long)]
        data_dir: PathBuf,
        /// Extra name or IP address agents will dial (repeatable).
        #[arg(long = "san", value_name = "NAME_OR_IP")]
        sans: Vec<String>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Run the control plane.
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// gRPC address (overrides `listen`); port 0 picks a free port.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// HTTP address (overrides `http_listen`); port 0 picks a free port.
        #[arg(long, value_name = "ADDR")]
        http_listen: Option<SocketAddr>,
    },
    /// Check control.toml and the alert file it names, offline (nothing
    /// starts): each problem as FILE:LINE:COL: field: message; exit 0
    /// clean, 1 on a problem, 2 if the file cannot be read.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// One JSON object a finding, for CI annotations.
        #[arg(short = 'o', long = "output", value_parser = ["table", "json"], default_value = "table")]
        output: String,
        /// Warnings fail the check too.
        #[arg(long)]
        strict: bool,
    },
    /// Start a loopback control plane with a local agent, for a first look.
    Dev(picket_control::dev::DevArgs),
    /// Print the CA fingerprint that agents pin (`sha256:HEX`).
    CaFingerprint {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Issue a new server certificate (same names, plus any --san) from the
    /// CA in the data folder; `systemctl reload picket-control` (SIGHUP)
    /// serves it without dropping anyone.
    RotateServerCert {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// An extra name or IP address for the new certificate (repeatable).
        #[arg(long = "san", value_name = "NAME_OR_IP")]
        sans: Vec<String>,
    },
    /// Write a consistent archive of the control plane (store, blocks, CA
    /// and server keys, control.toml) while it runs. It holds the CA key:
    /// it is written 0600; keep it as you keep that key.
    Backup {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Replace --out if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Make a new data folder (with a control.toml pointing at it) from a
    /// backup archive; `run --config DIR/control.toml` serves it.
    ///
    /// A replica of a cluster (docs/cluster.md): into a fresh etcd, the
    /// CA and the shared state (agents, tokens, users, audit) are written
    /// from the backup; into the etcd of the same cluster, nothing is.
    Restore {
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The etcd members to restore into, replacing the backup's
        /// `[cluster] etcd` (repeat once per member).
        #[arg(long = "cluster-etcd", value_name = "URL")]
        cluster_etcd: Vec<String>,
    },
}

/// An error that is the user's input or configuration: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
struct BadConfig(anyhow::Error);

fn main() -> ExitCode {
    picket_tls::install_provider();
    let cli = Cli::parse();
    picket_log::init(cli.log.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("picket-control: {e:#}");
            if e.downcast_ref::<BadConfig>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `picket-control check`: control.toml, then the alert file it names.
fn check(config: &std::path::Path, json: bool, strict: bool) -> anyhow::Result<()> {
    use picket_config::check::{Doc, Level};
    let text = picket_config::read(config).map_err(|e| BadConfig(e.into()))?;
    let name = config.display().to_string();
    let (cfg, mut found) = picket_config::control::ControlConfig::check(&name, &text, config);
    if let Some(alerts) = cfg.and_then(|c| c.alerts) {
        match std::fs::read_to_string(&alerts) {
            Ok(t) => {
                found.extend(picket_alert::rules::check_file(&alerts.display().to_string(), &t).1)
            }
            Err(e) => found.push(Doc::new(&name, &text).problem(
                "alerts",
                &format!("cannot read {}: {e}", alerts.display()),
                Level::Error,
            )),
        }
    }
    let tally = picket_config::check::print(&found, json, &mut std::io::stdout().lock())?;
    if tally.fails(strict) {
        anyhow::bail!("{tally}");
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Init {
            data_dir,
            sans,
            cluster,
        } => {
            let r = match cluster.replica(&sans) {
                None => picket_control::init(&data_dir, &sans).map_err(BadConfig)?,
                Some(c) => tokio::runtime::Runtime::new()
                    .context("starting the runtime")?
                    .block_on(picket_control::cluster::init(&data_dir, &sans, &c))?,
            };
            println!("Created the Picket CA in {}", data_dir.display());
            println!("CA fingerprint: {}", r.fingerprint);
            println!(
                "Admin bundle: {} {} {}",
                r.admin_cert.display(),
                r.admin_key.display(),
                r.ca_cert.display()
            );
            println!("Config: {}", data_dir.join("control.toml").display());
            println!(
                "Next: picket-control run --config {}",
                data_dir.join("control.toml").display()
            );
            Ok(())
        }
        Cmd::Join {
            data_dir,
            sans,
            cluster,
        } => {
            let c = cluster
                .replica(&sans)
                .ok_or_else(|| BadConfig(anyhow::anyhow!("join needs --cluster-etcd")))?;
            let fingerprint = tokio::runtime::Runtime::new()
                .context("starting the runtime")?
                .block_on(picket_control::cluster::join(&data_dir, &sans, &c))?;
            println!("Joined the cluster as {} in {}", c.node, data_dir.display());
            println!("CA fingerprint: {fingerprint}");
            println!(
                "Next: picket-control run --config {}",
                data_dir.join("control.toml").display()
            );
            Ok(())
        }
        Cmd::Run {
            config,
            listen,
            http_listen,
        } => {
            let mut cfg = ControlConfig::load(&config).map_err(|e| BadConfig(e.into()))?;
            // A bad alert file is a configuration error too (exit 2); the
            // driver reads it again when it starts.
            picket_control::alert::driver::load(cfg.alerts.as_ref())
                .map_err(|e| BadConfig(e.into()))?;
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if let Some(h) = http_listen {
                cfg.http_listen = h;
            }
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            rt.block_on(async move {
                let listeners = Listeners::bind(cfg.listen, cfg.http_listen).await?;
                let shutdown = CancellationToken::new();
                picket_control::lifecycle::spawn_signal_handler(shutdown.clone())?;
                server::run(cfg, listeners, shutdown).await
            })
        }
        Cmd::Check {
            config,
            output,
            strict,
        } => check(&config, output == "json", strict),
        Cmd::CaFingerprint { data_dir } => {
            let ca = picket_pki::Ca::load(&data_dir)
                .map_err(|e| BadConfig(anyhow::Error::from(e).context("no usable CA")))?;
            println!("{}", ca.fingerprint());
            Ok(())
        }
        Cmd::RotateServerCert { config, sans } => {
            let cfg = ControlConfig::load(&config).map_err(|e| BadConfig(e.into()))?;
            let ca = picket_pki::Ca::load(&cfg.data_dir)
                .with_context(|| format!("no usable CA in {}", cfg.data_dir.display()))?;
            let c = picket_pki::server::rotate(&cfg.data_dir, &ca, &sans).map_err(|e| match e {
                picket_pki::PkiError::BadSan(..) => BadConfig(e.into()).into(),
                e => anyhow::Error::from(e),
            })?;
            println!(
                "New server certificate {} for {}",
                c.serial_hex,
                c.names.join(", ")
            );
            println!(
                "Valid until {}",
                humantime::format_rfc3339_seconds(c.not_after)
            );
            println!("Next: systemctl reload picket-control (or kill -HUP its pid) to serve it");
            Ok(())
        }
        Cmd::Backup { config, out, force } => {
            let r = picket_control::backup::backup(&config, &out, force)?;
            let frozen = r
                .frozen_ms
                .map_or("taken from the stopped store".to_string(), |ms| {
                    format!("writes held for {ms} ms")
                });
            println!(
                "Backup written to {} ({} files, {} bytes; {frozen}). It holds the CA key.",
                out.display(),
                r.files,
                r.bytes
            );
            Ok(())
        }
        Cmd::Restore {
            from,
            data_dir,
            cluster_etcd,
        } => {
            let r = picket_control::backup::restore(&from, &data_dir)?;
            println!(
                "Restored {} files ({} index entries) into {}",
                r.files,
                r.pairs,
                data_dir.display()
            );
            if !cluster_etcd.is_empty() {
                picket_control::backup::cluster::repoint_etcd(&r.config, &cluster_etcd)
                    .map_err(BadConfig)?;
            }
            let cfg = ControlConfig::load(&r.config).map_err(|e| BadConfig(e.into()))?;
            if let Some(c) = &cfg.cluster {
                let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
                let said = rt
                    .block_on(picket_control::backup::cluster::restore(&cfg.data_dir, c))
                    .with_context(|| {
                        format!(
                            "{} is restored, but not the cluster's state in etcd; \
                             remove it and restore again once etcd answers",
                            data_dir.display()
                        )
                    })?;
                println!("{said}");
            }
            println!("Next: picket-control run --config {}", r.config.display());
            Ok(())
        }
        Cmd::Dev(args) => {
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            rt.block_on(picket_control::dev::run(args))
        }
    }
}
