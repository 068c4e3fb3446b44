//! Plain HTTP: `/metrics` (Prometheus text format), `/healthz`, `/readyz`.
//! Read-only: nothing here changes state.

use std::sync::Arc;

use axum::Router;
use axum::extract::State as AxState;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::grpc::state::State;

pub async fn serve(listener: TcpListener, state: Arc<State>) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Ready while the control plane can store what agents send.
async fn ready(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    if state.shutdown.is_cancelled() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_string(),
        )
    } else if let Some(why) = state.store.health().why() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store not writable: {why}\n"),
        )
    } else if let Some(c) = state
        .cluster
        .as_ref()
        .map(|c| &c.cluster)
        .filter(|c| !c.etcd_up())
    {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("etcd unreachable ({})\n", c.etcd().endpoints().join(",")),
        )
    } else if let Some(why) = state.feed.records().unreachable() {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"))
    } else {
        (StatusCode::OK, "ready\n".to_string())
    }
}

/// Builds a registry from the current state on each scrape: values are read
/// where they live, so there is no second copy to keep in sync.
async fn metrics(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    let st = state.clone();
    let body = tokio::task::spawn_blocking(move || exposition(&st)).await;
    match body {
        Ok(Ok(body)) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Ok(Err(error)) => {
            tracing::error!(%error, "metrics exposition failed");
            (StatusCode::INTERNAL_SERVER_ERROR, String::new()).into_response()
        }
        Err(error) => {
            tracing::error!(%error, "metrics exposition task failed");
            (StatusCode::INTERNAL_SERVER_ERROR, String::new()).into_response()
        }
    }
}

type HostGauges = Family<Labels, Gauge<f64, AtomicU64>>;
use picket_model::exposition::{Labels, host_labels, metric_help as help, sanitize};

fn exposition(state: &State) -> Result<String, picket_store::StoreError> {
    let mut reg = Registry::default();
    let agents = state.store.agents()?;

    let up = Family::<Labels, Gauge>::default();
    let clock = HostGauges::default();
    let mut host: BTreeMap<String, HostGauges> = BTreeMap::new();
    let (mut enrolled, mut revoked) = (0i64, 0i64);
    for a in &agents {
        if a.revoked_ms.is_some() {
            revoked += 1;
            continue;
        }
        enrolled += 1;
        let base = host_labels(&a.name, &a.labels());
        // Up while it streams with any replica (cluster mode: presence),
        // so that an alert on `picket_agent_up == 0` means the same on
        // every replica; its gauges come from the replica holding it.
        up.get_or_create(&base)
            .set(i64::from(state.streaming(&a.name)));
        let online = state.sessions.is_online(&a.name);
        if let Some(ms) = state.sessions.clock_offset_ms(&a.name).filter(|_| online) {
            clock.get_or_create(&base).set(ms as f64 / 1000.0);
        }
        // Values of a host that is gone are not exported: Prometheus then
        // marks its series stale instead of repeating a frozen value.
        let Some(sample) = state.fleet.latest(&a.name).filter(|_| online) else {
            continue;
        };
        for p in &sample.points {
            let name = sanitize(&p.name);
            if name.is_empty() {
                continue;
            }
            let mut labels = base.clone();
            for (k, v) in &p.labels {
                let k = sanitize(k);
                if !labels.iter().any(|(x, _)| *x == k) {
                    labels.push((k, picket_model::exposition_value(v)));
                }
            }
            host.entry(name)
                .or_default()
                .get_or_create(&labels)
                .set(p.value);
        }
    }
    reg.register(
        "picket_agent_up",
        "1 if the agent has a live session (with any replica, in cluster mode), else 0",
        up,
    );
    reg.register(
        "picket_agent_clock_offset_seconds",
        "How far the host's clock is ahead of the control plane's (behind: negative), from its heartbeats",
        clock,
    );
    for (name, family) in host {
        let h = help(&name);
        reg.register(format!("picket_host_{name}"), h, family);
    }

    let build = Family::<Labels, Gauge>::default();
    build
        .get_or_create(&vec![(
            "version".to_string(),
            picket_model::exposition_value(env!("PICKET_VERSION")),
        )])
        .set(1);
    reg.register(
        "picket_control_build_info",
        "The control plane's build: release and commit, in the version label",
        build,
    );
    gauge(
        &mut reg,
        "picket_control_agents_connected",
        "Agents with an open session stream",
        i64::try_from(state.sessions.online_count()).unwrap_or(i64::MAX),
    );
    gauge(
        &mut reg,
        "picket_control_agents_enrolled",
        "Enrolled, unrevoked agents",
        enrolled,
    );
    gauge(
        &mut reg,
        "picket_control_agents_revoked",
        "Revoked agents",
        revoked,
    );
    // Watch it: the control plane renews its certificate itself when fewer
    // than 30 days are left; a value that comes that close did not renew.
    let expiry = state
        .identity
        .leaf()
        .and_then(|c| picket_pki::server::describe(&c))
        .and_then(|c| c.not_after.duration_since(std::time::UNIX_EPOCH).ok());
    if let Some(expiry) = expiry {
        gauge(
            &mut reg,
            "picket_control_server_cert_expiry_timestamp_seconds",
            "When the server certificate served now expires (Unix seconds)",
            i64::try_from(expiry.as_secs()).unwrap_or(i64::MAX),
        );
    }
    // Monotonic totals exported as gauges: promtool (2.42, Debian 12) lints
    // the 0.0.4 text format and flags OpenMetrics counter families, whose
    // samples carry a `_total` suffix their HELP line lacks. See
    // docs/metrics.md.
    for (name, help, v) in [
        (
            "picket_control_records_ingested",
            "Records stored from agents since the control plane started",
            &state.counters.ingested,
        ),
        (
            "picket_control_records_duplicate",
            "Records received again after a replay, and skipped, since start",
            &state.counters.duplicates,
        ),
        (
            "picket_control_records_rejected",
            "Records that could not be decoded, and skipped, since start",
            &state.counters.rejected,
        ),
        (
            "picket_control_connections_refused",
            "gRPC connections closed at accept: too many without a client certificate, in all",
            &state.gate.refused_total,
        ),
        (
            "picket_control_connections_refused_address",
            "gRPC connections closed at accept: too many without a client certificate from their address",
            &state.gate.refused_address,
        ),
        (
            "picket_control_tls_handshake_timeouts",
            "gRPC connections closed because their TLS handshake did not finish in time",
            &state.gate.handshake_timeouts,
        ),
        (
            "picket_control_tls_handshake_failures",
            "gRPC connections whose TLS handshake failed (bad certificate, not TLS)",
            &state.gate.handshake_failures,
        ),
        (
            "picket_control_connections_unauthenticated_expired",
            "Connections without a client certificate closed at the end of their lifetime",
            &state.gate.unauthenticated_expired,
        ),
        (
            "picket_control_enroll_rate_limited",
            "Enrollment attempts refused by the per-address rate limit",
            &state.counters.enroll_rate_limited,
        ),
        (
            "picket_control_follower_records_sent",
            "Events and log lines sent to queries and -f followers since start",
            &state.feed.stats.sent,
        ),
        (
            "picket_control_samples_clamped",
            "Metric samples dated more than 5 minutes ahead, stored at their receive time, since start",
            &state.counters.samples_clamped,
        ),
        (
            "picket_control_step_output_cut",
            "Step results whose output was cut to the 64 KiB the control plane keeps, since start",
            &state.steps.output_cut,
        ),
        (
            "picket_control_renewals_refused",
            "Certificate renewals refused for coming too soon after the last one, since start",
            &state.counters.renew_refused,
        ),
        (
            "picket_control_follower_catch_ups",
            "Times a -f follower fell behind its live queue and read what it missed from the store",
            &state.feed.stats.catch_ups,
        ),
    ] {
        let v = i64::try_from(v.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        gauge(&mut reg, name, help, v);
    }

    gauge(
        &mut reg,
        "picket_control_connections_unauthenticated",
        "gRPC connections open without a client certificate (handshaking or enrolling)",
        i64::try_from(state.gate.unauthenticated()).unwrap_or(i64::MAX),
    );

    for (name, help, v) in [
        (
            "picket_control_followers",
            "logs -f and events -f streams open now",
            &state.feed.stats.followers,
        ),
        (
            "picket_control_followers_catching_up",
            "Of them, reading what they missed from the store now",
            &state.feed.stats.catching_up,
        ),
    ] {
        gauge(&mut reg, name, help, v.load(Ordering::Relaxed));
    }

    let health = state.store.health();
    gauge(
        &mut reg,
        "picket_control_store_writable",
        "1 while the store takes writes, 0 while records are refused (a full or failing disk)",
        i64::from(health.writable()),
    );
    // A total as a gauge, without `_total`, as the totals above (promtool).
    gauge(
        &mut reg,
        "picket_control_store_write_failures",
        "Store writes and flushes that failed (a full disk, an I/O error) since start",
        i64::try_from(health.failures()).unwrap_or(i64::MAX),
    );
    // Alone, a control plane leads itself; in a cluster, the one holding
    // the etcd lease (SPEC §12).
    let cluster = state.cluster.as_ref().map(|c| &c.cluster);
    gauge(
        &mut reg,
        "picket_control_leader",
        "1 on the replica that runs the rollout and alert engines, 0 on the others",
        i64::from(cluster.is_none_or(picket_cluster::Cluster::is_leader)),
    );
    if let Some(c) = cluster {
        gauge(
            &mut reg,
            "picket_control_etcd_up",
            "1 while etcd answers this replica (a quorum behind it), 0 when not",
            i64::from(c.etcd_up()),
        );
    }
    let records = state.feed.records();
    if records.shared() {
        gauge(
            &mut reg,
            "picket_control_postgres_up",
            "1 while the records database answered this replica's last call, 0 when not",
            i64::from(records.unreachable().is_none()),
        );
    }

    notifications(&mut reg, state);

    let mut body = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut body, &reg);
    Ok(body)
}

/// One gauge of one value.
fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g = Gauge::<i64>::default();
    g.set(v);
    reg.register(name, help, g);
}

/// The notifiers' figures (SPEC §10), when the alert file has any.
/// `picket_control_notifications_failed_total` is a true counter (the
/// name SPEC gives): OpenMetrics writes its family without `_total` and
/// its samples with it.
fn notifications(reg: &mut Registry, state: &State) {
    let mut names = state.alerts.outbox.notifiers();
    let stats = state.alerts.outbox.stats_blocking();
    names.extend(stats.0.keys().cloned());
    names.sort();
    names.dedup();
    if names.is_empty() {
        return;
    }
    gauge(
        reg,
        "picket_control_alerts_firing",
        "Alerts firing now",
        i64::from(state.alerts.firing()),
    );
    let failed = Family::<Labels, Counter>::default();
    let sent = Family::<Labels, Counter>::default();
    let queued = Family::<Labels, Gauge>::default();
    for name in names {
        let l = vec![("notifier".to_string(), name.clone())];
        let s = stats.of(&name);
        failed.get_or_create(&l).inc_by(s.failed);
        sent.get_or_create(&l).inc_by(s.sent);
        queued
            .get_or_create(&l)
            .set(i64::try_from(s.queued).unwrap_or(i64::MAX));
    }
    reg.register(
        "picket_control_notifications_failed",
        "Notification attempts that failed or were refused, per notifier, since start",
        failed,
    );
    reg.register(
        "picket_control_notifications_sent",
        "Notifications the receiver accepted, per notifier, since start",
        sent,
    );
    reg.register(
        "picket_control_notifications_queued",
        "Notifications waiting in the outbox, per notifier",
        queued,
    );
}
