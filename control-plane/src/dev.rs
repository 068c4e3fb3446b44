//! `picket-control dev`: a loopback control plane with a local agent, a CLI
//! profile, and the `picketctl` lines to try. Everything goes through the
//! real paths: the CA from `init`, a token from the admin API, enrollment
//! over TLS with the fingerprint pinned, the agent's mTLS stream.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use picket_agent::config::AgentConfig;
use picket_agent::enroll::{EnrollOptions, enroll};
use picket_proto::model::Labels;
use picket_proto::v1;
use picketctl::profile::{self, Profile};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::ControlConfig;
use crate::server::{self, Listeners};

#[derive(clap::Args)]
pub struct DevArgs {
    /// Folder for the dev CA, store and agent state.
    #[arg(long, default_value = ".picket-dev")]
    pub data_dir: PathBuf,
    /// gRPC address; if the port is taken, a free one is used instead.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// HTTP address; if the port is taken, a free one is used instead.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub http_listen: SocketAddr,
}

/// Marks a profile as written by dev mode, so dev mode may replace it but
/// never a profile a person wrote.
const DEV_HEADER: &str = "written by `picket-control dev`; safe to delete";

async fn bind_or_any(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        anyhow::bail!("dev mode listens on loopback only; {addr} is not a loopback address");
    }
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let l = TcpListener::bind(SocketAddr::new(addr.ip(), 0)).await?;
            tracing::warn!(wanted = %addr, using = %l.local_addr()?, "port in use; using a free one");
            Ok(l)
        }
        Err(e) => Err(e).with_context(|| format!("cannot listen on {addr}")),
    }
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let data_dir = std::path::absolute(&args.data_dir)
        .with_context(|| format!("bad --data-dir {}", args.data_dir.display()))?;
    if !data_dir.join("ca.crt").exists() {
        crate::init(&data_dir, &[])?;
    }
    let listeners = Listeners {
        grpc: bind_or_any(args.listen).await?,
        http: bind_or_any(args.http_listen).await?,
    };
    let grpc_addr = listeners.grpc_addr()?;
    let http_addr = listeners.http_addr()?;
    let cfg = ControlConfig::parse(
        &ControlConfig::template(&data_dir),
        &data_dir.join("control.toml"),
    )?;
    let shutdown = CancellationToken::new();
    crate::lifecycle::spawn_signal_handler(shutdown.clone())?;
    let control = tokio::spawn(server::run(cfg, listeners, shutdown.clone()));

    let server = grpc_addr.to_string();
    let admin = Profile {
        server: Some(server.clone()),
        ca: Some(data_dir.join("ca.crt")),
        cert: Some(data_dir.join("admin.crt")),
        key: Some(data_dir.join("admin.key")),
    };
    let profile_flag = write_profile(&admin)?;

    let agent_dir = data_dir.join("agent");
    if !agent_dir.join("agent.crt").exists() {
        let token = create_token(&admin).await?;
        let fingerprint = crate::pki::Ca::load(&data_dir)?.fingerprint();
        enroll(EnrollOptions {
            server: server.clone(),
            token,
            ca_fingerprint: fingerprint,
            name: Some(picket_agent::inventory::hostname())
                .filter(|n| picket_proto::model::validate_name(n).is_ok()),
            labels: Labels::from([("role".to_string(), "dev".to_string())]),
            state_dir: agent_dir.clone(),
        })
        .await
        .context("enrolling the local agent")?;
    }
    let mut agent_cfg = AgentConfig::load(&agent_dir.join("agent.toml"))?;
    agent_cfg.server = server.clone(); // the port may differ from last time
    let samples = write_samples(&data_dir)?;
    if agent_cfg.sources.is_empty() {
        agent_cfg.sources = samples.clone();
    }
    tokio::spawn(trickle(data_dir.join("samples/auth.log"), shutdown.clone()));
    let agent_name = agent_cfg.name.clone();
    let agent = tokio::spawn(picket_agent::run(agent_cfg, shutdown.clone()));

    println!();
    println!("Picket dev control plane on {server} (gRPC, mTLS) and http://{http_addr} (metrics)");
    println!(
        "Data in {}; local agent {agent_name:?} enrolled.",
        data_dir.display()
    );
    println!();
    println!("In another terminal, try:");
    for line in [
        "agents list",
        &format!("agents show {agent_name}"),
        "agents list -o json",
        "status",
        "events --severity medium",
        "logs -f",
        &format!("metrics {agent_name} --since 10m"),
        "token create --ttl 10m",
        "audit",
    ] {
        println!("  cargo run -q -p picketctl --{profile_flag} {line}");
    }
    println!("  curl http://{http_addr}/metrics");
    println!();
    println!("Ctrl-C stops everything.");

    let result = control.await.context("control plane task")?;
    shutdown.cancel();
    if let Ok(Err(e)) = agent.await {
        tracing::warn!(error = %e, "local agent stopped with an error");
    }
    result
}

/// Writes the admin profile as the default one, unless a person's own
/// default profile is there; then as `dev`. Returns the flag to pass.
fn write_profile(p: &Profile) -> anyhow::Result<String> {
    let default = profile::path_of("default")?;
    let ours = |path: &Path| std::fs::read_to_string(path).map_or(true, |t| t.contains(DEV_HEADER));
    if ours(&default) {
        p.write(&default, DEV_HEADER)?;
        Ok(String::new())
    } else {
        p.write(&profile::path_of("dev")?, DEV_HEADER)?;
        Ok(" --profile dev".into())
    }
}

async fn create_token(p: &Profile) -> anyhow::Result<String> {
    let (Some(server), Some(ca), Some(cert), Some(key)) = (&p.server, &p.ca, &p.cert, &p.key)
    else {
        anyhow::bail!("incomplete admin profile");
    };
    let cfg = picket_tls::client::mtls_config(
        &picket_tls::files::read_certs(ca)?,
        picket_tls::files::read_certs(cert)?,
        picket_tls::files::read_key(key)?,
    )?;
    // The server task is starting; give it a moment to accept.
    let mut last = None;
    for _ in 0..50 {
        match picket_tls::client::connect(server, cfg.clone()).await {
            Ok(ch) => {
                let t = v1::admin_service_client::AdminServiceClient::new(ch)
                    .create_token(v1::CreateTokenRequest {
                        ttl_seconds: 600,
                        uses: 1,
                        labels: Default::default(),
                    })
                    .await
                    .map_err(|s| anyhow::anyhow!("creating a token: {}", s.message()))?;
                return Ok(t.into_inner().token);
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(anyhow::anyhow!("control plane did not come up: {last:?}"))
}

const SAMPLES: [(&str, agent_kind::Kind, &str); 4] = [
    (
        "auth.log",
        agent_kind::Kind::Sshd,
        include_str!("../samples/auth.log"),
    ),
    (
        "fail2ban.log",
        agent_kind::Kind::Fail2ban,
        include_str!("../samples/fail2ban.log"),
    ),
    (
        "eve.json",
        agent_kind::Kind::Suricata,
        include_str!("../samples/eve.json"),
    ),
    (
        "alerts.log",
        agent_kind::Kind::Ossec,
        include_str!("../samples/alerts.log"),
    ),
];

mod agent_kind {
    pub use picket_agent::config::SourceKind as Kind;
}

/// Writes the sample logs (once) and returns the sources that tail them.
fn write_samples(data_dir: &Path) -> anyhow::Result<Vec<picket_agent::config::SourceConfig>> {
    let dir = data_dir.join("samples");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut out = Vec::new();
    for (name, kind, text) in SAMPLES {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        out.push(picket_agent::config::SourceConfig {
            kind,
            path,
            from_start: true,
        });
    }
    Ok(out)
}

/// Appends a fresh sshd failure every five seconds, as a live host would.
async fn trickle(path: PathBuf, shutdown: CancellationToken) {
    use std::io::Write;
    let mut n = 0u32;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        n += 1;
        let now = time::OffsetDateTime::now_utc();
        let fmt = time::macros::format_description!(
            "[month repr:short] [day padding:space] [hour]:[minute]:[second]"
        );
        let stamp = now.format(&fmt).unwrap_or_default();
        let line = format!(
            "{stamp} dev sshd[{}]: Failed password for invalid user guest{} from 192.0.2.{} port {} ssh2\n",
            5000 + n,
            n % 7,
            1 + n % 200,
            40000 + n % 20000
        );
        let r = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(error) = r {
            tracing::warn!(%error, "dev: cannot append to the sample auth.log");
        }
    }
}
