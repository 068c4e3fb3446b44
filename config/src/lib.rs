//! Picket's configuration files, read and checked whole: the control
//! plane's `control.toml` ([`control`]), the agent's `agent.toml`
//! ([`agent`]) and `picketctl`'s profiles ([`profile`], which dev mode
//! writes too). Unknown keys are errors naming the file.
//!
//! Reading a file is the only I/O here; nothing connects or listens.

pub mod agent;
pub mod control;
pub mod profile;
