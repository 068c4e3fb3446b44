//! Checking an alert file whole: [`RawFile::check`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::*;

struct Check {
    problems: Vec<String>,
    warnings: Vec<String>,
    templates: minijinja::Environment<'static>,
}

impl Check {
    fn problem(&mut self, at: &str, msg: impl std::fmt::Display) {
        self.problems.push(format!("{at}: {msg}"));
    }

    fn duration(&mut self, at: &str, text: Option<&str>, default: Duration) -> Duration {
        match text.map(parse_duration) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.problem(at, e);
                default
            }
        }
    }

    fn template(&mut self, at: &str, source: &str) {
        if let Err(e) = self.templates.template_from_str(source) {
            self.problem(at, format!("template does not parse: {e}"));
        }
    }

    fn matcher(&mut self, at: &str, m: Option<&BTreeMap<String, String>>) -> EventMatch {
        let mut out = EventMatch::default();
        let Some(m) = m else {
            self.problem(
                at,
                "required: which events count (source, kind, severity, fields.*)",
            );
            return out;
        };
        for (k, v) in m {
            match k.as_str() {
                "source" => out.source = Some(v.clone()),
                "kind" => out.kind = Some(v.clone()),
                "severity" => match v.parse() {
                    Ok(s) => out.severity = Some(s),
                    Err(e) => self.problem(&format!("{at}.severity"), e),
                },
                f => match f.strip_prefix("fields.") {
                    Some(name) if !name.is_empty() => {
                        out.fields.insert(name.to_string(), v.clone());
                    }
                    _ => self.problem(
                        &format!("{at}.{k}"),
                        "unknown key (source, kind, severity or fields.NAME)",
                    ),
                },
            }
        }
        out
    }

    fn url(&mut self, at: &str, url: Option<&String>) -> String {
        match url {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => u.clone(),
            Some(u) => {
                self.problem(at, format!("{u:?} is not an http:// or https:// URL"));
                String::new()
            }
            None => {
                self.problem(at, "required");
                String::new()
            }
        }
    }
}

/// How long the store refuses records before `store_unwritable` fires,
/// unless the rule says.
const STORE_AFTER: Duration = Duration::from_secs(60);

const KINDS: &str =
    "threshold, event_count, event, host_silent, store_unwritable or rollout_failed";
const NOTIFIERS: &str = "webhook, slack, discord, pagerduty, alertmanager or email";

/// Keys each rule kind takes, beyond name, kind, severity, selector,
/// summary, labels and annotations.
fn extra_keys(r: &RawRule) -> Vec<&'static str> {
    [
        ("metric", r.metric.is_some()),
        ("op", r.op.is_some()),
        ("value", r.value.is_some()),
        ("for", r.for_.is_some()),
        ("match", r.matches.is_some()),
        ("count", r.count.is_some()),
        ("window", r.window.is_some()),
        ("resolve_after", r.resolve_after.is_some()),
        ("after", r.after.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect()
}

impl RawFile {
    pub fn check(&self) -> Result<Rules, RulesError> {
        let mut c = Check {
            problems: Vec::new(),
            warnings: Vec::new(),
            templates: minijinja::Environment::new(),
        };
        let d = self.defaults.clone().unwrap_or_default();
        let base = Grouping::default();
        let grouping = Grouping {
            group_by: d.group_by.clone().unwrap_or(base.group_by),
            group_wait: c.duration(
                "defaults.group_wait",
                d.group_wait.as_deref(),
                base.group_wait,
            ),
            group_interval: c.duration(
                "defaults.group_interval",
                d.group_interval.as_deref(),
                base.group_interval,
            ),
            repeat_interval: c.duration(
                "defaults.repeat_interval",
                d.repeat_interval.as_deref(),
                base.repeat_interval,
            ),
        };
        let mut names = BTreeSet::new();
        let mut rules = Vec::new();
        for (i, r) in self.rule.iter().enumerate() {
            let name = r.name.clone().unwrap_or_default();
            let at = if name.is_empty() {
                c.problem(&format!("rule[{i}].name"), "required");
                format!("rule[{i}]")
            } else {
                format!("rule {name:?}")
            };
            if !name.is_empty() && !names.insert(name.clone()) {
                c.problem(&format!("{at}.name"), "the name of an earlier rule");
            }
            if let Some(rule) = self.rule_at(&mut c, &at, name, r) {
                rules.push(rule);
            }
        }
        let inhibits = self
            .inhibit
            .iter()
            .enumerate()
            .map(|(i, x)| {
                if x.source.is_empty() || x.target.is_empty() {
                    c.problem(
                        &format!("inhibit[{i}]"),
                        "needs both source and target matchers",
                    );
                }
                Inhibit {
                    source: Selector::of_matchers(&x.source),
                    target: Selector::of_matchers(&x.target),
                    equal: x.equal.clone(),
                }
            })
            .collect();
        let mut notifiers = Vec::new();
        let mut notifier_names = BTreeSet::new();
        for (i, n) in self.notifier.iter().enumerate() {
            let name = n.name.clone().unwrap_or_default();
            let at = if name.is_empty() {
                c.problem(&format!("notifier[{i}].name"), "required");
                format!("notifier[{i}]")
            } else {
                format!("notifier {name:?}")
            };
            if !name.is_empty() && !notifier_names.insert(name.clone()) {
                c.problem(&format!("{at}.name"), "the name of an earlier notifier");
            }
            if let Some(kind) = notifier_kind(&mut c, &at, n) {
                notifiers.push(Notifier { name, kind });
            }
        }
        let routes = self
            .route
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let at = format!("route[{i}]");
                if r.notifiers.is_empty() {
                    c.problem(&format!("{at}.notifiers"), "at least one notifier");
                }
                for n in &r.notifiers {
                    if !notifier_names.contains(n) {
                        c.problem(
                            &format!("{at}.notifiers"),
                            format!("no notifier named {n:?}"),
                        );
                    }
                }
                Route {
                    matches: Selector::of_matchers(&r.matches),
                    notifiers: r.notifiers.clone(),
                    continue_: r.continue_,
                }
            })
            .collect();
        if c.problems.is_empty() {
            Ok(Rules {
                grouping,
                rules,
                inhibits,
                notifiers,
                routes,
                warnings: c.warnings,
            })
        } else {
            Err(RulesError(c.problems))
        }
    }

    fn rule_at(&self, c: &mut Check, at: &str, name: String, r: &RawRule) -> Option<Rule> {
        let severity = match r.severity.as_deref().map(str::parse::<Severity>) {
            None => Severity::High,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                c.problem(&format!("{at}.severity"), e);
                Severity::High
            }
        };
        let selector = r
            .selector
            .as_deref()
            .and_then(|s| match s.parse::<Selector>() {
                Ok(sel) => Some(sel),
                Err(e) => {
                    c.problem(&format!("{at}.selector"), e);
                    None
                }
            });
        let summary = r
            .summary
            .clone()
            .unwrap_or_else(|| "{{ alertname }} on {{ host }}".into());
        c.template(&format!("{at}.summary"), &summary);
        for (k, v) in &r.annotations {
            c.template(&format!("{at}.annotations.{k}"), v);
        }
        for k in r.labels.keys() {
            if matches!(k.as_str(), "alertname" | "severity" | "host") {
                c.problem(&format!("{at}.labels.{k}"), "set by Picket itself");
            }
        }
        let kind = r.kind.as_deref().unwrap_or_default();
        let allowed: &[&str] = match kind {
            "threshold" => &["metric", "op", "value", "for"],
            "event_count" => &["match", "count", "window"],
            "event" => &["match", "resolve_after"],
            "host_silent" | "store_unwritable" => &["after"],
            "rollout_failed" => &["resolve_after"],
            "" => {
                c.problem(&format!("{at}.kind"), format!("required: {KINDS}"));
                return None;
            }
            other => {
                c.problem(
                    &format!("{at}.kind"),
                    format!("unknown kind {other:?} (expected {KINDS})"),
                );
                return None;
            }
        };
        for k in extra_keys(r) {
            if !allowed.contains(&k) {
                c.problem(&format!("{at}.{k}"), format!("not a key of a {kind} rule"));
            }
        }
        let kind = match kind {
            "threshold" => {
                let metric = r.metric.clone().unwrap_or_default();
                if metric.is_empty() {
                    c.problem(
                        &format!("{at}.metric"),
                        "required: a host series, e.g. cpu_usage_percent",
                    );
                } else if !picket_model::HOST_SERIES.contains(&metric.as_str()) {
                    c.warnings.push(format!(
                        "{at}.metric: no host reports {metric:?} today; the rule waits for it"
                    ));
                }
                let op = match r.op.as_deref() {
                    Some(">") => Op::Gt,
                    Some(">=") => Op::Ge,
                    Some("<") => Op::Lt,
                    Some("<=") => Op::Le,
                    other => {
                        c.problem(
                            &format!("{at}.op"),
                            format!("{other:?}: one of >, >=, <, <="),
                        );
                        Op::Gt
                    }
                };
                let value = r.value.unwrap_or_else(|| {
                    c.problem(&format!("{at}.value"), "required: the number compared with");
                    0.0
                });
                let hold = c.duration(&format!("{at}.for"), r.for_.as_deref(), Duration::ZERO);
                Kind::Threshold {
                    metric,
                    op,
                    value,
                    hold,
                }
            }
            "event_count" => {
                let matcher = c.matcher(&format!("{at}.match"), r.matches.as_ref());
                let count = match r.count.map(u32::try_from) {
                    Some(Ok(n)) if (1..=100_000).contains(&n) => n,
                    _ => {
                        c.problem(&format!("{at}.count"), "required: a count from 1 to 100000");
                        1
                    }
                };
                let window =
                    c.duration(&format!("{at}.window"), r.window.as_deref(), Duration::ZERO);
                if window.is_zero() {
                    c.problem(&format!("{at}.window"), "required: more than 0s");
                }
                Kind::EventCount {
                    matcher,
                    count,
                    window,
                }
            }
            "event" => Kind::Event {
                matcher: c.matcher(&format!("{at}.match"), r.matches.as_ref()),
                resolve_after: c.duration(
                    &format!("{at}.resolve_after"),
                    r.resolve_after.as_deref(),
                    RESOLVE_AFTER,
                ),
            },
            "host_silent" => {
                let after = c.duration(&format!("{at}.after"), r.after.as_deref(), Duration::ZERO);
                if after.is_zero() {
                    c.problem(&format!("{at}.after"), "required: more than 0s");
                }
                Kind::HostSilent { after }
            }
            "store_unwritable" => Kind::StoreUnwritable {
                after: c.duration(&format!("{at}.after"), r.after.as_deref(), STORE_AFTER),
            },
            _ => Kind::RolloutFailed {
                resolve_after: c.duration(
                    &format!("{at}.resolve_after"),
                    r.resolve_after.as_deref(),
                    RESOLVE_AFTER,
                ),
            },
        };
        Some(Rule {
            name,
            kind,
            severity,
            selector,
            labels: r.labels.clone(),
            summary,
            annotations: r.annotations.clone(),
        })
    }
}

fn notifier_kind(c: &mut Check, at: &str, n: &RawNotifier) -> Option<NotifierKind> {
    let kind = n.kind.as_deref().unwrap_or_default();
    let set = [
        ("url", n.url.is_some()),
        ("routing_key", n.routing_key.is_some()),
        ("smtp", n.smtp.is_some()),
        ("starttls", n.starttls.is_some()),
        ("from", n.from.is_some()),
        ("to", n.to.is_some()),
        ("username", n.username.is_some()),
        ("password_file", n.password_file.is_some()),
    ];
    let allowed: &[&str] = match kind {
        "webhook" | "slack" | "discord" | "alertmanager" => &["url"],
        "pagerduty" => &["url", "routing_key"],
        "email" => &[
            "smtp",
            "starttls",
            "from",
            "to",
            "username",
            "password_file",
        ],
        "" => {
            c.problem(&format!("{at}.kind"), format!("required: {NOTIFIERS}"));
            return None;
        }
        other => {
            c.problem(
                &format!("{at}.kind"),
                format!("unknown kind {other:?} (expected {NOTIFIERS})"),
            );
            return None;
        }
    };
    for (k, is_set) in set {
        if is_set && !allowed.contains(&k) {
            c.problem(
                &format!("{at}.{k}"),
                format!("not a key of a {kind} notifier"),
            );
        }
    }
    let url = |c: &mut Check| c.url(&format!("{at}.url"), n.url.as_ref());
    Some(match kind {
        "webhook" => NotifierKind::Webhook { url: url(c) },
        "slack" => NotifierKind::Slack { url: url(c) },
        "discord" => NotifierKind::Discord { url: url(c) },
        "alertmanager" => NotifierKind::Alertmanager { url: url(c) },
        "pagerduty" => {
            let routing_key = n.routing_key.clone().unwrap_or_default();
            if routing_key.is_empty() {
                c.problem(
                    &format!("{at}.routing_key"),
                    "required: the integration's routing key",
                );
            }
            let url = match &n.url {
                None => PAGERDUTY_URL.to_string(),
                Some(_) => url(c),
            };
            NotifierKind::PagerDuty { url, routing_key }
        }
        _ => {
            let smtp = n.smtp.clone().unwrap_or_default();
            if !smtp.contains(':') {
                c.problem(&format!("{at}.smtp"), format!("{smtp:?} is not HOST:PORT"));
            }
            let from = n.from.clone().unwrap_or_default();
            if !from.contains('@') {
                c.problem(&format!("{at}.from"), "required: an address");
            }
            let to = n.to.clone().unwrap_or_default();
            if to.is_empty() || to.iter().any(|a| !a.contains('@')) {
                c.problem(&format!("{at}.to"), "required: one address or more");
            }
            let starttls = n.starttls.unwrap_or(true);
            let host = smtp.rsplit_once(':').map_or(smtp.as_str(), |(h, _)| h);
            let loopback = matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "::1");
            if n.password_file.is_some() && !starttls && !loopback {
                c.problem(
                    &format!("{at}.starttls"),
                    "false with a password_file would send the password in clear to a remote server; \
                     set starttls = true",
                );
            }
            NotifierKind::Email {
                smtp,
                starttls,
                from,
                to,
                username: n.username.clone(),
                password_file: n.password_file.clone(),
            }
        }
    })
}
