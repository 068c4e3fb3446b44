//! The driver's shell over a store whose writes fail on demand
//! (`picket_store::faults`, over the real sled backend).

use std::sync::Arc;
use std::time::Duration;

use picket_notify::Message;
use picket_proto::{scan, v1};
use picket_store::backend::Sled;
use picket_store::faults::Faulty;
use picket_store::{Queued, Store};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Parts, start};

const RULES: &str = r#"
[defaults]
group_wait = "0s"

[[rule]]
name = "IdsAlert"
kind = "event"
match = { source = "suricata", kind = "alert" }
severity = "critical"

[[notifier]]
name = "hook"
kind = "webhook"
# Nothing listens there: what is queued stays queued.
url = "http://127.0.0.1:9/"

[[route]]
notifiers = ["hook"]
"#;

fn queued(store: &Store) -> Vec<Queued<Message>> {
    store.outbox().unwrap()
}

#[tokio::test]
async fn a_failed_write_keeps_the_notifications_it_decided_until_one_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alerts.toml");
    std::fs::write(&file, RULES).unwrap();
    let sled = Arc::new(Sled::open(&dir.path().join("store")).unwrap());
    let faulty = Arc::new(Faulty::new(sled));
    let store = Store::with_backend(faulty.clone());
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let parts = Parts {
        store: store.clone(),
        file: Some(file),
        now: picket_clock::now_ms,
        name: "cp".into(),
        records: None,
    };
    let handle = start(parts, shutdown.clone(), &tasks).await.unwrap();

    // The disk refuses while an event fires the rule and its notification
    // is decided.
    faulty.fail(true);
    let bytes = v1::Event {
        source: "suricata".into(),
        kind: "alert".into(),
        severity: v1::Severity::High as i32,
        message: "ET SCAN".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let tap = handle.tap.clone();
    tokio::task::spawn_blocking(move || {
        let (_, head) = scan::event_check(&bytes).unwrap();
        let mut c = tap.collector("h1", picket_clock::now_ms()).unwrap();
        c.event(&bytes, &head);
        tap.send_blocking(c);
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while handle.list().await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the rule fired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Long enough for the decision, its failed write and a failed retry.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        faulty.refused() >= 2,
        "the driver tried to write and retried"
    );
    assert!(
        queued(&store).is_empty(),
        "nothing is queued while the store refuses"
    );

    // The disk is back: the decided notification is stored, once, with no
    // restart and no new event.
    faulty.fail(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while queued(&store).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the notification decided while the store refused is queued once it accepts writes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let q = queued(&store);
    assert_eq!(q.len(), 1, "queued once: {q:?}");
    assert_eq!(q[0].notifier, "hook");
    shutdown.cancel();
}
