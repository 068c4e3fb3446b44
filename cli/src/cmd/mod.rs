//! One module per subcommand. Each takes the admin client and the output
//! format and writes to stdout.

mod agents;
mod alerts;
mod audit;
mod check;
mod docs;
mod events;
mod logs;
mod metrics;
mod rollout;
mod run;
mod status;
mod token;
mod user;

use anyhow::anyhow;

use crate::args::{AlertsCmd, Cli, Cmd, RolloutCmd, SilenceCmd};
use crate::client;
use crate::settings::Settings;

/// A failed RPC as one line.
pub(crate) fn rpc(s: tonic::Status) -> anyhow::Error {
    anyhow!(client::describe(&s))
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    // What needs no server is answered before any setting is read.
    let fmt = cli.output;
    match &cli.cmd {
        Cmd::Completions { shell } => return docs::completions(*shell, &mut std::io::stdout()),
        Cmd::Man { dir } => return docs::man(dir),
        Cmd::Rollout(RolloutCmd::Check { files, strict }) => {
            return check::files(files, check::Kind::Rollout, *strict, fmt);
        }
        Cmd::Alerts(AlertsCmd::Check { files, strict }) => {
            return check::files(files, check::Kind::Alerts, *strict, fmt);
        }
        // A rollout file is read and checked before anything connects.
        Cmd::Rollout(RolloutCmd::Create { file }) => check::before_create(file)?,
        _ => {}
    }
    let settings = Settings::resolve(&cli)?;
    let mut admin = client::connect(&settings).await?;
    let out = &mut std::io::stdout().lock();
    match cli.cmd {
        Cmd::Agents(c) => agents::run(&mut admin, c, fmt, out).await,
        Cmd::Token(c) => token::run(&mut admin, c, fmt, out).await,
        Cmd::User(c) => user::run(&mut admin, c, fmt, out).await,
        Cmd::Status => status::status(&mut admin, fmt, out).await,
        Cmd::Whoami => status::whoami(&mut admin, fmt, out).await,
        Cmd::Completions { .. } | Cmd::Man { .. } => Ok(()),
        Cmd::Audit { limit, since } => {
            let since_unix_ms = since.map_or(0, picket_clock::ago_ms);
            audit::run(&mut admin, limit, since_unix_ms, fmt, out).await
        }
        Cmd::Events {
            host,
            source,
            severity,
            since,
            limit,
            grep,
            follow,
            after,
        } => {
            let q = picket_proto::v1::EventsQuery {
                host: host.unwrap_or_default(),
                source: source.unwrap_or_default(),
                min_severity: severity.map_or(0, |s| picket_proto::v1::Severity::from(s) as i32),
                since_unix_ms: since.map_or(0, ago_ms),
                limit,
                follow,
                grep: grep.unwrap_or_default(),
                after: after.unwrap_or_default(),
            };
            events::run(&mut admin, q, fmt).await
        }
        Cmd::Logs {
            host,
            source,
            since,
            grep,
            tail,
            follow,
            after,
        } => {
            let q = picket_proto::v1::LogsQuery {
                host: host.unwrap_or_default(),
                source: source.unwrap_or_default(),
                since_unix_ms: since.map_or(0, ago_ms),
                tail: tail.unwrap_or(0),
                follow,
                grep: grep.unwrap_or_default(),
                after: after.unwrap_or_default(),
            };
            logs::run(&mut admin, q, fmt).await
        }
        Cmd::Run {
            selector,
            max_parallel,
            timeout,
            user,
            argv,
        } => {
            let r = picket_proto::v1::RunRequest {
                selector,
                max_parallel,
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                argv,
                user,
            };
            run::run(&mut admin, r, fmt).await
        }
        Cmd::Rollout(c) => {
            // Cluster mode: only the leader drives rollouts, so commands
            // that change one go to it (reads work through any replica).
            if !matches!(
                c,
                RolloutCmd::List | RolloutCmd::Status { .. } | RolloutCmd::Watch { .. }
            ) && let Some(leader) = to_leader(&mut admin, &settings).await?
            {
                admin = leader;
            }
            rollout::run(&mut admin, c, fmt, out).await
        }
        // Cluster mode: the leader's engine alone decides, so what
        // changes it goes there too.
        Cmd::Alerts(c) => {
            if matches!(c, AlertsCmd::Reload)
                && let Some(leader) = to_leader(&mut admin, &settings).await?
            {
                admin = leader;
            }
            alerts::run(&mut admin, c, fmt, out).await
        }
        Cmd::Silence(c) => {
            if !matches!(c, SilenceCmd::List)
                && let Some(leader) = to_leader(&mut admin, &settings).await?
            {
                admin = leader;
            }
            alerts::silence(&mut admin, c, fmt, out).await
        }
        Cmd::Metrics { name, since, field } => {
            metrics::run(&mut admin, name, since, field, fmt, out).await
        }
    }
}

/// Unix ms of `now - d`.
pub(crate) fn ago_ms(d: std::time::Duration) -> i64 {
    picket_clock::ago_ms(d).max(1)
}

/// Prints a server stream item by item through `write`, flushing whenever
/// no next item is ready yet, and at least every 20 ms while items keep
/// coming (so `-f` shows a line as soon as it arrives, and a long backlog is
/// not flushed line by line). Memory stays bounded: nothing is collected.
pub(crate) async fn print_stream<T>(
    mut stream: tonic::Streaming<T>,
    mut write: impl FnMut(&mut dyn std::io::Write, T) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    use std::io::Write;
    use std::time::{Duration, Instant};
    use tokio_stream::StreamExt;
    const EVERY: Duration = Duration::from_millis(20);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let mut flushed = Instant::now();
    loop {
        // The stream first; only when it has nothing ready, the flush.
        let next = tokio::select! {
            biased;
            n = stream.next() => n,
            () = std::future::ready(()) => {
                out.flush()?;
                flushed = Instant::now();
                stream.next().await
            }
        };
        match next {
            None => break,
            Some(Ok(item)) => write(&mut out, item)?,
            Some(Err(s)) => {
                out.flush()?;
                return Err(rpc(s));
            }
        }
        if flushed.elapsed() >= EVERY {
            out.flush()?;
            flushed = Instant::now();
        }
    }
    out.flush()?;
    Ok(())
}

/// Cluster mode (SPEC §12): a connection to the leading replica, found
/// through `status` (its name, and the address it advertises); `None`
/// alone, or when no replica leads (the call then says so itself).
async fn to_leader(
    admin: &mut client::Admin,
    settings: &Settings,
) -> anyhow::Result<Option<client::Admin>> {
    let st = admin
        .status(picket_proto::v1::StatusRequest {})
        .await
        .map_err(rpc)?
        .into_inner();
    let Some(r) = st.replicas.iter().find(|r| r.node == st.leader) else {
        return Ok(None);
    };
    let server = picket_config::Servers::parse(&r.advertise)
        .map_err(|e| anyhow!("the leader {} advertises {:?}: {e}", r.node, r.advertise))?;
    let mut s = settings.clone();
    s.server = server;
    Ok(Some(client::connect(&s).await?))
}
