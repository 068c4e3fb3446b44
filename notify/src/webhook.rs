//! `webhook`: Alertmanager's webhook JSON (version "4"), so anything that
//! takes Alertmanager's webhooks takes Picket's.

use serde_json::{Value, json};

use super::{Message, NO_END, rfc3339};
use picket_alert::engine::AlertState;

pub fn payload(msg: &Message, receiver: &str) -> Value {
    let alerts: Vec<Value> = msg
        .alerts
        .iter()
        .map(|a| {
            json!({
                "status": if a.state == AlertState::Firing { "firing" } else { "resolved" },
                "labels": a.labels,
                "annotations": a.annotations,
                "startsAt": rfc3339(a.started_ms.unwrap_or(a.active_ms)),
                "endsAt": a.ended_ms.map(rfc3339).unwrap_or_else(|| NO_END.into()),
                "generatorURL": "",
                "fingerprint": a.fingerprint,
            })
        })
        .collect();
    json!({
        "version": "4",
        "groupKey": msg.group_key.replace('\0', ":"),
        "truncatedAlerts": 0,
        "status": msg.status,
        "receiver": receiver,
        "groupLabels": msg.group_labels,
        "commonLabels": msg.common_labels(),
        "commonAnnotations": msg.common_annotations(),
        "externalURL": "",
        "alerts": alerts,
    })
}
