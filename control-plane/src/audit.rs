//! The audit log: who changed what, when, and how it ended. Append-only;
//! there is deliberately no way to update or delete a record.

use picket_clock::now_ms;
use picket_store::{AuditRecord, Store, StoreError};

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
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            outcome: outcome.to_string(),
        };
        tracing::info!(actor, action, target, outcome, "audit");
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
