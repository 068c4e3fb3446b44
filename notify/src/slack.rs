//! `slack`: an incoming-webhook message, `text` (the notification's
//! fallback) and `blocks` (a header, then a section per alert).

use serde_json::{Value, json};

use super::{Message, summary};
use picket_alert::engine::AlertState;

/// Slack allows 50 blocks; a header and the first 40 alerts fit.
const MAX_ALERTS: usize = 40;

pub fn payload(msg: &Message) -> Value {
    let title = msg.title();
    let mut blocks = vec![json!({
        "type": "header",
        "text": { "type": "plain_text", "text": title },
    })];
    for a in msg.alerts.iter().take(MAX_ALERTS) {
        let mark = if a.state == AlertState::Firing {
            ":red_circle:"
        } else {
            ":large_green_circle:"
        };
        let labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        blocks.push(json!({
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": format!("{mark} *{}*\n{}\n`{}`", a.rule, summary(a), labels.join(" ")),
            },
        }));
    }
    if msg.alerts.len() > MAX_ALERTS {
        blocks.push(json!({
            "type": "context",
            "elements": [{ "type": "mrkdwn", "text": format!("and {} more", msg.alerts.len() - MAX_ALERTS) }],
        }));
    }
    let first = msg.alerts.first().map(summary).unwrap_or_default();
    json!({ "text": format!("{title}: {first}"), "blocks": blocks })
}
