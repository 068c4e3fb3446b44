//! `picket-control`: the control plane daemon (`run`), its PKI (`init`) and
//! dev mode (`dev`). Exit codes: 0 ok, 1 runtime failure, 2 bad usage or
//! bad configuration; one line on stderr.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use picket_control::config::ControlConfig;
use picket_control::server::{self, Listeners};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "picket-control", version, about = "Picket control plane")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
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
    /// Start a loopback control plane with a local agent, for a first look.
    Dev(picket_control::dev::DevArgs),
}

/// An error that is the user's input or configuration: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
struct BadConfig(anyhow::Error);

fn main() -> ExitCode {
    picket_tls::install_provider();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Init { data_dir, sans } => {
            let r = picket_control::init(&data_dir, &sans).map_err(BadConfig)?;
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
        Cmd::Dev(args) => {
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            rt.block_on(picket_control::dev::run(args))
        }
    }
}
