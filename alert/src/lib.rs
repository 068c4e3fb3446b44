//! Alerts (SPEC §10), as a pure state machine.
//!
//! - [`rules`] — the alert file, read and checked whole (templates
//!   compiled with minijinja).
//! - [`engine`] — the machine: samples, events, signs of life, reloads,
//!   silences, forgotten hosts and ticks in; transitions and notification
//!   requests out (evaluation, states, grouping, silences, inhibition).
//!
//! The async shell that feeds it, persists its state with the
//! notifications it decided and hands them to the outbox is
//! `picket_control::alert::driver`.
//!
//! **Architecture invariant:** this crate depends on no tokio, tonic,
//! sled or reqwest, does no I/O and reads no clock (`now` is an argument).
//! `tests/tidy.rs` checks the dependencies.

pub mod engine;
pub mod rules;
