//! Wall-clock time: the one place Picket's services and CLI read it
//! (`tests/tidy.rs` checks that no other crate calls `SystemTime::now`).
//! Records use Unix milliseconds. The pure crates (model, engines,
//! parsers) may not depend on this crate: they take `now` as an argument.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, as a `SystemTime` (certificate validity, deadlines).
pub fn now() -> SystemTime {
    SystemTime::now()
}

/// Now, as Unix milliseconds.
pub fn now_ms() -> i64 {
    to_ms(now())
}

/// Unix milliseconds `d` before now (the epoch at the earliest).
pub fn ago_ms(d: Duration) -> i64 {
    to_ms(now().checked_sub(d).unwrap_or(UNIX_EPOCH)).max(0)
}

pub fn to_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Unix milliseconds as a `SystemTime`.
pub fn from_ms(ms: i64) -> SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_on_both_sides_of_the_epoch() {
        assert_eq!(to_ms(UNIX_EPOCH + Duration::from_millis(1500)), 1500);
        assert_eq!(to_ms(UNIX_EPOCH - Duration::from_millis(20)), -20);
        assert_eq!(to_ms(from_ms(-20)), -20);
        assert_eq!(to_ms(from_ms(1_700_000_000_123)), 1_700_000_000_123);
        assert!(ago_ms(Duration::from_secs(60)) <= now_ms() - 60_000);
        assert_eq!(ago_ms(Duration::from_secs(u64::MAX / 4)), 0);
    }
}
