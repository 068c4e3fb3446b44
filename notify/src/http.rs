//! The HTTP client every HTTP notifier shares: reqwest on rustls (ring,
//! the system's roots), no redirects, bounded times.

use std::time::Duration;

use super::Outcome;

/// A receiver that has not answered by then has failed (and is retried).
pub const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Client {
    inner: reqwest::Client,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the notifiers' HTTP client: {0}")]
pub struct ClientError(String);

impl Client {
    pub fn new() -> Result<Self, ClientError> {
        Self::with_timeout(TIMEOUT)
    }

    /// A receiver that has not answered within `timeout` has failed.
    pub fn with_timeout(timeout: Duration) -> Result<Self, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        // Roots that do not parse are skipped (as every client does); an
        // empty store only means https receivers fail, with that error.
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let inner = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(timeout)
            .user_agent(concat!("picket-control/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError(e.to_string()))?;
        Ok(Client { inner, timeout })
    }

    /// POSTs `body` as JSON; 2xx is sent, 4xx (but 408 and 429) refused
    /// for good, anything else failed for now.
    pub async fn post_json(&self, url: &str, body: &serde_json::Value) -> Outcome {
        let bytes = match serde_json::to_vec(body) {
            Ok(b) => b,
            Err(e) => return Outcome::Refused(format!("cannot encode the payload: {e}")),
        };
        let r = self
            .inner
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes)
            .send()
            .await;
        match r {
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() {
                    return Outcome::Sent;
                }
                let text = resp.text().await.unwrap_or_default();
                let text: String = text.trim().chars().take(200).collect();
                let what = format!("{} answered {status}: {text}", redact(url));
                let code = status.as_u16();
                if status.is_client_error() && code != 408 && code != 429 {
                    Outcome::Refused(what)
                } else {
                    Outcome::Failed(what)
                }
            }
            Err(e) => Outcome::Failed(format!(
                "{}: {}",
                redact(url),
                error_chain(&e, self.timeout)
            )),
        }
    }
}

/// reqwest's error with its causes ("error sending request: connection
/// refused"), without the URL (it may hold a token).
fn error_chain(e: &reqwest::Error, timeout: Duration) -> String {
    let mut s = if e.is_timeout() {
        format!("no answer within {timeout:?}")
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = c.source();
    }
    s
}

/// A URL for logs and `alerts rules`: scheme, host and port only (Slack
/// and Discord put their secret in the path).
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            match u.port() {
                Some(p) => format!("{}://{host}:{p}/…", u.scheme()),
                None => format!("{}://{host}/…", u.scheme()),
            }
        }
        Err(_) => "(a URL that does not parse)".into(),
    }
}
