//! Payloads as each receiver documents them, and the outbox against a
//! real HTTP server on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use super::*;
use picket_alert::engine::{Alert, AlertState};
use picket_alert::rules::{self, Rules};
use picket_store::Store;

fn alert(name: &str, host: &str, severity: &str, state: AlertState) -> Alert {
    let labels: Labels = [
        ("alertname".to_string(), name.to_string()),
        ("host".to_string(), host.to_string()),
        ("severity".to_string(), severity.to_string()),
        ("role".to_string(), "prod".to_string()),
    ]
    .into();
    Alert {
        fingerprint: picket_alert::engine::fingerprint(&labels),
        rule: name.into(),
        labels,
        annotations: [("summary".to_string(), format!("{host} is in trouble"))].into(),
        state,
        active_ms: 1_700_000_000_000,
        started_ms: Some(1_700_000_000_000),
        ended_ms: (state == AlertState::Resolved).then_some(1_700_000_060_000),
        value: "97.5".into(),
        last_ms: 1_700_000_000_000,
        silenced: false,
        inhibited: false,
    }
}

fn message(alerts: Vec<Alert>) -> Message {
    let firing = alerts.iter().any(|a| a.state == AlertState::Firing);
    Message {
        status: if firing { "firing" } else { "resolved" }.into(),
        group_key: "ops\0alertname=HighCpu".into(),
        group_labels: [("alertname".to_string(), "HighCpu".to_string())].into(),
        alerts,
        created_ms: 1_700_000_000_000,
        attempts: 0,
        test: false,
    }
}

#[test]
fn webhook_is_alertmanagers_version_4() {
    let m = message(vec![
        alert("HighCpu", "vm-prod", "high", AlertState::Firing),
        alert("HighCpu", "vm-staging", "high", AlertState::Resolved),
    ]);
    let p = webhook::payload(&m, "hook");
    assert_eq!(p["version"], "4");
    assert_eq!(p["status"], "firing");
    assert_eq!(p["receiver"], "hook");
    assert_eq!(p["groupKey"], "ops:alertname=HighCpu");
    assert_eq!(p["groupLabels"]["alertname"], "HighCpu");
    // Common labels: what both share (not host).
    assert_eq!(p["commonLabels"]["role"], "prod");
    assert!(p["commonLabels"].get("host").is_none());
    let a = &p["alerts"];
    assert_eq!(a[0]["status"], "firing");
    assert_eq!(a[0]["startsAt"], "2023-11-14T22:13:20Z");
    assert_eq!(a[0]["endsAt"], NO_END);
    assert_eq!(a[1]["status"], "resolved");
    assert_eq!(a[1]["endsAt"], "2023-11-14T22:14:20Z");
    assert_eq!(a[0]["fingerprint"].as_str().map(str::len), Some(16));
    assert_eq!(a[0]["annotations"]["summary"], "vm-prod is in trouble");
}

#[test]
fn slack_and_discord_use_their_incoming_webhook_shapes() {
    let m = message(vec![alert(
        "HighCpu",
        "vm-prod",
        "high",
        AlertState::Firing,
    )]);
    let s = slack::payload(&m);
    assert_eq!(s["text"], "[FIRING:1] HighCpu: vm-prod is in trouble");
    assert_eq!(s["blocks"][0]["type"], "header");
    assert!(
        s["blocks"][1]["text"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("vm-prod is in trouble")),
        "{s}"
    );
    let d = discord::payload(&m);
    assert_eq!(d["content"], "[FIRING:1] HighCpu");
    assert_eq!(d["embeds"][0]["title"], "HighCpu");
    assert_eq!(d["embeds"][0]["color"], 0xE0_1E_5A);
    // Discord takes at most ten embeds.
    let many = message(
        (0..12)
            .map(|i| alert("HighCpu", &format!("h{i}"), "high", AlertState::Firing))
            .collect(),
    );
    let d = discord::payload(&many);
    assert_eq!(d["embeds"].as_array().map(Vec::len), Some(10));
    assert!(d["content"].as_str().is_some_and(|c| c.contains("2 more")));
}

#[test]
fn text_from_hosts_is_shown_not_obeyed_and_cut_to_each_receivers_limit() {
    let mut a = alert("IdsAlert", "vm-prod", "high", AlertState::Firing);
    let hostile = format!(
        "<!channel> @everyone <http://evil|bank> & {}",
        "x".repeat(10_000)
    );
    a.annotations.insert("summary".into(), hostile);
    let m = message(vec![a]);
    let s = slack::payload(&m);
    let section = s["blocks"][1]["text"]["text"].as_str().unwrap_or_default();
    assert!(
        section.contains("&lt;!channel&gt;") && section.contains("&amp;"),
        "{section}"
    );
    assert!(!section.contains("<!channel>") && !section.contains("<http"));
    assert!(section.chars().count() <= 3000 && section.ends_with('…'));
    assert!(
        s["text"]
            .as_str()
            .is_some_and(|t| t.chars().count() <= 4000 && !t.contains('<'))
    );
    let d = discord::payload(&m);
    assert_eq!(d["allowed_mentions"]["parse"], serde_json::json!([]));
    let desc = d["embeds"][0]["description"].as_str().unwrap_or_default();
    assert!(desc.chars().count() <= 4096 && desc.ends_with('…'));
}

#[test]
fn pagerduty_triggers_and_resolves_by_fingerprint_with_mapped_severities() {
    let m = message(vec![
        alert("A", "h1", "critical", AlertState::Firing),
        alert("B", "h2", "high", AlertState::Firing),
        alert("C", "h3", "medium", AlertState::Firing),
        alert("D", "h4", "low", AlertState::Firing),
        alert("E", "h5", "high", AlertState::Resolved),
    ]);
    let ev = pagerduty::events(&m, "KEY");
    let sev: Vec<&str> = ev[..4]
        .iter()
        .map(|e| e["payload"]["severity"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(sev, ["critical", "error", "warning", "info"]);
    assert_eq!(ev[0]["event_action"], "trigger");
    assert_eq!(ev[0]["routing_key"], "KEY");
    assert_eq!(ev[0]["dedup_key"], m.alerts[0].fingerprint.as_str());
    assert_eq!(ev[0]["payload"]["source"], "h1");
    assert_eq!(ev[4]["event_action"], "resolve");
    assert_eq!(ev[4]["dedup_key"], m.alerts[4].fingerprint.as_str());
}

#[test]
fn alertmanager_posts_firing_with_an_end_ahead_and_resolved_with_its_end() {
    let now = 1_700_000_100_000;
    let p = alertmanager::payload(
        &[
            alert("A", "h1", "high", AlertState::Firing),
            alert("B", "h2", "high", AlertState::Resolved),
        ],
        now,
    );
    assert_eq!(p[0]["endsAt"], rfc3339(now + 4 * alertmanager::RESEND_MS));
    assert_eq!(p[1]["endsAt"], "2023-11-14T22:14:20Z");
    assert_eq!(p[0]["labels"]["alertname"], "A");
    assert_eq!(
        alertmanager::endpoint("http://am:9093/"),
        "http://am:9093/api/v2/alerts"
    );
}

#[test]
fn the_mail_subject_carries_the_summary() {
    let m = message(vec![
        alert("HostDown", "vm-prod", "critical", AlertState::Firing),
        alert("HostDown", "vm-dev", "critical", AlertState::Firing),
    ]);
    assert_eq!(
        email::subject(&m),
        "[FIRING:2] vm-prod is in trouble (and 1 more)"
    );
    let body = email::body(&m);
    assert!(body.contains("host = vm-dev"), "{body}");
}

#[test]
fn backoff_doubles_to_a_cap_with_jitter() {
    for _ in 0..50 {
        let first = outbox::backoff(1);
        assert!(first >= Duration::from_millis(500) && first <= Duration::from_millis(1500));
        let later = outbox::backoff(4);
        assert!(later >= Duration::from_secs(4) && later <= Duration::from_secs(12));
        assert!(outbox::backoff(40) <= Duration::from_secs(450));
    }
}

#[test]
fn urls_are_shown_without_their_secret_path() {
    assert_eq!(
        http::redact("https://hooks.slack.com/services/T0/B0/SECRET"),
        "https://hooks.slack.com/…"
    );
    assert_eq!(
        http::redact("http://10.0.1.30:9093"),
        "http://10.0.1.30:9093/…"
    );
}

/// A receiver on loopback answering each request with the next status of
/// `script` (then 200), and keeping the bodies.
struct Receiver {
    url: String,
    hits: Arc<AtomicUsize>,
    bodies: Arc<std::sync::Mutex<Vec<Value>>>,
}

async fn receiver(script: Vec<u16>, hang: bool) -> Receiver {
    use axum::http::StatusCode;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (h, b) = (hits.clone(), bodies.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let (h, b, script) = (h.clone(), b.clone(), script.clone());
            async move {
                let n = h.fetch_add(1, Ordering::SeqCst);
                if hang && n == 0 {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                let code = script.get(n).copied().unwrap_or(200);
                if code == 200 {
                    b.lock()
                        .unwrap()
                        .push(serde_json::from_str(&body).unwrap_or(Value::Null));
                }
                StatusCode::from_u16(code).unwrap()
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, hits, bodies }
}

fn rules_for(url: &str) -> Rules {
    rules::parse(&format!(
        "[[notifier]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{url}\"\n[[route]]\nnotifiers = [\"hook\"]\n"
    ))
    .unwrap()
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// An outbox sending to `url`, started with one firing notification
/// queued for its notifier `hook`.
struct Running {
    ob: outbox::Outbox,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _rules: watch::Sender<Arc<Rules>>,
}

fn start(store: &Store, url: &str, timeout: Duration) -> Running {
    let (rules, rx) = watch::channel(Arc::new(rules_for(url)));
    let ob = outbox::Outbox::new(
        store.clone(),
        http::Client::with_timeout(timeout).unwrap(),
        rx,
        picket_clock::now_ms,
    );
    let m = message(vec![alert(
        "HighCpu",
        "vm-prod",
        "high",
        AlertState::Firing,
    )]);
    store
        .put_alert_state(&"state", None, &[("hook".to_string(), m)])
        .unwrap();
    store.flush().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(ob.clone().run(shutdown.clone()));
    Running {
        ob,
        shutdown,
        task,
        _rules: rules,
    }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_it_once_when_it_recovers_and_a_4xx_is_dropped_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with_floor(dir.path(), 0.0).unwrap();
    // 500, then 200: delivered once, after one failure.
    let r = receiver(vec![500], false).await;
    let run = start(&store, &r.url, Duration::from_secs(10));
    until("the retry to land", || r.bodies.lock().unwrap().len() == 1).await;
    assert_eq!(r.hits.load(Ordering::SeqCst), 2);
    let stats = run.ob.stats_now().await.of("hook");
    assert_eq!(
        (stats.sent, stats.failed, stats.queued),
        (1, 1, 0),
        "{stats:?}"
    );
    assert!(stats.last_error.contains("500"), "{stats:?}");
    assert_eq!(
        r.bodies.lock().unwrap()[0]["alerts"][0]["labels"]["host"],
        "vm-prod"
    );
    run.stop().await;

    // A 400 is the receiver's last word: dropped, counted, not retried.
    let r = receiver(vec![400, 400, 400], false).await;
    let run = start(&store, &r.url, Duration::from_secs(10));
    until("the refusal", || run.ob.stats().of("hook").failed == 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(r.hits.load(Ordering::SeqCst), 1);
    assert!(store.outbox::<Message>().unwrap().is_empty());
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_hangs_times_out_and_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with_floor(dir.path(), 0.0).unwrap();
    let r = receiver(vec![], true).await;
    let run = start(&store, &r.url, Duration::from_millis(300));
    until("the retry after the timeout", || {
        r.bodies.lock().unwrap().len() == 1
    })
    .await;
    let s = run.ob.stats().of("hook");
    assert_eq!((s.sent, s.failed), (1, 1));
    assert!(s.last_error.contains("no answer within"), "{s:?}");
    run.stop().await;
}
