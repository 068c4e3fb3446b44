//! Plain HTTP: `/metrics` (Prometheus text format), `/healthz`, `/readyz`.
//! Read-only: nothing here changes state.

use std::sync::Arc;

use axum::Router;
use axum::extract::State as AxState;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::state::State;

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

async fn ready(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    if state.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

/// Builds a registry from the current state on each scrape: values are read
/// where they live, so there is no second copy to keep in sync.
async fn metrics(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    let mut reg = Registry::with_prefix("picket_control");
    let connected = Gauge::<i64>::default();
    connected.set(i64::try_from(state.sessions.online_count()).unwrap_or(i64::MAX));
    reg.register(
        "agents_connected",
        "Agents with an open session stream",
        connected,
    );
    let enrolled = Gauge::<i64>::default();
    let revoked = Gauge::<i64>::default();
    match state.store.agents() {
        Ok(agents) => {
            let n = agents.len();
            let r = agents.iter().filter(|a| a.revoked_ms.is_some()).count();
            enrolled.set(i64::try_from(n - r).unwrap_or(i64::MAX));
            revoked.set(i64::try_from(r).unwrap_or(i64::MAX));
        }
        Err(error) => tracing::error!(%error, "metrics: cannot list agents"),
    }
    reg.register("agents_enrolled", "Enrolled, unrevoked agents", enrolled);
    reg.register("agents_revoked", "Revoked agents", revoked);
    let mut body = String::new();
    if let Err(error) = encode(&mut body, &reg) {
        tracing::error!(%error, "metrics: encoding failed");
        return (StatusCode::INTERNAL_SERVER_ERROR, String::new()).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
