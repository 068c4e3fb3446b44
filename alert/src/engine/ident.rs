//! What evaluating a host's event against a rule needs that depends only
//! on the rule and the host's labels: whether the rule applies to the
//! host, the alert's labels and fingerprint (a SHA-256 of the labels), and
//! the `event_count` key. Worked out on the host's first event a rule
//! matches and kept, so that a rule matching every event costs a lookup,
//! not a label map, a hash and its hex per event. Rebuilt when the host's
//! labels change; dropped on a reload and when the host is forgotten.
//! Derived only: never persisted.

use std::collections::HashMap;
use std::sync::Arc;

use picket_model::Labels;

use super::label;
use crate::rules::Rule;

pub(super) struct Ident {
    pub applies: bool,
    pub labels: Labels,
    pub fingerprint: String,
    /// `rule \0 host`: its key in `Persisted::counts`.
    pub count_key: String,
}

/// By host, then by rule (its index in the rules).
#[derive(Default)]
pub(super) struct Idents(HashMap<String, HostIdents>);

struct HostIdents {
    host_labels: Labels,
    by_rule: Vec<Option<Arc<Ident>>>,
}

impl Idents {
    /// The ident of the `i`th of `n` rules, `rule`, on `host`.
    pub fn get(
        &mut self,
        (i, n): (usize, usize),
        rule: &Rule,
        host: &str,
        host_labels: &Labels,
    ) -> Arc<Ident> {
        let fresh = || HostIdents {
            host_labels: host_labels.clone(),
            by_rule: vec![None; n],
        };
        let h = match self.0.get_mut(host) {
            Some(h) if h.host_labels == *host_labels && h.by_rule.len() == n => h,
            Some(h) => {
                *h = fresh();
                h
            }
            None => self.0.entry(host.to_string()).or_insert_with(fresh),
        };
        let make = || {
            let labels = label::of(rule, Some(host), host_labels);
            Arc::new(Ident {
                applies: label::applies(rule, host, host_labels),
                fingerprint: label::fingerprint(&labels),
                labels,
                count_key: format!("{}\0{}", rule.name, host),
            })
        };
        match h.by_rule.get_mut(i) {
            Some(slot) => slot.get_or_insert_with(make).clone(),
            // Not one of the `n` rules: worked out, not kept.
            None => make(),
        }
    }

    /// The rules changed: every ident may have.
    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn forget(&mut self, host: &str) {
        self.0.remove(host);
    }
}
