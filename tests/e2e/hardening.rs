//! What a peer without a certificate can hold of the gRPC port: idle TCP
//! connections, TLS handshakes left half done, and TLS connections with no
//! client certificate that never call. None of them may lock agents out or
//! keep descriptors once their time is up.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use picket_tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// Open descriptors of a process.
fn fds(pid: nix::unistd::Pid) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A metric's value on `/metrics`.
fn metric(http: &str, name: &str) -> Option<f64> {
    let (_, body) = http_get(http, "/metrics").ok()?;
    body.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(format!("{from}:0").parse().map_err(std::io::Error::other)?)?;
    s.connect(to).await
}

/// The bytes of a TLS ClientHello, which a half-done handshake sends and
/// then never follows up.
fn client_hello() -> Result<Vec<u8>> {
    let (cfg, _) = picket_tls::client::pinned_config([0; 32]);
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut c = rustls::ClientConnection::new(Arc::new(cfg), name)?;
    let mut out = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut out)?;
    }
    Ok(out)
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

#[test]
fn floods_without_a_certificate_neither_lock_agents_out_nor_keep_descriptors() -> Result<()> {
    raise_fd_limit();
    let w = World::new()?;
    let fp = w.init(
        "cp",
        "heartbeat_interval = \"1s\"\n[limits]\nhandshake_timeout = \"2s\"\n\
         unauthenticated_lifetime = \"3s\"\nmax_unauthenticated_per_address = 16",
    )?;
    let mut cp = Control::start(&w, "cp")?;
    let admin = cp.admin_flags();
    let addr: SocketAddr = cp.grpc.parse()?;

    // One agent streaming a log file.
    let log = w.path("app.log");
    std::fs::File::create(&log)?;
    let mut agent = enroll_with_sources(&w, &cp, &fp, "steady", &[], &[("raw", &log)])?;
    wait_for("steady online", Duration::from_secs(30), || {
        (status_of(&w, &admin, "steady")? == "online").then_some(())
    })?;
    let lines_stored = |n: usize| -> Option<()> {
        let got = ctl_json(&w, &admin, &["logs", "--host", "steady"]).ok()?;
        (got.len() >= n).then_some(())
    };
    let append = |i: usize| -> Result<()> {
        let mut f = std::fs::OpenOptions::new().append(true).open(&log)?;
        writeln!(f, "line {i}")?;
        Ok(())
    };
    append(0)?;
    wait_for("the first line stored", Duration::from_secs(20), || {
        lines_stored(1)
    })
    .with_context(|| {
        format!(
            "agent: {}\nlogs: {:?}",
            agent.stderr(),
            ctl(&w, &admin, &["logs", "-o", "json"]).map(|o| stderr(&o))
        )
    })?;
    std::thread::sleep(Duration::from_secs(1));
    let baseline = fds(cp.proc.pid());

    // The flood: 1,000 idle TCP connections from 127.0.0.2, 200 TLS
    // handshakes stopped after the ClientHello from 127.0.0.3-12, and 20
    // finished TLS connections without a certificate from 127.0.0.13.
    let rt = tokio::runtime::Runtime::new()?;
    let hello = client_hello()?;
    let held = rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..1_000 {
            if let Ok(s) = connect_from("127.0.0.2", addr).await {
                held.push(s);
            }
        }
        for i in 0..200 {
            let from = format!("127.0.0.{}", 3 + i % 10);
            if let Ok(mut s) = connect_from(&from, addr).await {
                let _ = s.write_all(&hello).await;
                held.push(s);
            }
        }
        anyhow::Ok(held)
    })?;
    anyhow::ensure!(held.len() == 1_200, "only {} connections made", held.len());
    let (pin, _) = picket_tls::client::pinned_config(picket_tls::fingerprint::parse(&fp)?);
    let anonymous = rt.block_on(async {
        let mut tls = Vec::new();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(pin));
        for _ in 0..20 {
            let tcp = connect_from("127.0.0.13", addr).await?;
            let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
            if let Ok(s) = connector.connect(name, tcp).await {
                tls.push(s);
            }
        }
        anyhow::Ok(tls)
    })?;
    anyhow::ensure!(
        !anonymous.is_empty(),
        "no TLS connection without a certificate"
    );

    // Meanwhile: the agent keeps streaming and is acked, a restarted agent
    // reconnects, and a new host enrolls (a connection without a
    // certificate, from an address the flood does not use).
    let during = fds(cp.proc.pid());
    eprintln!("descriptors: {baseline} before the flood, {during} during it");
    assert!(
        during < baseline + 16 * 12 + 40,
        "the flood holds {during} descriptors (baseline {baseline})"
    );
    append(1)?;
    wait_for(
        "a line stored during the flood",
        Duration::from_secs(20),
        || lines_stored(2),
    )?;
    agent.kill9();
    agent = run_agent(&w, "steady")?;
    append(2)?;
    wait_for(
        "a line from the restarted agent",
        Duration::from_secs(30),
        || lines_stored(3),
    )?;
    let tok = token(&w, &cp, &[])?;
    let out = enroll(&w, &cp, &fp, &tok, "newcomer", &[])?;
    assert!(out.status.success(), "{}", stderr(&out));

    // Refusals were counted; handshakes and anonymous connections time
    // out while the attacker still holds its end, and the control plane's
    // descriptors come back to where they were.
    let refused = metric(&cp.http, "picket_control_connections_refused_address").unwrap_or(0.0);
    assert!(refused >= 900.0, "{refused} refused at accept");
    wait_for(
        "descriptors back to baseline",
        Duration::from_secs(20),
        || (fds(cp.proc.pid()) <= baseline + 2).then_some(()),
    )
    .with_context(|| format!("baseline {baseline}, now {}", fds(cp.proc.pid())))?;
    let timeouts = metric(&cp.http, "picket_control_tls_handshake_timeouts").unwrap_or(0.0);
    assert!(timeouts >= 100.0, "{timeouts} handshake timeouts");
    let expired = metric(
        &cp.http,
        "picket_control_connections_unauthenticated_expired",
    )
    .unwrap_or(0.0);
    assert!(expired >= 1.0, "{expired} anonymous connections expired");
    assert_eq!(
        metric(&cp.http, "picket_control_connections_unauthenticated"),
        Some(0.0)
    );
    append(3)?;
    wait_for("a line after the flood", Duration::from_secs(20), || {
        lines_stored(4)
    })?;
    drop((held, anonymous, agent));
    cp.proc.kill9();
    Ok(())
}

#[test]
fn enrollment_attempts_are_rate_limited_per_address() -> Result<()> {
    let w = World::new()?;
    let fp = w.init("cp", "[limits]\nenroll_per_minute = 3")?;
    let cp = Control::start(&w, "cp")?;
    for i in 0..3 {
        let out = enroll(&w, &cp, &fp, "pkt_guess", &format!("g{i}"), &[])?;
        assert!(
            stderr(&out).contains("the token is not valid"),
            "{}",
            stderr(&out)
        );
    }
    let out = enroll(&w, &cp, &fp, "pkt_guess", "g3", &[])?;
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(e.contains("too many enrollment attempts"), "{e}");
    assert!(!e.contains("pkt_guess"), "the token is never echoed: {e}");
    assert!(!cp.proc.stderr().contains("pkt_guess"), "nor logged");
    assert_eq!(
        metric(&cp.http, "picket_control_enroll_rate_limited"),
        Some(1.0)
    );
    Ok(())
}
