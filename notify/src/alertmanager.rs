//! `alertmanager`: `POST /api/v2/alerts`, as Prometheus does. Firing
//! alerts carry an `endsAt` a few minutes ahead and are posted again every
//! minute (`alert::driver`), so Alertmanager resolves them by itself if
//! Picket stops; a resolved alert is posted once with its end.

use serde_json::{Value, json};

use super::rfc3339;
use picket_alert::engine::{Alert, AlertState};

/// How often firing alerts are posted again, and how far ahead their
/// `endsAt` is (Prometheus: four resend intervals).
pub const RESEND_MS: i64 = 60_000;
const ENDS_AHEAD_MS: i64 = 4 * RESEND_MS;

pub fn endpoint(url: &str) -> String {
    format!("{}/api/v2/alerts", url.trim_end_matches('/'))
}

pub fn payload(alerts: &[Alert], now: i64) -> Value {
    let list: Vec<Value> = alerts
        .iter()
        .map(|a| {
            let ends = match (a.state, a.ended_ms) {
                (AlertState::Firing, _) | (_, None) => now + ENDS_AHEAD_MS,
                (_, Some(t)) => t,
            };
            json!({
                "labels": a.labels,
                "annotations": a.annotations,
                "startsAt": rfc3339(a.started_ms.unwrap_or(a.active_ms)),
                "endsAt": rfc3339(ends),
                "generatorURL": "",
            })
        })
        .collect();
    Value::Array(list)
}
