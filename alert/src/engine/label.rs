//! An alert's labels (SPEC §10: `alertname`, `severity`, `host`, the
//! host's labels, the rule's labels), its fingerprint, and its rendered
//! summary and annotations.

use picket_model::{Labels, Severity};
use sha2::{Digest, Sha256};

use crate::rules::Rule;

/// An event as the engine reads it.
pub struct EventIn<'a> {
    pub host: &'a str,
    pub host_labels: &'a Labels,
    pub source: &'a str,
    pub kind: &'a str,
    pub severity: Severity,
    pub fields: &'a Labels,
}

/// What a template sees besides the alert's labels.
pub struct Context<'a> {
    pub host: &'a str,
    pub fields: Option<&'a Labels>,
}

impl<'a> Context<'a> {
    pub fn host(host: &'a str) -> Self {
        Context { host, fields: None }
    }

    pub fn event(e: &EventIn<'a>) -> Self {
        Context {
            host: e.host,
            fields: Some(e.fields),
        }
    }
}

/// The rule is for this host (its selector, if any, matches).
pub fn applies(rule: &Rule, host: &str, labels: &Labels) -> bool {
    rule.selector
        .as_ref()
        .is_none_or(|s| s.matches_host(host, labels))
}

/// The labels of `rule`'s alert on `host`.
pub fn of(rule: &Rule, host: Option<&str>, host_labels: &Labels) -> Labels {
    let mut l = host_labels.clone();
    l.extend(rule.labels.clone());
    l.insert("alertname".into(), rule.name.clone());
    l.insert("severity".into(), rule.severity.as_str().into());
    if let Some(h) = host {
        l.insert("host".into(), h.to_string());
    }
    l
}

/// A hash of the labels, as 16 hex digits (Alertmanager's fingerprints
/// are 64 bits too): the alert's identity.
pub fn fingerprint(labels: &Labels) -> String {
    let mut h = Sha256::new();
    for (k, v) in labels {
        h.update(k.as_bytes());
        h.update([0xff]);
        h.update(v.as_bytes());
        h.update([0xff]);
    }
    hex::encode(&h.finalize()[..8])
}

/// `summary` and the rule's annotations, rendered with minijinja over
/// `host`, `value`, `alertname`, `labels.*` and `fields.*`. A template
/// that fails at render time (it parsed when the rules were checked)
/// leaves its source with the error, rather than no text.
pub fn annotations(rule: &Rule, labels: &Labels, ctx: &Context<'_>, value: &str) -> Labels {
    let env = minijinja::Environment::new();
    let empty = Labels::new();
    let vars = minijinja::context! {
        host => ctx.host,
        value => value,
        alertname => &rule.name,
        labels => labels,
        fields => ctx.fields.unwrap_or(&empty),
    };
    let render = |src: &str| {
        env.render_str(src, &vars)
            .unwrap_or_else(|e| format!("{src} (template error: {e})"))
    };
    let mut out: Labels = rule
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), render(v)))
        .collect();
    out.insert("summary".into(), render(&rule.summary));
    out
}
