//! `picket-control dev`: a loopback control plane with a local agent, a CLI
//! profile, and the `picketctl` lines to try. Everything goes through the
//! real paths: the CA from `init`, a token from the admin API, enrollment
//! over TLS with the fingerprint pinned, the agent's mTLS stream.
//!
//! The agent is the real `picket-agent` binary, run as a child process:
//! the control plane carries no agent code (once agents run deploy steps,
//! that would link an executor into the control plane). It is found next
//! to this binary; under `cargo run` it is built first if it is not there.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use picket_config::profile::{self, Profile};
use picket_proto::v1;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::server::{self, Listeners};
use picket_config::control::ControlConfig;

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
    let agent_bin = agent_binary().await?;
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
    // Ctrl-C stops the agent first, then the control plane, so the agent
    // does not spend its last moment reconnecting to a closed port.
    let stop_all = CancellationToken::new();
    crate::lifecycle::spawn_signal_handler(stop_all.clone())?;
    let shutdown = CancellationToken::new();
    let mut control = tokio::spawn(server::run(cfg, listeners, shutdown.clone()));

    let server = grpc_addr.to_string();
    let admin = Profile {
        server: Some(picket_config::Servers::parse(&server).map_err(anyhow::Error::msg)?),
        ca: Some(data_dir.join("ca.crt")),
        cert: Some(data_dir.join("admin.crt")),
        key: Some(data_dir.join("admin.key")),
    };
    let profile_flag = write_profile(&admin)?;

    let agent_dir = data_dir.join("agent");
    let agent_toml = agent_dir.join("agent.toml");
    if !agent_dir.join("agent.crt").exists() {
        let token = create_token(&admin).await?;
        let fingerprint = picket_pki::Ca::load(&data_dir)?.fingerprint();
        let name = local_name();
        let out = tokio::process::Command::new(&agent_bin)
            .args([
                "enroll",
                "--server",
                &server,
                "--ca-fingerprint",
                &fingerprint,
            ])
            .args(["--name", &name, "--label", "role=dev", "--state-dir"])
            .arg(&agent_dir)
            .env("PICKET_TOKEN", &token)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {}", agent_bin.display()))?;
        if !out.status.success() {
            anyhow::bail!(
                "enrolling the local agent: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let samples = write_samples(&data_dir)?;
    let agent_name = point_agent_at(&agent_toml, &server, &samples)?;
    tokio::spawn(trickle(data_dir.join("samples/auth.log"), shutdown.clone()));
    let mut agent = tokio::process::Command::new(&agent_bin)
        .arg("run")
        .arg("--config")
        .arg(&agent_toml)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", agent_bin.display()))?;

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

    let ended = tokio::select! {
        r = &mut control => Some(r),
        _ = stop_all.cancelled() => None,
    };
    stop(&mut agent).await;
    shutdown.cancel();
    let result = match ended {
        Some(r) => r,
        None => control.await,
    };
    result.context("control plane task")?
}

/// Asks the agent to stop (SIGTERM; Ctrl-C in a terminal has sent it
/// SIGINT already), then kills it if it has not within five seconds.
async fn stop(agent: &mut tokio::process::Child) {
    if let Some(pid) = agent.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    match tokio::time::timeout(std::time::Duration::from_secs(5), agent.wait()).await {
        Ok(Ok(status)) if !status.success() => {
            tracing::warn!(%status, "local agent stopped with an error");
        }
        Ok(_) => {}
        Err(_) => {
            let _ = agent.kill().await;
        }
    }
}

/// `picket-agent`, next to this binary. Under `cargo run` (which sets
/// `CARGO` and `CARGO_MANIFEST_DIR`) it is built first when missing, in
/// the same profile.
async fn agent_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this binary's path")?;
    let dir = exe.parent().context("this binary has no folder")?;
    let bin = dir.join("picket-agent");
    if bin.exists() {
        return Ok(bin);
    }
    let (Ok(cargo), Ok(manifest)) = (std::env::var("CARGO"), std::env::var("CARGO_MANIFEST_DIR"))
    else {
        anyhow::bail!(
            "dev mode runs the agent as its own process and found no {}; install picket-agent \
             beside picket-control, or build it (cargo build -p picket-agent)",
            bin.display()
        );
    };
    eprintln!("dev: building picket-agent (dev mode runs the real agent as a child process)");
    let mut build = tokio::process::Command::new(cargo);
    build.args(["build", "-q", "-p", "picket-agent", "--bin", "picket-agent"]);
    if dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build
        .current_dir(&manifest)
        .status()
        .await
        .context("running cargo build -p picket-agent")?;
    if !status.success() || !bin.exists() {
        anyhow::bail!("cargo build -p picket-agent failed ({status}); build it by hand and retry");
    }
    Ok(bin)
}

/// This host's name if it is a valid agent name, else `dev`.
fn local_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|n| picket_model::validate_name(n).is_ok())
        .unwrap_or_else(|| "dev".to_string())
}

/// Points the agent's `agent.toml` at `server` (the port may differ from
/// last time) and, if it has no sources, at the sample logs; returns the
/// agent's name.
fn point_agent_at(
    path: &Path,
    server: &str,
    samples: &[(&str, PathBuf)],
) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut cfg: toml::Table =
        toml::from_str(&text).with_context(|| format!("bad {}", path.display()))?;
    cfg.insert("server".into(), server.into());
    if !cfg.contains_key("source") {
        let sources = samples
            .iter()
            .map(|(kind, p)| {
                let mut t = toml::Table::new();
                t.insert("kind".into(), (*kind).into());
                t.insert("path".into(), p.display().to_string().into());
                t.insert("from_start".into(), true.into());
                toml::Value::Table(t)
            })
            .collect();
        cfg.insert("source".into(), toml::Value::Array(sources));
    }
    let name = cfg
        .get("name")
        .and_then(toml::Value::as_str)
        .unwrap_or("dev")
        .to_string();
    std::fs::write(path, toml::to_string(&cfg)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(name)
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
        match picket_tls::client::connect_any(server.as_slice(), cfg.clone()).await {
            Ok((ch, _)) => {
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

/// The sample logs: file, source kind, text.
const SAMPLES: [(&str, &str, &str); 4] = [
    ("auth.log", "sshd", include_str!("../samples/auth.log")),
    (
        "fail2ban.log",
        "fail2ban",
        include_str!("../samples/fail2ban.log"),
    ),
    ("eve.json", "suricata", include_str!("../samples/eve.json")),
    ("alerts.log", "ossec", include_str!("../samples/alerts.log")),
];

/// Writes the sample logs (once) and returns the sources (kind, path)
/// that tail them.
fn write_samples(data_dir: &Path) -> anyhow::Result<Vec<(&'static str, PathBuf)>> {
    let dir = data_dir.join("samples");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut out = Vec::new();
    for (name, kind, text) in SAMPLES {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        out.push((kind, path));
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
