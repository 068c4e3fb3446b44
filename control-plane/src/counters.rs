//! The control plane's own counters: a leaf that ingest, the gRPC services
//! and `/metrics` share, importing nothing of theirs.

/// The control plane's own counters, exported on `/metrics`.
#[derive(Default)]
pub struct Counters {
    /// Records stored (first delivery).
    pub ingested: std::sync::atomic::AtomicU64,
    /// Records received again after a replay, and skipped.
    pub duplicates: std::sync::atomic::AtomicU64,
    /// Records that were not well-formed protobuf, and skipped.
    pub rejected: std::sync::atomic::AtomicU64,
    /// Enrollment attempts refused by the per-address rate limit.
    pub enroll_rate_limited: std::sync::atomic::AtomicU64,
    /// Metric samples dated more than 5 minutes ahead, stored at their
    /// receive time instead (they would never expire).
    pub samples_clamped: std::sync::atomic::AtomicU64,
    /// Certificate renewals refused: too soon after the last one.
    pub renew_refused: std::sync::atomic::AtomicU64,
}
