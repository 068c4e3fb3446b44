//! The audit log: who changed what, when, and how it ended. Append-only;
//! there is deliberately no way to update or delete a record.

use picket_clock::now_ms;
use picket_store::{AuditRecord, Store, StoreError};

/// The most characters of one audit field; longer text (a refused
/// enrollment's name, say: anyone may send one) is cut, marked `…`.
const FIELD_CHARS: usize = 256;

/// A field as recorded: control characters written `\xNN` (they would act
/// on the terminal of whoever reads the log) and at most [`FIELD_CHARS`].
fn clean(s: &str) -> String {
    let (mut out, cut) = picket_model::escape_controls(s, FIELD_CHARS);
    if cut {
        out.push('…');
    }
    out
}

#[derive(Clone)]
pub struct Audit {
    store: Store,
}

impl Audit {
    pub fn new(store: Store) -> Self {
        Audit { store }
    }

    pub fn record(&self, actor: &str, action: &str, target: &str, outcome: &str) {
        let r = AuditRecord {
            time_ms: now_ms(),
            actor: clean(actor),
            action: clean(action),
            target: clean(target),
            outcome: clean(outcome),
        };
        tracing::info!(
            actor = %r.actor,
            action = %r.action,
            target = %r.target,
            outcome = %r.outcome,
            "audit"
        );
        // The insert waits on the store's snapshot gate (and sled): off the
        // worker's other tasks.
        if let Err(error) = crate::blocking::in_place(|| self.store.append_audit(&r)) {
            // The change itself already happened; losing its audit line is
            // serious but must not turn a success into an error.
            tracing::error!(%error, actor, action, "cannot write audit record");
        }
    }

    pub fn tail(&self, n: usize) -> Result<Vec<AuditRecord>, StoreError> {
        crate::blocking::in_place(|| self.store.audit_tail(n))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields_are_capped_and_control_characters_written_out() {
        assert_eq!(super::clean("vm-prod"), "vm-prod");
        assert_eq!(super::clean("a\x1b[2Jb"), "a\\x1b[2Jb");
        let long = super::clean(&"x".repeat(70_000));
        assert_eq!(long.chars().count(), super::FIELD_CHARS + 1);
        assert!(long.ends_with('…'));
    }
}
