//! One module per subcommand. Each takes the admin client and the output
//! format and writes to stdout.

mod agents;
mod audit;
mod metrics;
mod status;
mod token;
mod user;

use anyhow::anyhow;

use crate::args::{Cli, Cmd};
use crate::client;
use crate::settings::Settings;

/// A failed RPC as one line.
pub(crate) fn rpc(s: tonic::Status) -> anyhow::Error {
    anyhow!(client::describe(&s))
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::resolve(&cli)?;
    let mut admin = client::connect(&settings).await?;
    let out = &mut std::io::stdout().lock();
    let fmt = cli.output;
    match cli.cmd {
        Cmd::Agents(c) => agents::run(&mut admin, c, fmt, out).await,
        Cmd::Token(c) => token::run(&mut admin, c, fmt, out).await,
        Cmd::User(c) => user::run(&mut admin, c, fmt, out).await,
        Cmd::Status => status::status(&mut admin, fmt, out).await,
        Cmd::Whoami => status::whoami(&mut admin, fmt, out).await,
        Cmd::Audit { limit } => audit::run(&mut admin, limit, fmt, out).await,
        Cmd::Metrics { name, since, field } => {
            metrics::run(&mut admin, name, since, field, fmt, out).await
        }
    }
}
