//! Alerts (SPEC §10). `rules` is the alert file, read and checked whole;
//! `engine` is the pure state machine (evaluation, states, grouping,
//! silences, inhibition); `tap` is what ingest hands on; `driver` is the
//! async shell that feeds the engine, persists it and hands its
//! notifications to `notify`'s outbox.
//!
//! **Architecture invariant:** `alert::engine` imports no tokio, sled or
//! tonic, and reads no clock.

pub mod driver;
pub mod engine;
pub mod rules;
pub mod tap;
