//! The certificate the gRPC port presents, kept current while serving:
//! read again from `server.crt`/`server.key` on SIGHUP (after `picket-control
//! rotate-server-cert`), and renewed in place when fewer than
//! [`picket_pki::server::RENEW_BEFORE`] remain (checked at start and twice a day).
//! A new certificate is presented from the next handshake on; open
//! connections, agents' streams among them, keep theirs and are never cut.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use picket_tls::server::Identity;
use tokio_util::sync::CancellationToken;

use picket_pki::Ca;

/// How often the renewal check runs.
const CHECK_EVERY: Duration = Duration::from_secs(12 * 3600);

/// Loads the pair in place (finishing a renewal a crash interrupted).
pub fn load(dir: &Path) -> Result<Arc<Identity>, picket_pki::PkiError> {
    let (chain, key) = picket_pki::server::load(dir)?;
    let identity = Identity::new(chain, key).map_err(|e| picket_pki::PkiError::ServerCert {
        path: dir.join("server.crt"),
        detail: e.to_string(),
    })?;
    Ok(Arc::new(identity))
}

/// Reads the pair in place again and serves it; a pair that does not
/// load is refused and the one in force stays.
pub fn reload(dir: &Path, identity: &Identity) -> Result<picket_pki::server::ServerCert, String> {
    let (chain, key) = picket_pki::server::load(dir).map_err(|e| e.to_string())?;
    let about = chain
        .first()
        .and_then(|c| picket_pki::server::describe(c))
        .ok_or("server.crt holds no certificate")?;
    identity.replace(chain, key).map_err(|e| e.to_string())?;
    Ok(about)
}

/// Renews the certificate in `dir` if it is due, and serves the new one.
fn renew_if_due(dir: &Path, ca: &Ca, identity: &Identity) -> Result<(), String> {
    let current = picket_pki::server::current(dir).map_err(|e| e.to_string())?;
    if !picket_pki::server::due(current.not_after, picket_clock::now()) {
        return Ok(());
    }
    let new = picket_pki::server::issue(dir, ca, &current.names).map_err(|e| e.to_string())?;
    reload(dir, identity)?;
    tracing::info!(serial = %new.serial_hex, not_after = ?new.not_after, "server certificate renewed");
    Ok(())
}

/// Watches for SIGHUP and for the renewal date until `shutdown`.
pub fn spawn(dir: PathBuf, ca: Arc<Ca>, identity: Arc<Identity>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut hup = crate::lifecycle::hangups();
        let mut tick = tokio::time::interval(CHECK_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    let (d, c, i) = (dir.clone(), ca.clone(), identity.clone());
                    let r = tokio::task::spawn_blocking(move || renew_if_due(&d, &c, &i)).await;
                    if let Ok(Err(error)) = r {
                        tracing::error!(%error, "cannot renew the server certificate");
                    }
                }
                Some(()) = crate::lifecycle::hangup(&mut hup) => match reload(&dir, &identity) {
                    Ok(c) => tracing::info!(serial = %c.serial_hex, not_after = ?c.not_after, "SIGHUP: server certificate reloaded"),
                    Err(error) => tracing::error!(%error, "SIGHUP: server certificate refused; the one in force stays"),
                },
            }
        }
    });
}
