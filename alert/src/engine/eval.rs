//! Evaluation: what samples, events, signs of life and time do to the
//! alerts of each rule kind.

use picket_model::Labels;

use super::{AlertState, Engine, Output, Point, fingerprint, label, ms};
use crate::rules::{Kind, Rule};

impl Engine {
    /// Fingerprints of alerts in `state` for which `pred(rule, alert)`.
    fn alerts_where(
        &self,
        state: AlertState,
        pred: impl Fn(&Rule, &super::Alert) -> bool,
    ) -> Vec<String> {
        self.p
            .alerts
            .values()
            .filter(|a| a.state == state)
            .filter(|a| {
                self.rules
                    .rules
                    .iter()
                    .any(|r| r.name == a.rule && pred(r, a))
            })
            .map(|a| a.fingerprint.clone())
            .collect()
    }

    pub(super) fn sample(
        &mut self,
        host: &str,
        host_labels: &Labels,
        points: &[Point],
        now: i64,
        out: &mut Vec<Output>,
    ) -> bool {
        let mut changed = false;
        let all = self.rules.clone();
        let rules = &all.rules;
        for rule in rules {
            let Kind::Threshold {
                metric, op, value, ..
            } = &rule.kind
            else {
                continue;
            };
            if !label::applies(rule, host, host_labels) {
                continue;
            }
            for p in points.iter().filter(|p| &p.name == metric) {
                let mut labels = label::of(rule, Some(host), host_labels);
                labels.extend(p.labels.clone());
                let ctx = label::Context::host(host);
                let v = format!("{}", p.value);
                let fp = fingerprint(&labels);
                let holds = op.holds(p.value, *value);
                changed |= self.set(rule, (&labels, &fp), holds, v, &ctx, now, out);
            }
        }
        changed
    }

    pub(super) fn event(
        &mut self,
        e: &label::EventIn<'_>,
        now: i64,
        out: &mut Vec<Output>,
    ) -> bool {
        let mut changed = false;
        let all = self.rules.clone();
        let rules = &all.rules;
        let ctx = label::Context::event(e);
        for (i, rule) in rules.iter().enumerate() {
            let ident =
                |me: &mut Self| me.idents.get((i, rules.len()), rule, e.host, e.host_labels);
            match &rule.kind {
                Kind::Event { matcher, .. }
                    if matcher.matches(e.source, e.kind, e.severity, e.fields) =>
                {
                    let id = ident(self);
                    if id.applies {
                        let who = (&id.labels, id.fingerprint.as_str());
                        changed |= self.set(rule, who, true, "1".into(), &ctx, now, out);
                    }
                }
                Kind::RolloutFailed { .. }
                    if e.source == "picket"
                        && matches!(e.kind, "rollout_failed" | "rollout_rolled_back")
                        && label::applies(rule, e.host, e.host_labels) =>
                {
                    let mut labels = label::of(rule, Some(e.host), e.host_labels);
                    if let Some(id) = e.fields.get("rollout") {
                        labels.insert("rollout".into(), id.clone());
                    }
                    let fp = fingerprint(&labels);
                    let value = e.kind.to_string();
                    changed |= self.set(rule, (&labels, &fp), true, value, &ctx, now, out);
                }
                Kind::EventCount {
                    matcher,
                    count,
                    window,
                } if matcher.matches(e.source, e.kind, e.severity, e.fields) => {
                    let id = ident(self);
                    if !id.applies {
                        continue;
                    }
                    let times = match self.p.counts.get_mut(&id.count_key) {
                        Some(t) => t,
                        None => self.p.counts.entry(id.count_key.clone()).or_default(),
                    };
                    times.push_back(now);
                    while times.len() > *count as usize {
                        times.pop_front();
                    }
                    let n = times.iter().filter(|t| now - **t < ms(*window)).count();
                    let holds = n >= *count as usize;
                    let who = (&id.labels, id.fingerprint.as_str());
                    // The counted times changed: always a change to persist.
                    self.set(rule, who, holds, n.to_string(), &ctx, now, out);
                    changed = true;
                }
                _ => {}
            }
        }
        changed
    }

    pub(super) fn seen(
        &mut self,
        host: &str,
        labels: &Labels,
        now: i64,
        out: &mut Vec<Output>,
    ) -> bool {
        let was = self.p.seen.insert(host.to_string(), (now, labels.clone()));
        let mut changed = was.as_ref().is_none_or(|(_, l)| l != labels);
        // Back: its host_silent alerts resolve.
        let all = self.rules.clone();
        let rules = &all.rules;
        for rule in rules
            .iter()
            .filter(|r| matches!(r.kind, Kind::HostSilent { .. }))
        {
            let fp = fingerprint(&label::of(rule, Some(host), labels));
            if self
                .p
                .alerts
                .get(&fp)
                .is_some_and(|a| a.state == AlertState::Firing)
            {
                self.resolve(&fp, now, out);
                changed = true;
            }
        }
        // A heartbeat alone is not worth a write: its time is kept in
        // memory and persisted with the next change (after a restart the
        // driver is to say `Seen` for every connected host).
        changed
    }

    /// The control plane's store refuses records (or takes them again):
    /// `store_unwritable` rules go pending, and fire once it has lasted
    /// their `after`; they resolve when it takes them again.
    pub(super) fn store(
        &mut self,
        host: &str,
        writable: bool,
        why: String,
        now: i64,
        out: &mut Vec<Output>,
    ) -> bool {
        let all = self.rules.clone();
        let mut changed = false;
        let none = Labels::new();
        for rule in all
            .rules
            .iter()
            .filter(|r| matches!(r.kind, Kind::StoreUnwritable { .. }))
        {
            let ctx = label::Context::host(host);
            let labels = label::of(rule, Some(host), &none);
            let fp = fingerprint(&labels);
            changed |= self.set(rule, (&labels, &fp), !writable, why.clone(), &ctx, now, out);
        }
        changed
    }

    /// `host` is gone (revoked): no longer watched, and its `host_silent`
    /// alerts resolve.
    pub(super) fn forget(&mut self, host: &str, now: i64, out: &mut Vec<Output>) -> bool {
        self.idents.forget(host);
        let Some((_, labels)) = self.p.seen.remove(host) else {
            return false;
        };
        let all = self.rules.clone();
        for rule in all
            .rules
            .iter()
            .filter(|r| matches!(r.kind, Kind::HostSilent { .. }))
        {
            let fp = fingerprint(&label::of(rule, Some(host), &labels));
            match self.p.alerts.get(&fp).map(|a| a.state) {
                Some(AlertState::Firing) => self.resolve(&fp, now, out),
                Some(AlertState::Pending) => drop(self.p.alerts.remove(&fp)),
                _ => {}
            }
        }
        true
    }

    pub(super) fn tick(&mut self, now: i64, out: &mut Vec<Output>) -> bool {
        let mut changed = false;
        let all = self.rules.clone();
        let rules = &all.rules;
        // Pending thresholds whose `for` has passed.
        let due = self.alerts_where(AlertState::Pending, |r, a| {
            matches!(r.kind, Kind::Threshold { hold, .. } | Kind::StoreUnwritable { after: hold }
                if now >= a.active_ms.saturating_add(ms(hold)))
        });
        for fp in due {
            self.fire(&fp, now, out);
            changed = true;
        }
        // Events that stopped coming.
        let quiet = self.alerts_where(AlertState::Firing, |r, a| {
            matches!(r.kind, Kind::Event { resolve_after, .. } | Kind::RolloutFailed { resolve_after }
                if now >= a.last_ms.saturating_add(ms(resolve_after)))
        });
        for fp in quiet {
            self.resolve(&fp, now, out);
            changed = true;
        }
        // Counts that fell out of their window.
        let keys: Vec<String> = self.p.counts.keys().cloned().collect();
        for key in keys {
            let (rname, host) = key.split_once('\0').unwrap_or((&key, ""));
            let Some(rule) = rules.iter().find(|r| r.name == rname) else {
                self.p.counts.remove(&key);
                changed = true;
                continue;
            };
            let Kind::EventCount { window, .. } = rule.kind else {
                continue;
            };
            let Some(times) = self.p.counts.get_mut(&key) else {
                continue;
            };
            let before = times.len();
            while times.front().is_some_and(|t| now - *t >= ms(window)) {
                times.pop_front();
            }
            if times.len() != before {
                changed = true;
                let empty = times.is_empty();
                let labels = self
                    .p
                    .seen
                    .get(host)
                    .map(|(_, l)| l.clone())
                    .unwrap_or_default();
                let fp = fingerprint(&label::of(rule, Some(host), &labels));
                if self
                    .p
                    .alerts
                    .get(&fp)
                    .is_some_and(|a| a.state == AlertState::Firing)
                {
                    self.resolve(&fp, now, out);
                }
                if empty {
                    self.p.counts.remove(&key);
                }
            }
        }
        // Hosts gone silent.
        let seen: Vec<(String, i64, Labels)> = self
            .p
            .seen
            .iter()
            .map(|(h, (t, l))| (h.clone(), *t, l.clone()))
            .collect();
        for rule in rules.iter() {
            let Kind::HostSilent { after } = rule.kind else {
                continue;
            };
            for (host, last, labels) in &seen {
                if !label::applies(rule, host, labels) || now < last.saturating_add(ms(after)) {
                    continue;
                }
                let fp = fingerprint(&label::of(rule, Some(host), labels));
                if self
                    .p
                    .alerts
                    .get(&fp)
                    .is_some_and(|a| a.state == AlertState::Firing)
                {
                    continue;
                }
                let quiet = humantime::format_duration(std::time::Duration::from_millis(
                    u64::try_from((now - last) / 1000 * 1000).unwrap_or(0),
                ))
                .to_string();
                let ctx = label::Context::host(host);
                let labels = label::of(rule, Some(host), labels);
                changed |= self.set(rule, (&labels, &fp), true, quiet, &ctx, now, out);
            }
        }
        // Silences that ended, groups that are due.
        changed |= self.p.silences.iter().any(|s| s.ends_ms <= now);
        changed |= self
            .p
            .groups
            .values()
            .any(|g| g.due(&self.rules).is_some_and(|d| d <= now));
        changed
    }
}
