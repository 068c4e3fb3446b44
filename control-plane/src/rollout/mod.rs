//! The rollout engine's shell: `driver` is the task that owns the engines
//! (`picket_rollout`), persists before it acts, and talks to agents through
//! `crate::steps`.

pub mod driver;
