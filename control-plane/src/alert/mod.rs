//! The alert engine's shell: `driver` is the async shell that feeds the
//! engine (`picket_alert`) what the tap (`picket_tap`) hands on, persists
//! it and hands its notifications to `notify`'s outbox; `kit` is what
//! outlives one driver (the tap, the outbox, the rules in force); `front`
//! is where the control plane's alert calls go (the driver, or in cluster
//! mode on a follower the shared state). The notifications of
//! `store_unwritable` rules, which cannot wait for the store, go through
//! `picket_notify::unqueued`.

pub mod driver;
pub mod front;
pub mod kit;
