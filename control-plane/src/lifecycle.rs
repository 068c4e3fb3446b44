//! Signals and systemd: SIGTERM/SIGINT cancel the shutdown token; READY and
//! WATCHDOG go to systemd when it asked for them (`Type=notify`).

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
pub fn spawn_signal_handler(shutdown: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
                // The alert driver and `identity` reload on SIGHUP
                // (`hangups`); this only keeps it from ending the process.
                _ = hup.recv() => {}
            }
        }
        shutdown.cancel();
    });
    Ok(())
}

/// SIGHUPs, for a task that reloads something on them; `None` when the
/// handler cannot be installed (the task then never reloads on a signal).
pub fn hangups() -> Option<tokio::signal::unix::Signal> {
    signal(SignalKind::hangup()).ok()
}

/// The next SIGHUP of `hangups`; never, without a handler.
pub async fn hangup(hup: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hup {
        Some(h) => h.recv().await,
        None => std::future::pending().await,
    }
}

/// Tells systemd the service is ready and, if a watchdog is set, pings it
/// at half its interval until shutdown.
pub fn notify_ready(shutdown: CancellationToken) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    if let Some(interval) = sd_notify::watchdog_enabled() {
        let every = (interval / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                    }
                }
            }
        });
    }
}

pub fn notify_stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}
