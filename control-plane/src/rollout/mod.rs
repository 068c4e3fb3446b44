//! Rolling deploys (SPEC §9). `engine` is the pure state machine: inputs
//! and `now` in, decisions out, no I/O; `state` is what it persists. The
//! driver that owns an engine in a task, persists before it dispatches and
//! talks to agents is the next piece (issue #11).
//!
//! **Architecture invariant:** `rollout::engine` and `rollout::state`
//! import no tokio, sled or tonic, and read no clock.

pub mod engine;
pub mod state;
