//! Routing and grouping: which notifiers an alert goes to (`[[route]]`s
//! in order, the first match wins unless it says `continue`), and when a
//! group of alerts is notified (`group_wait`, `group_interval`,
//! `repeat_interval`, as Alertmanager's dispatcher does).

use std::collections::BTreeMap;

use picket_model::Labels;
use serde::{Deserialize, Serialize};

use super::{Alert, AlertState, ms};
use crate::rules::Rules;

/// Alerts notified together to one notifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub notifier: String,
    /// The values of `group_by` the members share.
    pub labels: Labels,
    /// Member fingerprints, each with whether its present state has been
    /// notified.
    pub members: BTreeMap<String, bool>,
    pub created_ms: i64,
    pub last_flush_ms: Option<i64>,
}

/// One notification request: for `notifier`, a group's alerts.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub notifier: String,
    /// `firing` while any of `alerts` fires, else `resolved`.
    pub status: &'static str,
    pub group_key: String,
    pub group_labels: Labels,
    pub alerts: Vec<Alert>,
}

impl Group {
    /// When it is to be notified next.
    pub fn due(&self, rules: &Rules) -> Option<i64> {
        let g = &rules.grouping;
        match self.last_flush_ms {
            None => Some(self.created_ms.saturating_add(ms(g.group_wait))),
            Some(t) if self.members.values().any(|done| !done) => {
                Some(t.saturating_add(ms(g.group_interval)))
            }
            Some(t) if !self.members.is_empty() => Some(t.saturating_add(ms(g.repeat_interval))),
            Some(_) => None,
        }
    }
}

/// The notifiers for an alert with `labels`.
pub fn route(rules: &Rules, labels: &Labels) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in &rules.routes {
        if !r.matches.matches(labels) {
            continue;
        }
        for n in &r.notifiers {
            if !out.contains(n) {
                out.push(n.clone());
            }
        }
        if !r.continue_ {
            break;
        }
    }
    out
}

/// A firing alert joins its groups (one per notifier it routes to).
pub fn join(groups: &mut BTreeMap<String, Group>, rules: &Rules, a: &Alert, now: i64) {
    let labels: Labels = rules
        .grouping
        .group_by
        .iter()
        .filter_map(|k| Some((k.clone(), a.labels.get(k)?.clone())))
        .collect();
    for notifier in route(rules, &a.labels) {
        let key = format!(
            "{notifier}\0{}",
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let g = groups.entry(key).or_insert_with(|| Group {
            notifier: notifier.clone(),
            labels: labels.clone(),
            members: BTreeMap::new(),
            created_ms: now,
            last_flush_ms: None,
        });
        g.members.insert(a.fingerprint.clone(), false);
    }
}

/// The alert changed (it resolved, or is no longer muted): its groups
/// are notified at their next interval.
pub fn changed(groups: &mut BTreeMap<String, Group>, fp: &str) {
    for g in groups.values_mut() {
        if let Some(done) = g.members.get_mut(fp) {
            *done = false;
        }
    }
}

/// Notifies the groups that are due at `now`; resolved members leave
/// their group once notified, and empty groups go.
pub fn flush(
    groups: &mut BTreeMap<String, Group>,
    rules: &Rules,
    alerts: &BTreeMap<String, Alert>,
    now: i64,
) -> Vec<Notification> {
    let mut out = Vec::new();
    for (key, g) in groups.iter_mut() {
        if g.due(rules).is_none_or(|d| d > now) {
            continue;
        }
        g.members.retain(|fp, _| alerts.contains_key(fp));
        let mut loud: Vec<Alert> = g
            .members
            .keys()
            .filter_map(|fp| alerts.get(fp))
            .filter(|a| !a.silenced && !a.inhibited)
            .cloned()
            .collect();
        // In label order, as Alertmanager sorts them: stable for people.
        loud.sort_by(|a, b| a.labels.cmp(&b.labels));
        let firing = loud.iter().any(|a| a.state == AlertState::Firing);
        let news = g.members.values().any(|done| !done);
        // A repeat is for alerts still firing; a change is worth saying
        // even when only resolved ones are left.
        if !loud.is_empty() && (firing || news) {
            out.push(Notification {
                notifier: g.notifier.clone(),
                status: if firing { "firing" } else { "resolved" },
                group_key: key.clone(),
                group_labels: g.labels.clone(),
                alerts: loud,
            });
        }
        g.last_flush_ms = Some(now);
        g.members.retain(|fp, _| {
            alerts
                .get(fp)
                .is_some_and(|a| a.state == AlertState::Firing)
        });
        for done in g.members.values_mut() {
            *done = true;
        }
    }
    groups.retain(|_, g| !g.members.is_empty());
    out
}
