//! `discord`: an incoming-webhook message, `content` and one embed per
//! alert (Discord allows ten).

use serde_json::{Value, json};

use super::{Message, cut, summary};
use picket_alert::engine::AlertState;

const MAX_EMBEDS: usize = 10;
/// Discord's limits: content, an embed's title, its description.
const CONTENT_CHARS: usize = 2000;
const TITLE_CHARS: usize = 256;
const DESCRIPTION_CHARS: usize = 4096;
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
                "title": cut(&a.rule, TITLE_CHARS),
                "description": cut(&format!("{}\n`{}`", summary(a), labels.join(" ")), DESCRIPTION_CHARS),
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
    // No mention of anyone: `@everyone` or `<@id>` in a host's text is
    // shown, never pings.
    json!({
        "content": cut(&content, CONTENT_CHARS),
        "embeds": embeds,
        "allowed_mentions": { "parse": [] },
    })
}
