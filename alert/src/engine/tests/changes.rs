//! The engine across changes: rebuilt from what it persisted after every
//! input, and with hosts relabelled and rules reloaded.

use super::*;

/// One scenario through every state (pending, firing, silenced,
/// grouped, resolved), once straight and once with the engine rebuilt
/// from what it persisted after every input: the same notifications.
#[test]
fn a_restart_after_every_input_changes_nothing() {
    let run = |restart: bool| {
        let mut s = Sim::new(HIGH_CPU);
        s.restart = restart;
        s.cpu("a", 95.0);
        s.advance(100);
        s.cpu("b", 96.0);
        s.advance(250);
        s.input(Input::Silence(Silence {
            id: "s".into(),
            matchers: labels(&[("host", "b")]),
            ends_ms: s.now + 600_000,
            comment: String::new(),
            created_by: String::new(),
            created_ms: 0,
        }));
        s.advance(300);
        s.cpu("a", 10.0);
        s.advance(900);
        s.cpu("b", 10.0);
        s.advance(4000);
        (s.said(), s.transitions.len())
    };
    let straight = run(false);
    assert!(straight.0.len() >= 3, "{straight:?}");
    assert_eq!(run(true), straight);
}

/// What the engine keeps per (host, rule) follows the host's labels and
/// the rules: a host relabelled raises an alert with its new labels (and
/// its selector no longer holds once it leaves `role=prod`), and a reload
/// that adds a label to the rule gives its next alert that label.
#[test]
fn alert_labels_follow_the_host_and_the_rules_after_they_change() {
    let rule = r#"
[[rule]]
name = "Oops"
kind = "event"
match = { source = "app" }
selector = "role=prod"
"#;
    let mut s = Sim::new(rule);
    let event = |s: &mut Sim, host_labels: &[(&str, &str)]| {
        s.input(Input::Event {
            host: "h".into(),
            host_labels: labels(host_labels),
            source: "app".into(),
            kind: "x".into(),
            severity: Severity::High,
            fields: Labels::new(),
        })
    };
    let envs = |s: &Sim| -> Vec<(Option<String>, Option<String>)> {
        let mut v: Vec<_> =
            s.e.alerts()
                .filter(|a| a.state != AlertState::Resolved)
                .map(|a| (a.labels.get("zone").cloned(), a.labels.get("team").cloned()))
                .collect();
        v.sort();
        v
    };
    event(&mut s, &[("role", "prod"), ("zone", "a")]);
    event(&mut s, &[("role", "prod"), ("zone", "a")]);
    assert_eq!(envs(&s), [(Some("a".into()), None)]);
    event(&mut s, &[("role", "prod"), ("zone", "b")]);
    assert_eq!(
        envs(&s),
        [(Some("a".into()), None), (Some("b".into()), None)]
    );
    // Out of the selector: no new alert.
    event(&mut s, &[("role", "dev"), ("zone", "c")]);
    assert_eq!(envs(&s).len(), 2);
    let text = format!("{HEAD}{rule}labels = {{ team = \"db\" }}\n");
    s.input(Input::Reload(parse(&text).unwrap()));
    event(&mut s, &[("role", "prod"), ("zone", "a")]);
    assert!(
        envs(&s).contains(&(Some("a".into()), Some("db".into()))),
        "{:?}",
        envs(&s)
    );
}
