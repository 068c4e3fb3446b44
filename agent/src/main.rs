//! `picket-agent`: enroll this host, then run. Exit codes: 0 ok, 1 runtime
//! failure (including revocation), 2 bad usage or configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use picket_agent::enroll::{EnrollOptions, enroll};
use picket_config::agent::{AgentConfig, default_state_dir};
use picket_model::{Labels, parse_label};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "picket-agent", version = env!("PICKET_VERSION"), about = "Picket host agent")]
struct Cli {
    #[command(flatten)]
    log: picket_log::LogArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Enroll this host with a bootstrap token.
    Enroll {
        /// The control plane, HOST:PORT; several comma-separated (a
        /// cluster's replicas): agent.toml keeps them all.
        #[arg(long)]
        server: picket_config::Servers,
        /// Bootstrap token from `picketctl token create`.
        #[arg(long, env = "PICKET_TOKEN", hide_env_values = true)]
        token: String,
        /// The CA fingerprint printed by `picket-control init` (sha256:HEX).
        #[arg(long)]
        ca_fingerprint: String,
        /// Agent name (default: this host's name).
        #[arg(long)]
        name: Option<String>,
        /// A label key=value (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        #[arg(long, default_value_os_t = default_state_dir())]
        state_dir: PathBuf,
    },
    /// Check agent.toml offline (nothing starts): each problem as
    /// FILE:LINE:COL: field: message; exit 0 clean, 1 on a problem, 2 if
    /// the file cannot be read.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// One JSON object a finding, for CI annotations.
        #[arg(short = 'o', long = "output", value_parser = ["table", "json"], default_value = "table")]
        output: String,
    },
    /// Run the agent.
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
struct BadConfig(anyhow::Error);

fn main() -> ExitCode {
    one_arena();
    picket_tls::install_provider();
    let cli = Cli::parse();
    picket_log::init(cli.log.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("picket-agent: {e:#}");
            if e.downcast_ref::<BadConfig>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `picket-agent check`.
fn check(config: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let text = picket_config::read(config).map_err(|e| BadConfig(e.into()))?;
    let (_, found) = AgentConfig::check(&config.display().to_string(), &text);
    let tally = picket_config::check::print(&found, json, &mut std::io::stdout().lock())?;
    if tally.fails(false) {
        anyhow::bail!("{tally}");
    }
    Ok(())
}

/// glibc gives each thread that allocates an arena of its own (up to eight
/// per core), and the agent's dozen threads (sled's I/O pool, tokio's
/// blocking pool, the reader and the writer) each kept a few hundred KiB
/// in theirs: about 1 MiB of the agent's RSS under load
/// (docs/benchmarks.md). Its allocations are small and brief, and the
/// threads seldom allocate at once, so one arena costs no measurable CPU.
/// Called first, before any thread starts.
fn one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator; no thread
    // other than this one is running yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Cmd::Check { config, output } = &cli.cmd {
        return check(config, output == "json");
    }
    // One thread runs the async side (the stream, timers, the metrics
    // sampler); file tailing and sled writes run on their own blocking
    // threads. Worker threads per core would only add memory: the agent's
    // async work is light.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match cli.cmd {
        Cmd::Enroll {
            server,
            token,
            ca_fingerprint,
            name,
            labels,
            state_dir,
        } => {
            if let Err(e) = picket_tls::fingerprint::parse(&ca_fingerprint) {
                return Err(BadConfig(anyhow::anyhow!("--ca-fingerprint: {e}")).into());
            }
            let done = rt.block_on(enroll(EnrollOptions {
                server,
                token,
                ca_fingerprint,
                name,
                labels: labels.into_iter().collect::<Labels>(),
                state_dir,
            }))?;
            println!("Enrolled as {}", done.name);
            if done.config_written {
                println!("Wrote {}", done.config_path.display());
            }
            println!(
                "Next: picket-agent run --config {}",
                done.config_path.display()
            );
            Ok(())
        }
        Cmd::Check { .. } => Ok(()),
        Cmd::Run { config } => {
            let cfg = AgentConfig::load(&config).map_err(|e| BadConfig(e.into()))?;
            rt.block_on(async move {
                let shutdown = CancellationToken::new();
                let s = shutdown.clone();
                tokio::spawn(async move {
                    picket_agent::service::until_signal().await;
                    s.cancel();
                });
                picket_agent::run(cfg, shutdown).await
            })?;
            Ok(())
        }
    }
}
