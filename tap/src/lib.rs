//! The tap: what ingest hands the alert driver, chosen cheaply so that
//! ingest does not slow down.
//!
//! Ingest stores events as the agent encoded them and never decodes them.
//! It hands the tap each event's head (source, kind, severity), read in
//! the same pass that checks the event ([`scan::event_check`], no
//! allocation). Only an event a rule's `match` could take is read
//! further, and of it only the fields a `match` or a template names are
//! copied (never the message). Metric samples (which ingest decodes
//! anyway) pass only the series some `threshold` rule names. Each batch
//! of an agent becomes at most one message to the driver, sent after the
//! batch is stored; when the driver falls behind, ingest waits for it
//! (a bounded queue) rather than drop what an alert needs.
//!
//! In cluster mode with a records database the alert engine runs on the
//! leader alone, and every replica's records reach it from the database
//! by id ([`stored`]), not from ingest: each replica's ingest then hands
//! on signs of life only ([`Tap::signs_of_life`]), and the driver's end
//! is attached only while a driver runs here ([`Tap::attach`]).

pub mod stored;

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use picket_model::{Labels, Severity};
use picket_proto::scan::{self, EventHead};
use tokio::sync::mpsc;

use picket_alert::engine::{EventData, Point};
use picket_alert::rules::{EventMatch, Kind, Rules};

/// An agent's batch, as far as the alert rules care.
#[derive(Debug, Clone, PartialEq)]
pub struct Heard {
    pub host: String,
    /// The host's own batch (an agent's): a sign of life for
    /// `host_silent`. The control plane's own records about a host (its
    /// rollouts' events, under its own name) are not.
    pub alive: bool,
    pub time_ms: i64,
    pub samples: Vec<Vec<Point>>,
    pub events: Vec<EventData>,
}

/// What the rules in force can use.
#[derive(Debug, Default)]
struct Interest {
    events: Vec<EventMatch>,
    rollouts: bool,
    metrics: HashSet<String>,
    /// A `host_silent` rule: every batch is a sign of life.
    seen: bool,
    /// The event fields a rule's `match` or template reads (`None`: a
    /// template uses `fields` whole, so all of them). Only these are
    /// copied out of an event.
    fields: Option<HashSet<String>>,
}

/// The `fields.NAME` a template reads; `None` if it uses `fields` in a
/// way a static look cannot follow (`fields["x"]`, a loop, `fields`).
fn template_fields(src: &str) -> Option<HashSet<String>> {
    let env = minijinja::Environment::new();
    let t = env.template_from_str(src).ok()?;
    let mut out = HashSet::new();
    for v in t.undeclared_variables(true) {
        if let Some(name) = v.strip_prefix("fields.") {
            out.insert(name.split('.').next().unwrap_or(name).to_string());
        } else if v == "fields" {
            return None;
        }
    }
    Some(out)
}

impl Interest {
    fn of(rules: &Rules) -> Self {
        let mut i = Interest {
            fields: Some(HashSet::new()),
            ..Default::default()
        };
        for r in &rules.rules {
            // The fields this rule reads: its `match`'s and its templates'.
            let mut names: Vec<String> = Vec::new();
            match &r.kind {
                Kind::Threshold { metric, .. } => {
                    i.metrics.insert(metric.clone());
                    continue;
                }
                Kind::HostSilent { .. } => {
                    i.seen = true;
                    continue;
                }
                // Fed by the driver, from the store's health: not ingest.
                Kind::StoreUnwritable { .. } => continue,
                Kind::EventCount { matcher, .. } | Kind::Event { matcher, .. } => {
                    i.events.push(matcher.clone());
                    names.extend(matcher.fields.keys().cloned());
                }
                Kind::RolloutFailed { .. } => {
                    i.rollouts = true;
                    names.push("rollout".into());
                }
            }
            for src in std::iter::once(&r.summary).chain(r.annotations.values()) {
                match template_fields(src) {
                    Some(used) => names.extend(used),
                    None => i.fields = None,
                }
            }
            if let Some(all) = &mut i.fields {
                all.extend(names);
            }
        }
        i
    }

    fn wants(&self, source: &str, kind: &str, severity: Severity) -> bool {
        (self.rollouts
            && source == "picket"
            && matches!(kind, "rollout_failed" | "rollout_rolled_back"))
            || self.events.iter().any(|m| {
                m.source.as_deref().is_none_or(|s| s == source)
                    && m.kind.as_deref().is_none_or(|k| k == kind)
                    && m.severity.is_none_or(|s| severity >= s)
            })
    }

    /// Whether a rule's `match` or template reads field `name`.
    fn reads(&self, name: &str) -> bool {
        self.fields.as_ref().is_none_or(|w| w.contains(name))
    }

    /// The points of a sample some `threshold` rule names.
    fn points(&self, points: &[picket_store::metrics::Point]) -> Vec<Point> {
        points
            .iter()
            .filter(|p| self.metrics.contains(&p.name))
            .map(|p| Point {
                name: p.name.clone(),
                labels: p.labels.clone(),
                value: p.value,
            })
            .collect()
    }
}

/// What the rules can use, for each way records come: from the records
/// database, everything; from ingest, the same, or signs of life only
/// when the database carries the rest. Both made once per set of rules.
#[derive(Default)]
struct Interests {
    all: Arc<Interest>,
    ingest: Arc<Interest>,
}

/// Shared by ingest (which calls it) and the alert driver (which owns the
/// receiving end and sets the rules).
pub struct Tap {
    interest: RwLock<Interests>,
    /// The driver's end, while a driver runs here.
    tx: RwLock<Option<mpsc::Sender<Heard>>>,
    /// Whether ingest's batches carry events and samples (else only that
    /// the host is alive: the records database carries the rest).
    records: bool,
}

/// Batches that may wait for the driver before ingest waits.
pub const QUEUE: usize = 1024;

impl Tap {
    /// A tap and the driver's end of it.
    pub fn new() -> (Arc<Tap>, mpsc::Receiver<Heard>) {
        let tap = Tap::detached();
        let rx = tap.attach();
        (tap, rx)
    }

    /// A tap that passes nothing on until a driver attaches (tools and
    /// tests without alerts; a replica that does not lead).
    pub fn detached() -> Arc<Tap> {
        Arc::new(Tap {
            interest: Default::default(),
            tx: RwLock::new(None),
            records: true,
        })
    }

    /// A detached tap that passes on signs of life only: the records
    /// database hands the driver the events and samples ([`stored`]).
    pub fn signs_of_life() -> Arc<Tap> {
        Arc::new(Tap {
            interest: Default::default(),
            tx: RwLock::new(None),
            records: false,
        })
    }

    /// The driver's end: what is tapped from now on goes to it (and no
    /// longer to a driver attached before). Once it is dropped (the
    /// driver stopped), nothing is collected until the next attaches.
    pub fn attach(&self) -> mpsc::Receiver<Heard> {
        let (tx, rx) = mpsc::channel(QUEUE);
        *self.tx.write().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }

    fn sender(&self) -> Option<mpsc::Sender<Heard>> {
        let tx = self.tx.read().unwrap_or_else(|p| p.into_inner());
        tx.as_ref().filter(|t| !t.is_closed()).cloned()
    }

    pub fn set_rules(&self, rules: &Rules) {
        let all = Arc::new(Interest::of(rules));
        let ingest = if self.records {
            all.clone()
        } else {
            Arc::new(Interest {
                seen: all.seen,
                ..Default::default()
            })
        };
        if let Ok(mut i) = self.interest.write() {
            *i = Interests { all, ingest };
        }
    }

    /// Everything the rules can use (what the database is read for).
    fn all(&self) -> Arc<Interest> {
        self.interest
            .read()
            .map(|i| i.all.clone())
            .unwrap_or_default()
    }

    /// What one batch of `host` collects; `None` when no rule can use
    /// anything in it.
    pub fn collector(&self, host: &str, time_ms: i64) -> Option<Collector> {
        self.sender()?;
        let interest = self.interest.read().ok()?.ingest.clone();
        let any = interest.seen
            || interest.rollouts
            || !interest.events.is_empty()
            || !interest.metrics.is_empty();
        any.then(|| Collector {
            interest,
            heard: Heard {
                host: host.to_string(),
                alive: true,
                time_ms,
                samples: Vec::new(),
                events: Vec::new(),
            },
        })
    }

    /// Hands a stored batch to the driver; blocks while its queue is full
    /// (call it off the runtime's workers, as ingest runs).
    pub fn send_blocking(&self, c: Collector) {
        let Some(tx) = self.sender() else { return };
        if c.worth_sending() {
            // The driver has stopped only at shutdown.
            let _ = tx.blocking_send(c.heard);
        }
    }

    /// `host` was heard from (a heartbeat); dropped when the queue is
    /// full, as the next batch or heartbeat says the same.
    pub fn seen(&self, host: &str, time_ms: i64) {
        let Some(tx) = self.sender() else { return };
        let wanted = self.interest.read().is_ok_and(|i| i.ingest.seen);
        if wanted {
            let _ = tx.try_send(Heard {
                host: host.to_string(),
                alive: true,
                time_ms,
                samples: Vec::new(),
                events: Vec::new(),
            });
        }
    }
}

/// Gathers what the rules want from one batch while ingest reads it.
pub struct Collector {
    interest: Arc<Interest>,
    heard: Heard,
}

impl Collector {
    /// An encoded event, checked by ingest, and its head.
    pub fn event(&mut self, bytes: &[u8], head: &EventHead<'_>) {
        let severity = picket_proto::convert::severity(head.severity).unwrap_or(Severity::Info);
        if !self.interest.wants(head.source, head.kind, severity) {
            return;
        }
        // Only the fields: the message (the whole line, often) is not
        // copied.
        let mut fields = Labels::new();
        let read = scan::event_fields(bytes, |k, v| {
            if self.interest.reads(k) {
                fields.insert(k.to_string(), v.to_string());
            }
        });
        if read.is_ok() {
            self.heard.events.push(EventData {
                severity,
                source: head.source.to_string(),
                kind: head.kind.to_string(),
                fields,
            });
        }
    }

    /// A decoded sample's points.
    pub fn sample(&mut self, points: &[picket_store::metrics::Point]) {
        if self.interest.metrics.is_empty() {
            return;
        }
        let kept = self.interest.points(points);
        if !kept.is_empty() {
            self.heard.samples.push(kept);
        }
    }

    fn worth_sending(&self) -> bool {
        (self.interest.seen && self.heard.alive)
            || !self.heard.samples.is_empty()
            || !self.heard.events.is_empty()
    }

    /// The batch is the control plane's own, not the host's: no sign of
    /// life.
    pub fn not_alive(mut self) -> Collector {
        self.heard.alive = false;
        self
    }
}

#[cfg(test)]
mod tests {
    use picket_proto::v1;
    use prost::Message;

    use super::*;
    use picket_alert::rules::parse;

    fn event(source: &str, kind: &str, severity: v1::Severity) -> Vec<u8> {
        v1::Event {
            source: source.into(),
            kind: kind.into(),
            severity: severity as i32,
            fields: [("ip".to_string(), "192.0.2.7".to_string())].into(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn ev(c: &mut Collector, bytes: &[u8]) {
        let (_, head) = scan::event_check(bytes).unwrap();
        c.event(bytes, &head);
    }

    #[test]
    fn only_what_a_rule_can_use_is_decoded_and_sent() {
        let (tap, mut rx) = Tap::new();
        // No rules: nothing is collected at all.
        assert!(tap.collector("h", 1).is_none());
        tap.set_rules(
            &parse(
                "[[rule]]\nname = \"Bans\"\nkind = \"event_count\"\nmatch = { source = \"fail2ban\", kind = \"ban\", severity = \"medium\" }\ncount = 5\nwindow = \"1m\"\n\
                 [[rule]]\nname = \"Cpu\"\nkind = \"threshold\"\nmetric = \"cpu_usage_percent\"\nop = \">\"\nvalue = 90\n",
            )
            .unwrap(),
        );
        let mut c = tap.collector("h", 1).unwrap();
        ev(&mut c, &event("fail2ban", "ban", v1::Severity::Medium));
        ev(&mut c, &event("fail2ban", "unban", v1::Severity::Medium));
        ev(&mut c, &event("fail2ban", "ban", v1::Severity::Low));
        ev(&mut c, &event("suricata", "alert", v1::Severity::Critical));
        let point = |name: &str| picket_store::metrics::Point {
            name: name.into(),
            labels: Default::default(),
            value: 1.0,
        };
        c.sample(&[point("cpu_usage_percent"), point("load1")]);
        tap.send_blocking(c);
        let heard = rx.try_recv().unwrap();
        assert_eq!(heard.events.len(), 1);
        // No rule reads a field: none is copied.
        assert!(heard.events[0].fields.is_empty());
        assert_eq!(
            heard.samples,
            vec![vec![Point {
                name: "cpu_usage_percent".into(),
                labels: Default::default(),
                value: 1.0,
            }]]
        );
        // A template reading `fields.ip` keeps that field alone.
        tap.set_rules(
            &parse("[[rule]]\nname = \"Ban\"\nkind = \"event\"\nmatch = { source = \"fail2ban\" }\nsummary = \"{{ fields.ip }} on {{ host }}\"\n").unwrap(),
        );
        let mut c = tap.collector("h", 1).unwrap();
        let mut e =
            v1::Event::decode(event("fail2ban", "ban", v1::Severity::Medium).as_slice()).unwrap();
        e.fields.insert("jail".into(), "sshd".into());
        ev(&mut c, &e.encode_to_vec());
        tap.send_blocking(c);
        let heard = rx.try_recv().unwrap();
        assert_eq!(
            heard.events[0].fields,
            [("ip".to_string(), "192.0.2.7".to_string())].into()
        );
        assert_eq!(
            template_fields("{{ fields.ip }} {{ fields.user }}"),
            Some(["ip".to_string(), "user".to_string()].into())
        );
        assert_eq!(
            template_fields("{% for k in fields %}{{ k }}{% endfor %}"),
            None
        );
        // A batch with nothing of use is not sent.
        let c = tap.collector("h", 2).unwrap();
        tap.send_blocking(c);
        assert!(rx.try_recv().is_err());
    }
}
