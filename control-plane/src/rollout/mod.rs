//! The rollout engine's shell: `driver` is the task that owns the engines
//! (`picket_rollout`), persists before it acts, and talks to agents through
//! `crate::steps`; `front` is where the rest of the control plane's rollout
//! calls go (the driver, or on a follower replica the shared rollouts).

pub mod driver;
pub mod front;
