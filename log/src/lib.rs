//! How both daemons log: to stderr (journald keeps it under systemd),
//! filtered as `RUST_LOG` says (tracing-subscriber's `EnvFilter`, `info`
//! when unset), as text (ANSI colours only on a terminal) or as one JSON
//! object a line for log shippers (`--log-format json`).

use std::io::IsTerminal;

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; coloured only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object a line (`timestamp`, `level`, `target`, `fields`,
    /// `spans`), as tracing-subscriber writes it.
    Json,
}

/// The flag both daemons take (`#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// How to log to stderr: `text` (coloured only on a terminal) or
    /// `json` (one object a line, for log shippers). `RUST_LOG` filters.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "PICKET_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
}

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(format: LogFormat) {
    init_filtered(format, "info");
}

/// [`init`], with `filter` when `RUST_LOG` is unset.
pub fn init_filtered(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_ansi(false)
            .init(),
    }
}
