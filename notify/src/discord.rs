//! `discord`: an incoming-webhook message, `content` and one embed per
//! alert (Discord allows ten).

use serde_json::{Value, json};

use super::{Message, summary};
use picket_alert::engine::AlertState;

const MAX_EMBEDS: usize = 10;
const RED: u32 = 0xE0_1E_5A;
const GREEN: u32 = 0x2E_B6_7D;

pub fn payload(msg: &Message) -> Value {
    let embeds: Vec<Value> = msg
        .alerts
        .iter()
        .take(MAX_EMBEDS)
        .map(|a| {
            let labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            json!({
                "title": a.rule,
                "description": format!("{}\n`{}`", summary(a), labels.join(" ")),
                "color": if a.state == AlertState::Firing { RED } else { GREEN },
            })
        })
        .collect();
    let mut content = msg.title();
    if msg.alerts.len() > MAX_EMBEDS {
        content.push_str(&format!(
            " ({} more not shown)",
            msg.alerts.len() - MAX_EMBEDS
        ));
    }
    json!({ "content": content, "embeds": embeds })
}
