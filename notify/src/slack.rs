//! `slack`: an incoming-webhook message, `text` (the notification's
//! fallback) and `blocks` (a header, then a section per alert).

use serde_json::{Value, json};

use super::{Message, cut, summary};
use picket_alert::engine::AlertState;

/// Slack allows 50 blocks; a header and the first 40 alerts fit.
const MAX_ALERTS: usize = 40;
/// Slack's limits: a header's text, a section's text, a message's text.
const HEADER_CHARS: usize = 150;
const SECTION_CHARS: usize = 3000;
const TEXT_CHARS: usize = 4000;

/// Text from hosts as mrkdwn shows it, not as markup: `&`, `<` and `>`
/// escaped (Slack's rule), so `<!channel>` or `<http://x|y>` in a log
/// line is shown, never a mention or a disguised link.
fn mrkdwn(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn payload(msg: &Message) -> Value {
    let title = msg.title();
    let mut blocks = vec![json!({
        "type": "header",
        "text": { "type": "plain_text", "text": cut(&title, HEADER_CHARS) },
    })];
    for a in msg.alerts.iter().take(MAX_ALERTS) {
        let mark = if a.state == AlertState::Firing {
            ":red_circle:"
        } else {
            ":large_green_circle:"
        };
        let labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let text = format!(
            "{mark} *{}*\n{}\n`{}`",
            mrkdwn(&a.rule),
            mrkdwn(summary(a)),
            mrkdwn(&labels.join(" "))
        );
        blocks.push(json!({
            "type": "section",
            "text": { "type": "mrkdwn", "text": cut(&text, SECTION_CHARS) },
        }));
    }
    if msg.alerts.len() > MAX_ALERTS {
        blocks.push(json!({
            "type": "context",
            "elements": [{ "type": "mrkdwn", "text": format!("and {} more", msg.alerts.len() - MAX_ALERTS) }],
        }));
    }
    let first = msg.alerts.first().map(summary).unwrap_or_default();
    let text = mrkdwn(&format!("{title}: {first}"));
    json!({ "text": cut(&text, TEXT_CHARS), "blocks": blocks })
}
