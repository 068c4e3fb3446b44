//! `http` and `tcp` steps: a GET that must answer `expect_status`, or a
//! TCP connect, tried `retries + 1` times, `interval` apart, each within
//! `timeout`.

use std::time::{Duration, Instant};

use picket_model::rollout::Probe;
use picket_proto::v1::StepState;
use tokio_util::sync::CancellationToken;

use super::ledger::Outcome;
use super::process::{Tail, ms};

pub enum Target<'a> {
    Http { url: &'a str, expect_status: u16 },
    Tcp { addr: &'a str },
}

pub async fn run(
    target: Target<'_>,
    probe: Probe,
    timeout: Duration,
    cancel: CancellationToken,
    mut live: impl FnMut(&[u8]),
) -> Outcome {
    let started = Instant::now();
    let mut tail = Tail::default();
    // Built once per step: the system's roots, for https URLs.
    let tls = match &target {
        Target::Http { url, .. } if url.starts_with("https://") => Some(http::tls_config()),
        _ => None,
    };
    let attempts = probe.retries.saturating_add(1);
    let mut ok = false;
    for attempt in 1..=attempts {
        let line = tokio::select! {
            _ = cancel.cancelled() => {
                tail.push(b"[picket] cancelled\n");
                break;
            }
            line = once(&target, tls.clone(), timeout) => line,
        };
        let (passed, text) = line;
        let text = format!("attempt {attempt}/{attempts}: {text}\n");
        tail.push(text.as_bytes());
        live(text.as_bytes());
        if passed {
            ok = true;
            break;
        }
        if attempt < attempts {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(probe.interval) => {}
            }
        }
    }
    Outcome {
        state: if ok {
            StepState::Succeeded
        } else {
            StepState::Failed
        } as i32,
        exit_code: None,
        duration_ms: ms(started.elapsed()),
        output: tail.text(),
    }
}

async fn once(
    target: &Target<'_>,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> (bool, String) {
    match target {
        Target::Http { url, expect_status } => {
            match tokio::time::timeout(timeout, http::get(url, tls)).await {
                Ok(Ok(status)) => (
                    status == *expect_status,
                    format!("GET {url}: {status} (expected {expect_status})"),
                ),
                Ok(Err(e)) => (false, format!("GET {url}: {e}")),
                Err(_) => (false, format!("GET {url}: no answer within {timeout:?}")),
            }
        }
        Target::Tcp { addr } => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(*addr)).await {
                Ok(Ok(_)) => (true, format!("connected to {addr}")),
                Ok(Err(e)) => (false, format!("connect {addr}: {e}")),
                Err(_) => (
                    false,
                    format!("connect {addr}: no answer within {timeout:?}"),
                ),
            }
        }
    }
}

/// An HTTP/1.1 GET with hyper over TCP, or rustls for https: the status.
mod http {
    use std::sync::Arc;

    use http_body_util::Empty;
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;

    /// The system's root certificates (those that load), with ring.
    pub fn tls_config() -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for c in found.certs {
            let _ = roots.add(c);
        }
        let cfg = rustls::ClientConfig::builder_with_provider(picket_tls::provider())
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth());
        match cfg {
            Ok(c) => Arc::new(c),
            // The provider always supports the default versions.
            Err(_) => Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
        }
    }

    pub async fn get(url: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Result<u16, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().ok_or("the URL has no host")?.to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
            .await
            .map_err(|e| format!("connect {host}:{port}: {e}"))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, authority)
            .header(
                hyper::header::USER_AGENT,
                concat!("picket-agent/", env!("PICKET_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        match (https, tls) {
            (true, Some(cfg)) => {
                let name = rustls::pki_types::ServerName::try_from(bare)
                    .map_err(|e| format!("bad host name: {e}"))?;
                let stream = tokio_rustls::TlsConnector::from(cfg)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                send(TokioIo::new(stream), req).await
            }
            (true, None) => Err("no TLS configuration".into()),
            (false, _) => send(TokioIo::new(tcp), req).await,
        }
    }

    async fn send<I>(io: I, req: hyper::Request<Empty<Bytes>>) -> Result<u16, String>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let r = sender.send_request(req).await.map_err(|e| e.to_string());
        conn.abort();
        Ok(r?.status().as_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_fails_after_its_retries_and_an_open_one_passes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().to_string();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let probe = Probe {
            retries: 2,
            interval: Duration::from_millis(10),
        };
        let t = Duration::from_secs(2);
        let o = run(
            Target::Tcp { addr: &closed },
            probe,
            t,
            CancellationToken::new(),
            |_| {},
        )
        .await;
        assert_eq!(o.state, StepState::Failed as i32);
        assert_eq!(o.output.matches("attempt").count(), 3, "{}", o.output);
        let o = run(
            Target::Tcp { addr: &open },
            probe,
            t,
            CancellationToken::new(),
            |_| {},
        )
        .await;
        assert_eq!(o.state, StepState::Succeeded as i32, "{}", o.output);
    }

    #[tokio::test]
    async fn an_http_check_wants_its_status() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/health?x=1", listener.local_addr().unwrap());
        tokio::spawn(async move {
            for status in ["503 Service Unavailable", "200 OK"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(head.starts_with("GET /health?x=1 HTTP/1.1"), "{head}");
                let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                s.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let probe = Probe {
            retries: 1,
            interval: Duration::from_millis(10),
        };
        let target = Target::Http {
            url: &url,
            expect_status: 200,
        };
        let o = run(
            target,
            probe,
            Duration::from_secs(5),
            CancellationToken::new(),
            |_| {},
        )
        .await;
        assert_eq!(o.state, StepState::Succeeded as i32, "{}", o.output);
        assert!(o.output.contains(": 503 (expected 200)"), "{}", o.output);
        assert!(o.output.contains(": 200 (expected 200)"), "{}", o.output);
        // Nobody listening: a clear failure.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/", l.local_addr().unwrap())
        };
        let target = Target::Http {
            url: &closed,
            expect_status: 200,
        };
        let o = run(
            target,
            probe,
            Duration::from_secs(5),
            CancellationToken::new(),
            |_| {},
        )
        .await;
        assert_eq!(o.state, StepState::Failed as i32);
        assert!(o.output.contains("Connection refused"), "{}", o.output);
    }
}
