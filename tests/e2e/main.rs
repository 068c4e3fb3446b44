//! The end-to-end tests: real binaries, real TLS, the real sled store,
//! over loopback (and, for `netns` and `provisioning`, the namespace
//! fleet), one module per area. Run one area with
//! `cargo test -p picket-tests --test e2e rollouts::`.

mod alerts;
mod backup;
mod chaos;
mod checks;
mod dev;
mod events;
mod fail2ban;
mod faults;
mod follow;
mod foundation;
mod hardening;
mod metrics;
mod netns;
mod operations;
mod provisioning;
mod refusals;
mod rollouts;
mod run;
mod servers;
mod swarm;
mod systemd;
mod trust;
