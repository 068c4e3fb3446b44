//! The driver's shell over a store whose writes fail on demand
//! (`picket_store::faults`, over the real sled backend) and real
//! session queues standing for two agents.

use std::sync::Arc;
use std::time::Duration;

use picket_proto::v1::{self, control_message, step_update};
use picket_store::backend::Sled;
use picket_store::faults::Faulty;
use picket_store::{AgentRecord, Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Parts, start};
use crate::sessions::Sessions;
use crate::steps::Steps;

fn agent(name: &str) -> AgentRecord {
    AgentRecord {
        name: name.into(),
        pinned_labels: [("role".to_string(), "prod".to_string())].into(),
        reported_labels: Default::default(),
        enrolled_ms: 1,
        cert_serial: String::new(),
        prev_cert_serial: None,
        cert_not_after_ms: i64::MAX,
        revoked_ms: None,
        inventory: None,
        last_seen_ms: 1,
    }
}

/// The next step dispatched on a session queue, within `limit`.
async fn dispatched(
    rx: &mut mpsc::Receiver<Result<v1::ControlMessage, tonic::Status>>,
    limit: Duration,
) -> Option<v1::StepKey> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let m = tokio::time::timeout_at(deadline, rx.recv()).await.ok()??;
        if let Ok(v1::ControlMessage {
            body: Some(control_message::Body::Dispatch(d)),
        }) = m
        {
            return d.key;
        }
    }
}

#[tokio::test]
async fn a_failed_persist_holds_the_dispatches_it_decided_and_sends_them_once_stored() {
    let dir = tempfile::tempdir().unwrap();
    let sled = Arc::new(Sled::open(&dir.path().join("store")).unwrap());
    let faulty = Arc::new(Faulty::new(sled));
    let store = Store::with_backend(faulty.clone());
    store.put_agent(&agent("h1")).unwrap();
    store.put_agent(&agent("h2")).unwrap();
    let sessions = Arc::new(Sessions::default());
    let (tx1, mut rx1) = mpsc::channel(16);
    let (tx2, mut rx2) = mpsc::channel(16);
    let _g1 = sessions.open("h1", tx1);
    let _g2 = sessions.open("h2", tx2);
    let steps = Arc::new(Steps::new(sessions));
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let parts = Parts {
        store,
        steps: steps.clone(),
        events: Box::new(|_, _, _| {}),
        now: picket_clock::now_ms,
    };
    let handle = start(parts, shutdown.clone(), &tasks).await.unwrap();
    let spec = toml::from_str(
        "name = \"one at a time\"\nselector = \"role=prod\"\nmax_parallel = 1\n\
         [[step]]\nexec = [\"true\"]\n",
    )
    .unwrap();
    let id = handle.create(spec).await.unwrap();

    // One host at a time: the first gets its step, the other waits.
    let (first, mut other) = tokio::select! {
        k = dispatched(&mut rx1, Duration::from_secs(10)) => (("h1", k.unwrap()), rx2),
        k = dispatched(&mut rx2, Duration::from_secs(10)) => (("h2", k.unwrap()), rx1),
    };
    let (host, key) = first;

    // The disk refuses: the first host's result makes the engine decide the
    // second host's step, whose persist fails.
    faulty.fail(true);
    let result = v1::StepUpdate {
        key: Some(key),
        body: Some(step_update::Body::Result(v1::StepResult {
            state: v1::StepState::Succeeded as i32,
            exit_code: Some(0),
            duration_ms: 5,
            output: String::new(),
        })),
    };
    steps.deliver(host, result).await;
    // Persist before acting: nothing is sent while the store refuses.
    assert_eq!(dispatched(&mut other, Duration::from_secs(2)).await, None);
    assert!(faulty.refused() > 0, "the driver tried to persist");

    // The disk is back: the held step goes out, once, with no restart.
    faulty.fail(false);
    let k = dispatched(&mut other, Duration::from_secs(10))
        .await
        .expect("the held dispatch is sent once its persist succeeds");
    assert_eq!(k.run, id);
    assert_eq!(
        dispatched(&mut other, Duration::from_millis(1500)).await,
        None,
        "sent once"
    );
    shutdown.cancel();
}
