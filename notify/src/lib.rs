//! Notifiers (SPEC §10): what each receiver is sent, and the durable
//! outbox that sends it.
//!
//! - [`Message`] is one notification as it waits in the outbox: a
//!   group's alerts for one notifier, as the engine decided them.
//! - One module per receiver builds its request from a message:
//!   [`webhook`] (Alertmanager's webhook JSON, version "4"), [`slack`],
//!   [`discord`], [`pagerduty`] (Events API v2), [`alertmanager`]
//!   (`POST /api/v2/alerts`) and [`email`] (SMTP, lettre).
//! - [`outbox`] sends what waits, one worker per notifier, with backoff.
//!
//! Nothing here decides *whether* to notify: that is `picket_alert::engine`'s.

use picket_model::Labels;
use serde::{Deserialize, Serialize};

use picket_alert::engine::{Alert, AlertState, Notification};
use picket_alert::rules::{Notifier, NotifierKind};

pub mod alertmanager;
pub mod discord;
pub mod email;
pub mod http;
pub mod outbox;
pub mod pagerduty;
pub mod slack;
pub mod unqueued;
pub mod webhook;

/// One notification, as stored in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `firing` while any alert in it fires, else `resolved`.
    pub status: String,
    pub group_key: String,
    pub group_labels: Labels,
    pub alerts: Vec<Alert>,
    /// When the engine decided it.
    pub created_ms: i64,
    /// Failed attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// `picketctl alerts test`: not from a rule.
    #[serde(default)]
    pub test: bool,
}

impl Message {
    pub fn of(n: &Notification, now: i64) -> Self {
        Message {
            status: n.status.to_string(),
            group_key: n.group_key.clone(),
            group_labels: n.group_labels.clone(),
            alerts: n.alerts.clone(),
            created_ms: now,
            attempts: 0,
            test: false,
        }
    }

    /// The message `alerts test NOTIFIER` sends: one firing alert that no
    /// rule raised.
    pub fn test(notifier: &str, now: i64) -> Self {
        let labels: Labels = [
            ("alertname".to_string(), "PicketTest".to_string()),
            ("severity".to_string(), "info".to_string()),
        ]
        .into();
        let alert = Alert {
            fingerprint: picket_alert::engine::fingerprint(&labels),
            rule: "PicketTest".into(),
            annotations: [(
                "summary".to_string(),
                format!("Test notification from Picket to notifier {notifier}"),
            )]
            .into(),
            labels: labels.clone(),
            state: AlertState::Firing,
            active_ms: now,
            started_ms: Some(now),
            ended_ms: None,
            value: String::new(),
            last_ms: now,
            silenced: false,
            inhibited: false,
        };
        Message {
            status: "firing".into(),
            group_key: format!("{notifier}\0test"),
            group_labels: labels,
            alerts: vec![alert],
            created_ms: now,
            attempts: 0,
            test: true,
        }
    }

    /// What Alertmanager is posted every minute: the firing alerts routed
    /// to it, outside any group.
    pub fn refresh(notifier: &str, alerts: Vec<Alert>, now: i64) -> Self {
        Message {
            status: "firing".into(),
            group_key: format!("{notifier}\0refresh"),
            group_labels: Labels::new(),
            alerts,
            created_ms: now,
            attempts: 0,
            test: false,
        }
    }

    pub fn firing(&self) -> usize {
        self.alerts
            .iter()
            .filter(|a| a.state == AlertState::Firing)
            .count()
    }

    /// Labels every alert shares (Alertmanager's `commonLabels`).
    pub fn common_labels(&self) -> Labels {
        common(self.alerts.iter().map(|a| &a.labels))
    }

    pub fn common_annotations(&self) -> Labels {
        common(self.alerts.iter().map(|a| &a.annotations))
    }

    /// A one-line title: `[FIRING:2] HighCpu vm-prod`.
    pub fn title(&self) -> String {
        let mut t = format!("[{}", self.status.to_uppercase());
        if self.status == "firing" {
            t.push_str(&format!(":{}", self.firing()));
        }
        t.push(']');
        for v in self.group_labels.values() {
            t.push(' ');
            t.push_str(v);
        }
        t
    }
}

fn common<'a>(mut all: impl Iterator<Item = &'a Labels>) -> Labels {
    let Some(first) = all.next() else {
        return Labels::new();
    };
    let mut out = first.clone();
    for l in all {
        out.retain(|k, v| l.get(k) == Some(v));
    }
    out
}

/// An alert's summary, or its name when it has none.
pub fn summary(a: &Alert) -> &str {
    a.annotations
        .get("summary")
        .filter(|s| !s.is_empty())
        .map(String::as_str)
        .unwrap_or(&a.rule)
}

/// `s` cut to at most `max` characters (the receiver's limit), marked
/// `…`: a receiver refuses a longer text with a 4xx, and a 4xx is not
/// retried, so the notification would be lost for a long summary.
pub fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// RFC 3339 in UTC, as Alertmanager writes times.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// Alertmanager's "no end" time.
pub const NO_END: &str = "0001-01-01T00:00:00Z";

/// What came of one attempt to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver accepted it.
    Sent,
    /// The receiver refused it for good (an HTTP 4xx): counted as failed
    /// and dropped, not retried.
    Refused(String),
    /// It may work later (a 5xx, a timeout, no connection): retried.
    Failed(String),
}

/// Sends `msg` to `notifier` once, at `now`.
pub async fn send(client: &http::Client, notifier: &Notifier, msg: &Message, now: i64) -> Outcome {
    match &notifier.kind {
        NotifierKind::Webhook { url } => {
            client
                .post_json(url, &webhook::payload(msg, &notifier.name))
                .await
        }
        NotifierKind::Slack { url } => client.post_json(url, &slack::payload(msg)).await,
        NotifierKind::Discord { url } => client.post_json(url, &discord::payload(msg)).await,
        NotifierKind::PagerDuty { url, routing_key } => {
            // One event per alert; PagerDuty dedups a repeat by dedup_key,
            // so resending them all after a partial failure is harmless.
            for event in pagerduty::events(msg, routing_key) {
                let o = client.post_json(url, &event).await;
                if o != Outcome::Sent {
                    return o;
                }
            }
            Outcome::Sent
        }
        NotifierKind::Alertmanager { url } => {
            let endpoint = alertmanager::endpoint(url);
            client
                .post_json(&endpoint, &alertmanager::payload(&msg.alerts, now))
                .await
        }
        NotifierKind::Email { .. } => email::send(&notifier.kind, msg).await,
    }
}

/// Where a notifier sends, for people (never a key or a password).
pub fn target(kind: &NotifierKind) -> String {
    match kind {
        NotifierKind::Webhook { url }
        | NotifierKind::Slack { url }
        | NotifierKind::Discord { url }
        | NotifierKind::PagerDuty { url, .. }
        | NotifierKind::Alertmanager { url } => http::redact(url),
        NotifierKind::Email { smtp, to, .. } => format!("smtp://{smtp} to {}", to.join(", ")),
    }
}

pub fn kind_name(kind: &NotifierKind) -> &'static str {
    match kind {
        NotifierKind::Webhook { .. } => "webhook",
        NotifierKind::Slack { .. } => "slack",
        NotifierKind::Discord { .. } => "discord",
        NotifierKind::PagerDuty { .. } => "pagerduty",
        NotifierKind::Alertmanager { .. } => "alertmanager",
        NotifierKind::Email { .. } => "email",
    }
}

#[cfg(test)]
mod tests;
