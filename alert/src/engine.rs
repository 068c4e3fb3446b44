//! The alert engine: a pure state machine, as the rollout engine is one.
//! Samples, events, signs of life, rule reloads, silences and time go in;
//! alert transitions and notification requests come out. No I/O, no clock
//! (`now` is Unix ms, an argument), no tokio, sled or tonic.
//!
//! Method families, and the order to call them:
//! 1. Construction: [`Engine::new`] with the checked rules, or
//!    [`Engine::restore`] from [`Engine::persisted`] and the rules.
//! 2. Inputs: [`Engine::handle`]`(input, now)` returns the outputs, in
//!    order; a [`Output::Persist`] comes first whenever the state changed,
//!    and the driver writes it before it hands on any notification (so a
//!    restart neither forgets a firing alert nor notifies a group twice).
//! 3. Time: [`Engine::next_deadline`] says when to call
//!    `handle(Input::Tick, now)` next.
//! 4. Getters: [`Engine::alerts`], [`Engine::rules`].
//!
//! Semantics follow Prometheus Alertmanager where SPEC §10 is silent: an
//! alert's identity is the fingerprint of its labels; alerts are grouped
//! per notifier by `group_by`; a group is first notified `group_wait`
//! after it formed, then at most every `group_interval` when it changed,
//! and every `repeat_interval` while it fires; a resolved alert is
//! notified once, then leaves its group. Silenced and inhibited alerts
//! stay listed, marked, and notify nobody.

use std::collections::{BTreeMap, VecDeque};

use picket_model::{Labels, Selector, Severity};
use serde::{Deserialize, Serialize};

use super::rules::{Kind, Rule, Rules};

mod eval;
mod group;
mod ident;
mod label;

pub use group::{Group, Notification, route};
pub use label::fingerprint;

/// A host series point, as ingest decoded it.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

/// What the engine is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A metrics sample of `host` (whose labels are `host_labels`).
    Sample {
        host: String,
        host_labels: Labels,
        points: Vec<Point>,
    },
    /// A stored event (the control plane's own rollout events included).
    Event {
        host: String,
        host_labels: Labels,
        source: String,
        kind: String,
        severity: Severity,
        fields: Labels,
    },
    /// Several stored events of one host, in order (one batch of ingest):
    /// as many `Event`s, with one evaluation of silences and groups.
    Events {
        host: String,
        host_labels: Labels,
        events: Vec<EventData>,
        /// The host's own batch, a sign of life for `host_silent` (false:
        /// the control plane's own events about it).
        alive: bool,
    },
    /// `host` was heard from (a heartbeat, a record) at `now`.
    Seen {
        host: String,
        host_labels: Labels,
    },
    /// `host` is no longer part of the fleet (revoked).
    Forget(String),
    /// Whether the control plane (`host`) can store records now, and why
    /// not; said when it changes.
    Store {
        host: String,
        writable: bool,
        why: String,
    },
    /// New rules (a reload): alerts of rules that are gone resolve.
    Reload(Rules),
    Silence(Silence),
    /// Ends a silence now.
    Expire(String),
    /// Time has reached [`Engine::next_deadline`].
    Tick,
}

/// One event of [`Input::Events`].
#[derive(Debug, Clone, PartialEq)]
pub struct EventData {
    pub source: String,
    pub kind: String,
    pub severity: Severity,
    pub fields: Labels,
}

/// What the engine decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Write [`Engine::persisted`] durably before what follows.
    Persist,
    /// An alert changed state.
    Transition {
        fingerprint: String,
        rule: String,
        state: AlertState,
    },
    /// Send this to its notifier.
    Notify(Notification),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Pending,
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub fingerprint: String,
    pub rule: String,
    pub labels: Labels,
    /// `summary` and the rule's annotations, rendered when it fired.
    pub annotations: Labels,
    pub state: AlertState,
    /// When its condition began to hold (pending since).
    pub active_ms: i64,
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    /// The value that made it fire (a reading, a count, a silence), as text.
    pub value: String,
    /// The newest matching event (`event` and `rollout_failed` rules).
    pub last_ms: i64,
    pub silenced: bool,
    pub inhibited: bool,
}

/// Mutes alerts whose labels match every matcher, until `ends_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    pub matchers: Labels,
    pub ends_ms: i64,
    pub comment: String,
    pub created_by: String,
    #[serde(default)]
    pub created_ms: i64,
}

/// Everything the engine is, as persisted (rules are not: they are the
/// file's, read again at start).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    pub version: u32,
    /// By fingerprint; resolved ones stay until notified.
    pub alerts: BTreeMap<String, Alert>,
    /// `event_count`: per (rule, host) the newest matching times, at most
    /// `count` of them.
    pub counts: BTreeMap<String, VecDeque<i64>>,
    /// Hosts and when they were last heard from, with their labels.
    pub seen: BTreeMap<String, (i64, Labels)>,
    pub silences: Vec<Silence>,
    pub groups: BTreeMap<String, Group>,
}

pub struct Engine {
    p: Persisted,
    /// Shared, so that evaluating an event borrows the rules cheaply
    /// while it changes the alerts.
    rules: std::sync::Arc<Rules>,
    idents: ident::Idents,
}

const VERSION: u32 = 1;

use picket_model::millis as ms;

impl Engine {
    pub fn new(rules: Rules) -> Self {
        Engine {
            p: Persisted {
                version: VERSION,
                ..Default::default()
            },
            rules: std::sync::Arc::new(rules),
            idents: ident::Idents::default(),
        }
    }

    pub fn restore(p: Persisted, rules: Rules) -> Self {
        Engine {
            p,
            rules: std::sync::Arc::new(rules),
            idents: ident::Idents::default(),
        }
    }

    pub fn persisted(&self) -> &Persisted {
        &self.p
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Every alert (pending, firing, and resolved ones not yet notified).
    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.p.alerts.values()
    }

    pub fn silences(&self) -> &[Silence] {
        &self.p.silences
    }

    /// Applies one input at `now`.
    pub fn handle(&mut self, input: Input, now: i64) -> Vec<Output> {
        let mut out = Vec::new();
        let changed = match input {
            Input::Sample {
                host,
                host_labels,
                points,
            } => {
                let seen = self.seen(&host, &host_labels, now, &mut out);
                self.sample(&host, &host_labels, &points, now, &mut out) || seen
            }
            Input::Event {
                host,
                host_labels,
                source,
                kind,
                severity,
                fields,
            } => {
                let e = label::EventIn {
                    host: &host,
                    host_labels: &host_labels,
                    source: &source,
                    kind: &kind,
                    severity,
                    fields: &fields,
                };
                let seen = self.seen(&host, &host_labels, now, &mut out);
                self.event(&e, now, &mut out) || seen
            }
            Input::Events {
                host,
                host_labels,
                events,
                alive,
            } => {
                let mut changed = alive && self.seen(&host, &host_labels, now, &mut out);
                for d in &events {
                    let e = label::EventIn {
                        host: &host,
                        host_labels: &host_labels,
                        source: &d.source,
                        kind: &d.kind,
                        severity: d.severity,
                        fields: &d.fields,
                    };
                    changed |= self.event(&e, now, &mut out);
                }
                changed
            }
            Input::Seen { host, host_labels } => self.seen(&host, &host_labels, now, &mut out),
            Input::Forget(host) => self.forget(&host, now, &mut out),
            Input::Store {
                host,
                writable,
                why,
            } => self.store(&host, writable, why, now, &mut out),
            Input::Reload(rules) => self.reload(rules, now, &mut out),
            Input::Silence(s) => {
                self.p.silences.retain(|x| x.id != s.id);
                self.p.silences.push(s);
                true
            }
            Input::Expire(id) => {
                let before = self.p.silences.len();
                self.p.silences.retain(|x| x.id != id);
                before != self.p.silences.len()
            }
            Input::Tick => self.tick(now, &mut out),
        };
        if changed {
            self.p.silences.retain(|s| s.ends_ms > now);
            self.mute(now);
            self.flush(now, &mut out);
            out.insert(0, Output::Persist);
        }
        out
    }

    /// The earliest time at which `Tick` has something to do.
    pub fn next_deadline(&self) -> Option<i64> {
        let mut at: Vec<i64> = Vec::new();
        for a in self.p.alerts.values() {
            let Some(rule) = self.rule(&a.rule) else {
                continue;
            };
            match (&rule.kind, a.state) {
                (
                    Kind::Threshold { hold, .. } | Kind::StoreUnwritable { after: hold },
                    AlertState::Pending,
                ) => {
                    at.push(a.active_ms.saturating_add(ms(*hold)));
                }
                (
                    Kind::Event { resolve_after, .. } | Kind::RolloutFailed { resolve_after },
                    AlertState::Firing,
                ) => at.push(a.last_ms.saturating_add(ms(*resolve_after))),
                _ => {}
            }
        }
        for (key, times) in &self.p.counts {
            let rule = key.split('\0').next().unwrap_or_default();
            if let Some(Kind::EventCount { window, .. }) = self.rule(rule).map(|r| &r.kind)
                && let Some(oldest) = times.front()
            {
                at.push(oldest.saturating_add(ms(*window)));
            }
        }
        for rule in &self.rules.rules {
            if let Kind::HostSilent { after } = rule.kind {
                for (host, (last, labels)) in &self.p.seen {
                    let fp = fingerprint(&label::of(rule, Some(host), labels));
                    let firing = self
                        .p
                        .alerts
                        .get(&fp)
                        .is_some_and(|a| a.state == AlertState::Firing);
                    if label::applies(rule, host, labels) && !firing {
                        at.push(last.saturating_add(ms(after)));
                    }
                }
            }
        }
        at.extend(self.p.silences.iter().map(|s| s.ends_ms));
        at.extend(self.p.groups.values().filter_map(|g| g.due(&self.rules)));
        at.into_iter().min()
    }

    fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.rules.iter().find(|r| r.name == name)
    }

    /// Sets the alert with `labels` and their `fp` of `rule` to its condition: `true`
    /// holds it (pending, or firing once `hold` has passed since it began),
    /// `false` resolves it (a pending one just goes).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn set(
        &mut self,
        rule: &Rule,
        (labels, fp): (&Labels, &str),
        holds: bool,
        value: String,
        ctx: &label::Context<'_>,
        now: i64,
        out: &mut Vec<Output>,
    ) -> bool {
        let hold = match rule.kind {
            Kind::Threshold { hold, .. } | Kind::StoreUnwritable { after: hold } => ms(hold),
            _ => 0,
        };
        let existing = self.p.alerts.get(fp).map(|a| a.state);
        match (existing, holds) {
            (None | Some(AlertState::Resolved), true) => {
                let a = Alert {
                    fingerprint: fp.to_string(),
                    rule: rule.name.clone(),
                    annotations: label::annotations(rule, labels, ctx, &value),
                    labels: labels.clone(),
                    state: AlertState::Pending,
                    active_ms: now,
                    started_ms: None,
                    ended_ms: None,
                    value,
                    last_ms: now,
                    silenced: false,
                    inhibited: false,
                };
                self.p.alerts.insert(fp.to_string(), a);
                if hold == 0 {
                    self.fire(fp, now, out);
                } else {
                    out.push(Output::Transition {
                        fingerprint: fp.to_string(),
                        rule: rule.name.clone(),
                        state: AlertState::Pending,
                    });
                }
                true
            }
            (Some(AlertState::Pending), true) => {
                let due = self
                    .p
                    .alerts
                    .get(fp)
                    .is_some_and(|a| now >= a.active_ms.saturating_add(hold));
                if let Some(a) = self.p.alerts.get_mut(fp) {
                    a.value = value;
                    a.last_ms = now;
                }
                if due {
                    self.fire(fp, now, out);
                }
                true
            }
            (Some(AlertState::Firing), true) => {
                if let Some(a) = self.p.alerts.get_mut(fp) {
                    a.value = value;
                    a.last_ms = now;
                }
                true
            }
            (Some(AlertState::Pending), false) => {
                self.p.alerts.remove(fp);
                true
            }
            (Some(AlertState::Firing), false) => {
                self.resolve(fp, now, out);
                true
            }
            (None | Some(AlertState::Resolved), false) => false,
        }
    }

    fn fire(&mut self, fp: &str, now: i64, out: &mut Vec<Output>) {
        let Some(a) = self.p.alerts.get_mut(fp) else {
            return;
        };
        a.state = AlertState::Firing;
        a.started_ms = Some(now);
        out.push(Output::Transition {
            fingerprint: fp.to_string(),
            rule: a.rule.clone(),
            state: AlertState::Firing,
        });
        let a = a.clone();
        group::join(&mut self.p.groups, &self.rules, &a, now);
    }

    fn resolve(&mut self, fp: &str, now: i64, out: &mut Vec<Output>) {
        let Some(a) = self.p.alerts.get_mut(fp) else {
            return;
        };
        a.state = AlertState::Resolved;
        a.ended_ms = Some(now);
        out.push(Output::Transition {
            fingerprint: fp.to_string(),
            rule: a.rule.clone(),
            state: AlertState::Resolved,
        });
        group::changed(&mut self.p.groups, fp);
    }

    /// A reload: alerts of rules that are gone, or whose kind changed,
    /// resolve (notified once); the rest carry on.
    fn reload(&mut self, rules: Rules, now: i64, out: &mut Vec<Output>) -> bool {
        let old = std::mem::replace(&mut self.rules, std::sync::Arc::new(rules));
        self.idents.clear();
        let gone: Vec<String> = self
            .p
            .alerts
            .values()
            .filter(|a| {
                let before = old.rules.iter().find(|r| r.name == a.rule);
                let after = self.rules.rules.iter().find(|r| r.name == a.rule);
                match (before, after) {
                    (_, None) => true,
                    (Some(b), Some(n)) => {
                        std::mem::discriminant(&b.kind) != std::mem::discriminant(&n.kind)
                    }
                    (None, Some(_)) => false,
                }
            })
            .map(|a| a.fingerprint.clone())
            .collect();
        for fp in gone {
            match self.p.alerts.get(&fp).map(|a| a.state) {
                Some(AlertState::Firing) => self.resolve(&fp, now, out),
                Some(AlertState::Pending) => {
                    self.p.alerts.remove(&fp);
                }
                _ => {}
            }
        }
        true
    }

    /// Marks alerts silenced or inhibited as they stand now.
    fn mute(&mut self, now: i64) {
        // The firing alerts that may inhibit others (none without an
        // `[[inhibit]]`: the common case costs nothing).
        let inhibits = &self.rules.inhibits;
        let firing: Vec<(String, Labels)> = self
            .p
            .alerts
            .values()
            .filter(|a| a.state == AlertState::Firing)
            .filter(|a| inhibits.iter().any(|i| i.source.matches(&a.labels)))
            .map(|a| (a.fingerprint.clone(), a.labels.clone()))
            .collect();
        for a in self.p.alerts.values_mut() {
            let silenced =
                self.p.silences.iter().any(|s| {
                    s.ends_ms > now && Selector::of_matchers(&s.matchers).matches(&a.labels)
                });
            let inhibited = self.rules.inhibits.iter().any(|i| {
                i.target.matches(&a.labels)
                    && firing.iter().any(|(fp, labels)| {
                        *fp != a.fingerprint
                            && i.source.matches(labels)
                            && i.equal.iter().all(|k| labels.get(k) == a.labels.get(k))
                    })
            });
            if (a.silenced || a.inhibited) && !(silenced || inhibited) {
                group::changed(&mut self.p.groups, &a.fingerprint);
            }
            a.silenced = silenced;
            a.inhibited = inhibited;
        }
    }

    /// Notifies every group that is due.
    fn flush(&mut self, now: i64, out: &mut Vec<Output>) {
        let notes = group::flush(&mut self.p.groups, &self.rules, &self.p.alerts, now);
        out.extend(notes.into_iter().map(Output::Notify));
        // Resolved alerts that no group holds any more are done.
        if !self
            .p
            .alerts
            .values()
            .any(|a| a.state == AlertState::Resolved)
        {
            return;
        }
        let held: std::collections::BTreeSet<&String> = self
            .p
            .groups
            .values()
            .flat_map(|g| g.members.keys())
            .collect();
        let done: Vec<String> = self
            .p
            .alerts
            .values()
            .filter(|a| a.state == AlertState::Resolved && !held.contains(&a.fingerprint))
            .map(|a| a.fingerprint.clone())
            .collect();
        for fp in done {
            self.p.alerts.remove(&fp);
        }
    }
}

#[cfg(test)]
mod tests;
