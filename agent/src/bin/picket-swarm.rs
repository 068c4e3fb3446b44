//! `picket-swarm`: N simulated agents against one control plane, for load
//! tests (docs/reference.md, docs/benchmarks.md). Exit codes: 0 stopped by
//! a signal, 1 an agent could not be enrolled or was refused, 2 bad usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use picket_agent::swarm::{self, Counts};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "picket-swarm", version = env!("PICKET_VERSION"), about = "Many simulated Picket agents in one process, for load tests")]
struct Cli {
    #[command(flatten)]
    log: picket_log::LogArgs,
    /// The control plane, HOST:PORT; several comma-separated.
    #[arg(long)]
    server: picket_config::Servers,
    /// The CA fingerprint printed by `picket-control init` (sha256:HEX).
    #[arg(long)]
    ca_fingerprint: String,
    /// A token with at least as many uses as agents still to enroll
    /// (`picketctl token create --uses N`).
    #[arg(long, env = "PICKET_TOKEN", hide_env_values = true)]
    token: String,
    /// How many agents: swarm-00001 … swarm-N.
    #[arg(long)]
    agents: usize,
    /// Where each agent's key and certificate are kept (a second run with
    /// the same folder enrolls none again).
    #[arg(long, default_value = "swarm-state")]
    state_dir: PathBuf,
    /// How often each agent sends a metric sample.
    #[arg(long, default_value = "10s", value_parser = picket_model::parse_duration)]
    metrics_interval: Duration,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 16)]
    enroll_parallel: usize,
    /// The first agent's number: agents FROM … FROM+N-1 (two swarms on one
    /// control plane take different ranges).
    #[arg(long, default_value_t = 1)]
    from: usize,
    /// Append `NAME UNIX_NS` to this file as each step dispatch arrives.
    #[arg(long, value_name = "FILE")]
    dispatch_log: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    picket_log::init_filtered(cli.log.log_format, "warn");
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("picket-swarm: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("picket-swarm: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            picket_agent::service::until_signal().await;
            shutdown.cancel();
        });
    }
    std::fs::create_dir_all(&cli.state_dir)
        .map_err(|e| format!("cannot create {}: {e}", cli.state_dir.display()))?;
    let dispatch_log = match &cli.dispatch_log {
        Some(p) => Some(std::sync::Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("cannot open {}: {e}", p.display()))?,
        )),
        None => None,
    };
    let counts = Arc::new(Counts {
        dispatch_log,
        ..Counts::default()
    });
    let printer = {
        let (counts, shutdown) = (counts.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => println!("{}", counts.json()),
                }
            }
        })
    };
    let cli = Arc::new(cli);
    let enrolling = Arc::new(tokio::sync::Semaphore::new(cli.enroll_parallel.max(1)));
    let mut agents = tokio::task::JoinSet::new();
    for i in cli.from..cli.from + cli.agents {
        let (cli, counts, shutdown) = (cli.clone(), counts.clone(), shutdown.clone());
        let enrolling = enrolling.clone();
        agents.spawn(async move {
            let (name, dir) = swarm::agent_dir(&cli.state_dir, i);
            {
                let _permit = enrolling.acquire().await.map_err(|e| e.to_string())?;
                swarm::ensure_enrolled(
                    &cli.server,
                    &cli.token,
                    &cli.ca_fingerprint,
                    (&name, &dir),
                    &shutdown,
                )
                .await
                .map_err(|e| format!("{name}: {e}"))?;
            }
            counts
                .enrolled
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            swarm::run_one(
                &cli.server,
                name,
                &dir,
                cli.metrics_interval,
                counts,
                &shutdown,
            )
            .await
        });
    }
    let mut first_error = None;
    while let Some(r) = agents.join_next().await {
        let failed = match r {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = failed
            && !shutdown.is_cancelled()
        {
            // One agent that cannot go on (a used-up token, a revocation)
            // makes the run's figures meaningless: stop them all.
            first_error.get_or_insert(e);
            shutdown.cancel();
        }
    }
    printer.abort();
    println!("{}", counts.json());
    first_error.map_or(Ok(()), Err)
}
