//! Rolling deploys (SPEC §9). `engine` is the pure state machine: inputs
//! and `now` in, decisions out, no I/O; `state` is what it persists;
//! `view` is what `rollout status` shows; `driver` is the task that owns
//! the engines, persists before it acts, and talks to agents through
//! `crate::steps`.
//!
//! **Architecture invariant:** `rollout::engine` and `rollout::state`
//! import no tokio, sled or tonic, and read no clock.

pub mod driver;
pub mod engine;
pub mod state;
pub mod view;
