//! Rolling deploys (SPEC §9), as a pure state machine.
//!
//! - [`engine`] — the machine: `Engine::handle(input, now) -> outputs` and
//!   `next_deadline()`; waves, `max_parallel`, the failure budget, health
//!   gates, pauses, approval, abort, rollback, `host_timeout`.
//! - [`state`] — what the engine persists (serde), and what `restore` plus
//!   `resume` rebuild it from after a restart.
//! - [`view`] — what `rollout status` shows.
//!
//! The async shell that owns engines, persists before it acts and talks
//! to agents is `picket_control::rollout::driver`.
//!
//! **Architecture invariant:** this crate depends on no tokio, tonic,
//! sled or reqwest, does no I/O and reads no clock (`now` is an argument).
//! `tests/tidy.rs` checks the dependencies.

pub mod engine;
pub mod state;
pub mod view;
