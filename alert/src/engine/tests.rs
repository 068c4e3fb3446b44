//! Deterministic tests of the alert engine: a `Sim` with a fake clock,
//! ticking at `next_deadline`, collecting notifications. No sleeps.

use super::*;
use crate::rules::parse;

const HEAD: &str = r#"
[defaults]
group_by = ["alertname"]
group_wait = "10s"
group_interval = "1m"
repeat_interval = "1h"

[[notifier]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:9/hook"

[[route]]
notifiers = ["hook"]
"#;

struct Sim {
    e: Engine,
    now: i64,
    notes: Vec<(i64, Notification)>,
    transitions: Vec<(i64, String, AlertState)>,
    /// Rebuild the engine from what it persisted after every input.
    restart: bool,
    text: String,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Sim {
    fn new(rules: &str) -> Sim {
        let text = format!("{HEAD}{rules}");
        Sim {
            e: Engine::new(parse(&text).unwrap()),
            now: 1_000_000,
            notes: Vec::new(),
            transitions: Vec::new(),
            restart: false,
            text,
        }
    }

    fn input(&mut self, i: Input) {
        let out = self.e.handle(i, self.now);
        for o in out {
            match o {
                Output::Persist => {}
                Output::Transition { rule, state, .. } => {
                    self.transitions.push((self.now, rule, state))
                }
                Output::Notify(n) => self.notes.push((self.now, n)),
            }
        }
        if self.restart {
            let json = serde_json::to_vec(self.e.persisted()).unwrap();
            let p: Persisted = serde_json::from_slice(&json).unwrap();
            self.e = Engine::restore(p, parse(&self.text).unwrap());
        }
    }

    /// Moves the clock to `now + secs`, ticking at every deadline on the way.
    fn advance(&mut self, secs: i64) {
        let until = self.now + secs * 1000;
        let mut last = None;
        while let Some(d) = self.e.next_deadline() {
            if d > until {
                break;
            }
            assert!(
                last != Some(d) || d > self.now,
                "deadline {d} does not move"
            );
            last = Some(d);
            self.now = d.max(self.now);
            self.input(Input::Tick);
        }
        self.now = until;
        self.input(Input::Tick);
    }

    fn cpu(&mut self, host: &str, value: f64) {
        self.input(Input::Sample {
            host: host.into(),
            host_labels: labels(&[("role", "prod")]),
            points: vec![Point {
                name: "cpu_usage_percent".into(),
                labels: Labels::new(),
                value,
            }],
        });
    }

    fn event(
        &mut self,
        host: &str,
        source: &str,
        kind: &str,
        severity: Severity,
        fields: &[(&str, &str)],
    ) {
        self.input(Input::Event {
            host: host.into(),
            host_labels: labels(&[("role", "prod")]),
            source: source.into(),
            kind: kind.into(),
            severity,
            fields: labels(fields),
        });
    }

    fn seen(&mut self, host: &str) {
        self.input(Input::Seen {
            host: host.into(),
            host_labels: labels(&[("role", "prod")]),
        });
    }

    /// (seconds since start, status, hosts) of each notification.
    fn said(&self) -> Vec<(i64, &'static str, Vec<String>)> {
        self.notes
            .iter()
            .map(|(t, n)| {
                let hosts = n
                    .alerts
                    .iter()
                    .map(|a| {
                        format!(
                            "{}:{}",
                            a.labels.get("host").cloned().unwrap_or_default(),
                            a.state.as_str()
                        )
                    })
                    .collect();
                ((t - 1_000_000) / 1000, n.status, hosts)
            })
            .collect()
    }

    fn state(&self) -> Vec<(String, AlertState, bool)> {
        self.e
            .alerts()
            .map(|a| (a.labels["host"].clone(), a.state, a.silenced || a.inhibited))
            .collect()
    }
}

const HIGH_CPU: &str = r#"
[[rule]]
name = "HighCpu"
kind = "threshold"
metric = "cpu_usage_percent"
op = ">"
value = 90
for = "5m"
selector = "role=prod"
summary = "{{ host }} at {{ value }}%"
"#;

#[test]
fn a_threshold_is_pending_for_its_hold_then_fires_and_resolves_once() {
    let mut s = Sim::new(HIGH_CPU);
    s.cpu("vm-prod", 95.0);
    assert_eq!(s.state(), [("vm-prod".into(), AlertState::Pending, false)]);
    s.advance(60);
    s.cpu("vm-prod", 50.0); // back under: the pending alert goes, unnotified
    assert!(s.state().is_empty());
    s.cpu("vm-prod", 97.0);
    s.advance(299);
    assert_eq!(s.state()[0].1, AlertState::Pending);
    s.advance(1);
    assert_eq!(s.state()[0].1, AlertState::Firing);
    let a = s.e.alerts().next().unwrap();
    assert_eq!(a.annotations["summary"], "vm-prod at 97%");
    assert_eq!(a.labels["alertname"], "HighCpu");
    s.advance(10); // group_wait
    s.cpu("vm-prod", 20.0);
    s.advance(120);
    assert_eq!(
        s.said(),
        [
            (370, "firing", vec!["vm-prod:firing".to_string()]),
            // Resolved at 370; a group_interval after the last notification.
            (430, "resolved", vec!["vm-prod:resolved".to_string()]),
        ]
    );
    // Resolved and notified: gone, and nothing more is said.
    assert!(s.state().is_empty());
    s.advance(7200);
    assert_eq!(s.notes.len(), 2);
}

#[test]
fn groups_wait_then_change_at_the_interval_and_repeat() {
    let mut s = Sim::new(HIGH_CPU.replace("for = \"5m\"", "for = \"0s\"").as_str());
    s.cpu("a", 99.0);
    s.advance(5);
    s.cpu("b", 99.0); // joins the same group (group_by alertname) before its first notification
    s.advance(5);
    assert_eq!(
        s.said(),
        [(
            10,
            "firing",
            vec!["a:firing".to_string(), "b:firing".to_string()]
        )]
    );
    s.cpu("c", 99.0); // a change: notified a group_interval after the last
    s.advance(59);
    assert_eq!(s.notes.len(), 1);
    s.advance(1);
    assert_eq!(s.notes.len(), 2);
    assert_eq!(s.said()[1].0, 70);
    // Nothing changes: repeated after repeat_interval.
    s.advance(3600);
    assert_eq!(s.said()[2].0, 3670);
    assert_eq!(s.notes[2].1.alerts.len(), 3);
}

#[test]
fn an_event_alert_fires_at_once_and_resolves_after_quiet() {
    let rule = r#"
[[rule]]
name = "IdsAlert"
kind = "event"
match = { source = "suricata", kind = "alert", severity = "high" }
severity = "critical"
resolve_after = "2m"
summary = "{{ fields.signature }} on {{ host }}"
"#;
    let mut s = Sim::new(rule);
    s.event("vm-prod", "suricata", "alert", Severity::Medium, &[]);
    assert!(s.state().is_empty(), "below the minimum severity");
    s.event(
        "vm-prod",
        "suricata",
        "alert",
        Severity::High,
        &[("signature", "ET SCAN")],
    );
    assert_eq!(s.state()[0].1, AlertState::Firing);
    assert_eq!(
        s.e.alerts().next().unwrap().annotations["summary"],
        "ET SCAN on vm-prod"
    );
    s.advance(60);
    s.event("vm-prod", "suricata", "alert", Severity::Critical, &[]);
    s.advance(119);
    assert_eq!(s.state()[0].1, AlertState::Firing);
    s.advance(1);
    assert_eq!(s.transitions.last().unwrap().2, AlertState::Resolved);
    assert_eq!(
        s.said().iter().map(|x| x.1).collect::<Vec<_>>(),
        ["firing", "resolved"]
    );
}

#[test]
fn an_event_count_fires_at_the_count_in_its_window_and_resolves_below_it() {
    let rule = r#"
[[rule]]
name = "SshBruteForce"
kind = "event_count"
match = { source = "fail2ban", kind = "ban" }
count = 3
window = "1m"
"#;
    let mut s = Sim::new(rule);
    for _ in 0..2 {
        s.event("vm-prod", "fail2ban", "ban", Severity::Medium, &[]);
        s.advance(25);
    }
    assert!(s.state().is_empty());
    s.advance(20); // the first ban is now 70 s old: out of the window
    s.event("vm-prod", "fail2ban", "ban", Severity::Medium, &[]);
    assert!(s.state().is_empty(), "{:?}", s.state());
    s.event("vm-prod", "fail2ban", "ban", Severity::Medium, &[]);
    assert_eq!(s.state()[0].1, AlertState::Firing);
    assert_eq!(s.e.alerts().next().unwrap().value, "3");
    s.advance(61);
    assert!(s.transitions.iter().any(|t| t.2 == AlertState::Resolved));
}

#[test]
fn a_silent_host_fires_and_resolves_when_heard_from() {
    let rule = "[[rule]]\nname = \"HostDown\"\nkind = \"host_silent\"\nafter = \"30s\"\nseverity = \"critical\"\nsummary = \"{{ host }} silent for {{ value }}\"\n";
    let mut s = Sim::new(rule);
    s.seen("vm-prod");
    s.advance(29);
    assert!(s.state().is_empty());
    s.advance(1);
    assert_eq!(s.state()[0].1, AlertState::Firing);
    assert_eq!(
        s.e.alerts().next().unwrap().annotations["summary"],
        "vm-prod silent for 30s"
    );
    s.advance(20);
    for _ in 0..3 {
        s.seen("vm-prod");
        s.advance(25);
    }
    assert_eq!(
        s.said().iter().map(|x| x.1).collect::<Vec<_>>(),
        ["firing", "resolved"]
    );
}

#[test]
fn the_control_planes_own_events_about_a_host_are_no_sign_of_life() {
    let rule = "[[rule]]\nname = \"HostDown\"\nkind = \"host_silent\"\nafter = \"30s\"\n\n\
                [[rule]]\nname = \"RolledBack\"\nkind = \"event\"\nmatch = { kind = \"rollout_rolled_back\" }\n";
    let mut s = Sim::new(rule);
    let event = EventData {
        source: "picket".into(),
        kind: "rollout_rolled_back".into(),
        severity: Severity::High,
        fields: Labels::new(),
    };
    s.input(Input::Events {
        host: "cp-1".into(),
        host_labels: labels(&[]),
        events: vec![event],
        alive: false,
    });
    s.advance(120);
    // The event's own rule fires; the control plane's name is never
    // tracked as a host that went silent.
    let fired: Vec<String> = s.e.alerts().map(|a| a.rule.clone()).collect();
    assert_eq!(fired, ["RolledBack"], "{fired:?}");
}

#[test]
fn a_store_that_refuses_records_fires_after_its_delay_and_resolves_when_it_takes_them() {
    let rule = "[[rule]]\nname = \"StoreFull\"\nkind = \"store_unwritable\"\nafter = \"30s\"\nseverity = \"critical\"\nsummary = \"{{ host }}: {{ value }}\"\n";
    let mut s = Sim::new(rule);
    let store = |writable: bool| Input::Store {
        host: "cp".into(),
        writable,
        why: if writable {
            String::new()
        } else {
            "writes fail: ENOSPC".into()
        },
    };
    // A refusal shorter than `after` says nothing.
    s.input(store(false));
    s.advance(20);
    s.input(store(true));
    s.advance(60);
    assert!(s.said().is_empty(), "{:?}", s.said());
    // A longer one fires, and resolves when writes go through again.
    s.input(store(false));
    s.advance(29);
    assert!(s.state().iter().all(|a| a.1 == AlertState::Pending));
    s.advance(1);
    assert_eq!(s.state()[0].1, AlertState::Firing);
    assert_eq!(
        s.e.alerts().next().unwrap().annotations["summary"],
        "cp: writes fail: ENOSPC"
    );
    s.advance(30);
    s.input(store(true));
    s.advance(60);
    assert_eq!(
        s.said().iter().map(|x| x.1).collect::<Vec<_>>(),
        ["firing", "resolved"]
    );
}

#[test]
fn a_batch_of_events_decides_as_the_same_events_one_by_one() {
    let rules = "[[rule]]\nname = \"Bans\"\nkind = \"event_count\"\nmatch = { source = \"fail2ban\", kind = \"ban\" }\ncount = 3\nwindow = \"1m\"\n\
                 [[rule]]\nname = \"Ids\"\nkind = \"event\"\nmatch = { source = \"suricata\" }\nresolve_after = \"30s\"\n";
    let ban = |ip: &str| EventData {
        source: "fail2ban".into(),
        kind: "ban".into(),
        severity: Severity::Medium,
        fields: labels(&[("ip", ip)]),
    };
    let ids = EventData {
        source: "suricata".into(),
        kind: "alert".into(),
        severity: Severity::High,
        fields: Labels::new(),
    };
    let all = vec![ban("a"), ids.clone(), ban("b"), ban("c"), ban("d")];
    let mut one = Sim::new(rules);
    for e in &all {
        one.event("vm-prod", &e.source, &e.kind, e.severity, &[]);
    }
    let mut batch = Sim::new(rules);
    batch.input(Input::Events {
        host: "vm-prod".into(),
        host_labels: labels(&[("role", "prod")]),
        events: all,
        alive: true,
    });
    one.advance(120);
    batch.advance(120);
    assert_eq!(one.said(), batch.said());
    assert_eq!(one.transitions, batch.transitions);
    assert_eq!(
        one.transitions.iter().map(|t| t.2).collect::<Vec<_>>(),
        [
            AlertState::Firing,
            AlertState::Firing,
            AlertState::Resolved,
            AlertState::Resolved
        ]
    );
}

#[test]
fn a_forgotten_host_is_no_longer_watched_and_its_silent_alert_resolves() {
    let rule = "[[rule]]\nname = \"HostDown\"\nkind = \"host_silent\"\nafter = \"30s\"\n";
    let mut s = Sim::new(rule);
    s.seen("vm-old");
    s.advance(40);
    assert_eq!(s.state()[0].1, AlertState::Firing);
    s.input(Input::Forget("vm-old".into()));
    s.advance(120);
    assert_eq!(
        s.said().iter().map(|x| x.1).collect::<Vec<_>>(),
        ["firing", "resolved"]
    );
    assert!(s.state().is_empty());
    assert_eq!(s.e.next_deadline(), None, "nothing left to watch");
    // Forgetting a host never seen changes nothing.
    assert!(s.e.handle(Input::Forget("nobody".into()), s.now).is_empty());
}

#[test]
fn a_critical_alert_inhibits_lesser_ones_on_the_same_host() {
    let rules = format!(
        "{}\n[[rule]]\nname = \"HostDown\"\nkind = \"host_silent\"\nafter = \"30s\"\nseverity = \"critical\"\n\n[[inhibit]]\nsource = {{ severity = \"critical\" }}\ntarget = {{ severity = \"info|low|medium|high\" }}\nequal = [\"host\"]\n",
        HIGH_CPU.replace("for = \"5m\"", "for = \"0s\"")
    );
    let mut s = Sim::new(&rules);
    s.seen("b");
    s.cpu("a", 99.0);
    s.seen("a");
    s.advance(40); // both hosts silent: HostDown fires on a and b
    s.cpu("b", 99.0); // HighCpu on b: b is heard from, so HostDown(b) resolves; not inhibited
    let mut inhibited: Vec<(String, bool)> =
        s.e.alerts()
            .filter(|a| a.rule == "HighCpu")
            .map(|a| (a.labels["host"].clone(), a.inhibited))
            .collect();
    inhibited.sort();
    assert_eq!(
        inhibited,
        [("a".to_string(), true), ("b".to_string(), false)]
    );
}

#[test]
fn a_silence_mutes_but_lists_and_its_expiry_lets_the_alert_speak() {
    let mut s = Sim::new(HIGH_CPU.replace("for = \"5m\"", "for = \"0s\"").as_str());
    s.input(Input::Silence(Silence {
        id: "s1".into(),
        matchers: labels(&[("host", "vm-prod")]),
        ends_ms: s.now + 120_000,
        comment: "maintenance".into(),
        created_by: "user:alice".into(),
        created_ms: s.now,
    }));
    s.cpu("vm-prod", 99.0);
    s.advance(60);
    assert_eq!(s.state(), [("vm-prod".into(), AlertState::Firing, true)]);
    assert!(s.notes.is_empty());
    s.advance(120);
    assert_eq!(
        s.said(),
        [(120, "firing", vec!["vm-prod:firing".to_string()])]
    );
    assert!(s.e.silences().is_empty());
}

#[test]
fn a_reload_that_drops_a_firing_rule_resolves_it_once() {
    let mut s = Sim::new(HIGH_CPU.replace("for = \"5m\"", "for = \"0s\"").as_str());
    s.cpu("vm-prod", 99.0);
    s.advance(30);
    s.input(Input::Reload(parse(HEAD).unwrap()));
    s.text = HEAD.to_string();
    s.advance(120);
    assert_eq!(
        s.said().iter().map(|x| x.1).collect::<Vec<_>>(),
        ["firing", "resolved"]
    );
    s.cpu("vm-prod", 99.0);
    s.advance(3600);
    assert_eq!(s.notes.len(), 2);
}

#[test]
fn a_failed_rollout_event_raises_its_alert() {
    let mut s = Sim::new("[[rule]]\nname = \"RolloutFailed\"\nkind = \"rollout_failed\"\n");
    s.event(
        "cp",
        "picket",
        "rollout_succeeded",
        Severity::Info,
        &[("rollout", "rollout-1")],
    );
    assert!(s.state().is_empty());
    s.event(
        "cp",
        "picket",
        "rollout_rolled_back",
        Severity::High,
        &[("rollout", "rollout-2")],
    );
    let a = s.e.alerts().next().unwrap();
    assert_eq!(
        (a.labels["rollout"].as_str(), a.state),
        ("rollout-2", AlertState::Firing)
    );
}

/// What survives a restart and a change of labels or rules.
mod changes;
