//! What can be typed: clap definitions only.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use picket_model::{Role, parse_label};

#[derive(Parser)]
#[command(name = "picketctl", version = env!("PICKET_VERSION"), about = "Picket admin CLI")]
pub struct Cli {
    /// Control plane address, HOST:PORT; several comma-separated (a
    /// cluster's replicas): one that answers is used.
    #[arg(long, global = true, env = "PICKET_SERVER")]
    pub server: Option<picket_config::Servers>,
    /// CA certificate (PEM) to trust.
    #[arg(long, global = true, env = "PICKET_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, global = true, env = "PICKET_CERT")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, global = true, env = "PICKET_KEY")]
    pub key: Option<PathBuf>,
    /// Profile name (a file NAME.toml in ~/.config/picket).
    #[arg(long, global = true, env = "PICKET_PROFILE")]
    pub profile: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Enrolled agents.
    #[command(subcommand)]
    Agents(AgentsCmd),
    /// Bootstrap tokens for enrolling agents.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Users and their roles.
    #[command(subcommand)]
    User(UserCmd),
    /// The fleet at a glance.
    Status,
    /// The audit log of changes made through the admin API.
    Audit {
        /// Show the newest N records (at most 10000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Only records this recent, e.g. 1h, 7d.
        #[arg(long, value_parser = picket_model::parse_duration)]
        since: Option<std::time::Duration>,
    },
    /// Who the control plane thinks you are.
    Whoami,
    /// Prints a shell completion script (no server needed), e.g.
    /// `picketctl completions bash > /etc/bash_completion.d/picketctl`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Writes the manual pages, picketctl.1 and one per subcommand
    /// (picketctl-agents-list.1, ...), into DIR (no server needed).
    Man {
        /// The folder to write them in (made if missing).
        dir: PathBuf,
    },
    /// Security events from the fleet, oldest first.
    Events {
        /// Only this host's events (an agent name).
        #[arg(long)]
        host: Option<String>,
        /// fail2ban, suricata, ossec, sshd.
        #[arg(long)]
        source: Option<String>,
        /// Lowest severity: info, low, medium, high, critical.
        #[arg(long, value_parser = parse_severity)]
        severity: Option<picket_model::Severity>,
        /// Only events from this far back (on the event's own time).
        #[arg(long, value_parser = picket_model::parse_duration)]
        since: Option<std::time::Duration>,
        /// Keep the newest N.
        #[arg(long, default_value_t = 1000)]
        limit: u64,
        /// Only events whose message matches this regular expression.
        #[arg(long)]
        grep: Option<String>,
        /// Then follow new events as they arrive.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only events after this cursor (the `cursor` of a JSON line): a
        /// forwarder that restarts resumes exactly where it stopped.
        #[arg(long, value_name = "CURSOR")]
        after: Option<String>,
    },
    /// Raw log lines from the fleet's sources, oldest first.
    Logs {
        /// Only this host's lines (an agent name).
        #[arg(long)]
        host: Option<String>,
        /// Only lines from sources of this kind: fail2ban, suricata, ossec,
        /// sshd, raw.
        #[arg(long)]
        source: Option<String>,
        /// Only lines read this far back.
        #[arg(long, value_parser = picket_model::parse_duration)]
        since: Option<std::time::Duration>,
        /// Only lines matching this regular expression.
        #[arg(long)]
        grep: Option<String>,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<u64>,
        /// Then follow new lines as they arrive.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only lines after this cursor (the `cursor` of a JSON line): a
        /// forwarder that restarts resumes exactly where it stopped.
        #[arg(long, value_name = "CURSOR")]
        after: Option<String>,
    },
    /// Run one command on every host matching a selector; each host's
    /// result as it finishes. Exits 1 if any host did not succeed.
    Run {
        /// Label selector: role=prod, role!=prod, role in (a,b), role notin (a), role; commas AND.
        #[arg(short = 'l', long)]
        selector: String,
        /// Hosts at a time (default: all at once).
        #[arg(long, default_value_t = 0)]
        max_parallel: u32,
        /// Per host; the whole process group is killed after it.
        #[arg(long, default_value = "5m", value_parser = picket_model::parse_duration)]
        timeout: std::time::Duration,
        /// Run as this host user: listed in the host's [exec] users and
        /// granted to you (`user add --run-as`). Default: the host's
        /// [exec] default_user.
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// The program and its arguments (after --).
        #[arg(last = true, required = true, value_name = "CMD")]
        argv: Vec<String>,
    },
    /// Rolling deploys: waves, health gates, approval, rollback.
    #[command(subcommand)]
    Rollout(RolloutCmd),
    /// Alerts raised by the rules of the control plane's alert file.
    #[command(subcommand)]
    Alerts(AlertsCmd),
    /// Silences: alerts matching them notify nobody until they end.
    #[command(subcommand)]
    Silence(SilenceCmd),
    /// A host's metrics: one row per series with a sparkline, or JSON lines.
    Metrics {
        /// The host (agent name).
        name: String,
        /// How far back, e.g. 10m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = picket_model::parse_duration)]
        since: std::time::Duration,
        /// Only series whose name starts with this, e.g. cpu, disk_used.
        #[arg(long, default_value = "")]
        field: String,
    },
}

#[derive(Subcommand)]
pub enum AgentsCmd {
    /// List agents.
    List,
    /// Show one agent.
    Show {
        /// The agent's name.
        name: String,
    },
    /// Revoke an agent: its streams are cut and it is refused from then on.
    Revoke {
        /// The agent's name.
        name: String,
    },
    /// Forget a revoked agent, so that the name can enroll again with a
    /// new token (a rebuilt host). Its stored records stay.
    Forget {
        /// The agent's name.
        name: String,
    },
    /// Set (k=v) and remove (k-) a host's labels: with those fixed at
    /// enrollment, the only ones selectors match (admin).
    Label {
        /// The agent's name.
        name: String,
        /// `k=v` to set, `k-` to remove.
        #[arg(required = true, value_name = "k=v|k-")]
        changes: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum RolloutCmd {
    /// Validate a rollout file whole and start it; prints its id alone.
    Create {
        /// The rollout file (TOML, docs/rollouts.md).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Check rollout files offline (no server, no credentials), as a CI
    /// step: each problem as FILE:LINE:COL: field: message; exit 0 clean,
    /// 1 on a problem, 2 if a file cannot be read.
    Check {
        /// The rollout files (TOML, docs/rollouts.md): `-f a.toml b.toml`
        /// or `-f a.toml -f b.toml`.
        #[arg(short = 'f', long = "file", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Warnings fail the check too.
        #[arg(long)]
        strict: bool,
    },
    /// Every rollout, newest first.
    List,
    /// One rollout: waves, hosts, steps and their output.
    Status {
        /// The rollout's id (as `rollout create` printed it).
        id: String,
    },
    /// Follow a rollout until it ends; exits 0 only if it succeeded.
    Watch {
        /// The rollout's id (as `rollout create` printed it).
        id: String,
    },
    /// Let running hosts finish; start no new one.
    Pause {
        /// The rollout's id (as `rollout create` printed it).
        id: String,
    },
    /// Go on with a paused rollout.
    Resume {
        /// The rollout's id (as `rollout create` printed it).
        id: String,
    },
    /// Start the next wave of a rollout awaiting approval.
    Approve {
        /// The rollout's id (as `rollout create` printed it).
        id: String,
    },
    /// Let running hosts finish, then end `aborted` without rolling back.
    Abort {
        /// The rollout's id (as `rollout create` printed it).
        id: String,
    },
    /// Run [[rollback]] on every host touched, newest first.
    Rollback {
        /// The rollout's id (as `rollout create` printed it).
        id: String,
    },
}

#[derive(Subcommand)]
pub enum AlertsCmd {
    /// Check alert files offline (no server, no credentials), as a CI
    /// step: each problem as FILE:LINE:COL: field: message; warnings
    /// (a series no agent reports) are printed and pass unless --strict.
    Check {
        /// The alert files (TOML, docs/alerting.md).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Warnings fail the check too.
        #[arg(long)]
        strict: bool,
    },
    /// Pending, firing and just-resolved alerts, newest first.
    List {
        /// Only alerts in this state: pending, firing or resolved.
        #[arg(long)]
        state: Option<String>,
    },
    /// One alert, by fingerprint.
    Show {
        /// The alert's fingerprint (`alerts list` shows it).
        fingerprint: String,
    },
    /// The rules, notifiers and routes in force, with each notifier's
    /// queue and failures.
    Rules,
    /// Read the alert file again (as SIGHUP does); a file that does not
    /// check is refused, with every problem, and the rules in force stay.
    Reload,
    /// Send a test notification to one notifier, now.
    Test {
        /// The notifier's name in the alert file.
        notifier: String,
    },
}

#[derive(Subcommand)]
pub enum SilenceCmd {
    /// Silence alerts whose labels match every --match; prints the id alone.
    Create {
        /// A label that must equal a value, KEY=VALUE (repeatable; at least one).
        #[arg(long = "match", value_name = "KEY=VALUE", value_parser = parse_label, required = true)]
        matchers: Vec<(String, String)>,
        /// How long it lasts.
        #[arg(long = "for", value_parser = picket_model::parse_duration)]
        duration: std::time::Duration,
        /// Why (shown in `silence list` and the audit log).
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Silences in force.
    List,
    /// End a silence now.
    Expire {
        /// The silence's id (`silence list` shows it).
        id: String,
    },
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a bootstrap token; prints it alone on stdout.
    Create {
        /// How long the token stays valid.
        #[arg(long, default_value = "1h", value_parser = picket_model::parse_duration)]
        ttl: std::time::Duration,
        /// How many agents may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// A label key=value given to every agent enrolled with it (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Add a user (or re-issue their bundle): the key is made here, only a
    /// CSR is sent, and NAME.crt, NAME.key and ca.crt are written to --out.
    Add {
        /// The user's name (the certificate's CN).
        name: String,
        /// viewer (read), operator (deploy, run, silence) or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Folder for the bundle (default: ./picket-NAME).
        #[arg(long)]
        out: Option<PathBuf>,
        /// A host user whose steps this user may run (`run --user`, a
        /// step's `user`); repeat for more. Admins may name any. Granting
        /// root is granting root on every host that lists it.
        #[arg(long = "run-as", value_name = "USER")]
        run_as: Vec<String>,
        /// Only the hosts this label selector matches: everything host-level
        /// the user sees or does (agents, events, logs, metrics, alerts,
        /// run, rollouts). Not for admins, who are never scoped.
        #[arg(long, value_name = "SELECTOR")]
        hosts: Option<String>,
    },
    /// Revoke a user: their next call is refused and their open streams
    /// (follows, watches, runs) end. The name cannot be added again.
    Revoke {
        /// The user's name.
        name: String,
    },
    /// Every user, with role and whether revoked.
    List,
}

fn parse_severity(s: &str) -> Result<picket_model::Severity, String> {
    s.parse()
        .map_err(|e: picket_model::UnknownSeverity| e.to_string())
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
        .map_err(|e: picket_model::UnknownRole| e.to_string())
}
