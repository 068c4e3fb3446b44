//! systemd's notify protocol (`Type=notify`, systemd/picket-agent.service):
//! READY once the agent runs (reachable control plane or not), WATCHDOG
//! pings from the async runtime at half the interval systemd set, and
//! STOPPING when it shuts down. Without a notify socket, nothing is sent.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// READY, then watchdog pings until `shutdown` (a runtime that stops
/// running tasks stops the pings, and systemd restarts the agent).
pub fn ready(shutdown: CancellationToken) {
    let _ = sd_notify::notify(&[NotifyState::Ready]);
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (interval / 2).max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        while tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tick.tick() => true,
        } {
            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
        }
    });
}

pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// Returns on SIGTERM or SIGINT (never, if they cannot be watched).
pub async fn until_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
        }
        _ => std::future::pending::<()>().await,
    }
}
