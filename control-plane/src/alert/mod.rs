//! Alerts (SPEC §10). `rules` is the alert file, read and checked whole;
//! `engine` is the pure state machine (evaluation, states, grouping,
//! silences, inhibition). The driver that feeds it from ingest and the
//! notifiers (`notify`) are issue #12's next pieces.
//!
//! **Architecture invariant:** `alert::engine` imports no tokio, sled or
//! tonic, and reads no clock.

pub mod engine;
pub mod rules;
