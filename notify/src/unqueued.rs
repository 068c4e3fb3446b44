//! Notifications that cannot wait for the store: those of
//! `store_unwritable` rules, decided while the store refuses writes, so
//! the durable outbox (which is in the store) cannot take them. They are
//! sent at once, from memory, a few times over a minute until one is
//! accepted; a control plane that stops meanwhile does not send them
//! again (docs/alerting.md says so).

use std::time::Duration;

use crate::outbox::Outbox;
use crate::{Message, Outcome};
use picket_alert::engine::Notification;
use picket_alert::rules::{Kind, Rules};

/// Waits between the tries.
const TRIES: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_secs(5),
    Duration::from_secs(15),
    Duration::from_secs(40),
];

/// Whether `n` is only about the store (and so must not wait for it).
pub fn is_for(rules: &Rules, n: &Notification) -> bool {
    !n.alerts.is_empty()
        && n.alerts.iter().all(|a| {
            rules
                .rules
                .iter()
                .any(|r| r.name == a.rule && matches!(r.kind, Kind::StoreUnwritable { .. }))
        })
}

/// Sends `msg` to `notifier` in a task of its own.
pub fn send(outbox: Outbox, notifier: String, msg: Message) {
    tokio::spawn(async move {
        for wait in TRIES {
            tokio::time::sleep(wait).await;
            let refused = match outbox.send_now(&notifier, &msg).await {
                Outcome::Sent => return,
                Outcome::Refused(e) => Some(e),
                Outcome::Failed(e) => {
                    tracing::warn!(notifier = %notifier, error = %e, "a store_unwritable notification failed; trying again (from memory: the store cannot queue it)");
                    None
                }
            };
            if let Some(e) = refused {
                tracing::warn!(notifier = %notifier, error = %e, "a store_unwritable notification was refused");
                return;
            }
        }
    });
}
