//! Picket's host agent, as a library: the `picket-agent` binary and the
//! control plane's dev mode both run it.
//!
//! Layout:
//! - [`enroll`] — key, CSR, CA pin, token exchange.
//! - [`identity`] — certificate storage and renewal.
//! - [`inventory`] — what the host is (sysinfo); no sending.
//! - [`metrics`] — host metrics (sysinfo); no sending.
//! - [`buffer`] — the on-disk record buffer, sequence numbers, acks.
//! - [`tail`] — following a file through rotation; no parsing.
//! - [`collect`] — sources run: inotify → tail → parse → buffer.
//! - [`exec`] — deploy steps: the ledger, processes, probes.
//! - [`service`] — systemd notify: READY, WATCHDOG, STOPPING.
//! - [`uplink`] — the session stream, heartbeats, reconnect with backoff.
//! - [`swarm`] — simulated agents over the same session code (`picket-swarm`).

pub mod buffer;
pub mod collect;
pub mod enroll;
pub mod exec;
pub mod identity;
pub mod inventory;
pub mod metrics;
pub mod service;
pub mod swarm;
pub mod tail;
pub mod uplink;

use std::sync::Arc;

use picket_clock::now_ms;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Uplink(#[from] uplink::UplinkError),
    #[error(transparent)]
    Buffer(#[from] buffer::BufferError),
    #[error(transparent)]
    Ledger(#[from] exec::ledger::LedgerError),
}

/// Runs the agent until `shutdown` is cancelled or the control plane
/// refuses it for good (revoked).
pub async fn run(
    cfg: picket_config::agent::AgentConfig,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let identity = Arc::new(identity::Identity::load(&cfg.state_dir)?);
    let buffer = Arc::new(buffer::Buffer::open(&cfg.state_dir, cfg.buffer_max_bytes)?);
    let ledger = exec::ledger::Ledger::open(buffer.db(), now_ms())?;
    let executor = Arc::new(exec::Executor::new(
        cfg.exec.clone(),
        cfg.name.clone(),
        ledger,
        shutdown.clone(),
    ));
    let sampler = tokio::spawn(sample_metrics(
        cfg.metrics_interval,
        buffer.clone(),
        shutdown.clone(),
    ));
    let flusher = tokio::spawn(keep_durable(buffer.clone(), shutdown.clone()));
    let collector = {
        let (cfg, buffer, shutdown) = (cfg.clone(), buffer.clone(), shutdown.clone());
        tokio::task::spawn_blocking(move || collect::run(&cfg, buffer, shutdown))
    };
    service::ready(shutdown.clone());
    let result = uplink::run(
        cfg,
        identity,
        buffer.clone(),
        executor.clone(),
        shutdown.clone(),
    )
    .await;
    service::stopping();
    shutdown.cancel();
    // Running steps are stopped (shutdown cancels them) and their results
    // recorded before the agent exits.
    executor.drain().await;
    let _ = sampler.await;
    let _ = flusher.await;
    let _ = collector.await;
    buffer.flush()?;
    Ok(result?)
}

/// Checkpoints the buffer ([`buffer::Buffer::flush`]) once a second when
/// it changed: pushes are durable on their own, the checkpoint bounds what
/// a restart recovers and lets acked segments go. Idle, it does nothing.
async fn keep_durable(buffer: Arc<buffer::Buffer>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !buffer.behind() {
            continue;
        }
        let b = buffer.clone();
        match tokio::task::spawn_blocking(move || b.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "cannot flush the buffer"),
            Err(_) => return,
        }
    }
}

/// Takes a host metrics sample every `every` and buffers it, with the
/// buffer's own drop counters alongside.
async fn sample_metrics(
    every: std::time::Duration,
    buffer: Arc<buffer::Buffer>,
    shutdown: CancellationToken,
) {
    let mut collector = metrics::Collector::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut sample = collector.sample(now_ms());
        let payload = |mut sample: picket_proto::v1::MetricSample, b: &buffer::Buffer| {
            for (kind, n) in [buffer::Kind::Metric, buffer::Kind::Log, buffer::Kind::Event]
                .into_iter()
                .zip(b.dropped())
            {
                sample.gauges.push(picket_proto::v1::Gauge {
                    name: "agent_buffer_dropped_records".into(),
                    labels: [("kind".to_string(), kind.name().to_string())].into(),
                    value: n as f64,
                });
            }
            sample.gauges.push(picket_proto::v1::Gauge {
                name: "agent_buffer_damaged_records".into(),
                labels: Default::default(),
                value: b.damaged() as f64,
            });
            sample.gauges.push(picket_proto::v1::Gauge {
                name: "agent_buffer_bytes".into(),
                labels: Default::default(),
                value: b.held_bytes() as f64,
            });
            picket_proto::v1::record::Payload::Metrics(sample)
        };
        sample.gauges.push(picket_proto::v1::Gauge {
            name: "agent_lines_unparsed".into(),
            labels: Default::default(),
            value: collect::UNPARSED.load(std::sync::atomic::Ordering::Relaxed) as f64,
        });
        sample.gauges.push(picket_proto::v1::Gauge {
            name: "agent_read_positions_unreadable".into(),
            labels: Default::default(),
            value: collect::BAD_POSITIONS.load(std::sync::atomic::Ordering::Relaxed) as f64,
        });
        // Off the runtime: the buffer's counters take its state lock, and a
        // push may sync a segment file.
        let b = buffer.clone();
        match tokio::task::spawn_blocking(move || b.push(&[payload(sample, &b)], None)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "metrics sample not buffered"),
            Err(_) => return,
        }
    }
}
