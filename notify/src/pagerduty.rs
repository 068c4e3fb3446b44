//! `pagerduty`: Events API v2, one `trigger` or `resolve` per alert, its
//! fingerprint the `dedup_key`.

use picket_model::Severity;
use serde_json::{Value, json};

use super::{Message, rfc3339, summary};
use picket_alert::engine::AlertState;

/// SPEC §10: critical → critical, high → error, medium → warning, else
/// info.
pub fn severity(s: &str) -> &'static str {
    match s.parse::<Severity>() {
        Ok(Severity::Critical) => "critical",
        Ok(Severity::High) => "error",
        Ok(Severity::Medium) => "warning",
        _ => "info",
    }
}

pub fn events(msg: &Message, routing_key: &str) -> Vec<Value> {
    msg.alerts
        .iter()
        .map(|a| {
            if a.state == AlertState::Firing {
                json!({
                    "routing_key": routing_key,
                    "event_action": "trigger",
                    "dedup_key": a.fingerprint,
                    "client": "Picket",
                    "payload": {
                        "summary": summary(a).chars().take(1024).collect::<String>(),
                        "source": a.labels.get("host").map(String::as_str).unwrap_or("picket"),
                        "severity": severity(a.labels.get("severity").map(String::as_str).unwrap_or("")),
                        "timestamp": rfc3339(a.started_ms.unwrap_or(a.active_ms)),
                        "component": a.rule,
                        "custom_details": { "labels": a.labels, "annotations": a.annotations, "value": a.value },
                    },
                })
            } else {
                json!({
                    "routing_key": routing_key,
                    "event_action": "resolve",
                    "dedup_key": a.fingerprint,
                })
            }
        })
        .collect()
}
