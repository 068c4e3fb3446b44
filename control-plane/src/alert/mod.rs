//! The alert engine's shell: `tap` is what ingest hands on; `driver` is the
//! async shell that feeds the engine (`picket_alert`), persists it and hands
//! its notifications to `notify`'s outbox; `unqueued` sends those of
//! `store_unwritable` rules, which cannot wait for the store.

pub mod driver;
pub mod front;
pub mod unqueued;
